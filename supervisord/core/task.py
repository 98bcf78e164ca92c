"""A task's record and the table of its legal moves; the retry rules.

Pure: no I/O, no clock (`now` and `rand` are arguments). `Task.move` is the one place a
task's state changes. Must not import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState, TaskView, WorktreeInfo

#: The only legal transitions; `Task.move` checks every change against this table.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # claimed by a child; cancelled before it ran
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
    # its lost attempt's tree died (or a restart found none); cancelled while it waited
    TaskState.BLOCKED: frozenset({TaskState.QUEUED, TaskState.CANCELLED}),
    # the attempt ended (final, or a retry: QUEUED), or was lost (BLOCKED until its tree is dead)
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED,
                                  TaskState.QUEUED, TaskState.BLOCKED}),
}


class TransitionError(Exception):
    pass


@dataclass(slots=True)
class Task:
    """One accepted task. Wall-clock times are for people; `not_before` is monotonic."""

    id: str
    spec: TaskSpec
    submitted_at: float
    seq: int = 0
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    #: bumped by every claim: a write about an attempt whose epoch is no longer the task's is
    #: refused by the store (fencing)
    epoch: int = 0
    retries: int = 0
    #: attempts that do not count against `retries`: re-runs the daemon itself caused (its
    #: own pause, a shutdown, a message it failed to send)
    forgiven: int = 0
    not_before: float = 0.0
    child: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    outcome: Outcome | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    tracestate: str | None = None
    cancel_requested: bool = False
    #: the host that runs (or last ran) it, in a fleet; None on a single host
    host: str | None = None
    #: the workflow this task belongs to, and its job there (see `flowrecord`)
    workflow: str | None = None
    step: str | None = None

    def move(self, to: TaskState) -> TaskState:
        """Change state through the table; returns the state left."""
        if to not in TRANSITIONS.get(self.state, frozenset()):
            raise TransitionError(f"task {self.id}: {self.state.value} -> {to.value} is not allowed")
        old, self.state = self.state, to
        return old

    @property
    def error(self) -> TaskError | None:
        return self.outcome.error if self.outcome else None


def retry_delay_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    ceiling = min(max_s, base_s * (2.0 ** max(0, attempt - 1)))
    return ceiling * rand


def should_retry(task: Task, outcome: Outcome) -> bool:
    """Retry only failure classes that a new attempt can fix, within the task's budget."""
    if task.cancel_requested or outcome.error is None or task.attempts - task.forgiven > task.retries:
        return False
    kind = outcome.error.kind
    return kind in ErrorKind.RETRYABLE or (kind == ErrorKind.EXIT and task.spec.retry_on_exit)


def view(t: Task) -> TaskView:
    """A task as clients see it. Pure; used for live and journaled tasks alike."""
    o = t.outcome or Outcome()
    duration = (t.finished_at - t.started_at) if (t.finished_at and t.started_at) else None
    return TaskView(
        id=t.id, kind=t.spec.kind, state=t.state.value, attempts=t.attempts, exit_code=o.exit_code,
        result=o.result, error=o.error, child=t.child, trace_id=t.trace_id, span_id=t.span_id,
        parent_span_id=t.parent_span_id, submitted_at=t.submitted_at, started_at=t.started_at,
        finished_at=t.finished_at, duration_s=round(duration, 6) if duration is not None else None,
        priority=t.spec.priority, stderr=o.stderr, truncated=o.truncated, usage=o.usage,
        cost_usd=o.cost_usd, session_id=o.session_id, num_turns=o.num_turns,
        prompt=t.spec.prompt, argv=t.spec.argv, workflow=t.workflow, step=t.step, key=t.spec.key,
        batch=t.trace_id, host=t.host, structured_output=o.structured_output,
        worktree=o.worktree or (WorktreeInfo(repo=t.spec.repo, branch=t.spec.worktree_branch or f"supd/{t.id}")
                                if t.spec.worktree and t.spec.repo else None),
        resumed_from=t.spec.resume, retry_of=t.spec.retry_of, cwd=t.spec.cwd, pin=t.spec.pin,
    )
