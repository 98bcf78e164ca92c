"""The hub with fakes: host pins. On one host nothing is pinned and a client may not set a
pin; the submit checks of a fleet's host pin a worktree task to that host and a resumed
one to the host that ran its session; `diff` of a task pinned to another host names it
without asking git. (The fleet's journal is PostgreSQL: these call the hub's agent
functions with the host's name set; the whole path runs in tests/integration/test_fleet_agents.py.)

Each test names the promise it holds to. Expected outcomes are written out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proto import control as ctl
from proto.task import Outcome, TaskSpec, TaskState, WorktreeInfo
from supervisord.core.task import Task
from supervisord.hub import agents
from supervisord.hub.fleet import FleetState
from tests.hub.rig import Rig, exec_spec

pytestmark = pytest.mark.timeout(30)


def repo_dir(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / ".git").mkdir(parents=True)
    return repo


def on_host(rig: Rig, host: str) -> None:
    """The hub's host name as a fleet's (its journal is never asked: the calls below are
    the submit and diff checks only)."""
    journal: Any = None
    rig.hub.fleet = FleetState(journal=journal, host=host, lease_s=30.0)


def test_one_host_pins_nothing_and_a_client_may_not_set_a_pin(tmp_path: Path) -> None:
    rig = Rig(tmp_path).boot()
    [tid] = rig.submit(exec_spec("true", worktree=True, cwd=str(repo_dir(tmp_path))))
    assert rig.view(tid).pin is None and rig.view(tid).waiting is None
    refused = rig.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], pin="a")]))
    assert refused == ctl.Error(kind="bad_request", message="pin: set by supd, not by a client")


def test_a_fleet_host_pins_worktree_tasks_to_itself_and_resumed_ones_to_the_sessions_host(tmp_path: Path) -> None:
    rig = Rig(tmp_path).boot()
    on_host(rig, "b")
    repo = repo_dir(tmp_path)
    ran_on_a = Task(id="old", spec=TaskSpec(prompt="first", cwd="/w"), submitted_at=1.0, state=TaskState.SUCCEEDED,
                    host="a", outcome=Outcome(session_id="sess"))
    specs = [TaskSpec(kind="exec", argv=["true"], worktree=True, cwd=str(repo)), TaskSpec(prompt="again", resume="old"),
             TaskSpec(kind="exec", argv=["true"])]
    got = agents.prepare(rig.hub, specs, {"old": ran_on_a})
    assert not isinstance(got, str)
    assert [s.pin for s in got] == ["b", "a", None]
    assert (got[1].resume_session, got[1].cwd) == ("sess", "/w")
    missing = agents.prepare(rig.hub, [TaskSpec(prompt="x", resume="gone")], {"gone": None})
    assert missing == "resume: no task with id 'gone'"


def test_diff_of_a_task_pinned_elsewhere_names_its_host_and_asks_no_git(tmp_path: Path) -> None:
    rig = Rig(tmp_path).boot()
    repo = repo_dir(tmp_path)
    info = WorktreeInfo(repo=str(repo), branch="supd/t1", base="b" * 40, head="h" * 40)
    done = Task(id="t1", spec=TaskSpec(kind="exec", argv=["true"], worktree=True, repo=str(repo), pin="a"),
                submitted_at=1.0, state=TaskState.SUCCEEDED, host="a", outcome=Outcome(exit_code=0, worktree=info))
    on_host(rig, "b")
    reply = agents.diff_of(rig.hub, (b"1",), ctl.Diff(id="t1"), done)
    assert reply == ctl.Error(kind="other_host", message="diff: task t1's worktree is on host a; run supctl against a")
    assert rig.git.questions == []
    on_host(rig, "a")
    assert agents.diff_of(rig.hub, (b"1",), ctl.Diff(id="t1"), done) is None, "asked of the git thread here"
    [(what, *_rest)] = rig.git.questions
    assert what == "diff of t1"
