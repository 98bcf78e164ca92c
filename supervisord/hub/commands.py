"""The control verbs: one function per request type, each answering exactly once.

Part of the hub (runs inside its loop, owns no state of its own): it reads and
changes the `Daemon`'s state and replies through its control spoke. Each docstring is
what `supctl` users see for that command.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proto import control as ctl
from proto.task import ErrorKind, TaskState
from supervisord import config as config_mod
from supervisord.core import taskenv, traceids, validate
from supervisord.core.breaker import Breaker
from supervisord.core.task import Task
from supervisord.hub import childcare, lifecycle
from supervisord.hub.childcare import policy_of
from supervisord.logs import log
from supervisord.spokes import claude_cli, rlimit
from supervisord.store.journal import JournalError

if TYPE_CHECKING:
    from supervisord.hub.daemon import Daemon

Envelope = tuple[bytes, ...]


@dataclass(slots=True)
class Waiter:
    """A `Wait` request: answered when `pending` empties or at `deadline` (monotonic)."""

    envelope: tuple[bytes, ...]
    ids: list[str]
    pending: set[str]
    deadline: float


MAX_CHILDREN = 1024


def handle(d: Daemon, envelope: Envelope, request: ctl.Request) -> None:
    handler = _HANDLERS[type(request)]
    reply = handler(d, envelope, request)
    if reply is not None:
        d.control.reply(envelope, reply)


def new_task_id(now_ns: int, rand: int) -> str:
    """Sortable and unique: milliseconds since the epoch in hex, then 40 bits that the caller
    makes unique within the daemon (a counter in the high bits, randomness below)."""
    return f"t{now_ns // 1_000_000:011x}{rand & 0xFF_FFFF_FFFF:010x}"


_id_counter = itertools.count(random.getrandbits(20))


def next_task_id(now_ns: int) -> str:
    """A counter (24 bits) makes ids of one daemon unique even within one millisecond; 16 random
    bits keep two daemons' ids (a restart within the same millisecond) apart."""
    return new_task_id(now_ns, ((next(_id_counter) & 0xFF_FFFF) << 16) | random.getrandbits(16))


def submit(d: Daemon, envelope: Envelope, req: ctl.Submit) -> ctl.Reply | None:
    """Accept tasks as one batch; they are journaled before the reply is sent."""
    problem = validate.batch_problem(req.tasks, d.config.limits)
    if problem:
        return ctl.Error(kind="bad_request", message=problem)
    if d.phase.value not in ("starting", "running"):
        return ctl.Error(kind="shutting_down", message="the daemon is shutting down and takes no new tasks")
    if not d.sched.has_room(len(req.tasks)):
        return ctl.Error(kind="queue_full", message=(
            f"queue is full: {d.sched.queued} queued + {len(req.tasks)} new exceeds daemon.max_queued="
            f"{d.sched.max_queued}"))
    start_ns = time.time_ns()
    parent = traceids.parse_traceparent(req.traceparent)
    trace_id = parent.trace_id if parent else traceids.trace_id_at(start_ns, random.getrandbits(64))
    master = traceids.span_id(random.getrandbits(64))
    now, wall = d.clock(), d.wall()
    default_retries = d.config.tasks.retries
    tasks = [
        Task(id=next_task_id(start_ns), spec=spec, submitted_at=wall,
             retries=spec.retries if spec.retries is not None else default_retries,
             trace_id=trace_id, parent_span_id=master, tracestate=req.tracestate)
        for spec in req.tasks
    ]
    try:
        d.journal.accepted(tasks)
    except JournalError as e:
        log("batch_refused", logging.ERROR, tasks=len(tasks), error=str(e))
        return ctl.Error(kind="journal", message=(
            f"cannot journal the batch, so nothing was accepted: {e} (free disk space, or raise journal.max_mb)"))
    for task in tasks:
        d.sched.add(task, now)
        d.metrics.received[task.spec.kind] += 1
    log("batch_accepted", tasks=len(tasks), trace=trace_id, master_span=master)
    d.tracer.batch_accepted(trace_id, master, parent.span_id if parent else None, req.tracestate, tasks, start_ns)
    for task in tasks:
        d.events.publish(f"task/{task.id}/queued", task=task.id, kind=task.spec.kind, trace_id=trace_id)
    d.after_commit.append((envelope, ctl.Accepted(ids=[t.id for t in tasks], trace_id=trace_id)))
    return None


def wait(d: Daemon, envelope: Envelope, req: ctl.Wait) -> ctl.Reply | None:
    """Answer when every task is final, or after `timeout_s` with those still pending."""
    pending: set[str] = set()
    for tid in req.ids:
        if tid in d.sched.tasks:
            pending.add(tid)
        elif d.journal.get(tid) is None:
            return ctl.Error(kind="not_found", message=f"no task with id {tid!r}")
    waiter = Waiter(envelope, list(req.ids), pending, d.clock() + max(0.0, min(req.timeout_s, 60.0)))
    d.waiters.append(waiter)
    if not pending:
        d.answer_waiter(waiter)
    return None


def get(d: Daemon, envelope: Envelope, req: ctl.Get) -> ctl.Reply:
    """One task, live or from the journal (also after a restart)."""
    found = d.task_view(req.id)
    return ctl.Tasks(tasks=[found]) if found else ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")


def within_budget(views: list[ctl.TaskView], budget_bytes: int) -> tuple[list[ctl.TaskView], list[str]]:
    """The views that fit in one reply (at least one), and the ids of those that do not:
    thousands of tasks with megabytes of output each must not become one giant message."""
    fitting: list[ctl.TaskView] = []
    size = 0
    for i, v in enumerate(views):
        cost = len(v.result or "") + len(v.stderr or "") + len(v.prompt or "") + 1024
        if fitting and size + cost > budget_bytes:
            return fitting, [rest.id for rest in views[i:]]
        fitting.append(v)
        size += cost
    return fitting, []


def reply_budget(d: Daemon) -> int:
    """Half the message-size limit: what one reply may carry, with room for the envelope."""
    return d.config.limits.max_message_bytes // 2


def list_(d: Daemon, envelope: Envelope, req: ctl.List) -> ctl.Reply:
    """The newest tasks, optionally only those in one state."""
    if req.state is not None and req.state not in {s.value for s in TaskState}:
        states = ", ".join(s.value for s in TaskState)
        return ctl.Error(kind="bad_request", message=f"unknown state {req.state!r} (one of {states})")
    if req.limit < 1:
        return ctl.Error(kind="bad_request", message=f"limit must be >= 1, got {req.limit}")
    views, _ = within_budget(d.journal.list(req.state, min(req.limit, 10_000)), reply_budget(d))
    return ctl.Tasks(tasks=views)  # the newest first; fewer than asked when their outputs are large


def cancel(d: Daemon, envelope: Envelope, req: ctl.Cancel) -> ctl.Reply:
    """Cancel a queued task at once, or a running one through its child's kill escalation."""
    task = d.sched.tasks.get(req.id)
    if task is None:
        past = d.journal.get(req.id)
        if past is None:
            return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
        return ctl.Error(kind="bad_request", message=f"task {req.id} already finished ({past.state})")
    if task.state is TaskState.QUEUED:
        d.sched.cancel_queued(task, d.wall())
        d.journal.saved(task)
        d.metrics.finish(task.spec.kind, task.state.value, ErrorKind.CANCELLED, None)
        log("task_finished", task=task.id, state=task.state.value, error=ErrorKind.CANCELLED)
        d.task_done(task)
        return ctl.Ok(message=f"cancelled {task.id}")
    task.cancel_requested = True
    from proto import children as cp

    d.transport.send(task.child or "", cp.Cancel(task_id=task.id, reason="cancelled"))
    log("task_cancelling", task=task.id, child=task.child)
    return ctl.Ok(message=f"cancelling {task.id} (running on {task.child})")


def status(d: Daemon, envelope: Envelope, req: ctl.Status) -> ctl.Reply:
    """The daemon, its children and its queue."""
    return ctl.Info(data=status_data(d))


def status_data(d: Daemon) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "phase": d.phase.value,
        "uptime_s": round(d.clock() - d.started_mono, 3),
        "state_dir": str(d.paths.state_dir),
        "control": d.paths.control,
        "claude": {"command": d.claude.argv, "source": d.claude.source},
        "children": [
            {"slot": s.name, "id": s.identity, "pid": s.pid, "state": s.state.value, "task": s.task_id,
             "tasks_done": s.tasks_done, "rss_bytes": s.rss_bytes, "fatal_reason": s.fatal_reason}
            for s in d.pool.slots
        ],
        "pool": {"size": d.pool.size, **d.pool.counts()},
        "tasks": {"queued": d.sched.queued, "running": len(d.sched.running())},
        "breaker": breaker_data(d.breaker),
    }


def breaker_data(b: Breaker) -> dict[str, object]:
    return {"state": b.state.value, "failures": b.failures}


def stats(d: Daemon, envelope: Envelope, req: ctl.Stats) -> ctl.Reply:
    """Counters since start: tasks by kind/state/error, latency percentiles, tokens, cost."""
    data = d.metrics.snapshot()
    data["queue_depth"] = d.sched.queued
    data["active_tasks"] = len(d.sched.running())
    data["breaker"] = breaker_data(d.breaker)
    return ctl.Info(data=data)


def health_data(d: Daemon) -> dict[str, object]:
    counts = d.pool.counts()
    ready = counts["idle"] + counts["busy"]
    fatal = counts["fatal"]
    ok = d.phase.value == "running" and ready > 0 and fatal == 0 and d.breaker.state.value == "closed"
    return {
        "status": "ok" if ok else ("failing" if ready == 0 and d.pool.size > 0 else "degraded"),
        "phase": d.phase.value,
        "children": {"ready": ready, "total": d.pool.size, "fatal": fatal},
        "breaker": breaker_data(d.breaker),
        "queue": {"queued": d.sched.queued, "running": len(d.sched.running()), "max": d.sched.max_queued},
        "success_rate": d.metrics.success_rate(),
    }


def health(d: Daemon, envelope: Envelope, req: ctl.Health) -> ctl.Reply:
    """ok / degraded / failing, with the reasons in the numbers."""
    return ctl.Info(data=health_data(d))


def scale(d: Daemon, envelope: Envelope, req: ctl.Scale) -> ctl.Reply:
    """Change the pool size live; busy children leave after their task."""
    if not 0 <= req.children <= MAX_CHILDREN:
        return ctl.Error(kind="bad_request", message=f"children must be between 0 and {MAX_CHILDREN}, got {req.children}")
    if problem := rlimit.ensure(req.children):
        return ctl.Error(kind="limit", message=problem)
    apply_size(d, req.children)
    return ctl.Ok(message=f"scaled to {req.children} children")


def apply_size(d: Daemon, n: int) -> None:
    now = d.clock()
    for due in d.pool.resize(n, now):
        childcare.stop(d, due.slot, now, due.reason)
    log("pool_scaled", children=n)


def reload(d: Daemon, envelope: Envelope | None = None, req: ctl.Reload | None = None) -> ctl.Reply:
    """Re-read the config file and apply it; an invalid file is refused and the old config kept."""
    if d.config_path is None:
        return ctl.Ok(message="no config file: nothing to reload")
    d.notifier.reloading()
    try:
        new = config_mod.load(d.config_path)
    except config_mod.ConfigError as e:
        log("reload_refused", error=str(e))
        d.notifier.ready()
        return ctl.Error(kind="config", message=str(e))
    if problem := rlimit.ensure(new.daemon.children):
        log("reload_refused", error=problem)
        d.notifier.ready()
        return ctl.Error(kind="limit", message=problem)
    d.config = new
    d.pool.policy = policy_of(new)
    d.sched.max_queued = new.daemon.max_queued
    d.breaker.threshold, d.breaker.open_s = new.breaker.threshold, new.breaker.open_s
    d.claude = claude_cli.resolve(new.claude.command, d.environ.get("PATH"))
    d.child_env = taskenv.child_environ(d.environ, frozenset(new.security.pass_env))  # for children spawned from now
    apply_size(d, new.daemon.children)  # the file wins over --children and earlier `scale`s
    d.notifier.ready()
    log("reloaded", config=d.config_path, children=d.pool.size)
    return ctl.Ok(message=f"reloaded {d.config_path}")


def shutdown(d: Daemon, envelope: Envelope, req: ctl.Shutdown) -> ctl.Reply:
    """Stop taking work, let running tasks finish (up to daemon.drain_s), stop, exit 0."""
    lifecycle.begin_drain(d, "shutdown request")
    return ctl.Ok(message="shutting down")


_HANDLERS: dict[type, Callable[..., ctl.Reply | None]] = {
    ctl.Submit: submit, ctl.Wait: wait, ctl.Get: get, ctl.List: list_, ctl.Cancel: cancel,
    ctl.Status: status, ctl.Stats: stats, ctl.Health: health, ctl.Scale: scale,
    ctl.Reload: reload, ctl.Shutdown: shutdown,
    ctl.Prune: lambda d, e, r: _unsupported(r), ctl.RestartSlot: lambda d, e, r: _unsupported(r),
}


def _unsupported(req: ctl.Request) -> ctl.Reply:
    """Placeholder until the hub carries out these verbs: a known request is never a crash."""
    return ctl.Error(kind="unsupported", message=f"{type(req).__name__} is not supported by this daemon yet")
