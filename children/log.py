"""The child's log format: one `key=value` line per state change, to stderr.

The child's stderr is the daemon's (journald adds the time). Imports the stdlib only.
"""

from __future__ import annotations

import sys

from supervisord import logfmt

_context: dict[str, object] = {}


def bind(**fields: object) -> None:
    """Fields repeated on every line of this process (slot, pid)."""
    _context.update(fields)


#: Lines that could not be written (a full disk under the log, a closed stderr).
lost_lines = 0


def log(event: str, **fields: object) -> None:
    """Write `supd-child event=EVENT k=v ...` (None values are left out). A line that cannot
    be written is dropped and counted: a full disk under the log must not end a task."""
    global lost_lines
    items = {**_context, **fields}
    try:
        sys.stderr.write(" ".join(["supd-child", f"event={event}", *logfmt.fields(items)]) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        lost_lines += 1
