"""The `key=value` (logfmt) line format shared by the daemon's and the children's logs.

Stdlib only and no `logging` import, so the child can use it without paying for it.
"""

from __future__ import annotations


def value(v: object) -> str:
    """A value as logfmt wants it: bare when it can be, else quoted and escaped."""
    text = str(v)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def fields(items: dict[str, object]) -> list[str]:
    """`k=v` for each field that is not None, in order."""
    return [f"{k}={value(v)}" for k, v in items.items() if v is not None]
