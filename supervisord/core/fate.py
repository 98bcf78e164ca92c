"""A task's fate: the one decision of what happens to a task when something happens to it.

Everything that can end, retry or hold an attempt — the child's `Result`, a lost child, a
cancel, a shutdown, a daemon restart, the death of a lost attempt's tree — is an event
here, and `decide(task, event, ctx)` is the only code that turns it into a verdict. It
moves the task through `supervisord.core.task.TRANSITIONS` and returns a `Fate` that says
what the hub must carry out (record the task, kill a tree, ask a child to cancel, put the
task back in the queue, answer waiters). The hub never decides a fate itself.

Pure: no I/O; `now`, the wall clock and `rand` come in through `Context`. Must not import
asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.core.task import Task, retry_delay_s, should_retry

__all__ = [
    "BudgetSpent", "CancelRequested", "Context", "Ended", "Event", "Fate", "Lost", "Recovered", "TreeDead", "Verdict",
    "decide", "start",
]


# ---- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ended:
    """The child's `Result` for attempt `epoch`: the attempt's whole tree is dead."""

    epoch: int
    state: TaskState
    outcome: Outcome
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """Attempt `epoch` can no longer be heard: its child died, went silent, overran its
    deadline, or a message to it could not be sent. Its tree may still be alive.
    `ours`: the daemon's own doing (it was paused, it failed to send): a free re-run."""

    epoch: int
    message: str
    ours: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """A client asked for the task to end."""


@dataclass(frozen=True, slots=True)
class Recovered:
    """A new daemon found the task unfinished in the store. `tree_alive`: processes of a
    previous attempt are still running (the old daemon and its child died together)."""

    tree_alive: bool


@dataclass(frozen=True, slots=True)
class TreeDead:
    """Every process of the task's lost attempt is gone: a new attempt may start, and the
    attempt's exclusive key is free."""


@dataclass(frozen=True, slots=True)
class BudgetSpent:
    """The task's batch has spent its `max_cost_usd`: a Claude task not yet running ends."""

    message: str


Event = Ended | Lost | CancelRequested | Recovered | TreeDead | BudgetSpent


@dataclass(frozen=True, slots=True)
class Context:
    now: float  # monotonic seconds
    wall: float  # time.time(), for people
    rand: float  # in [0, 1), for the retry jitter
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    #: draining or stopping: an attempt stopped now runs again at the next start, for free
    winding_down: bool = False


# ---- verdicts -------------------------------------------------------------------------


class Verdict(enum.Enum):
    IGNORED = "ignored"  # stale (another epoch, or already final): nothing to do
    FINAL = "final"  # the task reached its final state: record, answer waiters
    QUEUED = "queued"  # back in the queue (at `task.not_before`): a retry or a free re-run
    BLOCKED = "blocked"  # waits for its lost attempt's tree to die (then `TreeDead`)
    CANCELLING = "cancelling"  # still running; its child was asked to cancel it


@dataclass(frozen=True, slots=True)
class Fate:
    verdict: Verdict
    reason: str
    #: the state the task left, when it moved
    left: TaskState | None = None
    #: kill the attempt's process tree (it may outlive its child), then send `TreeDead`
    kill_tree: bool = False
    #: ask the child running the task to cancel it
    cancel_child: bool = False
    #: a failed attempt is being retried (counts as a retry in metrics)
    retry: bool = False
    #: the attempt's whole tree is dead: its exclusive key is free (released exactly once:
    #: at its Result, or at TreeDead for a lost attempt, never at the loss itself)
    release_key: bool = False
    #: a recovered attempt's tree is still alive: it holds its key until TreeDead
    hold_key: bool = False

    @property
    def changed(self) -> bool:
        """The store must record the task."""
        return self.verdict is not Verdict.IGNORED


#: Re-runs a task gets after daemon crashes, whatever its `retries`.
RECOVERY_FLOOR = 1

IGNORED_STALE = Fate(Verdict.IGNORED, "stale: not the current attempt")


def start(task: Task, child: str, wall: float) -> None:
    """A queued task becomes attempt `attempts + 1` under `child`, with a new epoch."""
    task.move(TaskState.RUNNING)  # QUEUED -> RUNNING
    task.attempts += 1
    task.epoch += 1
    task.child, task.started_at, task.finished_at = child, wall, None


def decide(task: Task, event: Event, ctx: Context) -> Fate:
    """What `event` means for `task`; moves the task and says what the hub must do."""
    match event:
        case Ended():
            return _ended(task, event, ctx)
        case Lost():
            return _lost(task, event, ctx)
        case CancelRequested():
            return _cancel(task, ctx)
        case Recovered(tree_alive=alive):
            return _recovered(task, alive, ctx)
        case TreeDead():
            if task.state is not TaskState.BLOCKED:
                return Fate(Verdict.IGNORED, "no lost attempt to wait for", release_key=True)
            fate = _move(task, TaskState.QUEUED, Verdict.QUEUED, "the lost attempt's tree is dead")  # BLOCKED -> QUEUED
            return _with(fate, release_key=True)
        case BudgetSpent(message=message):
            return _budget(task, message, ctx)
    raise TypeError(f"not a task event: {event!r}")  # pragma: no cover - the union is closed


def _ended(task: Task, e: Ended, ctx: Context) -> Fate:
    if task.state is not TaskState.RUNNING or e.epoch != task.epoch:
        return IGNORED_STALE
    return _with(_ended_now(task, e, ctx), release_key=True)  # a Result comes once the tree is reaped


def _budget(task: Task, message: str, ctx: Context) -> Fate:
    """Queued (or waiting) Claude tasks of a batch past its cost cap end; running ones finish."""
    if task.spec.kind != "claude" or task.state not in (TaskState.QUEUED, TaskState.BLOCKED):
        return Fate(Verdict.IGNORED, f"{task.state.value} {task.spec.kind} task: the budget stops only queued "
                                     "Claude tasks")
    task.outcome = Outcome(error=TaskError(kind=ErrorKind.BUDGET, message=message))
    return _final(task, TaskState.CANCELLED, ctx, "the batch's budget is spent")  # QUEUED/BLOCKED -> CANCELLED


def _ended_now(task: Task, e: Ended, ctx: Context) -> Fate:
    task.outcome = e.outcome
    if e.started_at:
        task.started_at = e.started_at
    if e.state is TaskState.SUCCEEDED:
        return _final(task, TaskState.SUCCEEDED, ctx, "succeeded", e.finished_at)
    kind = e.outcome.error.kind if e.outcome.error else None
    if task.cancel_requested:  # first reason wins: the user asked for it to end, and it has
        if kind != ErrorKind.CANCELLED:
            task.outcome = _with_error(e.outcome, ErrorKind.CANCELLED, f"cancelled by request ({kind or e.state.value})")
        return _final(task, TaskState.CANCELLED, ctx, "cancelled by request", e.finished_at)
    if kind == ErrorKind.SHUTDOWN and ctx.winding_down:
        task.forgiven += 1
        task.not_before = 0.0
        return _move(task, TaskState.QUEUED, Verdict.QUEUED, "stopped by shutdown: runs at the next start")
    if should_retry(task, e.outcome):
        task.not_before = ctx.now + retry_delay_s(task.attempts, ctx.retry_base_s, ctx.retry_max_s, ctx.rand)
        fate = _move(task, TaskState.QUEUED, Verdict.QUEUED, f"retry after {kind}")  # RUNNING -> QUEUED
        return Fate(fate.verdict, fate.reason, fate.left, retry=True)
    state = e.state if e.state.final else TaskState.FAILED  # a child never reports a live state
    return _final(task, state, ctx, kind or state.value, e.finished_at)


def _lost(task: Task, e: Lost, ctx: Context) -> Fate:
    if task.state is not TaskState.RUNNING or e.epoch != task.epoch:
        return IGNORED_STALE
    if task.cancel_requested:
        task.outcome = Outcome(error=TaskError(kind=ErrorKind.CANCELLED, message=f"cancelled; {e.message}"))
        return _final(task, TaskState.CANCELLED, ctx, "cancelled by request", kill_tree=True)
    if e.ours or ctx.winding_down:
        task.forgiven += 1  # the daemon's doing, not the task's: does not use up a retry
        task.not_before = 0.0
        why = "stopped by shutdown" if ctx.winding_down else "the daemon's own fault"
        return _move(task, TaskState.BLOCKED, Verdict.BLOCKED, f"{why}: {e.message}", kill_tree=True)
    task.outcome = Outcome(error=TaskError(kind=ErrorKind.WORKER_LOST, message=e.message))
    if should_retry(task, task.outcome):
        task.not_before = ctx.now + retry_delay_s(task.attempts, ctx.retry_base_s, ctx.retry_max_s, ctx.rand)
        fate = _move(task, TaskState.BLOCKED, Verdict.BLOCKED, f"retry after worker_lost: {e.message}", kill_tree=True)
        return Fate(fate.verdict, fate.reason, fate.left, kill_tree=True, retry=True)
    return _final(task, TaskState.FAILED, ctx, "worker_lost", kill_tree=True)


def _cancel(task: Task, ctx: Context) -> Fate:
    if task.state.final:
        return Fate(Verdict.IGNORED, f"already {task.state.value}")
    if task.state is TaskState.RUNNING:
        task.cancel_requested = True
        return Fate(Verdict.CANCELLING, "cancel requested", cancel_child=True)
    task.outcome = Outcome(error=TaskError(kind=ErrorKind.CANCELLED, message="cancelled by request"))
    return _final(task, TaskState.CANCELLED, ctx, "cancelled by request")  # QUEUED/BLOCKED -> CANCELLED


def _recovered(task: Task, tree_alive: bool, ctx: Context) -> Fate:
    """A previous daemon stopped with this task unfinished (a crash, or a drain that ran out).
    A running attempt was counted when it was claimed: a task that keeps killing its daemon
    uses up its retries like one that keeps killing its child, then fails `worker_lost`. One
    daemon crash is not proof the task is at fault, so it runs again at least once
    (`RECOVERY_FLOOR`), even with `retries = 0`: a running attempt is at-least-once."""
    if task.cancel_requested:
        task.outcome = Outcome(error=TaskError(kind=ErrorKind.CANCELLED, message="cancelled by request"))
        return _with(_final(task, TaskState.CANCELLED, ctx, "cancelled by request", kill_tree=tree_alive),
                     hold_key=tree_alive)
    if task.state is TaskState.QUEUED:
        return Fate(Verdict.QUEUED, "recovered")
    if task.state is TaskState.RUNNING and task.attempts - task.forgiven > max(task.retries, RECOVERY_FLOOR):
        task.outcome = Outcome(error=TaskError(kind=ErrorKind.WORKER_LOST, message=(
            f"the daemon stopped while attempt {task.attempts} ran, and the task has no retries left")))
        return _with(_final(task, TaskState.FAILED, ctx, "worker_lost (daemon restarts)", kill_tree=tree_alive),
                     hold_key=tree_alive)
    task.child = None
    if tree_alive:
        if task.state is TaskState.BLOCKED:
            return Fate(Verdict.BLOCKED, "recovered: the old attempt's tree is still alive", kill_tree=True,
                        hold_key=True)
        return _with(_move(task, TaskState.BLOCKED, Verdict.BLOCKED, "recovered: the old attempt's tree is still alive",
                           kill_tree=True), hold_key=True)  # RUNNING -> BLOCKED
    return _move(task, TaskState.QUEUED, Verdict.QUEUED, "recovered")  # RUNNING/BLOCKED -> QUEUED


# ---- helpers ----------------------------------------------------------------------------


def _move(task: Task, to: TaskState, verdict: Verdict, reason: str, *, kill_tree: bool = False) -> Fate:
    left = task.move(to)
    if to is not TaskState.RUNNING:
        task.child = None
    return Fate(verdict, reason, left, kill_tree=kill_tree)


def _final(task: Task, state: TaskState, ctx: Context, reason: str, finished_at: float | None = None,
           *, kill_tree: bool = False) -> Fate:
    left = task.move(state)
    task.finished_at = finished_at or ctx.wall
    task.not_before = 0.0
    return Fate(Verdict.FINAL, reason, left, kill_tree=kill_tree)


def _with(fate: Fate, *, release_key: bool = False, hold_key: bool = False) -> Fate:
    # Field by field, not dataclasses.replace (which looks each field up by name: ~10 µs,
    # and this runs for every Result)
    return Fate(fate.verdict, fate.reason, fate.left, fate.kill_tree, fate.cancel_child, fate.retry,
                release_key or fate.release_key, hold_key or fate.hold_key)


def _with_error(outcome: Outcome, kind: str, message: str) -> Outcome:
    return msgspec.structs.replace(outcome, error=TaskError(kind=kind, message=message))
