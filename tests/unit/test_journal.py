"""The SQLite journal against a real file in tmp_path: writes, group commits, reads, reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState, Usage
from supervisord.core.scheduler import Scheduler
from supervisord.core.task import Task
from supervisord.store.journal import Journal, view

pytestmark = pytest.mark.timeout(10)

S = TaskState
WALL = 1_754_000_000.0


def task(tid: str, kind: str = "claude", **kw: object) -> Task:
    priority = int(kw.pop("priority", 0))  # type: ignore[call-overload]
    spec = (TaskSpec(kind="claude", prompt=f"prompt {tid}", priority=priority, model="m")
            if kind == "claude" else TaskSpec(kind="exec", argv=["echo", tid], env={"A": "1"}))
    return Task(id=tid, spec=spec, submitted_at=WALL, retries=2, trace_id="ab" * 16,
                parent_span_id="cd" * 8, tracestate="congo=x", **kw)  # type: ignore[arg-type]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "tasks.db")
    yield j
    j.close()


def test_an_accepted_batch_is_durable_at_once_and_updates_are_grouped(tmp_path: Path, journal: Journal) -> None:
    journal.accepted([task("a"), task("b", "exec")])
    other = Journal(tmp_path / "tasks.db")
    try:
        b = other.get("b")  # another connection sees it: committed before `Accepted` can be sent
        assert b is not None and b.argv == ["echo", "b"] and b.state == "queued"
        assert journal.commit() is False  # nothing left to commit
        started = task("a", state=TaskState.RUNNING, attempts=1)
        journal.saved(started)
        assert other.get("a").state == "queued"  # type: ignore[union-attr]  # grouped: not yet
        assert journal.commit() is True
        assert other.get("a").state == "running"  # type: ignore[union-attr]
    finally:
        other.close()


def test_round_trip_through_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    j = Journal(path)
    tasks = [task("a"), task("b", "exec"), task("c"), task("d")]
    j.accepted(tasks)
    j.commit()
    sched = Scheduler()
    for t in tasks:
        sched.add(t, 0.0)
    # a runs and succeeds, b runs, c is cancelled, d waits
    a = sched.take(0.0, True)
    b = sched.take(0.0, True)
    assert a is tasks[0] and b is tasks[1]
    a.span_id = "ef" * 8
    sched.start(a, "w00.1", WALL + 1)
    sched.start(b, "w01.1", WALL + 1)
    outcome = Outcome(exit_code=0, result="42", usage=Usage(input_tokens=5, output_tokens=7), cost_usd=0.01,
                      session_id="sess", num_turns=2, is_error=False)
    sched.finish(a, S.SUCCEEDED, outcome, now=3.0, now_wall=WALL + 3.5)
    sched.cancel_queued(tasks[2], WALL + 2)
    for t in (a, b, tasks[2]):
        j.saved(t)
    j.close()  # close commits

    j = Journal(path)
    try:
        unfinished = j.unfinished()
        assert [(t.id, t.state, t.attempts, t.child) for t in unfinished] == [
            ("b", S.RUNNING, 1, "w01.1"), ("d", S.QUEUED, 0, None)]
        b2 = unfinished[0]
        assert b2.spec == b.spec and b2.retries == 2 and b2.submitted_at == WALL
        assert (b2.trace_id, b2.parent_span_id, b2.tracestate) == ("ab" * 16, "cd" * 8, "congo=x")
        assert b2.started_at == WALL + 1 and b2.finished_at is None

        got = j.get("a")
        assert got is not None
        assert (got.state, got.attempts, got.exit_code, got.result, got.error) == (
            "succeeded", 1, 0, "42", None)
        assert (got.child, got.span_id, got.started_at, got.finished_at) == (
            "w00.1", "ef" * 8, WALL + 1, WALL + 3.5)
        assert got.duration_s == 2.5
        assert got.usage == Usage(input_tokens=5, output_tokens=7)
        assert (got.cost_usd, got.session_id, got.num_turns) == (0.01, "sess", 2)
        assert got.prompt == "prompt a" and got.argv is None

        c = j.get("c")
        assert c is not None and c.state == "cancelled"
        assert c.error == TaskError(kind=ErrorKind.CANCELLED, message="cancelled by request")
        assert c.duration_s is None  # never started

        assert j.get("nope") is None
        assert j.counts() == {"succeeded": 1, "running": 1, "cancelled": 1, "queued": 1}

        # seq keeps counting across a reopen: newest first in list()
        j.accepted([task("e")])
        assert [v.id for v in j.list(None, 10)] == ["e", "d", "c", "b", "a"]
    finally:
        j.close()


@pytest.mark.parametrize(
    ("state", "limit", "ids"),
    [
        (None, 10, ["e", "d", "c", "b", "a"]),
        (None, 2, ["e", "d"]),
        ("queued", 10, ["e", "c"]),
        ("queued", 1, ["e"]),
        ("failed", 10, ["d", "a"]),
        ("running", 10, ["b"]),
        ("succeeded", 10, []),
    ],
)
def test_list_filters_by_state_newest_first(journal: Journal, state: str | None, limit: int,
                                            ids: list[str]) -> None:
    tasks = {tid: task(tid) for tid in "abcde"}
    journal.accepted(tasks.values())
    for tid, st in (("a", S.FAILED), ("b", S.RUNNING), ("d", S.FAILED)):
        tasks[tid].state = st
        journal.saved(tasks[tid])
    journal.commit()
    assert [v.id for v in journal.list(state, limit)] == ids


def test_a_retry_round_trip(journal: Journal) -> None:
    """Retried: back to queued with the attempt counted and the last outcome kept."""
    t = task("a")
    journal.accepted([t])
    sched = Scheduler()
    sched.add(t, 0.0)
    sched.take(0.0, True)
    sched.start(t, "w00.1", WALL)
    error = TaskError(kind=ErrorKind.OVERLOADED, message="529")
    outcome = Outcome(error=error, api_error_status=529)
    assert sched.finish(t, S.FAILED, outcome, 0.0, WALL, retry=(1.0, 1.0, 0.0))
    journal.saved(t)
    journal.commit()
    (back,) = journal.unfinished()
    assert (back.state, back.attempts, back.child) == (S.QUEUED, 1, None)
    assert back.outcome == Outcome(error=error, api_error_status=529)


def test_unfinished_is_in_arrival_order_across_batches(journal: Journal) -> None:
    journal.accepted([task("x1"), task("x2")])
    journal.accepted([task("y1", priority=9)])
    journal.commit()
    assert [t.id for t in journal.unfinished()] == ["x1", "x2", "y1"]
    assert [t.seq for t in journal.unfinished()] == [1, 2, 3]


def test_duplicate_id_is_refused(journal: Journal) -> None:
    from supervisord.store.journal import JournalError

    journal.accepted([task("a")])
    with pytest.raises(JournalError, match="UNIQUE"):
        journal.accepted([task("a"), task("b")])
    assert journal.get("b") is None, "all of a batch or none of it"


def test_view_of_a_live_task() -> None:
    t = task("a", "exec", attempts=1, child="w03.2", started_at=WALL + 1.0, span_id="12" * 8)
    t.state = S.RUNNING
    v = view(t)
    assert (v.id, v.kind, v.state, v.attempts, v.child) == ("a", "exec", "running", 1, "w03.2")
    assert (v.exit_code, v.result, v.error, v.usage, v.stderr, v.truncated) == (
        None, None, None, None, None, False)
    assert (v.trace_id, v.span_id, v.parent_span_id) == ("ab" * 16, "12" * 8, "cd" * 8)
    assert (v.submitted_at, v.started_at, v.finished_at, v.duration_s) == (WALL, WALL + 1.0, None, None)
    assert (v.argv, v.prompt, v.priority) == (["echo", "a"], None, 0)


def test_view_rounds_the_duration() -> None:
    t = task("a", started_at=WALL, finished_at=WALL + 1.23456789)
    t.state = S.FAILED
    error = TaskError(kind="exit", message="exit 2")
    t.outcome = Outcome(exit_code=2, stderr="oops", truncated=True, error=error)
    v = view(t)
    assert v.duration_s == pytest.approx(1.234568, abs=1e-6)
    assert (v.exit_code, v.stderr, v.truncated, v.error) == (2, "oops", True, error)


def test_a_full_journal_refuses_a_whole_batch_and_keeps_the_rest_of_the_group(tmp_path: Path) -> None:
    """max_page_count makes SQLite's own 'database or disk is full' real and small."""
    from supervisord.store.journal import JournalError

    j = Journal(tmp_path / "full.db", max_bytes=256 << 10)
    big = "x" * (40 << 10)
    first = task("t-first")
    j.accepted([first])
    j.commit()
    first.state = TaskState.RUNNING
    j.saved(first)  # in the same group as the failing batch below: must survive it
    refused = [Task(id=f"t-big{i}", spec=TaskSpec(kind="claude", prompt=big), submitted_at=WALL) for i in range(20)]
    with pytest.raises(JournalError, match="full"):
        j.accepted(refused)
    j.commit()
    assert j.get("t-first") is not None and j.get("t-first").state == "running"  # type: ignore[union-attr]
    assert all(j.get(t.id) is None for t in refused), "nothing of the refused batch"
    j.accepted([task("t-small")])  # a small batch still fits
    j.commit()
    assert j.get("t-small") is not None
    j.close()


def test_a_state_that_cannot_be_written_stays_visible_and_the_journal_goes_on(tmp_path: Path) -> None:
    j = Journal(tmp_path / "full.db", max_bytes=256 << 10)
    done = task("t-done")
    j.accepted([done])
    done.state, done.attempts = TaskState.SUCCEEDED, 1
    done.outcome = Outcome(exit_code=0, result="y" * (1 << 20))  # far past the cap
    j.saved(done)
    assert j.write_errors == 1
    got = j.get("t-done")
    assert got is not None and got.state == "succeeded", "clients see the truth, not the stale row"
    assert j.commit() is False  # the failed group is gone; nothing half-written is committed
    j.accepted([task("t-next")])  # and the journal keeps working
    assert Journal(tmp_path / "full.db").get("t-next") is not None
    j.close()
