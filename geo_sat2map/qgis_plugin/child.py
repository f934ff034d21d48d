"""Run the ``geo-sat2map`` executable as a child process and follow its JSON events.

QGIS's Python has no torch, so the plugin never runs the model itself: it starts the executable that
``geo-sat2map qgis install`` recorded, with ``--progress json``, and turns the events on the child's stderr into
feedback calls (progress, log lines, the result, the one-line error). Cancelling interrupts the child the way
Ctrl-C does, so the CLI removes its partial output itself. No QGIS import here: the module is tested without QGIS.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

EXECUTABLE_NAME = "geo-sat2map"
SETTINGS_FILE = "settings.json"  # written by `geo-sat2map qgis install` beside this module
POLL_SECONDS = 0.1  # how often a running child is checked for a cancel request
CANCEL_GRACE_SECONDS = 30.0  # after Ctrl-C, time to clean up before the child is killed
# Set by QGIS's installers for QGIS's own interpreter and libraries (OSGeo4W, the macOS bundle); inherited by the
# child, they would make the user's Python, rasterio and pyproj load QGIS's modules or mismatched GDAL/PROJ data.
FOREIGN_ENVIRONMENT = (
    "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
    "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA",
)
TEXT_TAIL_LINES = 20  # plain stderr lines kept to explain a failure that sent no error event


class Feedback(Protocol):
    """The part of QgsProcessingFeedback used here."""

    def isCanceled(self) -> bool: ...

    def setProgress(self, progress: float) -> None: ...

    def setProgressText(self, text: str) -> None: ...

    def pushInfo(self, info: str) -> None: ...

    def pushWarning(self, warning: str) -> None: ...

    def pushDebugInfo(self, info: str) -> None: ...

    def pushConsoleInfo(self, info: str) -> None: ...

    def pushCommandInfo(self, info: str) -> None: ...

    def reportError(self, error: str, fatalError: bool = False) -> None: ...


@dataclass
class ChildOutcome:
    """How a child run ended: its exit code, the ``result`` event's payload, the one-line error, a cancel."""

    exit_code: int
    result: dict[str, Any] | None = None
    error: str | None = None
    cancelled: bool = False
    text_tail: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """Exit 0 with a result; a cancel that came too late to stop a finished run still counts."""
        return self.exit_code == 0 and self.result is not None

    def failure_message(self) -> str:
        """One line for the algorithm's error: the CLI's own error line when there is one."""
        if self.cancelled:
            return "Cancelled: geo-sat2map was interrupted and left nothing at the output."
        if self.error:
            return self.error
        if self.exit_code == 0:
            return "geo-sat2map finished without reporting a result (is it older than this plugin?)"
        last = next((line for line in reversed(self.text_tail) if line.strip()), "")
        return f"geo-sat2map failed with exit status {self.exit_code}" + (f": {last.strip()}" if last else "")


def recorded_executable(plugin_dir: str | os.PathLike[str]) -> str | None:
    """The executable `geo-sat2map qgis install` recorded in the plugin folder, if any."""
    try:
        settings = json.loads((Path(plugin_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    executable = settings.get("executable") if isinstance(settings, dict) else None
    return executable if isinstance(executable, str) and executable else None


def find_executable(configured: str | None, plugin_dir: str | os.PathLike[str]) -> str:
    """The executable to run: the Processing setting, else the recorded one, else geo-sat2map on PATH."""
    for candidate, origin in ((configured, "the Processing setting"), (recorded_executable(plugin_dir), None)):
        if not candidate:
            continue
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
        where = origin or f"{Path(plugin_dir) / SETTINGS_FILE} (written by geo-sat2map qgis install)"
        raise ExecutableNotFound(
            f"the geo-sat2map executable {candidate} from {where} does not exist; run `geo-sat2map qgis install` "
            "again from the environment where geo-sat2map is installed"
        )
    on_path = shutil.which(EXECUTABLE_NAME)
    if on_path:
        return on_path
    raise ExecutableNotFound(
        "geo-sat2map executable not found: run `geo-sat2map qgis install` from the environment where geo-sat2map "
        "is installed, or set it in Settings > Options > Processing > Providers > geo-sat2map"
    )


class ExecutableNotFound(Exception):
    pass


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the child: ours, without QGIS's interpreter and library settings."""
    env = dict(os.environ if environ is None else environ)
    for name in FOREIGN_ENVIRONMENT:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run_command(
    executable: str, args: Sequence[str], feedback: Feedback, *, cancel_grace: float = CANCEL_GRACE_SECONDS
) -> ChildOutcome:
    """Run ``executable --progress json ARGS`` until it exits, reporting to ``feedback``; never raises on failure."""
    argv = [executable, "--progress", "json", *args]
    feedback.pushCommandInfo(shlex.join(argv))
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        encoding="utf-8", errors="replace", env=child_environment(), **_process_group_options(),
    )
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for stream, name in ((child.stdout, "stdout"), (child.stderr, "stderr"))
    ]
    for reader in readers:
        reader.start()
    follower = _EventFollower(feedback)
    open_streams, interrupted_at = len(readers), None
    while open_streams or child.poll() is None:
        if interrupted_at is None and feedback.isCanceled():
            _interrupt(child)
            interrupted_at = time.monotonic()
        elif interrupted_at is not None and child.poll() is None and time.monotonic() - interrupted_at > cancel_grace:
            child.kill()
        try:
            stream, line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
        else:
            follower.handle(stream, line)
    exit_code = child.wait()
    for reader, stream in zip(readers, (child.stdout, child.stderr)):
        reader.join()
        stream.close()
    return ChildOutcome(
        exit_code=exit_code, result=follower.result, error=follower.error,
        cancelled=interrupted_at is not None and exit_code != 0, text_tail=follower.text_tail,
    )


def parse_event(line: str) -> dict[str, Any] | None:
    """A JSON event line -> dict; any other line (the Error: line, a traceback) -> None."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


class _EventFollower:
    """Turns the child's output lines into feedback calls and remembers the result and the error."""

    def __init__(self, feedback: Feedback) -> None:
        self.feedback = feedback
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.text_tail: list[str] = []
        self.task: str | None = None

    def handle(self, stream: str, line: str) -> None:
        event = parse_event(line) if stream == "stderr" else None
        if event is None:  # the human output (stdout tables, the Error: line, a traceback): shown as it is
            self.feedback.pushConsoleInfo(line)
            if stream == "stderr":
                self.text_tail = [*self.text_tail[-(TEXT_TAIL_LINES - 1):], line]
            return
        kind = event["event"]
        if kind == "progress":
            self._progress(event)
        elif kind == "log":
            self._log(str(event.get("level", "info")), str(event.get("message", "")))
        elif kind == "result":
            result = event.get("result")
            self.result = result if isinstance(result, dict) else {}
        elif kind == "error":
            self.error = str(event.get("message", "")) or None
        elif kind == "start":
            self.feedback.pushDebugInfo(f"geo-sat2map {event.get('version', '?')}: {event.get('command', '')}")

    def _progress(self, event: dict[str, Any]) -> None:
        task = str(event.get("task") or "")
        if task != self.task:
            self.task = task
            self.feedback.setProgressText(task)
        done, total = event.get("done"), event.get("total")
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            self.feedback.setProgress(min(100.0, 100.0 * done / total))

    def _log(self, level: str, message: str) -> None:
        if level == "debug":
            self.feedback.pushDebugInfo(message)
        elif level == "warning":
            self.feedback.pushWarning(message)
        elif level in ("error", "critical"):
            self.feedback.reportError(message, False)
        else:
            self.feedback.pushInfo(message)


def _pump(stream: Any, name: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    finally:
        lines.put((name, None))


def _process_group_options() -> dict[str, Any]:
    """On Windows a console child can only be interrupted on its own: give it its own process group, no window."""
    if sys.platform != "win32":
        return {}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}


def _interrupt(child: subprocess.Popen[str]) -> None:
    """Ctrl-C for the child (Ctrl-Break on Windows, which the CLI treats the same in --progress json mode)."""
    try:
        if sys.platform == "win32":
            child.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            child.send_signal(signal.SIGINT)
    except OSError:  # it has just exited
        pass
