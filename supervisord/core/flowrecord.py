"""A workflow's record, its events and decisions, and the one place its states change.

Plain msgspec data: the store saves a `Workflow` after every event and decodes it back,
and the decoded record decides exactly as the saved one did (`workflow.decide`). Every
state machine here (the workflow, each step, each job, each undo) is an `enum.Enum` whose
legal moves are in `TRANSITIONS`, and `move` is the one place any state changes.

A job is one task the workflow runs, named by a key the hub carries on the task: `NAME`
(a step), `NAME[i]` (a map item), `NAME:compensate`, `NAME:undo:N` (attempt N).

Pure: imports the stdlib, msgspec, `proto` and the core; no I/O.
"""

from __future__ import annotations

import enum

import msgspec

from proto.task import TaskError, TaskSpec, TaskState
from supervisord.core.flowspec import FlowSpec

__all__ = [
    "SUCCESSFUL",
    "TEMPLATE",
    "TRANSITIONS",
    "Begin",
    "BudgetExceeded",
    "CancelRequested",
    "CancelTask",
    "Decision",
    "Event",
    "FlowState",
    "Job",
    "JobState",
    "Role",
    "StartTask",
    "StepRun",
    "StepState",
    "TaskAccepted",
    "TaskFinished",
    "UndoRun",
    "UndoState",
    "Workflow",
    "WorkflowFinished",
    "WorkflowTransitionError",
    "move",
]


#: error kind of a step whose template could not be filled (a missing JSON field, ...)
TEMPLATE = "template"


class FlowState(enum.Enum):
    RUNNING = "running"
    #: failed or cancelled (`ending` says which): cancelling what runs, then undoing
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (FlowState.RUNNING, FlowState.STOPPING)


class StepState(enum.Enum):
    BLOCKED = "blocked"  # a step it comes after has not succeeded yet
    QUEUED = "queued"  # ready; its jobs wait for room under max_parallel
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"  # failed for good; its compensate task runs
    COMPENSATED = "compensated"  # the compensate's result stands in for the step's
    SKIPPED = "skipped"  # never started: the workflow stopped first
    CANCELLED = "cancelled"  # was running when the workflow stopped
    UNDONE = "undone"
    UNDO_FAILED = "undo_failed"


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"  # a StartTask was decided; the task may not exist yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class UndoState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Role(enum.Enum):
    STEP = "step"
    COMPENSATE = "compensate"
    UNDO = "undo"


F, S, J, U = FlowState, StepState, JobState, UndoState
#: a step in one of these states counts as done for those after it
SUCCESSFUL = frozenset({S.SUCCEEDED, S.COMPENSATED})

#: The only legal moves, for every state machine here; `_move` checks each change against it.
TRANSITIONS: dict[enum.Enum, frozenset[enum.Enum]] = {
    F.RUNNING: frozenset({F.STOPPING, F.SUCCEEDED}),
    F.STOPPING: frozenset({F.FAILED, F.CANCELLED}),
    S.BLOCKED: frozenset({S.QUEUED, S.SKIPPED}),
    # QUEUED -> SUCCEEDED: a map over zero items; QUEUED -> FAILED: a template that cannot be filled
    S.QUEUED: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.SKIPPED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.FAILED: frozenset({S.COMPENSATING}),
    S.COMPENSATING: frozenset({S.COMPENSATED, S.FAILED}),
    S.SUCCEEDED: frozenset({S.UNDONE, S.UNDO_FAILED}),
    J.QUEUED: frozenset({J.RUNNING, J.FAILED, J.SKIPPED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    U.QUEUED: frozenset({U.RUNNING}),
    U.RUNNING: frozenset({U.SUCCEEDED, U.FAILED, U.QUEUED}),  # -> QUEUED: retry
}


class WorkflowTransitionError(Exception):
    pass


class Job(msgspec.Struct, kw_only=True, omit_defaults=True):
    key: str
    step: str
    role: Role = Role.STEP
    #: a map item's 0-based position
    index: int | None = None
    state: JobState = JobState.QUEUED
    task_id: str | None = None
    result: str | None = None
    error: TaskError | None = None
    cost_usd: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    cancel_sent: bool = False


class StepRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    state: StepState = StepState.BLOCKED
    #: a map step's items, fixed when it is queued
    items: list[str] | None = None
    #: its own jobs (one, or one per item), in item order
    jobs: list[str] = []
    compensate_job: str | None = None
    #: jobs of this step not yet succeeded; jobs of this step running (kept by `_move`)
    left: int = 0
    running: int = 0
    result: str | None = None
    item_results: list[str] | None = None
    error: TaskError | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: 1 for the first step to succeed, 2 for the next, ...: undo runs in reverse
    finish_seq: int | None = None


class UndoRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    step: str
    state: UndoState = UndoState.QUEUED
    attempts: int = 0
    jobs: list[str] = []
    error: TaskError | None = None


class Workflow(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    spec: FlowSpec
    inputs: dict[str, str] = {}
    trace_id: str | None = None
    state: FlowState = FlowState.RUNNING
    #: what a stopping workflow ends as
    ending: FlowState | None = None
    error: TaskError | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    cost_usd: float = 0.0
    steps: dict[str, StepRun] = {}
    jobs: dict[str, Job] = {}
    #: queued jobs in start order
    ready: list[str] = []
    #: the rollback plan in the order it runs, once the workflow has stopped and nothing runs
    undo: list[UndoRun] | None = None
    #: jobs running; steps succeeded or compensated; steps finished (all kept by `_move`)
    running: int = 0
    steps_ok: int = 0
    finish_seq: int = 0


# ---- events (what the hub reports) and decisions (what it must do) --------------------

class Begin(msgspec.Struct, tag="begin"):
    """The record is stored: start what can start."""


class TaskAccepted(msgspec.Struct, tag="accepted"):
    """The store accepted the task for `job` (after a `StartTask`)."""

    job: str
    task_id: str


class TaskFinished(msgspec.Struct, tag="finished", kw_only=True):
    """The task for `job` reached a final state (after its own retries)."""

    job: str
    state: TaskState
    result: str | None = None
    cost_usd: float = 0.0
    error: TaskError | None = None


class CancelRequested(msgspec.Struct, tag="cancel"):
    reason: str = "cancelled by request"


class BudgetExceeded(msgspec.Struct, tag="budget"):
    """A budget outside this workflow ran out: fail it with error kind `budget`."""

    message: str


Event = Begin | TaskAccepted | TaskFinished | CancelRequested | BudgetExceeded


class StartTask(msgspec.Struct, tag="start", kw_only=True):
    """Submit `spec` as the task for `job`, once: after a crash, `resume` asks again."""

    job: str
    step: str
    role: Role
    spec: TaskSpec


class CancelTask(msgspec.Struct, tag="cancel", kw_only=True):
    """Cancel the task for `job` (`task_id` None: not accepted yet; find it by the job)."""

    job: str
    task_id: str | None


class WorkflowFinished(msgspec.Struct, tag="done", kw_only=True):
    state: FlowState
    error: TaskError | None


Decision = StartTask | CancelTask | WorkflowFinished


# ---- the one place states change -------------------------------------------------------

def move(wf: Workflow, rec: Workflow | StepRun | Job | UndoRun, to: enum.Enum) -> None:
    old = rec.state
    if to not in TRANSITIONS.get(old, frozenset()):
        raise WorkflowTransitionError(f"workflow {wf.id}: {type(rec).__name__} {old.value} -> {to.value} "
                                      f"is not allowed")
    rec.state = to  # type: ignore[assignment]  # the table keeps each record within its enum
    if isinstance(rec, Job):
        step = wf.steps[rec.step]
        delta = (to is J.RUNNING) - (old is J.RUNNING)
        wf.running += delta
        step.running += delta
        if to is J.SUCCEEDED and rec.role is Role.STEP:
            step.left -= 1
    elif isinstance(rec, StepRun) and to in SUCCESSFUL:
        wf.steps_ok += 1
