"""Workflows in the hub: feed the core's workflow machine its events, carry out its decisions.

Functions of a `Hub` (their state is `h.flows`, a `FlowBook`). The core decides
(`core/workflow.py`); this module only acts:

- `run` (FlowRun): check the file again, `new_workflow`, feed `Begin`, and accept the record
  and its first tasks in ONE durable store transaction before answering.
- `StartTask`: the filled spec is checked again (a filled template can pass a limit); a task
  tagged (workflow, job) is queued and `TaskAccepted` fed at once; a refused spec is fed back
  as the job failing (`template`).
- `turn`: every final task of a workflow (queued by `tasks._final`, after its own retries)
  is fed as `TaskFinished`; after each feed the record is saved with the tasks it started,
  written by the turn's commit in one transaction.
- `CancelTask`: the task is cancelled through the task core (tree kill for a running one);
  one that cannot be found is fed back as cancelled.
- `WorkflowFinished`: the workflow span ends, `flow wait` waiters are answered.
- `recover` (after a restart): `resume(wf)`; a job whose task the store has is never
  submitted again (its end, if it ended, is fed); only missing jobs are submitted.

Spans: one per workflow and one per step (ids derived from the workflow id, so a daemon that
carries on after a crash nests new attempts under the same spans); each attempt's span is
under its step's. Must not be imported by `tasks` (it hands final tasks over through `h.flows`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import msgspec

from proto import control as ctl
from proto.task import TaskError, TaskState
from supervisord.core import fate as core
from supervisord.core import flowspec, traceids, validate, workflow
from supervisord.core.flowstatus import fit_results, public_state, status
from supervisord.core.task import Task
from supervisord.core.workflow import (
    TEMPLATE,
    Begin,
    CancelRequested,
    CancelTask,
    Decision,
    Event,
    JobState,
    Role,
    StartTask,
    StepState,
    TaskAccepted,
    TaskFinished,
    Workflow,
    WorkflowFinished,
)
from supervisord.hub import agents, tasks
from supervisord.hub.state import Hub
from supervisord.hub.waiters import Waiter
from supervisord.logs import log
from supervisord.store.base import StoreError

Envelope = tuple[bytes, ...]

#: The longest a `FlowWait` is held by the daemon (the client asks again for longer waits).
MAX_WAIT_S = 60.0
FLOW_STATES = ("running", "succeeded", "failed", "cancelled")
#: a step's span stays open while the step is in one of these states (or its tasks run)
_ACTIVE = frozenset({StepState.QUEUED, StepState.RUNNING, StepState.COMPENSATING})


@dataclass(slots=True)
class _Batch:
    """What one feed did: tasks it queued (to save with the record), steps it started, the end."""

    tasks: list[Task] = field(default_factory=list)
    steps: set[str] = field(default_factory=set)
    finished: WorkflowFinished | None = None
    #: a new workflow's first tasks: the scheduler gets them only once the workflow is accepted
    #: (they are checked against the queue's limits first, and a refusal leaves nothing behind)
    held: bool = False


# ---- control verbs -----------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    """A checked workflow, fed `Begin`, not yet accepted by the store."""

    wf: Workflow
    batch: _Batch
    before: dict[str, str]
    parent_span: str | None
    start_ns: int


def run(h: Hub, envelope: Envelope, req: ctl.FlowRun) -> ctl.Reply | None:
    """Check a workflow file and accept it atomically (record and first tasks, durable)."""
    ready = prepare(h, req)
    if isinstance(ready, ctl.Error):
        return ready
    try:
        h.store.accept_workflow(ready.wf, ready.batch.tasks)
    except StoreError as e:
        return refused(h, ready, str(e))
    accepted(h, ready)
    h.after_commit.append((envelope, ctl.FlowAccepted(id=ready.wf.id, trace_id=ready.wf.trace_id or "")))
    return None


def prepare(h: Hub, req: ctl.FlowRun) -> Prepared | ctl.Error:
    """Check the file again, make the record and feed it `Begin` (its first tasks decided)."""
    if not h.life.accepting:
        return ctl.Error(kind="shutting_down", message="the daemon is shutting down and takes no new workflows")
    try:
        spec = flowspec.check(req.doc, req.inputs, h.config.limits)
    except flowspec.FlowSpecError as e:
        return ctl.Error(kind="bad_request", message="\n".join(e.problems))
    if spec.max_parallel is None:  # the default: the pool's size when it was submitted
        spec = msgspec.structs.replace(spec, max_parallel=max(1, h.pool.size))
    spec_or_problem = agents.prepare_flow(h, spec)
    if isinstance(spec_or_problem, str):
        return ctl.Error(kind="bad_request", message=spec_or_problem)
    spec = spec_or_problem
    start_ns = h.clock.wall_ns()
    parent = traceids.parse_traceparent(req.traceparent)
    trace_id = parent.trace_id if parent else h.ids.trace_id(start_ns)
    # a fleet's hosts make ids without talking: UUIDv7s there
    wf_id = h.ids.uuid7(start_ns) if h.fleet is not None else h.ids.workflow_id(start_ns)
    wf = workflow.new_workflow(wf_id, spec, dict(req.inputs), h.clock.wall(), trace_id)
    before, batch = _states(wf), _Batch(held=True)
    _feed(h, wf, [Begin()], batch)
    # the queue's limits hold for a workflow's first tasks as for a submit's (its later ones are
    # bounded by its max_parallel); a fleet's queue is the database's
    if h.fleet is None and (problem := h.sched.room_problem(batch.tasks)):
        log("workflow_refused", logging.WARNING, workflow=wf.id, tasks=len(batch.tasks), error=problem)
        return ctl.Error(kind="queue_full", message=f"{problem}: the workflow's first {len(batch.tasks)} tasks"
                                                    " were not accepted")
    return Prepared(wf, batch, before, parent.span_id if parent else None, start_ns)


def refused(h: Hub, ready: Prepared, error: str) -> ctl.Error:
    log("workflow_refused", logging.ERROR, workflow=ready.wf.id, tasks=len(ready.batch.tasks), error=error)
    return ctl.Error(kind="journal", message=f"nothing was accepted: {error}")


def accepted(h: Hub, ready: Prepared) -> None:
    """The store has the record and its first tasks: the workflow is live here."""
    wf, spec = ready.wf, ready.wf.spec
    if h.fleet is None:
        now = h.clock.now()
        for task in ready.batch.tasks:
            h.sched.add(task, now)
    h.flows.live[wf.id] = wf
    log("workflow_accepted", workflow=wf.id, name=spec.name, steps=len(spec.steps), tasks=len(ready.batch.tasks),
        trace=wf.trace_id)
    h.spokes.tracer.flow_span_started(
        f"supd.workflow {spec.name}", wf.trace_id or "", traceids.flow_span_id(wf.id), ready.parent_span,
        ready.start_ns,
        {"supd.workflow.id": wf.id, "supd.workflow.name": spec.name, "supd.workflow.steps": len(spec.steps)})
    _after(h, wf, ready.batch, ready.before)


def status_(h: Hub, envelope: Envelope, req: ctl.FlowStatus) -> ctl.Reply:
    """One workflow: its state, each step's state, tasks and result, and the undo it ran."""
    wf = find(h, req.id)
    if wf is None:
        return ctl.Error(kind="not_found", message=f"no workflow with id {req.id!r}")
    return reply(h, [wf])


def reply(h: Hub, wfs: list[Workflow], pending: list[str] | None = None) -> ctl.Flows:
    """Workflows as `flow status` shows them, their steps' results cut to one reply's budget."""
    views = [view(wf) for wf in wfs]
    fit_results(views, h.reply_budget)
    return ctl.Flows(flows=views, pending=pending or [])


def list_(h: Hub, envelope: Envelope, req: ctl.FlowList) -> ctl.Reply:
    """The newest workflows (optionally in one state), without their results."""
    if req.state is not None and req.state not in FLOW_STATES:
        return ctl.Error(kind="bad_request", message=f"unknown state {req.state!r} (one of {', '.join(FLOW_STATES)})")
    return ctl.Flows(flows=[summary(wf) for wf in h.store.workflows(req.state, req.limit)])


def cancel(h: Hub, envelope: Envelope, req: ctl.FlowCancel) -> ctl.Reply:
    """Stop the running steps (tree kill), skip the rest, then run the undos."""
    wf = h.flows.live.get(req.id)
    if wf is None:
        past = h.store.workflow(req.id)
        if past is None:
            return ctl.Error(kind="not_found", message=f"no workflow with id {req.id!r}")
        return ctl.Error(kind="bad_request", message=f"workflow {req.id} already finished ({public_state(past)})")
    if wf.ending is not None:
        return ctl.Ok(message=f"workflow {wf.id} is already stopping ({wf.ending.value})")
    feed(h, wf, [CancelRequested()])
    return ctl.Ok(message=f"cancelling workflow {wf.id}")


def wait(h: Hub, envelope: Envelope, req: ctl.FlowWait) -> ctl.Reply | None:
    """Answer when every workflow is final, or after `timeout_s` with those still running."""
    for wf_id in req.ids:
        if wf_id not in h.flows.live and h.store.workflow(wf_id) is None:
            return ctl.Error(kind="not_found", message=f"no workflow with id {wf_id!r}")
    live = {wf_id for wf_id in req.ids if wf_id in h.flows.live}
    waiter = Waiter(envelope, list(dict.fromkeys(req.ids)), live,
                    h.clock.now() + max(0.0, min(req.timeout_s, MAX_WAIT_S)))
    if live and req.timeout_s > 0:
        h.flows.waiters.add(waiter)
    else:
        answer(h, waiter)
    return None


def find(h: Hub, wf_id: str) -> Workflow | None:
    return h.flows.live.get(wf_id) or h.store.workflow(wf_id)


def view(wf: Workflow) -> dict[str, object]:
    """`status(wf)`, each step also with its `after` and `map` (supctl draws the tree)."""
    out = status(wf)
    for step in out["steps"]:  # type: ignore[attr-defined]
        spec = wf.spec.steps[step["name"]]
        step["after"], step["map"] = list(spec.after), spec.map
    return out


def summary(wf: Workflow) -> dict[str, object]:
    """A workflow for `flow list`: `flow status` without the steps' results."""
    states = [s.state.value for s in wf.steps.values()]
    return {
        "id": wf.id, "name": wf.spec.name, "state": public_state(wf), "trace_id": wf.trace_id,
        "started_at": wf.started_at, "finished_at": wf.finished_at, "cost_usd": wf.cost_usd,
        "error": None if wf.error is None else {"kind": wf.error.kind, "message": wf.error.message},
        "steps": len(states), "steps_succeeded": sum(s in ("succeeded", "compensated") for s in states),
    }


def answer(h: Hub, waiter: Waiter) -> None:
    """Answer a `FlowWait` (after the commit that saved the final records)."""
    if h.flows.answer_remote is not None:  # a fleet reads the records from the shared journal
        h.flows.answer_remote(waiter)
        return
    done = [wf for wid in waiter.ids if wid not in waiter.pending and (wf := find(h, wid))]
    h.after_commit.append((waiter.envelope, reply(h, done, sorted(waiter.pending))))


# ---- the turn: final tasks fed to their workflows ------------------------------------------


def turn(h: Hub) -> None:
    """Feed each final workflow task to its workflow (cancels this causes are fed in turn);
    answer `FlowWait`s whose time is up."""
    ended = h.flows.ended
    while ended:
        task = ended.popleft()
        wf = h.flows.live.get(task.workflow or "")
        if wf is not None and task.step is not None:
            feed(h, wf, [finished_event(task)])
    for waiter in h.flows.waiters.due(h.clock.now()):
        answer(h, waiter)


def feed(h: Hub, wf: Workflow, events: list[Event]) -> None:
    """Events to one workflow; its decisions carried out; the record saved with its new tasks."""
    before = _states(wf)
    batch = _Batch()
    _feed(h, wf, events, batch)
    h.store.save_workflow(wf, batch.tasks)
    _after(h, wf, batch, before)


def finished_event(task: Task) -> TaskFinished:
    o = task.outcome
    return TaskFinished(job=task.step or "", state=task.state, result=o.result if o else None,
                        cost_usd=(o.cost_usd or 0.0) if o else 0.0, error=task.error)


# ---- carrying out decisions ------------------------------------------------------------------


def _feed(h: Hub, wf: Workflow, events: list[Event], batch: _Batch, decisions: list[Decision] | None = None,
          known: dict[str, Task] | None = None) -> None:
    """Decide each event, carry out each decision; the events decisions lead to (a task
    accepted, a refused task failing) are decided next, in order."""
    queue: deque[Event] = deque(events)
    todo = decisions or []
    while True:
        for d in todo:
            queue.extend(_carry(h, wf, d, batch, known))
        if not queue:
            return
        todo = workflow.decide(wf, queue.popleft(), h.clock.wall())


def _carry(h: Hub, wf: Workflow, d: Decision, batch: _Batch, known: dict[str, Task] | None) -> list[Event]:
    match d:
        case StartTask():
            return _start(h, wf, d, batch, known)
        case CancelTask():
            return _cancel(h, wf, d, batch, known)
        case WorkflowFinished():
            batch.finished = d
    return []


def _start(h: Hub, wf: Workflow, d: StartTask, batch: _Batch, known: dict[str, Task] | None) -> list[Event]:
    """Queue the task for a job, once: after a restart a job the store has is not submitted again."""
    if known is not None and (had := known.get(d.job)) is not None:
        had = h.sched.tasks.get(had.id, had)
        return [TaskAccepted(job=d.job, task_id=had.id), *([finished_event(had)] if had.state.final else [])]
    if problem := validate.task_problem(d.spec, h.config.limits):
        log("workflow_task_refused", logging.WARNING, workflow=wf.id, job=d.job, problem=problem)
        return [TaskFinished(job=d.job, state=TaskState.FAILED,
                             error=TaskError(kind=TEMPLATE, message=f"the filled task is refused: {problem}"))]
    spec = d.spec
    if d.role is Role.STEP and (ref := wf.spec.steps[d.step].resume_step) is not None:
        got = agents.session_of(h, wf, ref, spec)
        if isinstance(got, str):
            log("workflow_task_refused", logging.WARNING, workflow=wf.id, job=d.job, problem=got)
            return [TaskFinished(job=d.job, state=TaskState.FAILED,
                                 error=TaskError(kind=TEMPLATE, message=f"steps.{d.step}.resume_step: {got}"))]
        spec = got
    now_ns = h.clock.wall_ns()
    task = Task(id=h.ids.uuid7(now_ns) if h.fleet is not None else h.ids.task_id(now_ns), spec=spec, submitted_at=h.clock.wall(),
                retries=spec.retries if spec.retries is not None else h.config.tasks.retries,
                trace_id=wf.trace_id, parent_span_id=traceids.flow_span_id(wf.id, d.step),
                workflow=wf.id, step=d.job)
    if h.fleet is None and not batch.held:  # a fleet's step runs on whichever host claims it from the journal
        h.sched.add(task, h.clock.now())
    batch.tasks.append(task)
    if d.role is not Role.UNDO:  # an undo runs after its step's span ended: its attempts go under that id
        batch.steps.add(d.step)
    return [TaskAccepted(job=d.job, task_id=task.id)]


def _cancel(h: Hub, wf: Workflow, d: CancelTask, batch: _Batch, known: dict[str, Task] | None) -> list[Event]:
    """Cancel a job's task through the task core; its end comes back through `turn`."""
    task = h.sched.tasks.get(d.task_id) if d.task_id else None
    if task is None and d.task_id and h.flows.cancel_remote is not None and not any(
            t.id == d.task_id for t in batch.tasks):
        h.flows.cancel_remote(d.task_id)  # a fleet: it runs, or waits, anywhere; its end comes back as any end
        return []
    if task is None:
        if known is None:
            known = h.store.workflow_tasks(wf.id)
        found = next((t for t in batch.tasks if t.step == d.job), None) or known.get(d.job)
        task = h.sched.tasks.get(found.id, found) if found is not None else None
    if task is None:
        return [TaskFinished(job=d.job, state=TaskState.CANCELLED)]  # never submitted
    if task.state.final:
        return [finished_event(task)]
    tasks.decide(h, task, core.CancelRequested())
    return []


# ---- after a feed: queued events, spans, logs, the end ------------------------------------


def _states(wf: Workflow) -> dict[str, str]:
    return {"": wf.state.value, **{name: s.state.value for name, s in wf.steps.items()}}


def _after(h: Hub, wf: Workflow, batch: _Batch, before: dict[str, str]) -> None:
    for name, state in _states(wf).items():
        old = before.get(name)
        if old != state:
            if name:
                log("flow_step", workflow=wf.id, step=name, old=old, new=state)
            else:
                log("flow_state", workflow=wf.id, old=old, new=state,
                    error=wf.error.kind if wf.error else None)
    for task in batch.tasks:
        h.metrics.received[task.spec.kind] += 1
        h.spokes.events.publish(f"task/{task.id}/queued", task=task.id, kind=task.spec.kind, trace_id=task.trace_id,
                                workflow=wf.id, step=task.step)
    _spans(h, wf, batch.steps)
    if batch.finished is not None:
        _finish(h, wf)


def _spans(h: Hub, wf: Workflow, started: set[str]) -> None:
    """Open the span of each step that started; close those whose tasks are all over."""
    tracer, now_ns = h.spokes.tracer, h.clock.wall_ns()
    open_ = h.flows.open_steps.setdefault(wf.id, set())
    for name in sorted(started - open_):
        step = wf.steps[name]
        if step.state in _ACTIVE or step.running:
            open_.add(name)
            tracer.flow_span_started(f"supd.step {name}", wf.trace_id or "", traceids.flow_span_id(wf.id, name),
                                     traceids.flow_span_id(wf.id), now_ns,
                                     {"supd.workflow.id": wf.id, "supd.step": name})
    for name in sorted(open_):
        step = wf.steps[name]
        if not step.running and step.state not in _ACTIVE:
            open_.discard(name)
            tracer.flow_span_ended(traceids.flow_span_id(wf.id, name), step.state.value, now_ns,
                                   step.error.message if step.error else None)


def _finish(h: Hub, wf: Workflow) -> None:
    tracer, now_ns = h.spokes.tracer, h.clock.wall_ns()
    for name in sorted(h.flows.open_steps.pop(wf.id, set())):
        tracer.flow_span_ended(traceids.flow_span_id(wf.id, name), wf.steps[name].state.value, now_ns)
    tracer.flow_span_ended(traceids.flow_span_id(wf.id), wf.state.value, now_ns,
                           wf.error.message if wf.error else None)
    h.flows.live.pop(wf.id, None)
    log("workflow_finished", workflow=wf.id, state=wf.state.value, error=wf.error.kind if wf.error else None,
        cost_usd=round(wf.cost_usd, 6), trace=wf.trace_id)
    h.spokes.events.publish(f"flow/{wf.id}/finished", workflow=wf.id, state=wf.state.value,
                            error=wf.error.kind if wf.error else None)
    for waiter in h.flows.waiters.task_final(wf.id):
        answer(h, waiter)


# ---- recovery ----------------------------------------------------------------------------


def recover(h: Hub) -> None:
    """Carry on with every unfinished workflow (after `tasks.recover`): a job whose task the
    store has is never run again; a task that ended while no daemon listened is fed now."""
    found = h.store.unfinished_workflows()
    for wf in found:
        resume(h, wf, h.store.workflow_tasks(wf.id))
    if found:
        log("workflows_recovered", workflows=len(found))


def resume(h: Hub, wf: Workflow, tasks_by_job: dict[str, Task]) -> None:
    """Carry on with one unfinished workflow whose tasks (by job) the store has: a job with a
    task is never submitted again (its end, if it ended, is fed; one still running is
    adopted and its end comes later); only missing jobs are submitted."""
    h.flows.live[wf.id] = wf
    known = {job: h.sched.tasks.get(t.id, t) for job, t in tasks_by_job.items()}
    events: list[Event] = []
    for job in wf.jobs.values():
        if job.state is not JobState.RUNNING or job.task_id is None:
            continue
        task = known.get(job.key)
        if task is None:
            events.append(TaskFinished(job=job.key, state=TaskState.FAILED, error=TaskError(
                kind="worker_lost", message=f"task {job.task_id} is not in the journal")))
        elif task.state.final:
            events.append(finished_event(task))
    _reopen_spans(h, wf)
    before = _states(wf)
    batch = _Batch()
    _feed(h, wf, events, batch, decisions=workflow.resume(wf), known=known)
    h.store.save_workflow(wf, batch.tasks)
    log("workflow_recovered", workflow=wf.id, state=wf.state.value, jobs=len(wf.jobs), new_tasks=len(batch.tasks),
        fed=len(events), trace=wf.trace_id)
    _after(h, wf, batch, before)


def _reopen_spans(h: Hub, wf: Workflow) -> None:
    """The spans a dead daemon left open, again with the same ids (the new attempts nest there)."""
    tracer = h.spokes.tracer
    tracer.flow_span_started(f"supd.workflow {wf.spec.name}", wf.trace_id or "", traceids.flow_span_id(wf.id),
                             None, int(wf.started_at * 1e9), {"supd.workflow.id": wf.id, "supd.recovered": True})
    open_ = h.flows.open_steps.setdefault(wf.id, set())
    for name, step in wf.steps.items():
        if step.running or step.state in (StepState.RUNNING, StepState.COMPENSATING):
            open_.add(name)
            tracer.flow_span_started(f"supd.step {name}", wf.trace_id or "", traceids.flow_span_id(wf.id, name),
                                     traceids.flow_span_id(wf.id), int((step.started_at or wf.started_at) * 1e9),
                                     {"supd.workflow.id": wf.id, "supd.step": name, "supd.recovered": True})
