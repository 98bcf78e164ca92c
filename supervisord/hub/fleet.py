"""Fleet mode: the hub of one host among several sharing a PostgreSQL journal.

Functions of a `Hub` whose `fleet` is set (`FleetState` below); with SQLite none of this
runs. What changes from one host:

- The store picks: `pump` asks the journal thread to claim up to one task per idle child
  (`PgStore.claim_next`: `FOR UPDATE SKIP LOCKED`, priority then age, each an attempt
  with an epoch and a lease); the claimed tasks are dispatched like any other. A task
  that goes back to the queue (a retry, a free re-run) is written back and forgotten
  here: any host may run it next. `supd_submit` notifications wake an idle pump at once;
  a slow poll (`POLL_S`) finds delayed retries.
- Leases: `LeasesRenewed` says which attempts are still ours. One we run that is missing
  (rescued by another host), or a group write refused by fencing (`WritesFenced`), costs
  that attempt at once: its child is killed with its tree (`tasks.kill_slot`), and its
  late result is refused. If no renewal succeeded for `lease.stop_at` (the database is
  unreachable from here), the hub stops its own attempts before the lease ends.
- Requests about tasks that are not ours — submit, wait, get, list, cancel, hosts — are
  journal jobs answered when the thread is done (`JournalAnswered`); `supd_finished`
  wakes waiters of tasks that finished on another host; `supd_cancel` and the renewal's
  cancel flags reach the owning host.

A fate is still the core's: this module only decides *where* a task is (here, or in the
shared queue) and carries out what `supervisord.core.lease` says about leases.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from proto import control as ctl
from proto.task import TaskState, TaskView
from supervisord.core import fate as core
from supervisord.core import lease, traceids, validate
from supervisord.core.task import Task, view
from supervisord.events import JournalChanged, JournalNotified, LeasesRenewed, WritesFenced
from supervisord.hub import tasks
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log
from supervisord.store.journal import Journal

Envelope = tuple[bytes, ...]

#: how often an idle host looks for due work without a notification (delayed retries)
POLL_S = 1.0
#: ids of tasks recently reported final by another host (a waiter registered late sees them)
RECENT_FINISHED = 10_000


@dataclass(slots=True)
class FleetState:
    journal: Journal
    host: str
    lease_s: float
    #: monotonic start of the last renewal that succeeded (the lease ends later than that)
    renewed_at: float = 0.0
    #: a claim is in flight (one at a time: its answer says how many children it filled)
    claiming: bool = False
    next_poll: float = 0.0
    #: attempts stopped because their lease is lost, by task id -> epoch (each once)
    stopped: dict[str, int] = field(default_factory=dict)
    recent_finished: OrderedDict[str, None] = field(default_factory=OrderedDict)
    #: when the claim in flight was asked (monotonic), and the last claims' round trips (ms)
    claim_asked_at: float = 0.0
    claim_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


# ---- events from the journal thread -----------------------------------------------------------


def on_event(h: Hub, event: Any) -> None:
    f = h.fleet
    assert f is not None
    match event:
        case LeasesRenewed(started_at, held):
            f.renewed_at = max(f.renewed_at, started_at)
            for task in list(h.sched.tasks.values()):
                if task.state not in (TaskState.RUNNING, TaskState.BLOCKED):
                    continue
                mine = held.get(task.id)
                if mine is None or mine[0] != task.epoch:
                    _lose(h, task, "rescued by another host (its lease ended)")
                elif mine[1] and not task.cancel_requested:
                    tasks.decide(h, task, core.CancelRequested())
        case WritesFenced(refused):
            for task_id, epoch in refused:
                log("store_fenced", logging.WARNING, task=task_id, epoch=epoch, host=f.host)
                task = h.sched.tasks.get(task_id)
                if task is not None:
                    _lose(h, task, "a write for it was refused: the attempt is no longer ours")
        case JournalNotified(channel, payload):
            if channel == "supd_submit":
                f.next_poll = 0.0
            elif channel == "supd_finished":
                _remote_final(h, payload)
            elif channel == "supd_cancel" and (task := h.sched.tasks.get(payload)) is not None:
                tasks.decide(h, task, core.CancelRequested())
        case JournalChanged(problem):
            h.store_problem = problem
            if problem is None:
                f.next_poll = 0.0


def _lose(h: Hub, task: Task, why: str) -> None:
    """This attempt is not ours any more: kill its tree now, and leave the task to its new
    owner (the records that follow are refused by fencing, and that is all they can be)."""
    f = h.fleet
    assert f is not None
    if f.stopped.get(task.id) == task.epoch:
        return
    f.stopped[task.id] = task.epoch
    log("attempt_fenced", logging.WARNING, task=task.id, epoch=task.epoch, state=task.state.value, reason=why)
    slot = h.pool.find(task.child) if task.child else None
    if task.state is TaskState.RUNNING and slot is not None:
        tasks.kill_slot(h, slot, f"{task.id}: {why}", ours=True)  # its exit ends the attempt: Lost, tree killed
    elif task.state is TaskState.BLOCKED:
        h.sched.forget(task)  # its tree is being killed already; the task belongs to another host


def _remote_final(h: Hub, task_id: str) -> None:
    f = h.fleet
    assert f is not None
    f.recent_finished[task_id] = None
    while len(f.recent_finished) > RECENT_FINISHED:
        f.recent_finished.popitem(last=False)
    for waiter in h.waiters.task_final(task_id):
        tasks.answer(h, waiter)


# ---- the pump and the timers --------------------------------------------------------------------


def pump(h: Hub) -> None:
    """Claim up to one task per idle child from the shared queue."""
    f = h.fleet
    assert f is not None
    if not h.life.accepting or f.claiming or h.store_problem is not None:
        return
    now = h.clock.now()
    idle = h.pool.idle()
    if not idle or now < f.next_poll:
        return
    kinds = ["exec"] + (["claude"] if h.breaker.allows(now) else [])
    n, host, lease_s = len(idle), f.host, f.lease_s
    f.claiming = True
    f.claim_asked_at = now
    f.journal.ask(lambda s: s.claim_next(n, kinds, host, lease_s), lambda r, e: _claimed(h, r, e, n))


def _claimed(h: Hub, claimed: list[Task] | None, error: str | None, asked: int) -> None:
    f = h.fleet
    assert f is not None
    f.claiming = False
    now = h.clock.now()
    f.claim_ms.append((now - f.claim_asked_at) * 1000)
    got = claimed or []
    # A full answer means more may be waiting: claim again at once; else wait for a notification.
    f.next_poll = now if len(got) == asked and got else now + POLL_S
    if error:
        log("claim_failed", logging.WARNING, error=error)
    idle = h.pool.idle()
    for task in got:
        if not idle or not h.life.accepting:  # a child went away meanwhile: back to the queue, not counted
            f.journal.ask(lambda s, t=task: s.release(t), lambda r, e: None)
            continue
        task.host = f.host
        h.sched.adopt(task)
        tasks.dispatch(h, idle.pop(0), task, now)


def tick(h: Hub, now: float) -> float | None:
    """Timers of fleet mode: the lease watch (stop our attempts before our leases end when
    no renewal succeeded) and the poll. The next deadline."""
    f = h.fleet
    assert f is not None
    f.journal.children, f.journal.running = h.pool.size, len(h.sched.running())
    f.journal.phase = h.life.phase.value
    stop_at = lease.stop_at(f.renewed_at, f.lease_s)
    live = [t for t in h.sched.tasks.values() if t.state is TaskState.RUNNING]
    if live and now >= stop_at:
        for task in live:
            _lose(h, task, f"no lease renewal for {now - f.renewed_at:.1f}s (lease_s = {f.lease_s:g}): "
                           "stopped before the lease ends")
    deadlines = [f.next_poll] if h.pool.idle() and not f.claiming else []
    if live:
        deadlines.append(stop_at)
    return min(deadlines, default=None)


def recover(h: Hub) -> None:
    """At start: attempts this host owned in a previous life are dead (their children died
    with it); rescue them now instead of waiting for their leases, killing any leftover."""
    f = h.fleet
    assert f is not None
    host = f.host

    def done(rescued: list[Task] | None, error: str | None) -> None:
        if error:
            log("fleet_recover_failed", logging.ERROR, error=error)
            return
        ids = [t.id for t in rescued or []]
        for tid in h.spokes.procs.leftovers(ids) if ids else set():
            h.spokes.procs.terminate_tree(tid, 0, None)
        for t in rescued or []:
            log("task_recovered", task=t.id, state=t.state.value, attempts=t.attempts, host=host)
        if ids:
            log("journal_recovered", tasks=len(ids), host=host)

    f.journal.ask(lambda s: s.rescue(10_000, host=host), done)


# ---- control verbs for tasks anywhere in the fleet ---------------------------------------------


def _unreachable(h: Hub) -> ctl.Error | None:
    if h.store_problem is not None:
        return ctl.Error(kind="journal", message=f"nothing was accepted: {h.store_problem}")
    return None


def submit(h: Hub, envelope: Envelope, req: ctl.Submit) -> ctl.Reply | None:
    """Accept tasks as one batch into the shared journal, durably, before the reply."""
    if problem := validate.batch_problem(req.tasks, h.config.limits):
        return ctl.Error(kind="bad_request", message=problem)
    if not h.life.accepting:
        return ctl.Error(kind="shutting_down", message="the daemon is shutting down and takes no new tasks")
    if refused := _unreachable(h):
        return refused
    start_ns = h.clock.wall_ns()
    parent = traceids.parse_traceparent(req.traceparent)
    trace_id = parent.trace_id if parent else h.ids.trace_id(start_ns)
    master = h.ids.span_id()
    wall = h.clock.wall()
    batch = [
        Task(id=h.ids.uuid7(start_ns), spec=spec, submitted_at=wall,
             retries=spec.retries if spec.retries is not None else h.config.tasks.retries,
             trace_id=trace_id, parent_span_id=master, tracestate=req.tracestate)
        for spec in req.tasks
    ]

    def done(_: object, error: str | None) -> None:
        if error:
            log("batch_refused", logging.ERROR, tasks=len(batch), error=error)
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=f"nothing was accepted: {error}"))
            return
        for task in batch:
            h.metrics.received[task.spec.kind] += 1
            h.spokes.events.publish(f"task/{task.id}/queued", task=task.id, kind=task.spec.kind, trace_id=trace_id)
        log("batch_accepted", tasks=len(batch), trace=trace_id, master_span=master)
        h.spokes.tracer.batch_accepted(trace_id, master, parent.span_id if parent else None, req.tracestate, batch,
                                       start_ns)
        h.spokes.control.reply(envelope, ctl.Accepted(ids=[t.id for t in batch], trace_id=trace_id))

    _journal(h).ask(lambda s: s.accept(batch), done)
    return None


def get(h: Hub, envelope: Envelope, req: ctl.Get) -> ctl.Reply | None:
    """One task, wherever it runs or ran."""
    if (live := h.sched.tasks.get(req.id)) is not None:
        return ctl.Tasks(tasks=[view(live)])
    _read(h, envelope, lambda s: s.get(req.id),
          lambda v: ctl.Tasks(tasks=[v]) if v else ctl.Error(kind="not_found", message=f"no task with id {req.id!r}"))
    return None


def list_(h: Hub, envelope: Envelope, req: ctl.List) -> ctl.Reply | None:
    """The newest tasks of the fleet, optionally only those in one state."""
    if req.state is not None and req.state not in {s.value for s in TaskState}:
        states = ", ".join(s.value for s in TaskState)
        return ctl.Error(kind="bad_request", message=f"unknown state {req.state!r} (one of {states})")
    budget = h.reply_budget
    _read(h, envelope, lambda s: s.list(req.state, req.limit, budget), lambda vs: ctl.Tasks(tasks=vs))
    return None


def hosts(h: Hub, envelope: Envelope, req: ctl.Hosts) -> ctl.Reply | None:
    """The daemons of the fleet: heartbeat age, children, running tasks."""
    me = h.fleet.host if h.fleet else None
    _read(h, envelope, lambda s: s.hosts(), lambda rows: ctl.Info(data={"host": me, "hosts": rows}))
    return None


def cancel(h: Hub, envelope: Envelope, req: ctl.Cancel) -> ctl.Reply | None:
    """Cancel a task: here through its child, or in the journal (its owner kills it)."""
    def answer(v: TaskView | None) -> ctl.Reply:
        if v is None:
            return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
        if v.state == "cancelled":
            return ctl.Ok(message=f"cancelled {v.id}")
        if v.state in ("running", "blocked"):
            return ctl.Ok(message=f"cancelling {v.id} (running on {v.host})")
        return ctl.Error(kind="bad_request", message=f"task {v.id} already finished ({v.state})")

    _read(h, envelope, lambda s: s.cancel(req.id), answer)
    return None


def wait(h: Hub, envelope: Envelope, req: ctl.Wait) -> ctl.Reply | None:
    """Answer when every task is final (woken by `supd_finished` from any host), or after `timeout_s`."""
    ids = list(req.ids)
    deadline = h.clock.now() + max(0.0, min(req.timeout_s, 60.0))

    def found(views: dict[str, TaskView] | None, error: str | None) -> None:
        if error or views is None:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error or "no answer"))
            return
        for tid in ids:
            if tid not in views and tid not in h.sched.tasks:
                h.spokes.control.reply(envelope, ctl.Error(kind="not_found", message=f"no task with id {tid!r}"))
                return
        pending = set()
        for tid in ids:
            live = h.sched.tasks.get(tid)
            state = live.state.value if live else views[tid].state
            if state in ("queued", "blocked", "running") and tid not in _recent(h):
                pending.add(tid)
        waiter = Waiter(envelope, ids, pending, deadline)
        if pending and req.timeout_s > 0:
            h.waiters.add(waiter)
        else:
            answer(h, waiter)

    _journal(h).ask(lambda s: s.views(ids), found)
    return None


def answer(h: Hub, waiter: Waiter) -> None:
    """Answer a waiter with the views of its final tasks, read from the journal (after the
    group commit that recorded ours: jobs run in order)."""
    done = [tid for tid in waiter.ids if tid not in waiter.pending]
    envelope, pending = waiter.envelope, sorted(waiter.pending)

    def reply(views: dict[str, TaskView] | None, error: str | None) -> None:
        if error or views is None:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error or "no answer"))
            return
        final = [views[tid] for tid in done if tid in views]
        fitting, later = tasks.within_budget(final, h.reply_budget)
        h.spokes.control.reply(envelope, ctl.Tasks(tasks=fitting, pending=pending + later))

    h.store.commit()  # our own final records first (the journal thread keeps order)
    _journal(h).ask(lambda s: s.views(done), reply)


def _read(h: Hub, envelope: Envelope, job: Any, make: Any) -> None:
    def done(result: Any, error: str | None) -> None:
        if error:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=error))
        else:
            h.spokes.control.reply(envelope, make(result))

    _journal(h).ask(job, done)


def _journal(h: Hub) -> Journal:
    assert h.fleet is not None
    return h.fleet.journal


def _recent(h: Hub) -> OrderedDict[str, None]:
    assert h.fleet is not None
    return h.fleet.recent_finished


def route(h: Hub, request: ctl.Request) -> Any:
    """The fleet's verb for `request`, or None where the single-host verb does it (a cancel
    of a task that runs here, and every request that is about this daemon only)."""
    if isinstance(request, ctl.Cancel):
        return None if request.id in h.sched.tasks else cancel
    return HANDLERS.get(type(request))


def status(h: Hub) -> dict[str, object]:
    """What `status` and `health` add in a fleet: this host, its leases, the fleet's totals."""
    f = h.fleet
    assert f is not None
    totals = dict(f.journal.totals)
    return {
        "host": f.host, "lease_s": f.lease_s, "journal": h.store_problem or "ok",
        "lease_renewed_s_ago": round(h.clock.now() - f.renewed_at, 3) if f.renewed_at else None,
        "tasks": totals.get("tasks", {}), "hosts": totals.get("hosts", 0),
        "claims": len(f.claim_ms), "claim_ms_p50": _pct(f.claim_ms, 50), "claim_ms_p99": _pct(f.claim_ms, 99),
    }


def _pct(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 3)


HANDLERS: dict[type, Any] = {
    ctl.Submit: submit, ctl.Get: get, ctl.List: list_, ctl.Wait: wait, ctl.Hosts: hosts,
}

