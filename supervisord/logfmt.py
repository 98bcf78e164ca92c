"""The `key=value` (logfmt) line format shared by the daemon's and the children's logs.

Stdlib only and no `logging` import, so the child can use it without paying for it.
"""

from __future__ import annotations


def value(v: object) -> str:
    """A value as logfmt wants it: bare when it can be, else quoted and escaped."""
    if type(v) is int:  # most values on the hot path (pids, attempts, epochs): never quoted
        return str(v)
    text = str(v)
    # five `in` tests, not a generator over them: this runs for every field of every line
    if text == "" or " " in text or '"' in text or "=" in text or "\n" in text or "\t" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def fields(items: dict[str, object]) -> list[str]:
    """`k=v` for each field that is not None, in order."""
    return [f"{k}={value(v)}" for k, v in items.items() if v is not None]
