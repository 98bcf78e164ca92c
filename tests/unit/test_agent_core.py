"""Exclusive keys, the rate-limit gate, batch tallies and the budget fate, as tables.

Expected outcomes are written out by hand; nothing is computed from the code under test.
"""

from __future__ import annotations

import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState, Usage
from supervisord.core import fate
from supervisord.core.batches import Batch
from supervisord.core.fate import BudgetSpent, Context, Ended, Lost, Recovered, TreeDead, Verdict
from supervisord.core.gate import Gate, GateState
from supervisord.core.keys import Keys
from supervisord.core.scheduler import Scheduler
from supervisord.core.task import Task

pytestmark = pytest.mark.timeout(10)
S = TaskState
CTX = Context(now=100.0, wall=1_700_000_100.0, rand=0.5)


def task(tid: str, key: str | None = None, kind: str = "exec", priority: int = 0, retries: int = 0) -> Task:
    spec = (TaskSpec(kind="exec", argv=["true"], key=key, priority=priority) if kind == "exec"
            else TaskSpec(kind="claude", prompt="hi", key=key, priority=priority))
    return Task(id=tid, spec=spec, submitted_at=1.0, retries=retries)


def take_all(s: Scheduler, now: float = 0.0, claude: bool = True) -> list[str]:
    got = []
    while (t := s.take(now, claude)) is not None:
        fate.start(t, "w00.1", 1.0)
        got.append(t.id)
    return got


# ---- keys in the scheduler ----------------------------------------------------------------


def test_a_full_key_holds_back_its_waiters_in_priority_order_and_lets_others_pass() -> None:
    s = Scheduler()
    for t in [task("a", "repo"), task("b", "repo", priority=1), task("c", "repo", priority=5), task("d"),
              task("e", "other")]:
        s.add(t, 0.0)
    assert take_all(s) == ["c", "d", "e"]  # one of "repo" (the highest priority), the keyless and "other"
    assert s.keys.held == {"repo": {"c"}, "other": {"e"}}
    assert s.key_waiters() == {"repo": 2}
    assert s.release_key("c") == "repo"
    assert take_all(s) == ["b"]  # the next by priority
    assert s.release_key("c") is None  # released exactly once
    assert take_all(s) == []
    s.release_key("b")
    assert take_all(s) == ["a"]
    assert s.queued == 0


def test_a_key_limit_lets_n_run_at_once() -> None:
    s = Scheduler(keys=Keys(limits={"gpu": 2}))
    for tid in "abcd":
        s.add(task(tid, "gpu"), 0.0)
    assert take_all(s) == ["a", "b"]
    s.release_key("a")
    assert take_all(s) == ["c"]


def test_a_waiter_cancelled_while_parked_is_skipped_when_the_key_frees() -> None:
    s = Scheduler()
    a, b, c = task("a", "k"), task("b", "k"), task("c", "k")
    for t in (a, b, c):
        s.add(t, 0.0)
    assert take_all(s) == ["a"]
    fate.decide(b, fate.CancelRequested(), CTX)
    s.forget(b)
    s.release_key("a")
    assert take_all(s) == ["c"]


def test_a_parked_claude_task_stays_behind_a_closed_gate() -> None:
    s = Scheduler()
    s.add(task("a", "k", kind="claude"), 0.0)
    s.add(task("b", "k", kind="claude"), 0.0)
    assert take_all(s) == ["a"]
    s.release_key("a")
    assert take_all(s, claude=False) == []
    assert take_all(s) == ["b"]


# ---- when the fate releases or holds a key --------------------------------------------------

ROWS = [
    # (state before, event, verdict, release_key, hold_key)
    (S.RUNNING, Ended(1, S.SUCCEEDED, Outcome(exit_code=0)), Verdict.FINAL, True, False),
    (S.RUNNING, Ended(1, S.FAILED, Outcome(exit_code=1, error=TaskError(kind=ErrorKind.EXIT, message="x"))),
     Verdict.FINAL, True, False),
    (S.RUNNING, Ended(7, S.SUCCEEDED, Outcome(exit_code=0)), Verdict.IGNORED, False, False),  # stale epoch
    (S.RUNNING, Lost(1, "child died"), Verdict.FINAL, False, False),  # its tree may live: not yet
    (S.RUNNING, fate.CancelRequested(), Verdict.CANCELLING, False, False),
    (S.BLOCKED, TreeDead(), Verdict.QUEUED, True, False),
    (S.RUNNING, Recovered(tree_alive=True), Verdict.BLOCKED, False, True),
    (S.RUNNING, Recovered(tree_alive=False), Verdict.QUEUED, False, False),
]


@pytest.mark.parametrize(("before", "event", "verdict", "release", "hold"), ROWS)
def test_the_fate_releases_a_key_only_once_the_tree_is_dead(before: S, event: fate.Event, verdict: Verdict,
                                                             release: bool, hold: bool) -> None:
    t = task("t", "k", retries=0)
    t.state, t.epoch, t.attempts = before, 1, 1
    f = fate.decide(t, event, CTX)
    assert (f.verdict, f.release_key, f.hold_key) == (verdict, release, hold)


# ---- the budget fate -------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "state", "verdict", "after"), [
    ("claude", S.QUEUED, Verdict.FINAL, S.CANCELLED),
    ("claude", S.BLOCKED, Verdict.FINAL, S.CANCELLED),
    ("claude", S.RUNNING, Verdict.IGNORED, S.RUNNING),  # running ones finish
    ("exec", S.QUEUED, Verdict.IGNORED, S.QUEUED),  # the cap stops Claude tasks only
])
def test_a_spent_budget_cancels_only_queued_claude_tasks(kind: str, state: S, verdict: Verdict, after: S) -> None:
    t = task("t", kind=kind)
    t.state = state
    f = fate.decide(t, BudgetSpent("spent"), CTX)
    assert (f.verdict, t.state) == (verdict, after)
    if verdict is Verdict.FINAL:
        assert t.error is not None and (t.error.kind, t.error.message) == ("budget", "spent")


# ---- the gate ---------------------------------------------------------------------------------

RL = TaskError(kind=ErrorKind.RATE_LIMITED, message="API 429")


@pytest.mark.parametrize(("outcome", "closes_for"), [
    (Outcome(error=RL, retry_after_s=3.0), 3.0),
    (Outcome(error=RL, resets_at=1_700_000_110.0), 10.0),  # wall 1_700_000_100 -> 10 s
    (Outcome(error=RL, retry_after_s=3.0, resets_at=1_700_000_105.0), 5.0),  # the later of the two
    (Outcome(error=RL, retry_after_s=999_999.0), 3600.0),  # capped at max_s
    (Outcome(error=RL), None),  # no reset time: the breaker's business
    (Outcome(error=RL, resets_at=1_700_000_050.0), None),  # already past
    (Outcome(error=TaskError(kind=ErrorKind.OVERLOADED, message="529"), retry_after_s=3.0), None),
])
def test_a_rate_limited_result_with_a_reset_time_closes_the_gate_until_then(outcome: Outcome,
                                                                            closes_for: float | None) -> None:
    g = Gate(max_s=3600.0)
    changed = g.ended("t", outcome, now=100.0, wall=1_700_000_100.0)
    if closes_for is None:
        assert changed is None and g.allows(100.0)
        return
    assert changed is GateState.CLOSED
    assert not g.allows(100.0) and not g.allows(100.0 + closes_for - 0.01)
    assert g.next_change() == 100.0 + closes_for
    assert g.tick(100.0 + closes_for - 0.01) is None
    assert g.tick(100.0 + closes_for) is GateState.OPEN and g.allows(100.0 + closes_for)


def test_a_shorter_reset_does_not_shorten_a_closed_gate() -> None:
    g = Gate()
    g.ended("a", Outcome(error=RL, retry_after_s=10.0), now=0.0, wall=0.0)
    assert g.ended("b", Outcome(error=RL, retry_after_s=2.0), now=1.0, wall=1.0) is None
    assert g.until == 10.0 and g.task_id == "a"


# ---- batch tallies ------------------------------------------------------------------------------


def ended(tid: str, state: S, cost: float, started: float, finished: float) -> Task:
    t = task(tid, kind="claude")
    t.state, t.started_at, t.finished_at = state, started, finished
    t.outcome = Outcome(cost_usd=cost, usage=Usage(input_tokens=100, output_tokens=10))
    return t


def test_a_batch_tallies_its_tasks_and_says_when_its_cap_is_reached_and_when_it_is_done() -> None:
    b = Batch(id="b1", size=3, submitted_at=10.0, max_cost_usd=0.10)
    assert b.task_ended(ended("a", S.SUCCEEDED, 0.06, 11.0, 12.0), 12.0) == (False, False)
    assert b.task_ended(ended("b", S.FAILED, 0.05, 11.5, 13.0), 13.0) == (True, False)  # 0.11 >= 0.10
    assert b.task_ended(ended("c", S.CANCELLED, 0.0, 0.0, 13.5), 13.5) == (False, True)  # reached once
    s = b.summary(20.0)
    assert (s["succeeded"], s["failed"], s["cancelled"], s["state"], s["budget_spent"]) == (1, 1, 1, "done", True)
    assert (s["input_tokens"], s["output_tokens"], s["cost_usd"], s["wall_s"]) == (300, 30, 0.11, 3.5)
