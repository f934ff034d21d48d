"""Progress bars and the machine-readable event stream (``geo-sat2map --progress json``).

The library builds every progress bar with ``progress_bar``: a tqdm bar normally, or, while ``json_events`` is
active, a reporter that writes throttled JSON lines instead. In that mode stderr carries one JSON object per line
(other lines, such as the ``Error:`` line or a ``-v`` traceback, are plain text and must be tolerated):

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
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Protocol

from tqdm import tqdm

PROGRESS_INTERVAL = 0.25  # seconds between progress events of one bar: smooth for a GUI, a few lines per second


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
    """A tqdm bar, or a JSON progress reporter while ``json_events`` is active; same calls either way.

    ``tqdm_options`` (leave, dynamic_ncols, ...) only concern the terminal bar.
    """
    if _writer is None or disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, **tqdm_options)
    return JsonProgress(_writer, iterable, total=total, desc=desc, unit=unit, initial=initial)


class JsonProgress:
    """A progress bar that writes ``progress`` events: the first and final state, and at most one per interval."""

    def __init__(
        self, writer: EventWriter, iterable: Iterable[Any] | None = None, *, total: int | None = None,
        desc: str = "", unit: str = "it", initial: int = 0, min_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.writer, self.iterable, self.total, self.desc, self.unit = writer, iterable, total, desc, unit
        self.n = initial
        self.min_interval = min_interval
        self.postfix: dict[str, Any] | None = None
        self.closed = False
        self._sent_n: int | None = None
        self._sent_at = 0.0
        self._send()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._sent_at >= self.min_interval:
            self._send()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._sent_n:
            self._send()

    def __enter__(self) -> JsonProgress:
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

    def _send(self) -> None:
        fields: dict[str, Any] = {"task": self.desc, "done": self.n, "total": self.total, "unit": self.unit}
        if self.postfix:
            fields["postfix"] = self.postfix
        self.writer.emit("progress", **fields)
        self._sent_n, self._sent_at = self.n, time.monotonic()


class JsonLogHandler(logging.Handler):
    """Log records as ``log`` events (through the same writer, so lines never interleave with progress)."""

    def __init__(self, writer: EventWriter, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.emit("log", level=record.levelname.lower(), message=record.getMessage())
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


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
