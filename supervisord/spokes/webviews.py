"""What each dashboard page shows, and where it comes from: the views' one data-access module.

Owns the mapping from a page to the control requests that feed it (the same verbs
`supctl` sends, through `ask`) and the shaping of their answers into JSON. Pages whose
objects this daemon does not have yet — workflows, labels and keys, stored transcripts,
retry, hosts of a fleet — answer `{"available": false, "reason": …}` here, and only
here: when those requests land in `proto/control.py`, this is the file that learns to
ask for them. Batches are what the daemon has today: one `submit` is one trace, so the
recent tasks grouped by trace id. Must not import other spokes but this one's parts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from proto import control as ctl
from proto.task import TaskState, TaskView
from supervisord.spokes.webfeed import Feed

Ask = Callable[[ctl.Request], Awaitable[ctl.Reply]]

NOT_HERE = "not available on this daemon"
#: Tasks a list page asks for at most (the control protocol's own bound is 10,000).
MAX_ROWS = 500
#: Characters of a result or prompt a list row carries (the task page has all of it).
ROW_TEXT = 200
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BadInput(Exception):
    """A query parameter out of its range: a 400 naming it."""


def unavailable(what: str, later: str) -> dict[str, Any]:
    return {"available": False, "reason": f"{what}: {NOT_HERE}", "later": later}


def row(t: TaskView) -> dict[str, Any]:
    """A task as a list row: the fields, its texts clipped."""
    d: dict[str, Any] = msgspec.to_builtins(t)
    for key in ("result", "stderr", "prompt"):
        if isinstance(d.get(key), str) and len(d[key]) > ROW_TEXT:
            d[key] = d[key][:ROW_TEXT] + "…"
    if d.get("argv"):
        d["argv"] = d["argv"][:20]
    return d


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name}: not an integer: {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadInput(f"{name} = {value}: must be between {low} and {high}")
    return value


def _task_id(request: web.Request) -> str:
    tid = request.match_info["id"]
    if not _ID.match(tid):
        raise BadInput(f"not a task id: {tid[:70]!r}")
    return tid


def _error(reply: ctl.Reply) -> dict[str, Any]:
    if isinstance(reply, ctl.Error):
        return {"ok": False, "error": reply.message, "kind": reply.kind}
    return {"ok": False, "error": f"unexpected answer {type(reply).__name__}"}


class Views:
    def __init__(self, ask: Ask, feed: Feed, wall: Callable[[], float]) -> None:
        self.ask, self.feed, self.wall = ask, feed, wall
        feed.snapshot = self.snapshot

    async def _info(self, request: ctl.Request) -> dict[str, Any]:
        reply = await self.ask(request)
        return reply.data if isinstance(reply, ctl.Info) else _error(reply)

    async def _list(self, state: str | None, limit: int) -> list[TaskView]:
        reply = await self.ask(ctl.List(state=state, limit=limit))
        if isinstance(reply, ctl.Error):
            raise BadInput(reply.message)
        return reply.tasks if isinstance(reply, ctl.Tasks) else []

    async def snapshot(self) -> dict[str, Any]:
        """Status, health, stats and the last hour: what the overview's numbers and charts need."""
        now = self.wall()
        return {"status": await self._info(ctl.Status()), "health": await self._info(ctl.Health()),
                "stats": await self._info(ctl.Stats()), "series": self.feed.series.window(now),
                "hour": self.feed.series.hour(now), "now": now,
                "web": {"clients": len(self.feed.clients), "dropped_clients": self.feed.dropped},
                "gate": unavailable("the rate-limit gate", "the agent-work issue")}

    async def overview(self, request: web.Request) -> dict[str, Any]:
        data = await self.snapshot()
        data["recent"] = [row(t) for t in await self._list(None, 20)]
        return data

    async def tasks(self, request: web.Request) -> dict[str, Any]:
        """Filters: state (the daemon filters), kind and batch (filtered here, over `limit`)."""
        state = request.query.get("state") or None
        if state is not None and state not in {s.value for s in TaskState}:
            raise BadInput(f"state: unknown state {state[:40]!r} (one of {', '.join(s.value for s in TaskState)})")
        kind = request.query.get("kind") or None
        if kind is not None and kind not in ("claude", "exec"):
            raise BadInput(f"kind: {kind[:40]!r} is not claude or exec")
        batch = request.query.get("batch") or None
        limit = _int(request, "limit", 100, 1, MAX_ROWS)
        found = await self._list(state, limit)
        rows = [row(t) for t in found if (kind is None or t.kind == kind) and (batch is None or t.trace_id == batch)]
        out: dict[str, Any] = {"tasks": rows, "limit": limit}
        for name in ("label", "key"):
            if request.query.get(name):
                out[name] = unavailable(f"filtering by {name}", "the agent-work issue")
        return out

    async def task(self, request: web.Request) -> dict[str, Any]:
        tid = _task_id(request)
        reply = await self.ask(ctl.Get(id=tid))
        if not isinstance(reply, ctl.Tasks) or not reply.tasks:
            return _error(reply)
        lines = list(self.feed.transcripts.get(tid, ()))
        return {"ok": True, "task": msgspec.to_builtins(reply.tasks[0]), "transcript": lines,
                "stored_transcript": unavailable("a stored transcript", "the agent-work issue"),
                "diff": unavailable("a worktree diff", "the agent-work issue")}

    async def cancel(self, request: web.Request) -> dict[str, Any]:
        reply = await self.ask(ctl.Cancel(id=_task_id(request)))
        return {"ok": True, "message": reply.message} if isinstance(reply, ctl.Ok) else _error(reply)

    async def retry(self, request: web.Request) -> dict[str, Any]:
        _task_id(request)
        return {"ok": False, **unavailable("retry", "the agent-work issue (`supctl retry`)")}

    async def batches(self, request: web.Request) -> dict[str, Any]:
        """Recent submits: one trace id each, with their tasks' states counted."""
        limit = _int(request, "limit", 500, 1, MAX_ROWS)
        groups: dict[str, dict[str, Any]] = {}
        for t in await self._list(None, limit):
            key = t.trace_id or "-"
            g = groups.setdefault(key, {"trace_id": key, "tasks": 0, "states": {}, "kinds": {},
                                        "submitted_at": t.submitted_at, "cost_usd": 0.0})
            g["tasks"] += 1
            g["states"][t.state] = g["states"].get(t.state, 0) + 1
            g["kinds"][t.kind] = g["kinds"].get(t.kind, 0) + 1
            g["submitted_at"] = min(g["submitted_at"], t.submitted_at)
            g["cost_usd"] += t.cost_usd or 0.0
        return {"batches": sorted(groups.values(), key=lambda g: -g["submitted_at"]), "of_recent_tasks": limit,
                "named_batches": unavailable("named batches and labels", "the agent-work issue")}

    async def workflows(self, request: web.Request) -> dict[str, Any]:
        return unavailable("workflows", "the workflow issue (`supctl flow`)")

    async def workflow(self, request: web.Request) -> dict[str, Any]:
        _task_id(request)
        return unavailable("workflows", "the workflow issue (`supctl flow`)")

    async def hosts(self, request: web.Request) -> dict[str, Any]:
        status = await self._info(ctl.Status())
        this = {"pid": status.get("pid"), "phase": status.get("phase"), "state_dir": status.get("state_dir"),
                "pool": status.get("pool"), "tasks": status.get("tasks")}
        return {"this": this, "fleet": unavailable("a fleet of hosts", "the fleet issue (PostgreSQL store)")}
