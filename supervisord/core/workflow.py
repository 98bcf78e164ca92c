"""A workflow's record and its state machine: (workflow, event, now) -> decisions.

Reactor's semantics, made durable. The `Workflow` record is plain msgspec data: the store
saves it after every event, and a record decoded from the store decides exactly as the
one that was saved (nothing is kept outside it). `decide` is the one function that moves
a workflow; the record and its transition table are in `flowrecord`.

- A step is queued once every step in its `after` has succeeded (or been compensated); a
  map step is then expanded into one job per non-empty line of the mapped step's result.
  Queued jobs start in the order they were queued, at most `max_parallel` at a time.
- A step's job failing for good fails the step (a map step's other items are cancelled);
  its `compensate` runs once they have ended. A workflow that fails or is cancelled stops:
  running jobs are cancelled, steps not started are skipped, and once nothing runs, the
  `undo` of every succeeded step runs, last finished first, one at a time, each retried up
  to `undo_retries` times; a failed undo is recorded and the rollback goes on.
- `max_cost_usd`: a Claude job that would start once the cost of finished jobs has reached
  it fails the workflow with error kind `budget`.

Pure: no I/O, no clock (`now`, wall seconds, is an argument), no randomness. Must not
import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from proto.task import ErrorKind, TaskError, TaskSpec, TaskState
from supervisord.core.flowrecord import (
    SUCCESSFUL,
    TEMPLATE,
    TRANSITIONS,
    Begin,
    BudgetExceeded,
    CancelRequested,
    CancelTask,
    Decision,
    Event,
    FlowState,
    Job,
    JobState,
    Role,
    StartTask,
    StepRun,
    StepState,
    TaskAccepted,
    TaskFinished,
    UndoRun,
    UndoState,
    Workflow,
    WorkflowFinished,
    WorkflowTransitionError,
    move,
)
from supervisord.core.flowspec import FlowSpec, TaskTemplate
from supervisord.core.template import RenderError, Template, render

# the record's names are re-exported: the hub needs only this module
__all__ = [
    "TEMPLATE", "TRANSITIONS", "Begin", "BudgetExceeded", "CancelRequested", "CancelTask", "Decision",
    "Event", "FlowState", "Job", "JobState", "Role", "StartTask", "StepRun", "StepState", "TaskAccepted",
    "TaskFinished", "UndoRun", "UndoState", "Workflow", "WorkflowFinished", "WorkflowTransitionError",
    "decide", "new_workflow", "resume",
]

F, S, J, U = FlowState, StepState, JobState, UndoState


# ---- the state machine -----------------------------------------------------------------

def new_workflow(wf_id: str, spec: FlowSpec, inputs: dict[str, str], now: float,
                 trace_id: str | None = None) -> Workflow:
    """A fresh record: store it, then feed it `Begin`."""
    return Workflow(id=wf_id, spec=spec, inputs=dict(inputs), trace_id=trace_id, started_at=now,
                    steps={name: StepRun() for name in spec.steps})


def decide(wf: Workflow, event: Event, now: float) -> list[Decision]:
    """Apply `event` to `wf` (in place) and return what the hub must do, in order.

    A repeated or stale event (a second `TaskFinished` for a job, one for a job that is not
    running) changes nothing, so the hub may deliver at least once.
    """
    out: list[Decision] = []
    if wf.state.final:
        return out
    match event:
        case Begin():
            _release(wf, list(wf.spec.steps), now)
        case TaskAccepted(job=key, task_id=task_id):
            job = wf.jobs.get(key)
            if job is not None and job.task_id is None:
                job.task_id = task_id
                if job.cancel_sent and job.state is J.RUNNING:  # cancelled before it had an id
                    out.append(CancelTask(job=key, task_id=task_id))
        case TaskFinished():
            _finished(wf, event, now, out)
        case CancelRequested(reason=reason):
            _stop(wf, F.CANCELLED, TaskError(kind=ErrorKind.CANCELLED, message=reason), out)
        case BudgetExceeded(message=message):
            _stop(wf, F.FAILED, TaskError(kind=ErrorKind.BUDGET, message=message), out)
    _pump(wf, now, out)
    if wf.state is F.RUNNING and wf.steps_ok == len(wf.steps):
        move(wf, wf, F.SUCCEEDED)  # RUNNING -> SUCCEEDED
        wf.finished_at = now
        out.append(WorkflowFinished(state=wf.state, error=None))
    _rollback(wf, now, out)
    return out


def resume(wf: Workflow) -> list[Decision]:
    """After a restart, the decisions whose effect the store may not have: tasks decided but
    not accepted (the hub finds each by its job first and submits only those it lacks),
    cancels not yet seen through, and the final answer. Never a start for a finished job."""
    out: list[Decision] = []
    for job in wf.jobs.values():
        if job.state is not J.RUNNING:
            continue
        if job.cancel_sent:
            out.append(CancelTask(job=job.key, task_id=job.task_id))
        elif job.task_id is None:
            out.append(StartTask(job=job.key, step=job.step, role=job.role, spec=_job_spec(wf, job)))
    if wf.state.final:
        out.append(WorkflowFinished(state=wf.state, error=wf.error))
    return out


def _release(wf: Workflow, names: list[str], now: float) -> None:
    """Queue those of `names` whose `after` steps are all done, then their dependents in turn."""
    todo, i = names, 0
    while i < len(todo):
        name, i = todo[i], i + 1
        step, spec = wf.steps[name], wf.spec.steps[name]
        if step.state is not S.BLOCKED or any(wf.steps[a].state not in SUCCESSFUL for a in spec.after):
            continue
        move(wf, step, S.QUEUED)  # BLOCKED -> QUEUED
        if spec.map is None:
            step.jobs = [name]
            wf.jobs[name] = Job(key=name, step=name)
        else:
            source = wf.steps[spec.map].result or ""
            step.items = [line for line in source.splitlines() if line.strip()]
            step.jobs = [f"{name}[{n}]" for n in range(len(step.items))]
            wf.jobs.update((key, Job(key=key, step=name, index=n)) for n, key in enumerate(step.jobs))
            if not step.items:
                _succeed(wf, name, "", [], now)  # QUEUED -> SUCCEEDED (a map over zero items)
                todo = [*todo, *spec.dependents]
                continue
        step.left = len(step.jobs)
        wf.ready += step.jobs


def _pump(wf: Workflow, now: float, out: list[Decision]) -> None:
    """Start queued jobs in order while there is room; stop the workflow on budget."""
    limit, budget = wf.spec.max_parallel, wf.spec.max_cost_usd
    if wf.state is not F.RUNNING:
        return
    if budget is not None and wf.cost_usd >= budget:
        # checked before anything starts, so no exec job is started only to be cancelled
        claude = next((k for k in wf.ready if wf.jobs[k].state is J.QUEUED
                       and wf.spec.steps[wf.jobs[k].step].task.spec.kind == "claude"), None)
        if claude is not None:
            message = (f"cost_usd {wf.cost_usd:g} reached max_cost_usd {budget:g}: "
                       f"step {wf.jobs[claude].step} was not started")
            _stop(wf, F.FAILED, TaskError(kind=ErrorKind.BUDGET, message=message), out)
            return
    taken = 0
    for key in wf.ready:
        if wf.state is not F.RUNNING or (limit is not None and wf.running >= limit):
            break
        job = wf.jobs[key]
        if job.state is J.QUEUED:
            _start(wf, job, now, out)
        taken += 1
    del wf.ready[:taken]


def _start(wf: Workflow, job: Job, now: float, out: list[Decision]) -> bool:
    """Decide the task for a queued `job`; a template that cannot be filled fails the job."""
    try:
        spec = _job_spec(wf, job)
    except RenderError as e:
        move(wf, job, J.FAILED)  # QUEUED -> FAILED (its template)
        job.error, job.finished_at = TaskError(kind=TEMPLATE, message=str(e)), now
        _ended(wf, job, now, out)
        return False
    move(wf, job, J.RUNNING)  # QUEUED -> RUNNING
    job.started_at = now
    step = wf.steps[job.step]
    if job.role is Role.STEP and step.state is S.QUEUED:
        move(wf, step, S.RUNNING)  # QUEUED -> RUNNING (its first job)
        step.started_at = now
    out.append(StartTask(job=job.key, step=job.step, role=job.role, spec=spec))
    return True


def _finished(wf: Workflow, ev: TaskFinished, now: float, out: list[Decision]) -> None:
    job = wf.jobs.get(ev.job)
    if job is None or job.state is not J.RUNNING or not ev.state.final:
        return  # a repeat, not ours, or not an end
    job.result, job.error, job.cost_usd, job.finished_at = ev.result, ev.error, ev.cost_usd, now
    wf.cost_usd += ev.cost_usd
    if ev.state is TaskState.SUCCEEDED:
        move(wf, job, J.SUCCEEDED)  # RUNNING -> SUCCEEDED
    elif ev.state is TaskState.CANCELLED:
        job.error = job.error or TaskError(kind=ErrorKind.CANCELLED, message="task cancelled")
        move(wf, job, J.CANCELLED)  # RUNNING -> CANCELLED
    else:
        job.error = job.error or TaskError(kind=ev.state.value, message=f"task ended {ev.state.value}")
        move(wf, job, J.FAILED)  # RUNNING -> FAILED
    _ended(wf, job, now, out)


def _ended(wf: Workflow, job: Job, now: float, out: list[Decision]) -> None:
    """A job reached a final state: what it means for its step and the workflow."""
    name = job.step
    step, spec = wf.steps[name], wf.spec.steps[name]
    error = job.error or TaskError(kind="failed", message="failed")
    if job.state is J.CANCELLED and not job.cancel_sent:  # someone cancelled the task itself
        _stop(wf, F.CANCELLED, TaskError(kind=ErrorKind.CANCELLED, message=f"step {name}: its task was "
                                         f"cancelled"), out)
    if job.role is Role.UNDO:
        _undo_ended(wf, job)
    elif job.role is Role.COMPENSATE:
        if job.state is J.SUCCEEDED and spec.compensate_continue:
            _succeed(wf, name, job.result or "", None if spec.map is None else [job.result or ""], now)
            if wf.state is F.RUNNING:
                _release(wf, list(spec.dependents), now)
            return
        move(wf, step, S.FAILED)  # COMPENSATING -> FAILED
        if job.state is J.FAILED:
            error = TaskError(kind=error.kind, message=f"step {name}: compensate failed: {error.message}")
        else:
            error = TaskError(kind=step.error.kind, message=f"step {name}: {step.error.message}") \
                if step.error else error
        _stop(wf, F.FAILED, error, out)
    elif job.state is J.SUCCEEDED:
        if step.state is S.RUNNING and step.left == 0:
            results = [wf.jobs[k].result or "" for k in step.jobs]
            if spec.map is None:
                _succeed(wf, name, results[0], None, now)
            else:
                items = [r.removesuffix("\n") for r in results]
                _succeed(wf, name, "\n".join(items), items, now)
            if wf.state is F.RUNNING:
                _release(wf, list(spec.dependents), now)
    elif job.state is J.FAILED and step.state in (S.QUEUED, S.RUNNING):
        _step_failed(wf, job, error, now, out)
    _settle(wf, name, now, out)


def _succeed(wf: Workflow, name: str, result: str, item_results: list[str] | None, now: float) -> None:
    step = wf.steps[name]
    move(wf, step, S.COMPENSATED if step.state is S.COMPENSATING else S.SUCCEEDED)  # -> SUCCEEDED/COMPENSATED
    wf.finish_seq += 1
    step.result, step.item_results, step.finish_seq, step.finished_at = result, item_results, wf.finish_seq, now


def _step_failed(wf: Workflow, job: Job, error: TaskError, now: float, out: list[Decision]) -> None:
    name = job.step
    step, spec = wf.steps[name], wf.spec.steps[name]
    if job.index is not None:
        error = TaskError(kind=error.kind, message=f"item {job.index}: {error.message}")
    move(wf, step, S.FAILED)  # QUEUED/RUNNING -> FAILED
    step.error, step.finished_at = error, now
    for key in step.jobs:
        sibling = wf.jobs[key]
        if sibling.state is J.RUNNING:
            _cancel(sibling, out)
        elif sibling.state is J.QUEUED:
            move(wf, sibling, J.SKIPPED)  # QUEUED -> SKIPPED
    if spec.compensate is None:
        _stop(wf, F.FAILED, TaskError(kind=error.kind, message=f"step {name}: {error.message}"), out)


def _settle(wf: Workflow, name: str, now: float, out: list[Decision]) -> None:
    """Once nothing of step `name` runs: start its compensate, or end it cancelled."""
    step, spec = wf.steps[name], wf.spec.steps[name]
    if step.running:
        return
    if step.state is S.FAILED and spec.compensate is not None and step.compensate_job is None \
            and wf.state is F.RUNNING:
        key = step.compensate_job = f"{name}:compensate"
        job = wf.jobs[key] = Job(key=key, step=name, role=Role.COMPENSATE)
        move(wf, step, S.COMPENSATING)  # FAILED -> COMPENSATING
        _start(wf, job, now, out)
    elif step.state is S.RUNNING and wf.state is F.STOPPING:
        move(wf, step, S.CANCELLED)  # RUNNING -> CANCELLED
        step.finished_at = now


def _cancel(job: Job, out: list[Decision]) -> None:
    if not job.cancel_sent:
        job.cancel_sent = True
        out.append(CancelTask(job=job.key, task_id=job.task_id))


def _stop(wf: Workflow, ending: FlowState, error: TaskError, out: list[Decision]) -> None:
    """Fail or cancel: cancel what runs, skip what has not started (undo waits for quiet)."""
    if wf.state is not F.RUNNING:
        return  # the first reason wins
    move(wf, wf, F.STOPPING)  # RUNNING -> STOPPING
    wf.ending, wf.error = ending, error
    for job in wf.jobs.values():
        if job.state is J.RUNNING:
            _cancel(job, out)
        elif job.state is J.QUEUED:
            move(wf, job, J.SKIPPED)  # QUEUED -> SKIPPED
    wf.ready.clear()
    for step in wf.steps.values():
        if step.state in (S.BLOCKED, S.QUEUED):
            move(wf, step, S.SKIPPED)  # BLOCKED/QUEUED -> SKIPPED
        elif step.state is S.RUNNING and not step.running:
            move(wf, step, S.CANCELLED)  # RUNNING -> CANCELLED (only queued items were left)


def _rollback(wf: Workflow, now: float, out: list[Decision]) -> None:
    """Once a stopping workflow is quiet: its undos, last finished first, one at a time."""
    if wf.state is not F.STOPPING or wf.running:
        return
    if wf.undo is None:
        done = sorted(((s.finish_seq or 0, n) for n, s in wf.steps.items()
                       if s.state is S.SUCCEEDED and wf.spec.steps[n].undo is not None), reverse=True)
        wf.undo = [UndoRun(step=n) for _, n in done]
    for undo in wf.undo:
        if undo.state is U.RUNNING:
            return
        while undo.state is U.QUEUED:
            undo.attempts += 1
            key = f"{undo.step}:undo:{undo.attempts}"
            job = wf.jobs[key] = Job(key=key, step=undo.step, role=Role.UNDO)
            undo.jobs.append(key)
            move(wf, undo, U.RUNNING)  # QUEUED -> RUNNING
            if _start(wf, job, now, out):
                return
    assert wf.ending is not None
    move(wf, wf, wf.ending)  # STOPPING -> FAILED/CANCELLED
    wf.finished_at = now
    out.append(WorkflowFinished(state=wf.state, error=wf.error))


def _undo_ended(wf: Workflow, job: Job) -> None:
    assert wf.undo is not None
    undo = next(u for u in wf.undo if u.step == job.step)
    step = wf.steps[job.step]
    if job.state is J.SUCCEEDED:
        move(wf, undo, U.SUCCEEDED)  # RUNNING -> SUCCEEDED
        move(wf, step, S.UNDONE)  # SUCCEEDED -> UNDONE
    elif job.state is J.FAILED and job.error is not None and job.error.kind != TEMPLATE \
            and undo.attempts <= wf.spec.undo_retries:
        move(wf, undo, U.QUEUED)  # RUNNING -> QUEUED (retry)
    else:  # out of retries, a template that will never fill, or cancelled by hand
        move(wf, undo, U.FAILED)  # RUNNING -> FAILED
        undo.error = job.error
        move(wf, step, S.UNDO_FAILED)  # SUCCEEDED -> UNDO_FAILED


# ---- rendering ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Context:
    """What a job's templates see (satisfies `template.Context`)."""

    wf: Workflow
    item: str | None
    index: int | None

    @property
    def workflow_id(self) -> str:
        return self.wf.id

    def input(self, key: str) -> str | None:
        return self.wf.inputs.get(key)

    def result(self, step: str) -> str | None:
        return self.wf.steps[step].result

    def item_results(self, step: str) -> list[str] | None:
        return self.wf.steps[step].item_results


def _job_spec(wf: Workflow, job: Job) -> TaskSpec:
    """The task for `job`, its templates filled; raises `RenderError` naming the key."""
    spec = wf.spec.steps[job.step]
    tpl = {Role.STEP: spec.task, Role.COMPENSATE: spec.compensate, Role.UNDO: spec.undo}[job.role]
    assert tpl is not None
    items = wf.steps[job.step].items
    ctx = _Context(wf, None if job.index is None or items is None else items[job.index], job.index)
    where = job.step if job.role is Role.STEP else f"{job.step}.{job.role.value}"
    return _render(tpl, ctx, where)


def _render(tpl: TaskTemplate, ctx: _Context, where: str) -> TaskSpec:
    def fill(t: Template, key: str) -> str:
        try:
            return render(t, ctx)
        except RenderError as e:
            raise RenderError(f"steps.{where}.{key}: {e}") from None

    return msgspec.structs.replace(
        tpl.spec,
        prompt=None if tpl.prompt is None else fill(tpl.prompt, "prompt"),
        argv=None if tpl.argv is None else [fill(a, f"argv[{i}]") for i, a in enumerate(tpl.argv)],
        input=None if tpl.input is None else fill(tpl.input, "input"),
        env={k: fill(v, f"env.{k}") for k, v in tpl.env.items()},
    )
