"""What the user sees on stderr: progress bars, log lines, and the machine-readable event stream
(``geo-sat2map --progress json``).

The library builds every progress bar with ``progress_bar``: a tqdm bar on a terminal; a plain line at most every
``LINE_INTERVAL`` seconds (no carriage-return redraws) when stderr is a file or a pipe (CI, ``nohup``, a log); or,
while ``json_events`` is active, a reporter that writes throttled JSON lines instead. In that mode stderr carries
one JSON object per line (other lines, such as the ``Error:`` line or a ``-v`` traceback, are plain text and
must be tolerated):

- ``{"event": "start", "command": "translate", "version": "0.4.0"}``
- ``{"event": "progress", "task": "translate", "done": 12, "total": 96, "unit": "win"}`` (``total`` may be null;
  at most every ``PROGRESS_INTERVAL`` seconds, plus the first and last state of each bar)
- ``{"event": "log", "level": "info", "message": "..."}`` (levels: debug, info, warning, error)
- ``{"event": "result", "command": "evaluate", "result": {...}}`` (the command's report)
- ``{"event": "error", "message": "...", "exit_code": 1}`` (the one-line error; 130 when interrupted)

Consumers (the QGIS plugin) never parse the human output. Non-finite floats are written as Python's json does
(``Infinity``, ``NaN``), e.g. the PSNR of two identical images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Protocol

from tqdm import tqdm

PROGRESS_INTERVAL = 0.25  # seconds between progress events of one bar: smooth for a GUI, a few lines per second
LINE_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal: a log stays readable
# A command's result line ("Wrote map.tif ..."): above INFO, so that -q (which hides INFO) still shows it.
RESULT = logging.INFO + 5
logging.addLevelName(RESULT, "RESULT")


class ProgressBar(Protocol):
    """The part of tqdm's interface the library uses."""

    n: int

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class EventWriter:
    """Writes one JSON object per line to a text stream; safe to use from several threads."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=_json_default)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


_writer: EventWriter | None = None


@contextlib.contextmanager
def json_events(stream: IO[str]) -> Iterator[EventWriter]:
    """Switch the process to JSON events on ``stream`` for the duration of the block."""
    global _writer
    previous, _writer = _writer, EventWriter(stream)
    try:
        yield _writer
    finally:
        _writer = previous


def emit(event: str, **fields: Any) -> None:
    """Write an event if JSON events are on; a no-op otherwise (so callers need not check)."""
    if _writer is not None:
        _writer.emit(event, **fields)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    initial: int = 0,
    **tqdm_options: Any,
) -> ProgressBar:
    """A tqdm bar on a terminal, progress lines elsewhere, or a JSON progress reporter while ``json_events`` is
    active; same calls either way.

    ``tqdm_options`` (leave, dynamic_ncols, file, ...) only concern the terminal bar; ``leave=False`` also drops
    the final line of a bar that printed none before.
    """
    if disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True, initial=initial)
    if _writer is not None:
        return JsonProgress(_writer, iterable, total=total, desc=desc, unit=unit, initial=initial)
    stream = tqdm_options.get("file") or sys.stderr
    if not _is_terminal(stream):
        return LineProgress(stream, iterable, total=total, desc=desc, unit=unit, initial=initial,
                            leave=tqdm_options.get("leave", True))
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, **tqdm_options)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Reporter:
    """A progress bar that reports by calling ``_send``: the final state on close, and in between at most one
    report per ``min_interval`` seconds."""

    def __init__(
        self, iterable: Iterable[Any] | None, *, total: int | None, desc: str, unit: str, initial: int,
        min_interval: float,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = initial
        self.min_interval = min_interval
        self.postfix: dict[str, Any] | None = None
        self.closed = False
        self.started = time.monotonic()
        self._sent_n: int | None = None
        self._sent_at = self.started

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._sent_at >= self.min_interval:
            self._report()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._sent_n and self._report_on_close():
            self._report()

    def _report_on_close(self) -> bool:
        return True

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def _report(self) -> None:
        self._send()
        self._sent_n, self._sent_at = self.n, time.monotonic()

    def _send(self) -> None:
        raise NotImplementedError


class JsonProgress(_Reporter):
    """A progress bar that writes ``progress`` events: the first and final state, and at most one per interval."""

    def __init__(
        self, writer: EventWriter, iterable: Iterable[Any] | None = None, *, total: int | None = None,
        desc: str = "", unit: str = "it", initial: int = 0, min_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        super().__init__(iterable, total=total, desc=desc, unit=unit, initial=initial, min_interval=min_interval)
        self.writer = writer
        self._report()

    def _send(self) -> None:
        fields: dict[str, Any] = {"task": self.desc, "done": self.n, "total": self.total, "unit": self.unit}
        if self.postfix:
            fields["postfix"] = self.postfix
        self.writer.emit("progress", **fields)


class LineProgress(_Reporter):
    """Progress for a log file or a pipe: whole lines (tqdm's text without the bar, e.g. ``translate:  25%
    240/960 [00:10<00:30, 23.30win/s]``) at most every ``min_interval`` seconds, and the final state."""

    def __init__(
        self, stream: IO[str], iterable: Iterable[Any] | None = None, *, total: int | None = None,
        desc: str = "", unit: str = "it", initial: int = 0, min_interval: float = LINE_INTERVAL, leave: bool = True,
    ) -> None:
        super().__init__(iterable, total=total, desc=desc, unit=unit, initial=initial, min_interval=min_interval)
        self.stream, self.leave = stream, leave

    def _report_on_close(self) -> bool:
        return self.leave or self._sent_n is not None

    def _send(self) -> None:
        postfix = ", ".join(f"{key}={_short(value)}" for key, value in (self.postfix or {}).items())
        line = tqdm.format_meter(self.n, self.total, time.monotonic() - self.started, ncols=0, prefix=self.desc,
                                 unit=self.unit, postfix=postfix or None)
        self.stream.write(line + "\n")
        self.stream.flush()


def _short(value: Any) -> str:
    """A postfix value as tqdm's set_postfix shows it (numbers in 3 significant digits)."""
    return tqdm.format_num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def main_rank() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own: the one that speaks for the run. Read from RANK and
    WORLD_SIZE as ``training.distributed.context_from_env`` reads them, without importing torch (fast --help)."""
    return int(os.environ.get("WORLD_SIZE") or 1) <= 1 or os.environ.get("RANK", "0") in ("", "0")


class ConsoleFilter(logging.Filter):
    """What of the log reaches the user: each warning text once per run; on torchrun ranks other than 0 only
    errors, and warnings logged with ``extra={"this_rank": True}`` (about this rank's own work), because rank 0
    already shows everything the ranks have in common."""

    def __init__(self, main: bool = True) -> None:
        super().__init__()
        self.main = main
        self._warned: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if not self.main and not (record.levelno >= logging.WARNING and getattr(record, "this_rank", False)):
            return False
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            if text in self._warned:
                return False
            self._warned.add(text)
        return True


class ConsoleFormatter(logging.Formatter):
    """The message alone; a warning starts with ``Warning:``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.WARNING and not text.startswith("Warning:"):
            text = f"Warning: {text}"
        return text


class JsonLogHandler(logging.Handler):
    """Log records as ``log`` events (through the same writer, so lines never interleave with progress)."""

    def __init__(self, writer: EventWriter, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.emit("log", level=_event_level(record.levelno), message=record.getMessage())
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def _event_level(levelno: int) -> str:
    """The event's level: debug, info, warning or error (a RESULT line is info)."""
    for level, name in ((logging.ERROR, "error"), (logging.WARNING, "warning"), (logging.INFO, "info")):
        if levelno >= level:
            return name
    return "debug"


def _json_default(value: Any) -> Any:
    """Reports as JSON: their to_dict() if they have one, else dataclass fields; paths as strings."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
