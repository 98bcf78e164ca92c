"""Logging: one `key=value` line per state change, to stderr (journald keeps it).

Owns the log format and its writer. `log(event, **fields)` is the one way the daemon
writes a line; values with spaces or quotes are quoted. Lines are buffered and written
once per hub batch (`flush()`, called by the hub after each batch and at exit), so a
busy daemon makes one write per batch, not one per task event. Records of the stdlib
`logging` module (from libraries, or the spokes that use it) go to the same stderr
through a handler with the same format. Imports the stdlib only.
"""

from __future__ import annotations

import logging
import sys
import time

from supervisord import logfmt

_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
           logging.CRITICAL: "CRITICAL"}
_threshold = logging.INFO
_buffer: list[str] = []
_MAX_BUFFERED = 512
_stamp_second = -1
_stamp_prefix = ""


def _stamp(now: float) -> str:
    global _stamp_second, _stamp_prefix
    second = int(now)
    if second != _stamp_second:  # strftime once a second, not once a line
        _stamp_second, _stamp_prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
    return f"{_stamp_prefix},{int((now - second) * 1000):03d}"


def log(event: str, level: int = logging.INFO, **fields: object) -> None:
    if level < _threshold:
        return
    _buffer.append(" ".join([_stamp(time.time()), f"level={_LEVELS.get(level, level)}", f"event={event}",
                             *logfmt.fields(fields)]) + "\n")
    if len(_buffer) >= _MAX_BUFFERED or level >= logging.WARNING:
        flush()


def flush() -> None:
    if _buffer:
        try:
            sys.stderr.write("".join(_buffer))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed terminal): logging must never take the daemon down
        _buffer.clear()


class _Handler(logging.Handler):
    """Stdlib records, in our format and order (through the same buffer)."""

    def emit(self, record: logging.LogRecord) -> None:
        log("log", record.levelno, logger=record.name, message=record.getMessage())


def setup(level: str = "info") -> None:
    global _threshold
    _threshold = logging.getLevelName(level.upper())
    root = logging.getLogger("supd")
    root.handlers[:] = [_Handler()]
    root.setLevel(_threshold)
    root.propagate = False
    for name in ("supervisord", "opentelemetry"):
        other = logging.getLogger(name)
        other.handlers[:] = [_Handler()]
        other.setLevel(max(_threshold, logging.WARNING) if name == "opentelemetry" else _threshold)
        other.propagate = False
