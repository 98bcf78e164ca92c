"""The child's log format: one `key=value` line per state change, to stderr.

The child's stderr is the daemon's (journald adds the time). Imports the stdlib only.
"""

from __future__ import annotations

import sys

_context: dict[str, object] = {}


def bind(**fields: object) -> None:
    """Fields repeated on every line of this process (slot, pid)."""
    _context.update(fields)


def _fmt(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log(event: str, **fields: object) -> None:
    """Write `supd-child event=EVENT k=v ...` (None values are left out)."""
    items = {**_context, **fields}
    parts = [f"{k}={_fmt(v)}" for k, v in items.items() if v is not None]
    sys.stderr.write(" ".join(["supd-child", f"event={event}", *parts]) + "\n")
    sys.stderr.flush()
