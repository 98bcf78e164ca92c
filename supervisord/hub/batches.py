"""Batch verbs of the hub: a submit becomes a batch; its tasks' ends are tallied, its cost
cap carried out, and its `on_batch_done` hook run when the last task ends.

Functions of a `Hub` (its open batches are `h.batches`). What a task's end means for its
batch is `supervisord.core.batches`'s; stopping the queued Claude tasks of a batch past
its cap is `fate.BudgetSpent`'s decision: `task_final` returns those events to `tasks`, which
has the core decide them. The hook runs
through the process spoke (off the loop, bounded in time); its failure is logged, never
fatal.
"""

from __future__ import annotations

import json
import logging

from proto import control as ctl
from supervisord.core import fate as core
from supervisord.core.batches import Batch, budget_message
from supervisord.core.task import Task
from supervisord.hub.state import Hub
from supervisord.logs import log

Envelope = tuple[bytes, ...]


def accepted(h: Hub, batch_id: str, n: int, label: str | None, max_cost_usd: float | None) -> Batch:
    """The `Batch` record a submit of `n` tasks makes (to be stored with them). A submit that
    carries the trace of an earlier batch (a client's own traceparent) joins it."""
    found = h.batches.get(batch_id) or h.store.get_batch(batch_id)
    if found is None:
        return Batch(id=batch_id, size=n, submitted_at=h.clock.wall(), label=label, max_cost_usd=max_cost_usd)
    found.size += n
    found.done_at = None
    return found


def opened(h: Hub, batch: Batch) -> None:
    """The batch's tasks are accepted: it is open until the last one ends."""
    h.batches[batch.id] = batch
    h.store.record_batch(batch)
    log("batch_opened", batch=batch.id, tasks=batch.size, label=batch.label, max_cost_usd=batch.max_cost_usd)


def task_final(h: Hub, task: Task) -> list[tuple[Task, core.Event]]:
    """`task` just became final: tally it in its batch; finish the batch when it was the last.
    Returns the events for the batch's other tasks when this end spent its cap (the caller,
    `tasks`, has the core decide them)."""
    batch = h.batches.get(task.trace_id or "")
    if batch is None:
        return []
    stop: list[tuple[Task, core.Event]] = []
    spent, done = batch.task_ended(task, h.clock.wall())
    h.store.record_batch(batch)
    if spent:
        log("batch_budget_spent", batch=batch.id, cost_usd=round(batch.cost_usd, 6), max_cost_usd=batch.max_cost_usd)
        h.spokes.events.publish(f"batch/{batch.id}/budget", batch=batch.id, cost_usd=batch.cost_usd,
                                max_cost_usd=batch.max_cost_usd)
        stop = [(other, core.BudgetSpent(budget_message(batch))) for other in h.sched.tasks.values()
                if other.trace_id == batch.id]
    if done:
        _done(h, batch)
    return stop


def over_budget(h: Hub, task: Task) -> bool:
    """A task back in the queue (a retry) whose batch has spent its cap must not start."""
    batch = h.batches.get(task.trace_id or "")
    return batch is not None and batch.budget_spent


def done(h: Hub, batch: Batch) -> None:
    """Every task of `batch` is final (in a fleet: recorded so by this host): log, publish, run the hook."""
    _done(h, batch)


def _done(h: Hub, batch: Batch) -> None:
    h.batches.pop(batch.id, None)
    summary = batch.summary(h.clock.wall())
    log("batch_done", batch=batch.id, label=batch.label, tasks=batch.size, succeeded=batch.succeeded,
        failed=batch.failed, cancelled=batch.cancelled, cost_usd=round(batch.cost_usd, 6),
        wall_s=summary["wall_s"])
    h.spokes.events.publish(f"batch/{batch.id}/done", **summary)
    argv = list(h.config.hooks.on_batch_done)
    if argv:
        log("hook_started", hook="on_batch_done", batch=batch.id, argv=argv[0])
        h.spokes.procs.run_hook(f"on_batch_done:{batch.id}", argv, json.dumps(summary).encode() + b"\n",
                                h.config.hooks.timeout_s)


def hook_finished(h: Hub, name: str, returncode: int | None, problem: str | None) -> None:
    if problem is None and returncode == 0:
        log("hook_finished", hook=name, returncode=0)
    else:
        log("hook_failed", logging.WARNING, hook=name, returncode=returncode, problem=problem)


def recover(h: Hub) -> None:
    """After a restart: batches with tasks still to run are open again; a batch whose every
    task ended before the old daemon recorded it done is done now (its hook runs: at least once)."""
    live = {t.trace_id for t in h.sched.tasks.values()}
    for batch in h.store.open_batches():
        if batch.id in live:
            h.batches[batch.id] = batch
        else:
            batch.done_at = h.clock.wall()
            h.store.record_batch(batch)
            _done(h, batch)


def live_counts(h: Hub, batch_id: str) -> dict[str, int]:
    counts = {"running": 0, "queued": 0, "blocked": 0}
    for t in h.sched.tasks.values():
        if t.trace_id == batch_id:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
    return counts


def batch(h: Hub, envelope: Envelope, req: ctl.Batch) -> ctl.Reply:
    """A batch's summary (n succeeded / failed / running, wall time, tokens, cost) and its tasks."""
    found = h.batches.get(req.id) or h.store.get_batch(req.id)
    if found is None:
        return ctl.Error(kind="not_found", message=f"no batch with id {req.id!r} (a batch's id is its trace id)")
    views = h.store.list(None, req.limit, h.reply_budget, batches=[req.id])
    live = {t.id: t for t in h.sched.tasks.values() if t.trace_id == req.id}
    rows = [{"id": v.id, "kind": v.kind, "state": live[v.id].state.value if v.id in live else v.state,
             "error": v.error.kind if v.error else None, "cost_usd": v.cost_usd, "duration_s": v.duration_s,
             "key": v.key, "prompt": (v.prompt or " ".join(v.argv or []))[:80]} for v in reversed(views)]
    return ctl.Info(data={"batch": found.summary(h.clock.wall(), live_counts(h, req.id)), "tasks": rows})

