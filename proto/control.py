"""The supctl <-> daemon protocol (ZeroMQ ROUTER in the daemon, DEALER/REQ in supctl).

One request, one reply. Requests are imperative (`Submit`, `Cancel`); every reply is
one of `Accepted`, `Tasks`, `Info`, `Ok` or `Error`. A request that fails to decode
is answered with an `Error` naming the problem; it never reaches the daemon's core.

Imports msgspec and the stdlib only.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proto.task import TaskSpec, TaskView

# ---- requests --------------------------------------------------------------------


class Submit(msgspec.Struct, tag=True, kw_only=True):
    """Accept these tasks as one batch (one master trace). Journaled before `Accepted`."""

    tasks: list[TaskSpec]
    traceparent: str | None = None
    tracestate: str | None = None


class Wait(msgspec.Struct, tag=True, kw_only=True):
    """Answer when every id is final, or after `timeout_s` with the ones still pending."""

    ids: list[str]
    timeout_s: float = 5.0


class Get(msgspec.Struct, tag=True, kw_only=True):
    """One task, from memory or the journal."""

    id: str


class List(msgspec.Struct, tag=True, kw_only=True):
    state: str | None = None
    limit: int = 100


class Cancel(msgspec.Struct, tag=True, kw_only=True):
    id: str


class Status(msgspec.Struct, tag=True, kw_only=True):
    pass


class Stats(msgspec.Struct, tag=True, kw_only=True):
    pass


class Health(msgspec.Struct, tag=True, kw_only=True):
    pass


class Scale(msgspec.Struct, tag=True, kw_only=True):
    children: int


class Reload(msgspec.Struct, tag=True, kw_only=True):
    pass


class Shutdown(msgspec.Struct, tag=True, kw_only=True):
    pass


Request = Submit | Wait | Get | List | Cancel | Status | Stats | Health | Scale | Reload | Shutdown


# ---- replies ---------------------------------------------------------------------


class Accepted(msgspec.Struct, tag=True, kw_only=True):
    ids: list[str]
    trace_id: str


class Tasks(msgspec.Struct, tag=True, kw_only=True):
    """Tasks, at most half of `limits.max_message_bytes` of them. For a `Wait`, `pending` is
    every id not in `tasks`: not final yet, or final but past this reply's size (ask again)."""

    tasks: list[TaskView]
    pending: list[str] = []


class Info(msgspec.Struct, tag=True, kw_only=True):
    """A structured answer (status, stats, health) as a plain mapping."""

    data: dict[str, Any]


class Ok(msgspec.Struct, tag=True, kw_only=True):
    message: str = "ok"


class Error(msgspec.Struct, tag=True, kw_only=True):
    """`kind` is machine-readable (bad_request, not_found, queue_full, limit, ...)."""

    kind: str
    message: str


Reply = Accepted | Tasks | Info | Ok | Error
