"""The task half of the pure core as tables: (state, event) -> decision.

No clock and no randomness: every `now` and `rand` is spelled out in the table.
"""

from __future__ import annotations

import itertools

import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState
from supervisord.core.breaker import NEUTRAL, Breaker, BreakerState
from supervisord.core import fate
from supervisord.core.fate import Context, Verdict
from supervisord.core.scheduler import Scheduler
from supervisord.core.task import TRANSITIONS, Task, TransitionError, retry_delay_s, should_retry

pytestmark = pytest.mark.timeout(10)

S = TaskState


def spec(kind: str = "claude", priority: int = 0, retry_on_exit: bool = False) -> TaskSpec:
    if kind == "claude":
        return TaskSpec(kind="claude", prompt="hi", priority=priority, retry_on_exit=retry_on_exit)
    return TaskSpec(kind="exec", argv=["true"], priority=priority, retry_on_exit=retry_on_exit)


def task(tid: str, kind: str = "claude", priority: int = 0, retries: int = 0, retry_on_exit: bool = False,
         not_before: float = 0.0) -> Task:
    return Task(id=tid, spec=spec(kind, priority, retry_on_exit), submitted_at=1_700_000_000.0,
                retries=retries, not_before=not_before)


def failed(kind: str | None) -> Outcome:
    return Outcome(exit_code=1, error=TaskError(kind=kind, message="boom") if kind else None)


def drain(s: Scheduler, now: float, claude_allowed: bool = True) -> list[str]:
    out = []
    while (t := s.take(now, claude_allowed)) is not None:
        out.append(t.id)
    return out


# ---- the transition table -------------------------------------------------------------

ALLOWED = sorted(((a, b) for a, bs in TRANSITIONS.items() for b in bs),
                 key=lambda p: (p[0].value, p[1].value))
FORBIDDEN = [(a, b) for a, b in itertools.product(S, S) if (a, b) not in ALLOWED]


def test_table_is_the_documented_life_of_a_task() -> None:
    assert {(a.value, b.value) for a, b in ALLOWED} == {
        ("queued", "running"), ("queued", "cancelled"),
        ("blocked", "queued"), ("blocked", "cancelled"),
        ("running", "succeeded"), ("running", "failed"), ("running", "timed_out"),
        ("running", "cancelled"), ("running", "queued"), ("running", "blocked"),
    }


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=lambda s: s.value)
def test_allowed_move(old: TaskState, new: TaskState) -> None:
    t = task("t1")
    t.state = old
    assert t.move(new) is old
    assert t.state is new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_move_raises_and_changes_nothing(old: TaskState, new: TaskState) -> None:
    t = task("t1")
    t.state = old
    with pytest.raises(TransitionError, match=f"t1: {old.value} -> {new.value}"):
        t.move(new)
    assert t.state is old


@pytest.mark.parametrize("state", [s for s in S if s.final], ids=lambda s: s.value)
def test_final_states_are_final(state: TaskState) -> None:
    assert not TRANSITIONS.get(state)


# ---- order: priority, then arrival ------------------------------------------------------

@pytest.mark.parametrize(
    ("tasks", "order"),
    [
        # (id, kind, priority) in arrival order -> take order
        ([("a", "claude", 0), ("b", "claude", 0), ("c", "claude", 0)], ["a", "b", "c"]),
        ([("a", "claude", 0), ("b", "claude", 5), ("c", "claude", 0), ("d", "claude", 5)],
         ["b", "d", "a", "c"]),
        ([("a", "exec", -1), ("b", "exec", 0), ("c", "exec", 1)], ["c", "b", "a"]),
        # across kinds the same rule holds: one queue order, two heaps
        ([("a", "claude", 0), ("b", "exec", 0), ("c", "claude", 0), ("d", "exec", 0)], ["a", "b", "c", "d"]),
        ([("a", "claude", 0), ("b", "exec", 1), ("c", "claude", 2)], ["c", "b", "a"]),
    ],
)
def test_priority_then_fifo(tasks: list[tuple[str, str, int]], order: list[str]) -> None:
    s = Scheduler()
    for tid, kind, prio in tasks:
        s.add(task(tid, kind, prio), now=0.0)
    assert s.queued == len(tasks)
    assert drain(s, now=0.0) == order
    assert s.queued == 0


def test_claude_tasks_are_held_while_the_breaker_disallows_but_exec_tasks_flow() -> None:
    s = Scheduler()
    for tid, kind, prio in [("c1", "claude", 9), ("e1", "exec", 0), ("c2", "claude", 0), ("e2", "exec", 0)]:
        s.add(task(tid, kind, prio), now=0.0)
    assert drain(s, now=0.0, claude_allowed=False) == ["e1", "e2"]
    assert s.queued == 2  # the held ones still count against max_queued
    assert drain(s, now=0.0, claude_allowed=True) == ["c1", "c2"]


def test_breaker_feeds_take_one_probe_then_hold() -> None:
    """What the hub's pump does: ask `allows` before each take, `started` after each Claude dispatch."""
    b, s = Breaker(threshold=1, open_s=10.0), Scheduler()
    b.record(ErrorKind.OVERLOADED, now=0.0)
    for tid, kind in [("c1", "claude"), ("c2", "claude"), ("e1", "exec")]:
        s.add(task(tid, kind), now=0.0)
    taken = []
    for now in (5.0, 10.0, 10.0, 10.0):
        t = s.take(now, b.allows(now))
        if t is not None:
            taken.append(t.id)
            if t.spec.kind == "claude":
                b.started(now)
    assert taken == ["e1", "c1"]  # e1 while open, c1 as the probe, c2 held behind the probe
    assert b.state is BreakerState.HALF_OPEN


def test_take_removes_the_task_from_the_queue_but_keeps_it_tracked() -> None:
    s = Scheduler()
    s.add(task("a"), now=0.0)
    t = s.take(0.0, True)
    assert t is not None and t.id == "a" and t.state is S.QUEUED
    assert s.queued == 0 and "a" in s.tasks
    assert s.take(0.0, True) is None


def test_start_counts_the_attempt() -> None:
    s = Scheduler()
    s.add(task("a"), now=0.0)
    t = s.take(0.0, True)
    assert t is not None
    fate.start(t, "w00.1", 123.0)
    assert (t.state, t.attempts, t.epoch, t.child, t.started_at) == (S.RUNNING, 1, 1, "w00.1", 123.0)
    assert s.running() == [t]
    with pytest.raises(TransitionError):
        fate.start(t, "w01.1", 124.0)


# ---- retries ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("attempt", "base_s", "max_s", "rand", "delay_s"),
    [
        (1, 1.0, 60.0, 0.0, 0.0),
        (1, 1.0, 60.0, 0.5, 0.5),
        (1, 1.0, 60.0, 0.999, 0.999),
        (2, 1.0, 60.0, 0.5, 1.0),
        (3, 1.0, 60.0, 0.5, 2.0),
        (4, 1.0, 60.0, 1.0, 8.0),
        (7, 1.0, 60.0, 1.0, 60.0),  # 64 capped at 60
        (30, 1.0, 60.0, 0.25, 15.0),
        (0, 1.0, 60.0, 0.5, 0.5),  # attempt 0 is treated as the first
        (2, 0.5, 60.0, 0.5, 0.5),
    ],
)
def test_retry_delay_table(attempt: int, base_s: float, max_s: float, rand: float, delay_s: float) -> None:
    assert retry_delay_s(attempt, base_s, max_s, rand) == pytest.approx(delay_s)


@pytest.mark.parametrize("attempt", range(1, 12))
@pytest.mark.parametrize("rand", [0.0, 0.1, 0.5, 0.9, 0.999999])
def test_retry_delay_is_full_jitter(attempt: int, rand: float) -> None:
    base_s, max_s = 1.0, 60.0
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    delay = retry_delay_s(attempt, base_s, max_s, rand)
    assert 0.0 <= delay < ceiling or ceiling == 0
    assert delay == pytest.approx(ceiling * rand)


RETRYABLE = [ErrorKind.WORKER_LOST, ErrorKind.WORKER_BUSY, ErrorKind.STALL, ErrorKind.OVERLOADED, ErrorKind.RATE_LIMITED,
             ErrorKind.API_ERROR, ErrorKind.NETWORK]
NOT_RETRYABLE = [ErrorKind.AUTH, ErrorKind.INVALID_REQUEST, ErrorKind.MAX_TURNS, ErrorKind.EXIT,
                 ErrorKind.BUDGET, ErrorKind.SPAWN, ErrorKind.TIMEOUT, ErrorKind.CANCELLED,
                 ErrorKind.SHUTDOWN, ErrorKind.CLAUDE, ErrorKind.WORKTREE]


@pytest.mark.parametrize(
    ("kind", "retry_on_exit", "attempts", "retries", "cancel_requested", "expected"),
    [(k, False, 1, 1, False, True) for k in RETRYABLE]
    + [(k, False, 1, 1, False, False) for k in NOT_RETRYABLE]
    + [
        (ErrorKind.EXIT, True, 1, 1, False, True),  # only with retry_on_exit
        (ErrorKind.AUTH, True, 1, 1, False, False),  # retry_on_exit is about exit codes only
        (ErrorKind.OVERLOADED, False, 1, 3, False, True),
        (ErrorKind.OVERLOADED, False, 3, 3, False, True),  # the last retry
        (ErrorKind.OVERLOADED, False, 4, 3, False, False),  # budget spent: attempts > retries
        (ErrorKind.OVERLOADED, False, 1, 0, False, False),  # no retries configured
        (ErrorKind.EXIT, True, 2, 1, False, False),
        (ErrorKind.OVERLOADED, False, 1, 3, True, False),  # a cancel wins
        (ErrorKind.EXIT, True, 1, 3, True, False),
        (None, True, 1, 3, False, False),  # no error: nothing to retry
    ],
)
def test_should_retry_table(kind: str | None, retry_on_exit: bool, attempts: int, retries: int,
                            cancel_requested: bool, expected: bool) -> None:
    t = task("a", retries=retries, retry_on_exit=retry_on_exit)
    t.attempts, t.cancel_requested = attempts, cancel_requested
    assert should_retry(t, failed(kind)) is expected


def _running(s: Scheduler, tid: str = "a", now: float = 0.0, **kw: object) -> Task:
    s.add(task(tid, **kw), now)  # type: ignore[arg-type]
    t = s.take(now, True)
    assert t is not None and t.id == tid
    fate.start(t, "w00.1", 1000.0)
    return t


def _end(s: Scheduler, t: Task, state: TaskState, outcome: Outcome, now: float, rand: float = 0.5,
         base_s: float = 1.0) -> Verdict:
    """What the hub does with a Result: the core decides, the scheduler is told."""
    got = fate.decide(t, fate.Ended(t.epoch, state, outcome), Context(now=now, wall=2000.0, rand=rand,
                                                                     retry_base_s=base_s))
    if got.verdict is Verdict.QUEUED:
        s.enqueue(t, now)
    elif got.verdict is Verdict.FINAL:
        s.forget(t)
    return got.verdict


@pytest.mark.parametrize(("rand", "delay_s"), [(0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (0.999, 0.999)])
def test_retry_requeues_with_not_before_now_plus_delay(rand: float, delay_s: float) -> None:
    s = Scheduler()
    t = _running(s, retries=2)
    now = 100.0
    assert _end(s, t, S.FAILED, failed(ErrorKind.OVERLOADED), now, rand) is Verdict.QUEUED
    assert (t.state, t.child, t.finished_at, t.attempts) == (S.QUEUED, None, None, 1)
    assert t.not_before == pytest.approx(now + delay_s)
    assert s.queued == 1 and "a" in s.tasks
    if delay_s > 0:
        assert s.next_due() == pytest.approx(now + delay_s)
        assert s.take(now + delay_s - 1e-6, True) is None  # not yet
    assert s.take(now + delay_s, True) is t
    assert s.next_due() is None


def test_retry_backoff_grows_with_attempts_then_the_budget_ends_it() -> None:
    s = Scheduler()
    t = _running(s, retries=2)
    now, delays = 0.0, []
    for attempt in (1, 2):
        assert _end(s, t, S.FAILED, failed(ErrorKind.NETWORK), now, rand=0.99999) is Verdict.QUEUED
        delays.append(round(t.not_before - now, 3))
        now = t.not_before
        assert s.take(now, True) is t
        fate.start(t, "w00.1", 0.0)
        assert t.attempts == attempt + 1
    assert delays == [1.0, 2.0]
    assert _end(s, t, S.FAILED, failed(ErrorKind.NETWORK), now) is Verdict.FINAL
    assert (t.state, t.finished_at, t.attempts) == (S.FAILED, 2000.0, 3)
    assert "a" not in s.tasks and s.queued == 0


def test_a_retried_task_keeps_its_place_among_equal_priorities() -> None:
    s = Scheduler()
    t = _running(s, retries=1)
    s.add(task("b"), now=0.0)
    _end(s, t, S.FAILED, failed(ErrorKind.NETWORK), now=0.0, rand=0.0)
    assert drain(s, now=0.0) == ["a", "b"]


# ---- forget, room ---------------------------------------------------------------------

def test_a_forgotten_task_leaves_the_queue_and_its_stale_heap_entry_is_skipped() -> None:
    s = Scheduler()
    for tid in ("a", "b", "c"):
        s.add(task(tid), now=0.0)
    a = s.tasks["a"]
    fate.decide(a, fate.CancelRequested(), Context(now=0.0, wall=50.0, rand=0.0))
    s.forget(a)
    assert (a.state, a.finished_at) == (S.CANCELLED, 50.0)
    assert "a" not in s.tasks and s.queued == 2
    assert drain(s, now=0.0) == ["b", "c"]
    assert s.queued == 0


def test_a_forgotten_delayed_retry_is_skipped_when_it_would_come_due() -> None:
    s = Scheduler()
    t = _running(s, retries=1)
    _end(s, t, S.FAILED, failed(ErrorKind.NETWORK), now=0.0, base_s=10.0)
    assert s.queued == 1 and s.next_due() == 5.0
    s.forget(t)
    assert s.queued == 0
    assert s.next_due() is None
    assert s.take(100.0, True) is None


def test_enqueue_twice_queues_once() -> None:
    s = Scheduler()
    s.add(task("a"), now=0.0)
    s.enqueue(s.tasks["a"], now=0.0)
    assert s.queued == 1 and drain(s, now=0.0) == ["a"]


def test_add_with_a_future_not_before_waits() -> None:
    s = Scheduler()
    s.add(task("late", not_before=10.0), now=0.0)
    s.add(task("now"), now=0.0)
    assert s.next_due() == 10.0
    assert drain(s, now=9.0) == ["now"]
    assert drain(s, now=10.0) == ["late"]


@pytest.mark.parametrize(
    ("max_queued", "queued", "n", "problem"),
    [(3, 0, 3, None), (3, 0, 4, "queue is full: 0 queued + 4 new exceeds daemon.max_queued=3"),
     (3, 2, 1, None), (3, 2, 2, "queue is full: 2 queued + 2 new exceeds daemon.max_queued=3"),
     (3, 3, 1, "queue is full: 3 queued + 1 new exceeds daemon.max_queued=3"), (1, 0, 0, None)],
)
def test_room_problem(max_queued: int, queued: int, n: int, problem: str | None) -> None:
    s = Scheduler(max_queued=max_queued)
    for i in range(queued):
        s.add(task(f"t{i}"), now=0.0)
    assert s.room_problem([task(f"n{i}") for i in range(n)]) == problem


def test_the_queue_is_bounded_in_bytes_too() -> None:
    s = Scheduler(max_queued_bytes=2500)
    big = Task(id="big", spec=TaskSpec(kind="claude", prompt="x" * 1500), submitted_at=0.0)
    assert s.room_problem([big]) is None
    s.add(big, now=0.0)
    assert s.queued_bytes == 1500 + 512
    assert s.room_problem([task("small")]) == (
        "queue is full: 2012 bytes queued + 514 new exceeds daemon.max_queued_bytes=2500")
    s.take(0.0, True)
    assert s.queued_bytes == 0


def test_room_comes_back_when_a_task_is_taken_or_forgotten() -> None:
    s = Scheduler(max_queued=2)
    s.add(task("a"), now=0.0)
    s.add(task("b"), now=0.0)
    assert s.room_problem([task("c")]) is not None
    s.take(0.0, True)
    assert s.room_problem([task("c")]) is None
    s.forget(s.tasks["b"])
    assert s.room_problem([task("c"), task("d")]) is None


# ---- the circuit breaker ---------------------------------------------------------------

INFRA = sorted(ErrorKind.INFRASTRUCTURE)
NOT_INFRA = [ErrorKind.AUTH, ErrorKind.INVALID_REQUEST, ErrorKind.MAX_TURNS, ErrorKind.EXIT, ErrorKind.BUDGET,
             ErrorKind.CLAUDE, ErrorKind.WORKER_LOST, ErrorKind.WORKER_BUSY, ErrorKind.TIMEOUT, ErrorKind.CANCELLED,
             ErrorKind.SHUTDOWN, ErrorKind.SPAWN, ErrorKind.WORKTREE]


def test_the_kind_lists_are_complete() -> None:
    kinds = {v for k, v in vars(ErrorKind).items() if k.isupper() and isinstance(v, str)}
    assert set(INFRA) | set(NOT_INFRA) == kinds
    assert not set(INFRA) & set(NOT_INFRA)
    assert set(RETRYABLE) | set(NOT_RETRYABLE) == kinds


@pytest.mark.parametrize("kind", INFRA)
def test_three_consecutive_infra_failures_open_it(kind: str) -> None:
    b = Breaker(threshold=3, open_s=30.0)
    assert b.record(kind, now=1.0) is None
    assert b.record(kind, now=2.0) is None
    assert (b.state, b.failures) == (BreakerState.CLOSED, 2)
    assert b.allows(2.0)
    assert b.record(kind, now=3.0) is BreakerState.OPEN
    assert (b.state, b.opened_at, b.failures) == (BreakerState.OPEN, 3.0, 3)
    assert b.next_change() == 33.0


@pytest.mark.parametrize("kind", NOT_INFRA)
def test_non_infra_failures_do_not_count(kind: str) -> None:
    b = Breaker(threshold=3)
    for now in range(10):
        assert b.record(kind, now=float(now)) is None
    assert (b.state, b.failures) == (BreakerState.CLOSED, 0)


@pytest.mark.parametrize("kind", sorted(NEUTRAL))
def test_neutral_outcome_in_closed_neither_counts_nor_resets(kind: str) -> None:
    """Outcomes that say nothing about the backend (a lost worker, a cancel) leave the run of
    consecutive infrastructure failures as it was."""
    b = Breaker(threshold=3)
    b.record(ErrorKind.OVERLOADED, 1.0)
    b.record(ErrorKind.OVERLOADED, 2.0)
    b.record(kind, 3.0)
    assert (b.state, b.failures) == (BreakerState.CLOSED, 2)
    assert b.record(ErrorKind.OVERLOADED, 4.0) is BreakerState.OPEN


@pytest.mark.parametrize("kind", sorted(set(NOT_INFRA) - NEUTRAL))
def test_a_backend_answer_breaks_the_run_of_failures(kind: str) -> None:
    """An auth error or a bad request is an answer from a working backend: the failures are no
    longer consecutive."""
    b = Breaker(threshold=3)
    b.record(ErrorKind.OVERLOADED, 1.0)
    b.record(ErrorKind.OVERLOADED, 2.0)
    b.record(kind, 3.0)
    assert (b.state, b.failures) == (BreakerState.CLOSED, 0)
    assert b.record(ErrorKind.OVERLOADED, 4.0) is None


def test_a_success_resets_the_count() -> None:
    b = Breaker(threshold=3)
    for kind in (ErrorKind.NETWORK, ErrorKind.NETWORK, None, ErrorKind.NETWORK, ErrorKind.NETWORK):
        b.record(kind, 0.0)
    assert (b.state, b.failures) == (BreakerState.CLOSED, 2)


@pytest.mark.parametrize(
    ("now", "allows"),
    [(10.0, False), (20.0, False), (39.999, False), (40.0, True), (1000.0, True)],
)
def test_open_refuses_until_open_s_passes(now: float, allows: bool) -> None:
    b = Breaker(threshold=1, open_s=30.0)
    b.record(ErrorKind.RATE_LIMITED, now=10.0)
    assert b.state is BreakerState.OPEN
    assert b.allows(now) is allows
    assert b.state is BreakerState.OPEN  # allows() never changes state


def test_started_while_open_and_too_early_changes_nothing() -> None:
    b = Breaker(threshold=1, open_s=30.0)
    b.record(ErrorKind.RATE_LIMITED, now=10.0)
    assert b.started(20.0) is None
    assert (b.state, b.probe_out) == (BreakerState.OPEN, False)


def _half_open(open_s: float = 30.0) -> Breaker:
    b = Breaker(threshold=1, open_s=open_s)
    b.record(ErrorKind.OVERLOADED, now=10.0)
    assert b.started(10.0 + open_s) is BreakerState.HALF_OPEN
    return b


def test_exactly_one_probe_after_open_s() -> None:
    b = _half_open()
    assert (b.state, b.probe_out) == (BreakerState.HALF_OPEN, True)
    assert not b.allows(40.0)
    assert not b.allows(1e9)
    assert b.next_change() is None
    assert b.started(41.0) is None  # a second start (not expected) changes nothing


def test_probe_success_closes_it() -> None:
    b = _half_open()
    assert b.record(None, now=45.0) is BreakerState.CLOSED
    assert (b.state, b.failures, b.probe_out) == (BreakerState.CLOSED, 0, False)
    assert b.allows(45.0)
    assert b.next_change() is None


@pytest.mark.parametrize("kind", INFRA)
def test_probe_infra_failure_reopens_with_a_fresh_opened_at(kind: str) -> None:
    b = _half_open(open_s=30.0)
    assert b.record(kind, now=50.0) is BreakerState.OPEN
    assert (b.state, b.opened_at, b.probe_out) == (BreakerState.OPEN, 50.0, False)
    assert not b.allows(79.9)
    assert b.allows(80.0)
    assert b.next_change() == 80.0
    assert b.started(80.0) is BreakerState.HALF_OPEN  # and the next probe goes out


@pytest.mark.parametrize("kind", sorted(set(NOT_INFRA) - NEUTRAL))
def test_probe_backend_answer_closes_it(kind: str) -> None:
    b = _half_open()
    assert b.record(kind, now=45.0) is BreakerState.CLOSED
    assert b.allows(45.0)


@pytest.mark.parametrize("kind", sorted(NEUTRAL))
def test_probe_neutral_outcome_frees_the_probe_slot_and_stays_half_open(kind: str) -> None:
    b = _half_open()
    assert not b.allows(45.0)
    assert b.record(kind, now=45.0) is None
    assert b.state is BreakerState.HALF_OPEN and b.allows(45.0)


def test_half_open_with_a_high_threshold_still_reopens_on_one_failure() -> None:
    b = Breaker(threshold=3, open_s=5.0)
    for now in (1.0, 2.0, 3.0):
        b.record(ErrorKind.API_ERROR, now)
    assert b.started(8.0) is BreakerState.HALF_OPEN
    assert b.record(ErrorKind.API_ERROR, 9.0) is BreakerState.OPEN
    assert b.opened_at == 9.0


def test_infra_failure_of_an_older_task_while_open_extends_the_open_window() -> None:
    """Tasks dispatched before the breaker opened may still fail after it did."""
    b = Breaker(threshold=1, open_s=30.0)
    b.record(ErrorKind.OVERLOADED, now=10.0)
    assert b.record(ErrorKind.OVERLOADED, now=20.0) is None  # still OPEN: no change reported
    assert (b.state, b.opened_at) == (BreakerState.OPEN, 20.0)


def test_success_of_an_older_task_while_open_closes_it() -> None:
    b = Breaker(threshold=1, open_s=30.0)
    b.record(ErrorKind.OVERLOADED, now=10.0)
    assert b.record(None, now=20.0) is BreakerState.CLOSED
    assert b.allows(20.0)
