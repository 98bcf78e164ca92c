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
- Pins (`supervisord.core.pin`): a `--worktree` task is pinned to the host that accepted
  it, a `--resume` one to the host that ran the task it resumes; only that host claims it
  (the store's claim filter), and `diff` is answered by it (another host names it).

A fate is still the core's: this module only decides *where* a task is (here, or in the
shared queue) and carries out what `supervisord.core.lease` says about leases.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from proto import control as ctl
from proto.task import TaskSpec, TaskState, TaskView
from supervisord.core import fate as core
from supervisord.core import lease, traceids, validate
from supervisord.core.batches import Batch
from supervisord.core.gate import GateState
from supervisord.core.task import Task, view
from supervisord.events import FleetNews, JournalChanged, JournalNotified, LeasesRenewed, WritesFenced
from supervisord.hub import agents, batches, tasks
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log
from supervisord.store.journal import Journal

Envelope = tuple[bytes, ...]

#: how often an idle host looks for due work without a notification (delayed retries)
POLL_S = 1.0
#: ids of tasks recently reported final by another host (a waiter registered late sees them)
RECENT_FINISHED = 10_000
#: a claim that skipped a key another host was claiming for tries again this soon (seconds)
CONTENDED_RETRY_S = 0.02


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
    #: ids of workflows recently reported final by any host's engine (hub.fleetflows)
    flows_finished: OrderedDict[str, None] = field(default_factory=OrderedDict)
    #: when the claim in flight was asked (monotonic), and the last claims' round trips (ms)
    claim_asked_at: float = 0.0
    claim_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    #: attempts here that hold a fleet-wide key: task id -> the attempt's epoch
    key_epochs: dict[str, int] = field(default_factory=dict)
    #: the latest gate closing (monotonic `until`) this host wrote to, or read from, the journal
    gate_shared_until: float = 0.0
    #: the attempts of this host's previous life have been read (hub.fleetrestart)
    recovered: bool = False
    #: when this host next looks whether the fleet's journal is due a prune; a pass is running (hub.fleetprune)
    prune_at: float = 0.0
    pruning: bool = False

    def release_key(self, task_id: str) -> None:
        """The attempt's tree is dead: its fleet-wide key is free (fenced on its epoch)."""
        epoch = self.key_epochs.pop(task_id, None)
        if epoch is not None:
            self.journal.note("release", (task_id, epoch))
            self.journal.note("commit", None)


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
            elif channel == "supd_gate":
                f.journal.ask(lambda s: s.gate(), lambda g, e: _gate_read(h, g) if not e else None)
            elif channel == "supd_finished":
                _remote_final(h, payload)
            elif channel == "supd_cancel" and (task := h.sched.tasks.get(payload)) is not None:
                tasks.decide(h, task, core.CancelRequested())
        case JournalChanged(problem):
            h.store_problem = problem
            if problem is None:
                f.next_poll = 0.0
        case FleetNews(spent, done, gate, periodic):
            for batch_id in spent:
                _budget_spent(h, batch_id)
            for batch in done:
                batches.done(h, batch)
            if periodic:
                _gate_read(h, gate)


def _budget_spent(h: Hub, batch_id: str) -> None:
    """A commit here reached the batch's cost cap: the journal ended its queued Claude tasks;
    the core decides for the ones this host holds (running ones finish)."""
    log("batch_budget_spent", batch=batch_id)
    h.spokes.events.publish(f"batch/{batch_id}/budget", batch=batch_id)
    for other in [t for t in h.sched.tasks.values() if t.trace_id == batch_id]:
        tasks.decide(h, other, core.BudgetSpent(f"batch {batch_id} has spent its --max-cost-usd: not started"))


def _gate_read(h: Hub, gate: tuple[float, str | None] | None) -> None:
    """The fleet's gate as the journal has it: closed here too, until the same time."""
    f = h.fleet
    assert f is not None
    if gate is None:
        return  # open in the journal: ours opens by itself at its own reset
    wait_s, task_id = gate
    now = h.clock.now()
    if h.gate.shared(task_id, wait_s, now, h.clock.wall()) is GateState.CLOSED:
        f.gate_shared_until = h.gate.until
        log("gate", state="closed", task=task_id, resets_at=round(h.gate.until_wall, 3), wait_s=round(wait_s, 3),
            by="fleet")
        h.spokes.events.publish("gate/closed", state="closed", task=task_id, resets_at=h.gate.until_wall,
                                wait_s=wait_s)


def _share_gate(h: Hub, now: float) -> None:
    """A Claude attempt here closed (or moved) the gate: the fleet's row says so too."""
    f = h.fleet
    assert f is not None
    g = h.gate
    if g.state is GateState.CLOSED and g.until > f.gate_shared_until + 1e-3 and g.until > now:
        f.gate_shared_until = g.until
        wait_s, task_id = g.until - now, g.task_id or ""
        f.journal.ask(lambda s: s.close_gate(wait_s, task_id),
                      lambda r, e: log("gate_share_failed", logging.WARNING, error=e) if e else None)


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
    kinds = ["exec"] + (["claude"] if h.breaker.allows(now) and h.gate.allows(now) else [])
    n, host, lease_s, limits = len(idle), f.host, f.lease_s, dict(h.sched.keys.limits)

    def claim(s: Any) -> tuple[list[Task], bool, dict[str, tuple[int, int]]]:
        got = s.claim_next(n, kinds, host, lease_s, limits)
        # a retry's (or a rescued attempt's) transcript goes on where the last attempt, anywhere, left it
        again = [t.id for t in got if t.attempts > 0]
        return got, s.claim_contended, s.transcript_extents(again) if again else {}

    f.claiming = True
    f.claim_asked_at = now
    # The writes of this turn first (the thread keeps order): an end that freed a key or
    # spent a batch's budget is in the journal before the claim reads it.
    h.store.commit()
    f.journal.ask(claim, lambda r, e: _claimed(h, r, e, n))


def _claimed(h: Hub, answer: tuple[list[Task], bool, dict[str, tuple[int, int]]] | None, error: str | None,
             asked: int) -> None:
    f = h.fleet
    assert f is not None
    f.claiming = False
    now = h.clock.now()
    f.claim_ms.append((now - f.claim_asked_at) * 1000)
    got, contended, extents = answer or ([], False, {})
    # A full answer means more may be waiting: claim again at once; a key another host was
    # claiming for, soon; else wait for a notification.
    f.next_poll = now if len(got) == asked and got else now + (CONTENDED_RETRY_S if contended else POLL_S)
    if error:
        log("claim_failed", logging.WARNING, error=error)
    idle = h.pool.idle()
    for task in got:
        if not idle or not h.life.accepting:  # a child went away meanwhile: back to the queue, not counted
            f.journal.ask(lambda s, t=task: s.release(t), lambda r, e: None)
            continue
        task.host = f.host
        h.extents[task.id] = extents.get(task.id, (0, 0))
        h.sched.adopt(task)
        tasks.dispatch(h, idle.pop(0), task, now)
        if task.spec.key is not None:  # held fleet-wide since the claim; here until its tree is dead
            h.sched.hold_key(task)
            f.key_epochs[task.id] = task.epoch


def tick(h: Hub, now: float) -> float | None:
    """Timers of fleet mode: the lease watch (stop our attempts before our leases end when
    no renewal succeeded) and the poll. The next deadline."""
    f = h.fleet
    assert f is not None
    f.journal.children, f.journal.running = h.pool.size, len(h.sched.running())
    f.journal.phase = h.life.phase.value
    _share_gate(h, now)
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


# ---- control verbs for tasks anywhere in the fleet ---------------------------------------------


def _unreachable(h: Hub) -> ctl.Error | None:
    if h.store_problem is not None:
        return ctl.Error(kind="journal", message=f"nothing was accepted: {h.store_problem}")
    return None


def submit(h: Hub, envelope: Envelope, req: ctl.Submit) -> ctl.Reply | None:
    """Accept tasks as one batch into the shared journal, durably, before the reply. A
    `--worktree` task is pinned to this host, a `--resume` one to the host that ran the task
    it resumes (read from the journal first): see `supervisord.core.pin`."""
    if problem := validate.batch_problem(req.tasks, h.config.limits):
        return ctl.Error(kind="bad_request", message=problem)
    resumed = agents.resumed_ids(req.tasks)
    if not resumed:
        return _prepared(h, envelope, req, {})

    def found(olds: dict[str, Task | None] | None, error: str | None) -> None:
        reply = (ctl.Error(kind="journal", message=f"nothing was accepted: {error}") if error or olds is None
                 else _prepared(h, envelope, req, olds))
        if reply is not None:
            h.spokes.control.reply(envelope, reply)

    h.store.commit()  # this host's latest records first (a task that just ended here)
    _journal(h).ask(lambda s: {tid: s.task(tid) for tid in resumed}, found)
    return None


def _prepared(h: Hub, envelope: Envelope, req: ctl.Submit, olds: dict[str, Task | None]) -> ctl.Reply | None:
    specs = agents.prepare(h, req.tasks, olds)
    if isinstance(specs, str):
        return ctl.Error(kind="bad_request", message=specs)
    return _accept(h, envelope, specs, req.traceparent, req.tracestate, req.label, req.max_cost_usd)


def _accept(h: Hub, envelope: Envelope, specs: list[TaskSpec], traceparent: str | None, tracestate: str | None,
            label: str | None, max_cost_usd: float | None) -> ctl.Reply | None:
    if not h.life.accepting:
        return ctl.Error(kind="shutting_down", message="the daemon is shutting down and takes no new tasks")
    if refused := _unreachable(h):
        return refused
    start_ns = h.clock.wall_ns()
    parent = traceids.parse_traceparent(traceparent)
    trace_id = parent.trace_id if parent else h.ids.trace_id(start_ns)
    master = h.ids.span_id()
    wall = h.clock.wall()
    batch = [
        Task(id=h.ids.uuid7(start_ns), spec=spec, submitted_at=wall,
             retries=spec.retries if spec.retries is not None else h.config.tasks.retries,
             trace_id=trace_id, parent_span_id=master, tracestate=tracestate)
        for spec in specs
    ]

    record = Batch(id=trace_id, size=len(batch), submitted_at=wall, label=label, max_cost_usd=max_cost_usd)

    def done(_: object, error: str | None) -> None:
        if error:
            log("batch_refused", logging.ERROR, tasks=len(batch), error=error)
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=f"nothing was accepted: {error}"))
            return
        for task in batch:
            h.metrics.received[task.spec.kind] += 1
            h.spokes.events.publish(f"task/{task.id}/queued", task=task.id, kind=task.spec.kind, trace_id=trace_id)
        log("batch_accepted", tasks=len(batch), trace=trace_id, master_span=master)
        h.spokes.tracer.batch_accepted(trace_id, master, parent.span_id if parent else None, tracestate, batch,
                                       start_ns)
        log("batch_opened", batch=trace_id, tasks=len(batch), label=label, max_cost_usd=max_cost_usd)
        h.spokes.control.reply(envelope, ctl.Accepted(ids=[t.id for t in batch], trace_id=trace_id, batch=trace_id))

    _journal(h).ask(lambda s: s.accept(batch, record), done)
    return None


def retry(h: Hub, envelope: Envelope, req: ctl.Retry) -> ctl.Reply | None:
    """Submit a failed, timed-out or cancelled task of any host again from its stored spec."""
    if refused := _unreachable(h):
        return refused

    def found(old: Task | None, error: str | None) -> None:
        spec = agents.retry_spec_of(req.id, old) if not error else ctl.Error(kind="journal", message=error)
        reply = spec if isinstance(spec, ctl.Error) else _accept(h, envelope, [spec], None, None, None, None)
        if reply is not None:
            h.spokes.control.reply(envelope, reply)

    h.store.commit()  # this host's latest records first
    _journal(h).ask(lambda s: s.task(req.id), found)
    return None


def logs(h: Hub, envelope: Envelope, req: ctl.Logs) -> ctl.Reply | None:
    """A task's transcript from the journal, whichever hosts ran its attempts."""
    budget = h.config.limits.max_message_bytes // 4
    live = h.sched.tasks.get(req.id)

    def job(s: Any) -> tuple[TaskView | None, tuple[list[Any], int]]:
        v = s.get(req.id)
        return v, (s.transcript(req.id, req.after, budget) if v is not None or live else ([], req.after))

    def make(answer: tuple[TaskView | None, tuple[list[Any], int]]) -> ctl.Reply:
        v, (lines, nxt) = answer
        state = live.state.value if live else (v.state if v else None)
        if state is None:
            return ctl.Error(kind="not_found", message=f"no task with id {req.id!r}")
        return ctl.Transcript(id=req.id, lines=lines, first=req.after, next=max(nxt, req.after), state=state,
                              final=TaskState(state).final)

    _read(h, envelope, job, make)
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
    budget, batch_id, label = h.reply_budget, req.batch, req.label

    def job(s: Any) -> list[TaskView]:
        wanted = None
        if batch_id is not None or label is not None:  # a batch's tasks, or those of a label's batches
            wanted = [batch_id] if batch_id is not None else []
            if label is not None:
                labelled = s.batch_ids(label)
                wanted = labelled if batch_id is None else [b for b in wanted if b in labelled]
        return s.list(req.state, req.limit, budget, batches=wanted)  # type: ignore[no-any-return]

    _read(h, envelope, job, lambda vs: ctl.Tasks(tasks=vs))
    return None


def hosts(h: Hub, envelope: Envelope, req: ctl.Hosts) -> ctl.Reply | None:
    """The daemons of the fleet: heartbeat age, children, running tasks."""
    me = h.fleet.host if h.fleet else None
    _read(h, envelope, lambda s: s.hosts(), lambda rows: ctl.Info(data={"host": me, "hosts": rows}))
    return None


def batch(h: Hub, envelope: Envelope, req: ctl.Batch) -> ctl.Reply | None:
    """A batch's summary and its tasks, from the journal (its tally is the fleet's)."""
    budget = h.reply_budget

    def job(s: Any) -> tuple[Batch | None, list[TaskView]]:
        found = s.get_batch(req.id)
        return found, (s.list(None, req.limit, budget, batches=[req.id]) if found else [])

    def make(answer: tuple[Batch | None, list[TaskView]]) -> ctl.Reply:
        found, views = answer
        if found is None:
            return ctl.Error(kind="not_found", message=f"no batch with id {req.id!r} (a batch's id is its trace id)")
        live = {"running": 0, "queued": 0, "blocked": 0}
        for v in views:
            if v.state in live:
                live[v.state] += 1
        rows = [{"id": v.id, "kind": v.kind, "state": v.state, "error": v.error.kind if v.error else None,
                 "cost_usd": v.cost_usd, "duration_s": v.duration_s, "key": v.key, "host": v.host,
                 "prompt": (v.prompt or " ".join(v.argv or []))[:80]} for v in reversed(views)]
        return ctl.Info(data={"batch": found.summary(h.clock.wall(), live), "tasks": rows})

    _read(h, envelope, job, make)
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
        "keys": totals.get("keys", {}),
        # queued tasks pinned to a host that is not live, by host (they wait for it)
        "pinned_waiting": totals.get("pinned_waiting", {}),
    }


def diff(h: Hub, envelope: Envelope, req: ctl.Diff) -> ctl.Reply | None:
    """A worktree task's diff: answered by the host it is pinned to (its repository and
    branch are on that host's disk); another host names that host."""
    def found(task: Task | None, error: str | None) -> None:
        reply = ctl.Error(kind="journal", message=error) if error else agents.diff_of(h, envelope, req, task)
        if reply is not None:
            h.spokes.control.reply(envelope, reply)

    if (live := h.sched.tasks.get(req.id)) is not None:
        return agents.diff_of(h, envelope, req, live)
    h.store.commit()
    _journal(h).ask(lambda s: s.task(req.id), found)
    return None


def _pct(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 3)


HANDLERS: dict[type, Any] = {
    ctl.Submit: submit, ctl.Get: get, ctl.List: list_, ctl.Wait: wait, ctl.Hosts: hosts, ctl.Batch: batch,
    ctl.Retry: retry, ctl.Logs: logs,
    ctl.Diff: lambda h, envelope, req: diff(h, envelope, req),
}
