"""The control verbs: one function per request type, each answering exactly once.

Functions of a `Hub` (no state of their own): each reads and changes the hub's pieces
through their methods and answers through the control spoke. A request that raises is
answered with an `internal` error and logged; it never takes the daemon down. Each
docstring is what `supctl` users see for that command.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable

from proto import control as ctl
from proto.task import TaskSpec, TaskState
from supervisord import config as config_mod
from supervisord.core import fate as core
from supervisord.core import taskenv, traceids, validate
from supervisord.core.pool import ChildState, Slot, policy_of
from supervisord.core.task import Task
from supervisord.hub import agents, batches, childcare, flows, lifecycle, ratelimit, tasks
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log
from supervisord.spokes import claude_cli, rlimit
from supervisord.store.base import StoreError

Envelope = tuple[bytes, ...]

#: Rows the store's `prune` deletes per call (~25 ms on this machine's disk: bench/store.py).
PRUNE_CHUNK = 500
#: Chunks a `Prune` request runs at once (the rest a chunk per turn, in the background).
PRUNE_NOW_CHUNKS = 4
#: The longest a `Wait` is held by the daemon (the client asks again for longer waits).
MAX_WAIT_S = 60.0


def handle(h: Hub, envelope: Envelope, request: ctl.Request) -> None:
    handler = _HANDLERS[type(request)]
    if h.fleet is not None:
        from supervisord.hub import fleet, fleetflows, fleetprune

        handler = (fleet.route(h, request) or fleetflows.HANDLERS.get(type(request))
                   or fleetprune.HANDLERS.get(type(request)) or handler)
    try:
        reply = handler(h, envelope, request)
    except Exception as e:  # noqa: BLE001 (a bug must cost one request, never the daemon)
        log("request_failed", logging.ERROR, request=type(request).__name__, error=repr(e),
            traceback=traceback.format_exc(limit=8).replace("\n", " | "))
        reply = ctl.Error(kind="internal", message=f"{type(request).__name__} failed inside supd: {e!r} (see its log)")
    if reply is not None:
        h.spokes.control.reply(envelope, reply)


def submit(h: Hub, envelope: Envelope, req: ctl.Submit) -> ctl.Reply | None:
    """Accept tasks as one batch; they are in the store, durably, before the reply is sent."""
    problem = validate.batch_problem(req.tasks, h.config.limits)
    if problem:
        return ctl.Error(kind="bad_request", message=problem)
    specs = agents.prepare(h, req.tasks)
    if isinstance(specs, str):
        return ctl.Error(kind="bad_request", message=specs)
    return accept(h, envelope, specs, req.traceparent, req.tracestate, req.label, req.max_cost_usd)


def accept(h: Hub, envelope: Envelope, specs: list[TaskSpec], traceparent: str | None, tracestate: str | None,
           label: str | None = None, max_cost_usd: float | None = None) -> ctl.Reply | None:
    """Accept checked specs as one batch (after the store's commit, `Accepted`)."""
    if not h.life.accepting:
        return ctl.Error(kind="shutting_down", message="the daemon is shutting down and takes no new tasks")
    start_ns = h.clock.wall_ns()
    parent = traceids.parse_traceparent(traceparent)
    trace_id = parent.trace_id if parent else h.ids.trace_id(start_ns)
    master = h.ids.span_id()
    wall = h.clock.wall()
    default_retries = h.config.tasks.retries
    batch = [
        Task(id=h.ids.task_id(start_ns), spec=spec, submitted_at=wall,
             retries=spec.retries if spec.retries is not None else default_retries,
             trace_id=trace_id, parent_span_id=master, tracestate=tracestate)
        for spec in specs
    ]
    if problem := h.sched.room_problem(batch):
        return ctl.Error(kind="queue_full", message=problem)
    record = batches.accepted(h, trace_id, len(batch), label, max_cost_usd)
    try:
        h.store.accept(batch, record)
    except StoreError as e:
        log("batch_refused", logging.ERROR, tasks=len(batch), error=str(e))
        return ctl.Error(kind="journal", message=f"nothing was accepted: {e}")
    now = h.clock.now()
    for task in batch:
        h.sched.add(task, now)
        h.metrics.received[task.spec.kind] += 1
    batches.opened(h, record)
    log("batch_accepted", tasks=len(batch), trace=trace_id, master_span=master)
    h.spokes.tracer.batch_accepted(trace_id, master, parent.span_id if parent else None, tracestate, batch,
                                   start_ns)
    for task in batch:
        h.spokes.events.publish(f"task/{task.id}/queued", task=task.id, kind=task.spec.kind, trace_id=trace_id)
    h.after_commit.append((envelope, ctl.Accepted(ids=[t.id for t in batch], trace_id=trace_id, batch=trace_id)))
    return None


def retry(h: Hub, envelope: Envelope, req: ctl.Retry) -> ctl.Reply | None:
    """Submit a failed, timed-out or cancelled task again from its stored spec (a new task)."""
    spec = agents.retry_spec(h, req.id)
    if isinstance(spec, ctl.Error):
        return spec
    return accept(h, envelope, [spec], None, None)


def wait(h: Hub, envelope: Envelope, req: ctl.Wait) -> ctl.Reply | None:
    """Answer when every task is final, or after `timeout_s` (0: at once) with those still pending."""
    live = {tid for tid in req.ids if tid in h.sched.tasks}
    known = h.store.known([tid for tid in req.ids if tid not in live])
    for tid in req.ids:
        if tid not in live and tid not in known:
            return ctl.Error(kind="not_found", message=f"no task with id {tid!r}")
    waiter = Waiter(envelope, list(req.ids), live, h.clock.now() + max(0.0, min(req.timeout_s, MAX_WAIT_S)),
                    room=h.reply_budget)
    if live and req.timeout_s > 0:
        h.waiters.add(waiter)
    else:
        tasks.answer(h, waiter)
    return None


def get(h: Hub, envelope: Envelope, req: ctl.Get) -> ctl.Reply:
    """One task, live or from the store (also after a restart)."""
    found = tasks.task_view(h, req.id)
    return ctl.Tasks(tasks=[found]) if found else ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")


def list_(h: Hub, envelope: Envelope, req: ctl.List) -> ctl.Reply:
    """The newest tasks, optionally only those in one state, of one batch or of one label's batches."""
    if req.state is not None and req.state not in {s.value for s in TaskState}:
        states = ", ".join(s.value for s in TaskState)
        return ctl.Error(kind="bad_request", message=f"unknown state {req.state!r} (one of {states})")
    if not 1 <= req.limit <= 10_000:
        return ctl.Error(kind="bad_request", message=f"limit must be between 1 and 10000, got {req.limit}")
    wanted: list[str] | None = None
    if req.batch is not None or req.label is not None:
        wanted = [req.batch] if req.batch is not None else []
        if req.label is not None:
            labelled = h.store.batch_ids(req.label)
            wanted = labelled if req.batch is None else [b for b in wanted if b in labelled]
    # the newest first; fewer than asked when their outputs are large
    return ctl.Tasks(tasks=h.store.list(req.state, req.limit, h.reply_budget, batches=wanted))


def cancel(h: Hub, envelope: Envelope, req: ctl.Cancel) -> ctl.Reply:
    """Cancel a queued task at once, or a running one through its child's kill escalation."""
    task = h.sched.tasks.get(req.id)
    if task is None:
        past = h.store.get(req.id)
        if past is None:
            return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
        return ctl.Error(kind="bad_request", message=f"task {req.id} already finished ({past.state})")
    fate = tasks.decide(h, task, core.CancelRequested())
    if fate.verdict is core.Verdict.CANCELLING:
        return ctl.Ok(message=f"cancelling {task.id} (running on {task.child})")
    return ctl.Ok(message=f"cancelled {task.id}")


def status(h: Hub, envelope: Envelope, req: ctl.Status) -> ctl.Reply:
    """The daemon, its children and its queue."""
    return ctl.Info(data=status_data(h))


def status_data(h: Hub) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "phase": h.life.phase.value,
        "uptime_s": round(h.clock.now() - h.started_at, 3),
        "state_dir": str(h.paths.state_dir),
        "control": h.paths.control,
        "claude": {"command": h.claude.argv, "source": h.claude.source},
        "children": [_slot_data(h, s) for s in h.pool.workers()],
        "spares": [_slot_data(h, s) for s in h.pool.spares()],
        "pool": {"size": h.pool.size, **h.pool.counts()},
        "tasks": {"queued": h.sched.queued, "running": len(h.sched.running()),
                  "blocked": h.sched.count(TaskState.BLOCKED), "orphan_trees": len(h.orphans)},
        "breaker": breaker_data(h),
        "gate": ratelimit.data(h),
        "keys": keys_data(h),
        "batches": {"open": len(h.batches)},
        "journal": {"pending_writes": h.store.pending, "write_errors": h.store.write_errors,
                    "problem": h.store_problem},
        **_fleet(h),
    }


def _fleet(h: Hub) -> dict[str, object]:
    if h.fleet is None:
        return {}
    from supervisord.hub import fleet

    return {"fleet": fleet.status(h)}


def keys_data(h: Hub) -> dict[str, object]:
    """Each key held or waited for: its limit, its holders and how many tasks wait for it."""
    waiting = h.sched.key_waiters()
    keys = h.sched.keys
    return {key: {"limit": keys.limit(key), "held_by": sorted(keys.held.get(key, ())), "waiting": waiting.get(key, 0)}
            for key in sorted(set(keys.held) | set(waiting))}


def breaker_data(h: Hub) -> dict[str, object]:
    return {"state": h.breaker.state.value, "failures": h.breaker.failures}


def stats(h: Hub, envelope: Envelope, req: ctl.Stats) -> ctl.Reply:
    """Counters since start: tasks by kind/state/error, latency percentiles, tokens, cost."""
    return ctl.Info(data=stats_data(h))


def stats_data(h: Hub) -> dict[str, object]:
    data = h.metrics.snapshot()
    data["queue_depth"] = h.sched.queued
    data["active_tasks"] = len(h.sched.running())
    data["breaker"] = breaker_data(h)
    data["journal_write_errors"] = h.store.write_errors
    data["dropped_child_frames"] = h.spokes.children.dropped
    return data


def _slot_data(h: Hub, s: Slot) -> dict[str, object]:
    return {"slot": s.name, "id": s.identity, "pid": s.pid, "state": s.state.value, "task": s.task_id,
            "tasks_done": s.tasks_done, "rss_bytes": s.rss_bytes, "fatal_reason": s.fatal_reason,
            "retry_in_s": round(max(0.0, s.fatal_at + h.pool.policy.period_s - h.clock.now()), 3)
            if s.fatal_reason and s.state is ChildState.FATAL else None}


def health_data(h: Hub) -> dict[str, object]:
    counts = h.pool.counts()
    ready = counts["idle"] + counts["busy"]
    fatal = counts["fatal"]
    spares = h.pool.spare_counts()
    ok = (h.life.phase.value == "running" and ready > 0 and fatal == 0 and spares["fatal"] == 0
          and h.breaker.state.value == "closed"
          and h.store_problem is None and h.gate.allows(h.clock.now()))
    return {
        "status": "ok" if ok else ("failing" if (ready == 0 and h.pool.size > 0) or h.store_problem else "degraded"),
        "phase": h.life.phase.value,
        "children": {"ready": ready, "total": h.pool.size, "fatal": fatal},
        "spares": spares,
        "breaker": breaker_data(h),
        "gate": ratelimit.data(h),
        "queue": {"queued": h.sched.queued, "running": len(h.sched.running()), "max": h.sched.max_queued},
        "journal": h.store_problem or "ok",
        "success_rate": h.metrics.success_rate(),
        **_fleet(h),
    }


def health(h: Hub, envelope: Envelope, req: ctl.Health) -> ctl.Reply:
    """ok / degraded / failing, with the reasons in the numbers."""
    return ctl.Info(data=health_data(h))


def scale(h: Hub, envelope: Envelope, req: ctl.Scale) -> ctl.Reply:
    """Change the pool size live; busy children leave after their task."""
    if problem := rlimit.ensure(req.children, h.config.daemon.spares):
        return ctl.Error(kind="limit", message=problem)
    apply_size(h, req.children)
    return ctl.Ok(message=f"scaled to {req.children} children")


def apply_size(h: Hub, n: int) -> None:
    for due in h.pool.resize(n, h.clock.now()):
        childcare.stop(h, due.slot, due.reason)
    log("pool_scaled", children=n)


def reload(h: Hub, envelope: Envelope | None = None, req: ctl.Reload | None = None) -> ctl.Reply:
    """Re-read the config file and apply it; an invalid file is refused and the old config kept."""
    if h.config_path is None:
        return ctl.Ok(message="no config file: nothing to reload")
    h.spokes.notifier.reloading()
    try:
        new = config_mod.load(h.config_path)
    except config_mod.ConfigError as e:
        log("reload_refused", error=str(e))
        h.spokes.notifier.ready()
        return ctl.Error(kind="config", message=str(e))
    problem = rlimit.ensure(new.daemon.children, new.daemon.spares)
    if changed := config_mod.restart_required(h.config, new):
        problem = f"{', '.join(changed)} changed: applied only by a restart (nothing was reloaded)"
    if problem:
        log("reload_refused", error=problem)
        h.spokes.notifier.ready()
        return ctl.Error(kind="config" if changed else "limit", message=problem)
    h.config = new
    h.pool.policy = policy_of(new)
    h.sched.max_queued, h.sched.max_queued_bytes = new.daemon.max_queued, new.daemon.max_queued_bytes
    h.breaker.threshold, h.breaker.open_s = new.breaker.threshold, new.breaker.open_s
    h.gate.max_s = new.gate.max_s
    h.sched.keys.limits = new.keys  # a raised limit lets waiters in as holders end
    h.claude = claude_cli.resolve(new.claude.command, h.environ.get("PATH"))
    h.child_env = taskenv.child_environ(h.environ, frozenset(new.security.pass_env))  # children spawned from now
    apply_size(h, new.daemon.children)  # the file wins over --children and earlier `scale`s
    childcare.ping(h)  # running children learn the new liveness settings now
    h.spokes.notifier.ready()
    log("reloaded", config=h.config_path, children=h.pool.size)
    return ctl.Ok(message=f"reloaded {h.config_path}")


def prune(h: Hub, envelope: Envelope, req: ctl.Prune) -> ctl.Reply:
    """Delete finished tasks older than --older-than (default: journal.retain_s) from the store."""
    older_than_s = req.older_than_s if req.older_than_s is not None else h.config.journal.retain_s
    if not older_than_s:
        return ctl.Ok(message="journal.retain_s = 0 keeps every task; give --older-than")
    before, n = h.clock.wall() - older_than_s, 0
    for _ in range(PRUNE_NOW_CHUNKS):
        got = h.store.prune(before, PRUNE_CHUNK)
        agents.after_prune(h, req.force)
        n += got
        if got < PRUNE_CHUNK:
            break
    else:
        h.prune_before = before  # the rest a chunk per turn, never a long stall
    log("journal_pruned", tasks=n, older_than_s=older_than_s, reason="request", more=h.prune_before is not None)
    more = " (more are being pruned in the background)" if h.prune_before is not None else ""
    return ctl.Ok(message=f"pruned {n} finished tasks older than {older_than_s:g}s{more}")


def restart_slot(h: Hub, envelope: Envelope, req: ctl.RestartSlot) -> ctl.Reply:
    """Give a FATAL child slot (e.g. w03) another chance now, its crash history forgotten."""
    problem = childcare.restart_slot(h, req.slot)
    return ctl.Error(kind="bad_request", message=problem) if problem else ctl.Ok(message=f"restarting {req.slot}")


def shutdown(h: Hub, envelope: Envelope, req: ctl.Shutdown) -> ctl.Reply:
    """Stop taking work, let running tasks finish (up to daemon.drain_s), stop, exit 0."""
    lifecycle.begin_drain(h, "shutdown request")
    return ctl.Ok(message="shutting down")


_HANDLERS: dict[type, Callable[..., ctl.Reply | None]] = {
    ctl.Submit: submit, ctl.Wait: wait, ctl.Get: get, ctl.List: list_, ctl.Cancel: cancel,
    ctl.Status: status, ctl.Stats: stats, ctl.Health: health, ctl.Scale: scale,
    ctl.Reload: reload, ctl.Shutdown: shutdown, ctl.Prune: prune, ctl.RestartSlot: restart_slot,
    ctl.Retry: retry, ctl.Logs: agents.logs, ctl.Diff: agents.diff,
    ctl.Hosts: lambda h, envelope, req: ctl.Info(data={"host": None, "hosts": []}),  # one host: no fleet
    ctl.FlowRun: flows.run, ctl.FlowStatus: flows.status_, ctl.FlowList: flows.list_, ctl.FlowCancel: flows.cancel,
    ctl.FlowWait: flows.wait,
    ctl.Batch: batches.batch,
}
