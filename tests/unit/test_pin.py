"""Host pins (`supervisord.core.pin`) as tables: which host a task is pinned to at submit,
why a pinned task waits, and what another host says of a request only the pinned host can
answer. Expected outcomes are written out by hand."""

from __future__ import annotations

import pytest

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core import pin
from supervisord.core.task import Task

PLAIN = TaskSpec(prompt="p")
WORKTREE = TaskSpec(prompt="p", worktree=True, cwd="/r")
RESUME = TaskSpec(prompt="p", resume="old")


def old(host: str | None, pinned: str | None = None) -> Task:
    return Task(id="old", spec=TaskSpec(prompt="first", pin=pinned), submitted_at=1.0, state=TaskState.SUCCEEDED,
                host=host, outcome=Outcome(session_id="s"))


@pytest.mark.parametrize(("spec", "host", "resumed", "expected"), [
    (PLAIN, None, None, None),                 # one host: nothing is pinned
    (WORKTREE, None, None, None),
    (RESUME, None, old("a"), None),
    (PLAIN, "b", None, None),                  # a fleet: a plain task runs anywhere
    (WORKTREE, "b", None, "b"),                # its repository was checked here
    (RESUME, "b", old("a"), "a"),              # the session is where the old task ran
    (RESUME, "b", old("c", pinned="a"), "a"),  # ... or where the old task was pinned
    (RESUME, "b", old(None), "b"),             # (never ran: refused later, no session)
    (TaskSpec(prompt="p", pin="a"), "b", None, "a"),  # a retry's stored spec keeps its pin
])
def test_the_pin_at_submit(spec: TaskSpec, host: str | None, resumed: Task | None, expected: str | None) -> None:
    assert pin.at_submit(spec, host, resumed) == expected


@pytest.mark.parametrize(("pinned", "age", "phase", "expected"), [
    (None, None, None, None),
    ("a", 1.0, "running", None),
    ("a", 30.0, "running", None),              # exactly a lease: still live
    ("a", 30.5, "running", "waiting for host a: pinned to it, and it has not beaten for 30s"),
    ("a", 2.0, "stopped", "waiting for host a: pinned to it, and it is stopped"),
    ("a", None, None, "waiting for host a: pinned to it, and it has never joined the fleet"),
])
def test_why_a_pinned_task_waits(pinned: str | None, age: float | None, phase: str | None,
                                 expected: str | None) -> None:
    assert pin.waiting(pinned, age, phase, 30.0) == expected


def test_only_the_pinned_host_answers() -> None:
    assert pin.elsewhere("t1", "a", "a", "worktree") is None
    assert pin.elsewhere("t1", "a", "b", "worktree") == "task t1's worktree is on host a; run supctl against a"
