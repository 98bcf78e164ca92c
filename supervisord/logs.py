"""Logging: one `key=value` line per state change, to stderr (journald keeps it).

Owns the log format only. `log(event, **fields)` is the one way the daemon writes a
line; values with spaces or quotes are quoted. Imports the stdlib only.
"""

from __future__ import annotations

import logging
import sys

_logger = logging.getLogger("supd")


def _fmt(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def line(event: str, **fields: object) -> str:
    return " ".join([f"event={event}"] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None])


def log(event: str, level: int = logging.INFO, **fields: object) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, line(event, **fields))


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s %(message)s"))
    root = logging.getLogger("supd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
