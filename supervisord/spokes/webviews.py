"""What each dashboard page shows, and where it comes from: the views' one data-access module.

Owns the mapping from a page to the control requests that feed it (the same verbs
`supctl` sends, through `ask`) and the shaping of their answers into JSON: tasks (`List`
with its batch and label filters, `Get`, `Cancel`, `Retry`, `Logs` for a stored
transcript, and `Diff` for a worktree task's diff), batches (`Batch`, the summary `supctl batch` prints, for each batch the
recent tasks name), workflows (`FlowList`, `FlowStatus`, `FlowCancel`), the rate-limit
gate and held keys (in `Status`). Pages whose objects this daemon does not have yet — the
hosts of a fleet — answer `{"available": false, "reason": …}` here, and only here: when
those requests land in `proto/control.py`, this is the file that learns to ask for them.
Must not import other spokes but this one's parts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from proto import control as ctl
from proto.task import TaskState, TaskView
from supervisord.spokes.webfeed import Feed


class Ask(Protocol):
    """How a view asks the hub (`WebServer.ask`): a request, its answer."""

    def __call__(self, request: ctl.Request, timeout_s: float = ...) -> Awaitable[ctl.Reply]: ...


NOT_HERE = "not available on this daemon"
#: Tasks a list page asks for at most (the control protocol's own bound is 10,000).
MAX_ROWS = 500
#: Characters of a result or prompt a list row carries (the task page has all of it).
ROW_TEXT = 200
#: A task page's stored transcript: its last lines, from at most this many `Logs` replies.
STORED_LINES, STORED_ASKS, LINE_CHARS = 2000, 8, 4000
#: How long the task page waits for a diff (the daemon's git thread may have other jobs first).
DIFF_WAIT_S = 20.0
#: Batches the batches page asks the daemon to sum up (one `Batch` request each).
MAX_BATCHES = 50
#: The longest exclusive key (`proto.task.KEY_PATTERN`).
KEY_CHARS = 128
#: The states `FlowList` knows.
FLOW_STATES = ("running", "succeeded", "failed", "cancelled")
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


def _text(request: web.Request, name: str, most: int) -> str | None:
    """An optional text filter: empty is none; longer than `most` characters is a 400."""
    text = request.query.get(name) or None
    if text is not None and len(text) > most:
        raise BadInput(f"{name}: longer than {most} characters")
    return text


def _diff(t: TaskView) -> dict[str, Any]:
    """What a worktree task's branch holds against the commit it started from: its size and
    the command that prints it (the diff's text is `/api/task/ID/diff`, the `Diff` verb)."""
    wt = t.worktree
    if wt is None:
        return {"available": False, "reason": "not a worktree task (submit it with --worktree)"}
    out: dict[str, Any] = {"available": True, **msgspec.to_builtins(wt), "command": f"supctl diff {t.id}"}
    if not wt.base or not wt.head:
        out["pending"] = f"its branch {wt.branch} is committed when the task ends"
    return out


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

    async def _list(self, state: str | None, limit: int, batch: str | None = None,
                    label: str | None = None) -> list[TaskView]:
        reply = await self.ask(ctl.List(state=state, limit=limit, batch=batch, label=label))
        if isinstance(reply, ctl.Error):
            raise BadInput(reply.message)
        return reply.tasks if isinstance(reply, ctl.Tasks) else []

    async def snapshot(self) -> dict[str, Any]:
        """Status, health, stats and the last hour: what the overview's numbers and charts need
        (the rate-limit gate and the held keys are in the status)."""
        now = self.wall()
        status = await self._info(ctl.Status())
        return {"status": status, "health": await self._info(ctl.Health()),
                "stats": await self._info(ctl.Stats()), "series": self.feed.series.window(now),
                "hour": self.feed.series.hour(now), "now": now,
                "web": {"clients": len(self.feed.clients), "dropped_clients": self.feed.dropped},
                "gate": status.get("gate"), "keys": status.get("keys") or {}}

    async def overview(self, request: web.Request) -> dict[str, Any]:
        data = await self.snapshot()
        data["recent"] = [row(t) for t in await self._list(None, 20)]
        return data

    async def tasks(self, request: web.Request) -> dict[str, Any]:
        """Filters: state, batch and label (the daemon filters), kind and key (filtered here,
        over the `limit` newest the daemon answers)."""
        state = request.query.get("state") or None
        if state is not None and state not in {s.value for s in TaskState}:
            raise BadInput(f"state: unknown state {state[:40]!r} (one of {', '.join(s.value for s in TaskState)})")
        kind = request.query.get("kind") or None
        if kind is not None and kind not in ("claude", "exec"):
            raise BadInput(f"kind: {kind[:40]!r} is not claude or exec")
        batch = _text(request, "batch", ctl.MAX_ID_CHARS)
        label = _text(request, "label", ctl.MAX_LABEL_CHARS)
        key = _text(request, "key", KEY_CHARS)
        limit = _int(request, "limit", 100, 1, MAX_ROWS)
        found = await self._list(state, limit, batch=batch, label=label)
        rows = [row(t) for t in found if (kind is None or t.kind == kind) and (key is None or t.key == key)]
        return {"tasks": rows, "limit": limit}

    async def task(self, request: web.Request) -> dict[str, Any]:
        """One task: its fields, its stored transcript (`Logs`, as `supctl logs` reads it;
        the page keeps streaming the live lines after it), the recent live lines, and what
        its worktree left (branch, base and head commits, the diff's size)."""
        tid = _task_id(request)
        reply = await self.ask(ctl.Get(id=tid))
        if not isinstance(reply, ctl.Tasks) or not reply.tasks:
            return _error(reply)
        task = reply.tasks[0]
        out: dict[str, Any] = {"ok": True, "task": msgspec.to_builtins(task), "diff": _diff(task)}
        if request.query.get("transcript") != "0":  # a refresh of the fields alone says 0
            out["transcript"] = list(self.feed.transcripts.get(tid, ()))
            out["stored_transcript"] = await self._stored(tid)
        return out

    async def _stored(self, tid: str) -> dict[str, Any]:
        """The stored transcript, its last `STORED_LINES` lines at most (asked for in as many
        `Logs` replies as it takes, at most `STORED_ASKS`)."""
        lines: list[dict[str, Any]] = []
        after, more = 0, False
        for _ in range(STORED_ASKS):
            reply = await self.ask(ctl.Logs(id=tid, after=after))
            if not isinstance(reply, ctl.Transcript):
                return {"available": False, "reason": _error(reply)["error"]}
            lines.extend({"at": ln.at, "stream": ln.stream, "attempt": ln.attempt, "text": ln.text[:LINE_CHARS]}
                         for ln in reply.lines)
            if reply.next <= after:
                break
            after = reply.next
        else:
            more = True
        return {"available": True, "lines": lines[-STORED_LINES:], "next": after,
                "clipped": more or len(lines) > STORED_LINES}

    async def diff(self, request: web.Request) -> dict[str, Any]:
        """A final worktree task's diff, as `supctl diff` prints it (the `Diff` verb: git runs on
        the daemon's git thread), cut to one reply with a note saying how much was left out."""
        reply = await self.ask(ctl.Diff(id=_task_id(request), stat=request.query.get("stat") == "1"),
                               timeout_s=DIFF_WAIT_S)
        if not isinstance(reply, ctl.DiffText):
            return _error(reply)
        return {"ok": True, "id": reply.id, "branch": reply.branch, "base": reply.base, "head": reply.head,
                "stat": reply.stat, "text": reply.text, "left_out_bytes": reply.left_out_bytes}

    async def cancel(self, request: web.Request) -> dict[str, Any]:
        reply = await self.ask(ctl.Cancel(id=_task_id(request)))
        return {"ok": True, "message": reply.message} if isinstance(reply, ctl.Ok) else _error(reply)

    async def retry(self, request: web.Request) -> dict[str, Any]:
        """`supctl retry`: the task submitted again from its stored spec, as a new task."""
        reply = await self.ask(ctl.Retry(id=_task_id(request)))
        if not isinstance(reply, ctl.Accepted):
            return _error(reply)
        return {"ok": True, "ids": reply.ids, "message": f"retried as {', '.join(reply.ids)}"}

    # ---- batches: the `Batch` verb's summaries, the batches named by the recent tasks --------

    async def batches(self, request: web.Request) -> dict[str, Any]:
        """The newest batches (of the `limit` newest tasks, or of one label's batches), each
        with the daemon's summary (`Batch`, as `supctl batch` shows it)."""
        label = _text(request, "label", ctl.MAX_LABEL_CHARS)
        limit = _int(request, "limit", 500, 1, MAX_ROWS)
        ids: list[str] = []
        for t in await self._list(None, limit, label=label):
            b = t.batch or t.trace_id
            if b and b not in ids and t.workflow is None:
                ids.append(b)
        out: list[dict[str, Any]] = []
        for b in ids[:MAX_BATCHES]:
            reply = await self.ask(ctl.Batch(id=b, limit=1))
            if isinstance(reply, ctl.Info) and isinstance(reply.data.get("batch"), dict):
                out.append(reply.data["batch"])
        out.sort(key=lambda s: -float(s.get("submitted_at") or 0.0))
        return {"batches": out, "of_recent_tasks": limit, "label": label, "more": len(ids) > MAX_BATCHES}

    async def batch(self, request: web.Request) -> dict[str, Any]:
        """One batch: its summary and its tasks (the `Batch` verb)."""
        reply = await self.ask(ctl.Batch(id=_task_id(request), limit=MAX_ROWS))
        if not isinstance(reply, ctl.Info):
            return _error(reply)
        return {"ok": True, **reply.data}

    # ---- workflows: FlowList, FlowStatus, FlowCancel -----------------------------------------

    async def workflows(self, request: web.Request) -> dict[str, Any]:
        state = request.query.get("state") or None
        if state is not None and state not in FLOW_STATES:
            raise BadInput(f"state: unknown workflow state {state[:40]!r} (one of {', '.join(FLOW_STATES)})")
        limit = _int(request, "limit", 100, 1, ctl.MAX_FLOW_IDS)
        reply = await self.ask(ctl.FlowList(state=state, limit=limit))
        if not isinstance(reply, ctl.Flows):
            return _error(reply)
        return {"ok": True, "workflows": reply.flows, "limit": limit}

    async def workflow(self, request: web.Request) -> dict[str, Any]:
        """One workflow as `supctl flow status --json` shows it: steps with their `after`
        (the page draws the DAG), states, tasks, results, and the undo in the order it ran."""
        reply = await self.ask(ctl.FlowStatus(id=_task_id(request)))
        if not isinstance(reply, ctl.Flows) or not reply.flows:
            return _error(reply)
        return {"ok": True, "workflow": reply.flows[0]}

    async def workflow_cancel(self, request: web.Request) -> dict[str, Any]:
        reply = await self.ask(ctl.FlowCancel(id=_task_id(request)))
        return {"ok": True, "message": reply.message} if isinstance(reply, ctl.Ok) else _error(reply)

    async def hosts(self, request: web.Request) -> dict[str, Any]:
        """This daemon (`Status`) and the fleet sharing its journal (`Hosts`, as `supctl hosts`):
        `fleet.host` is None on a single host."""
        status = await self._info(ctl.Status())
        this = {"pid": status.get("pid"), "phase": status.get("phase"), "state_dir": status.get("state_dir"),
                "pool": status.get("pool"), "tasks": status.get("tasks")}
        fleet = await self._info(ctl.Hosts())
        return {"this": this, "fleet": {"host": fleet.get("host"), "hosts": fleet.get("hosts") or [],
                                        "error": fleet.get("error")}}
