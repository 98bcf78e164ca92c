"""A task's fate, as a table: every event in every state, with the outcome written out by hand.

Each row starts from a task in a given state (running attempt 1, epoch 1, unless said) and
feeds one event; the expected columns are what a reader of the issue would expect, not
derived from `supervisord.core.task.TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState
from supervisord.core import fate
from supervisord.core.fate import CancelRequested, Context, Ended, Lost, Recovered, TreeDead, Verdict
from supervisord.core.task import Task, TransitionError

pytestmark = pytest.mark.timeout(10)

Q, B, R = TaskState.QUEUED, TaskState.BLOCKED, TaskState.RUNNING
OK, FAILED, TIMED_OUT, CANCELLED = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED


def err(kind: str) -> Outcome:
    return Outcome(error=TaskError(kind=kind, message=kind))


@dataclass
class Row:
    name: str
    state: TaskState
    event: fate.Event
    verdict: Verdict
    after: TaskState
    kill_tree: bool = False
    cancel_child: bool = False
    retry: bool = False
    error: str | None = None
    forgiven: int = 0
    task: dict[str, Any] = field(default_factory=dict)
    winding_down: bool = False


ROWS = [
    # --- the child's Result --------------------------------------------------------------
    Row("success", R, Ended(1, OK, Outcome(exit_code=0, result="hi")), Verdict.FINAL, OK),
    Row("exit failure, no retry on exit", R, Ended(1, FAILED, err(ErrorKind.EXIT)), Verdict.FINAL, FAILED,
        error=ErrorKind.EXIT, task={"retries": 3}),
    Row("exit failure, retry_on_exit", R, Ended(1, FAILED, err(ErrorKind.EXIT)), Verdict.QUEUED, Q, retry=True,
        error=ErrorKind.EXIT, task={"retries": 1, "spec": TaskSpec(kind="exec", argv=["x"], retry_on_exit=True)}),
    Row("retryable, budget left", R, Ended(1, FAILED, err(ErrorKind.OVERLOADED)), Verdict.QUEUED, Q, retry=True,
        error=ErrorKind.OVERLOADED, task={"retries": 1}),
    Row("retryable, budget used up", R, Ended(1, FAILED, err(ErrorKind.OVERLOADED)), Verdict.FINAL, FAILED,
        error=ErrorKind.OVERLOADED, task={"retries": 1, "attempts": 2}),
    Row("retryable, forgiven attempts do not count", R, Ended(1, FAILED, err(ErrorKind.OVERLOADED)), Verdict.QUEUED,
        Q, retry=True, error=ErrorKind.OVERLOADED, forgiven=1, task={"retries": 1, "attempts": 2, "forgiven": 1}),
    Row("auth is never retried", R, Ended(1, FAILED, err(ErrorKind.AUTH)), Verdict.FINAL, FAILED,
        error=ErrorKind.AUTH, task={"retries": 5}),
    Row("timeout is final", R, Ended(1, TIMED_OUT, err(ErrorKind.TIMEOUT)), Verdict.FINAL, TIMED_OUT,
        error=ErrorKind.TIMEOUT, task={"retries": 5}),
    Row("stale epoch", R, Ended(1, OK, Outcome()), Verdict.IGNORED, R, task={"epoch": 2}),
    Row("result for a task no longer running", Q, Ended(1, OK, Outcome()), Verdict.IGNORED, Q),
    Row("cancel requested, then it failed", R, Ended(1, FAILED, err(ErrorKind.EXIT)), Verdict.FINAL, CANCELLED,
        error=ErrorKind.CANCELLED, task={"cancel_requested": True, "retries": 3}),
    Row("cancel requested, but it succeeded first", R, Ended(1, OK, Outcome(exit_code=0)), Verdict.FINAL, OK,
        task={"cancel_requested": True}),
    Row("stopped by shutdown while draining", R, Ended(1, CANCELLED, err(ErrorKind.SHUTDOWN)), Verdict.QUEUED, Q,
        error=ErrorKind.SHUTDOWN, forgiven=1, winding_down=True),
    Row("a shutdown result outside a drain is final", R, Ended(1, CANCELLED, err(ErrorKind.SHUTDOWN)), Verdict.FINAL,
        CANCELLED, error=ErrorKind.SHUTDOWN),
    Row("a live state from a child reads as failed", R, Ended(1, R, err(ErrorKind.CLAUDE)), Verdict.FINAL, FAILED,
        error=ErrorKind.CLAUDE),
    # --- the attempt was lost (child died, silent, overran, unsendable) -------------------
    Row("lost, no retries", R, Lost(1, "child exited (-9)"), Verdict.FINAL, FAILED, kill_tree=True,
        error=ErrorKind.WORKER_LOST),
    Row("lost, retries left: blocked until its tree is dead", R, Lost(1, "child exited (-9)"), Verdict.BLOCKED, B,
        kill_tree=True, retry=True, error=ErrorKind.WORKER_LOST, task={"retries": 1}),
    Row("lost by the daemon's own fault: free re-run", R, Lost(1, "daemon paused", ours=True), Verdict.BLOCKED, B,
        kill_tree=True, forgiven=1),
    Row("lost while draining: runs at the next start", R, Lost(1, "child stopped"), Verdict.BLOCKED, B,
        kill_tree=True, forgiven=1, winding_down=True),
    Row("lost after cancel: cancelled, not lost", R, Lost(1, "child exited (-9)"), Verdict.FINAL, CANCELLED,
        kill_tree=True, error=ErrorKind.CANCELLED, task={"cancel_requested": True, "retries": 2}),
    Row("lost, stale epoch", R, Lost(1, "old child"), Verdict.IGNORED, R, task={"epoch": 3}),
    # --- cancel ----------------------------------------------------------------------------
    Row("cancel queued", Q, CancelRequested(), Verdict.FINAL, CANCELLED, error=ErrorKind.CANCELLED),
    Row("cancel blocked", B, CancelRequested(), Verdict.FINAL, CANCELLED, error=ErrorKind.CANCELLED),
    Row("cancel running: ask the child", R, CancelRequested(), Verdict.CANCELLING, R, cancel_child=True),
    Row("cancel final", OK, CancelRequested(), Verdict.IGNORED, OK),
    # --- a new daemon found it unfinished --------------------------------------------------
    Row("recovered queued", Q, Recovered(tree_alive=False), Verdict.QUEUED, Q),
    Row("recovered running, retries left, no leftovers", R, Recovered(tree_alive=False), Verdict.QUEUED, Q,
        task={"retries": 1}),
    Row("recovered running, leftovers alive", R, Recovered(tree_alive=True), Verdict.BLOCKED, B, kill_tree=True,
        task={"retries": 1}),
    Row("recovered running, no retries left: poison", R, Recovered(tree_alive=True), Verdict.FINAL, FAILED,
        kill_tree=True, error=ErrorKind.WORKER_LOST, task={"retries": 2, "attempts": 3}),
    Row("recovered running with retries = 0: one more run", R, Recovered(tree_alive=False), Verdict.QUEUED, Q,
        task={"retries": 0, "attempts": 1}),
    Row("recovered running with retries = 0, a second time: poison", R, Recovered(tree_alive=False), Verdict.FINAL,
        FAILED, error=ErrorKind.WORKER_LOST, task={"retries": 0, "attempts": 2}),
    Row("recovered running after free re-runs", R, Recovered(tree_alive=False), Verdict.QUEUED, Q, forgiven=2,
        task={"retries": 0, "attempts": 3, "forgiven": 2}),
    Row("recovered blocked (a drain ran out)", B, Recovered(tree_alive=False), Verdict.QUEUED, Q),
    Row("recovered with a journaled cancel", R, Recovered(tree_alive=True), Verdict.FINAL, CANCELLED,
        kill_tree=True, error=ErrorKind.CANCELLED, task={"cancel_requested": True}),
    # --- the lost attempt's tree died --------------------------------------------------------
    Row("tree dead: back in the queue", B, TreeDead(), Verdict.QUEUED, Q),
    Row("tree dead for a task not waiting", R, TreeDead(), Verdict.IGNORED, R),
]


def make(row: Row) -> Task:
    fields: dict[str, Any] = {"attempts": 1 if row.state is not Q else 0, "epoch": 1, "retries": 0,
                              "child": None if row.state in (Q, B) else "w00.1"}
    fields.update(row.task)
    spec = fields.pop("spec", TaskSpec(kind="exec", argv=["true"]))
    return Task(id="t1", spec=spec, submitted_at=0.0, state=row.state, **fields)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_fate(row: Row) -> None:
    task = make(row)
    got = fate.decide(task, row.event, Context(now=100.0, wall=5000.0, rand=0.5, winding_down=row.winding_down))
    assert (got.verdict, task.state) == (row.verdict, row.after)
    assert (got.kill_tree, got.cancel_child, got.retry) == (row.kill_tree, row.cancel_child, row.retry)
    assert task.forgiven == row.forgiven
    assert (task.error.kind if task.error else None) == row.error
    if row.verdict is Verdict.FINAL:
        assert task.finished_at is not None
    if row.after in (Q, B):
        assert task.child is None  # a task that is not running names no child


def test_retry_waits_its_backoff_and_a_lost_retry_waits_for_the_tree_first() -> None:
    task = make(Row("", R, Ended(1, OK, Outcome()), Verdict.QUEUED, Q, task={"retries": 2}))
    ctx = Context(now=100.0, wall=0.0, rand=0.5, retry_base_s=2.0, retry_max_s=60.0)
    fate.decide(task, Ended(1, FAILED, err(ErrorKind.NETWORK)), ctx)
    assert task.not_before == 101.0  # attempt 1: uniform(0, 2) at rand 0.5
    fate.start(task, "w01.1", 0.0)
    assert (task.attempts, task.epoch) == (2, 2)
    fate.decide(task, Lost(2, "child exited (-9)"), ctx)
    assert task.state is B and task.not_before == 102.0  # attempt 2: uniform(0, 4)
    fate.decide(task, TreeDead(), ctx)
    assert task.state is Q and task.not_before == 102.0


def test_start_bumps_attempt_and_epoch_and_only_from_queued() -> None:
    task = Task(id="t1", spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=0.0)
    fate.start(task, "w00.1", 7.0)
    assert (task.state, task.attempts, task.epoch, task.child, task.started_at) == (R, 1, 1, "w00.1", 7.0)
    with pytest.raises(TransitionError):
        fate.start(task, "w01.1", 8.0)  # RUNNING -> RUNNING: one attempt at a time
