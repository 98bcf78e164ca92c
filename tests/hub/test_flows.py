"""Workflows in the hub, with fakes: what the hub does with the workflow core's decisions
(tasks tagged with their workflow and job, one save per feed, cancels through the task core,
answers to `FlowWait`), and a restart that finds the record half done.

Each test writes its expected outcome out by hand.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from proto import children as cp
from proto import control as ctl
from proto.task import Outcome, TaskError
from supervisord.events import RequestReceived
from supervisord.store.sqlite import SqliteStore
from tests.hub.rig import Rig, exec_spec

pytestmark = pytest.mark.timeout(30)

DIAMOND = """
name = "diamond"
[steps.a]
kind = "exec"
argv = ["echo", "a"]
[steps.b]
after = ["a"]
kind = "exec"
argv = ["echo", "b got {{steps.a.result}}"]
[steps.c]
after = ["a"]
kind = "exec"
argv = ["cat"]
input = "{{steps.a.result}}"
[steps.d]
after = ["b", "c"]
kind = "exec"
argv = ["echo", "{{steps.b.result}}+{{steps.c.result}}"]
undo = { kind = "exec", argv = ["echo", "undo d"] }
"""


def run(rig: Rig, text: str, **inputs: str) -> str:
    reply = rig.request(ctl.FlowRun(doc=tomllib.loads(text), inputs=inputs))
    assert isinstance(reply, ctl.FlowAccepted), reply
    return reply.id


def status(rig: Rig, wf_id: str) -> dict[str, Any]:
    reply = rig.request(ctl.FlowStatus(id=wf_id))
    assert isinstance(reply, ctl.Flows), reply
    return reply.flows[0]


def running(rig: Rig) -> dict[str, cp.Dispatch]:
    """The job key of every task now running, with its Dispatch."""
    out = {}
    for task in rig.hub.sched.running():
        out[task.step or ""] = rig.dispatched(task.id)[1]
    return out


def finish(rig: Rig, job: str, result: str = "ok", state: str = "succeeded", cost: float | None = None) -> None:
    (task,) = [t for t in rig.hub.sched.running() if t.step == job]
    error = None if state == "succeeded" else TaskError(kind="exit" if state == "failed" else state, message=state)
    rig.result(task.id, state=state, outcome=Outcome(exit_code=0 if state == "succeeded" else 1, result=result,
                                                     cost_usd=cost, error=error))


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, children=4).boot()


def test_a_diamond_runs_each_step_once_with_results_passed_on(rig: Rig) -> None:
    wf = run(rig, DIAMOND)
    assert sorted(running(rig)) == ["a"]
    finish(rig, "a", "A\n")
    jobs = running(rig)
    assert sorted(jobs) == ["b", "c"]
    assert jobs["b"].spec.argv == ["echo", "b got A\n"]
    assert jobs["c"].spec.input == "A\n"
    finish(rig, "b", "B")
    assert sorted(running(rig)) == ["c"]  # d waits for both
    finish(rig, "c", "C")
    assert running(rig)["d"].spec.argv == ["echo", "B+C"]
    finish(rig, "d", "B+C\n")
    got = status(rig, wf)
    assert got["state"] == "succeeded"
    assert [(s["name"], s["state"], s["result"]) for s in got["steps"]] == [
        ("a", "succeeded", "A\n"), ("b", "succeeded", "B"), ("c", "succeeded", "C"), ("d", "succeeded", "B+C\n")]
    dispatched = [m.task_id for m in rig.children.of(cp.Dispatch)]
    assert len(dispatched) == 4 == len(set(dispatched))
    view = rig.stored(got["steps"][3]["task_ids"][0])
    assert (view.workflow, view.step) == (wf, "d")


def test_flow_wait_is_answered_once_the_workflow_is_final_and_after_the_commit(rig: Rig) -> None:
    from supervisord.events import RequestReceived

    wf = run(rig, DIAMOND)
    rig.step(RequestReceived((b"w",), ctl.FlowWait(ids=[wf], timeout_s=30)))
    assert not [r for e, r in rig.control.replies if e == (b"w",)]
    finish(rig, "a", "A")
    finish(rig, "b")
    finish(rig, "c", state="failed")
    (reply,) = [r for e, r in rig.control.replies if e == (b"w",)]
    assert isinstance(reply, ctl.Flows) and reply.pending == []
    assert reply.flows[0]["state"] == "failed"
    assert reply.flows[0]["error"]["kind"] == "exit"
    # a fresh reader of the journal sees the same final record
    reader = SqliteStore(rig.tmp / "tasks.db")
    try:
        stored = reader.workflow(wf)
        assert stored is not None and stored.state.value == "failed"
    finally:
        reader.close()


def test_a_bad_file_is_refused_naming_every_problem_and_nothing_is_stored(rig: Rig) -> None:
    doc = tomllib.loads('name = "x"\n[steps.a]\nkind = "exec"\nargv = ["{{steps.nope.result}}"]\ncolour = 1\n')
    reply = rig.request(ctl.FlowRun(doc=doc))
    assert isinstance(reply, ctl.Error) and reply.kind == "bad_request"
    assert reply.message == "steps.a.colour: unknown key"
    assert rig.hub.sched.tasks == {} and rig.store.workflows(None, 10) == []


def test_a_filled_task_past_a_limit_fails_its_step_as_a_template(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[limits]\nmax_argv_bytes = 64\n").boot()
    wf = run(rig, 'name = "big"\n[steps.a]\nkind = "exec"\nargv = ["echo", "a"]\n'
                  '[steps.b]\nafter = ["a"]\nkind = "exec"\nargv = ["echo", "{{steps.a.result}}"]\n')
    finish(rig, "a", "x" * 100)
    got = status(rig, wf)
    assert got["state"] == "failed"
    assert got["steps"][1]["state"] == "failed" and got["steps"][1]["error"]["kind"] == "template"
    assert "max_argv_bytes" in got["steps"][1]["error"]["message"]


def test_flow_cancel_cancels_running_tasks_then_runs_the_undo(rig: Rig) -> None:
    wf = run(rig, DIAMOND.replace('undo = { kind = "exec", argv = ["echo", "undo d"] }', "")
             + '[steps.a.undo]\nkind = "exec"\nargv = ["echo", "undo a"]\n')
    finish(rig, "a", "A")
    b = [t for t in rig.hub.sched.running() if t.step == "b"][0]
    reply = rig.request(ctl.FlowCancel(id=wf))
    assert isinstance(reply, ctl.Ok), reply
    who, _ = rig.dispatched(b.id)
    assert [m.task_id for m in rig.children.of(cp.Cancel, who)] == [b.id]
    finish(rig, "b", state="cancelled")
    finish(rig, "c", state="cancelled")
    assert running(rig)["a:undo:1"].spec.argv == ["echo", "undo a"]
    finish(rig, "a:undo:1")
    got = status(rig, wf)
    assert got["state"] == "cancelled"
    assert [s["state"] for s in got["steps"]] == ["undone", "cancelled", "cancelled", "skipped"]
    assert got["undo"] == [{"step": "a", "state": "succeeded", "attempts": 1,
                            "task_id": got["undo"][0]["task_id"]}]


def test_a_restart_runs_only_the_jobs_the_store_lacks_and_feeds_ends_it_missed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, children=4).boot()
    wf = run(rig, DIAMOND)
    finish(rig, "a", "A")
    b = [t for t in rig.hub.sched.running() if t.step == "b"][0]
    finish(rig, "b", "B")
    c = [t for t in rig.hub.sched.running() if t.step == "c"][0]
    rig.store.close()
    # the next daemon: c was running (its child died with the daemon); b and a are done
    again = Rig(tmp_path, children=4).boot()
    jobs = running(again)
    assert sorted(jobs) == ["c"] and jobs["c"].task_id == c.id, "c runs again as the same task"
    assert jobs["c"].attempt == 2
    finish(again, "c", "C")
    assert running(again)["d"].spec.argv == ["echo", "B+C"]
    finish(again, "d")
    got = status(again, wf)
    assert got["state"] == "succeeded"
    steps = {s["name"]: s["task_ids"] for s in got["steps"]}
    assert steps["b"] == [b.id] and steps["c"] == [c.id]
    all_dispatched = [m.task_id for m in again.children.of(cp.Dispatch)]
    assert b.id not in all_dispatched, "a finished step never runs again"


def test_max_cost_stops_claude_steps_and_fails_with_budget(rig: Rig) -> None:
    wf = run(rig, 'name = "cost"\nmax_cost_usd = 0.5\n[steps.a]\nprompt = "first"\n'
                  '[steps.b]\nafter = ["a"]\nprompt = "second"\n')
    finish(rig, "a", "A", cost=0.75)
    got = status(rig, wf)
    assert got["state"] == "failed" and got["error"]["kind"] == "budget"
    assert [s["state"] for s in got["steps"]] == ["succeeded", "skipped"]
    assert got["cost_usd"] == 0.75


FAN = """
name = "fan"
max_parallel = 3
[steps.a]
kind = "exec"
argv = ["echo", "a"]
[steps.b]
kind = "exec"
argv = ["echo", "b"]
[steps.c]
kind = "exec"
argv = ["echo", "c"]
"""


def test_a_workflow_whose_first_tasks_overfill_the_queue_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[daemon]\nmax_queued = 4\n", children=0).boot()
    (one,) = rig.submit(exec_spec("true"))  # queued: no child runs it
    three = run(rig, FAN)  # 1 + 3 = 4 queued: at the limit, accepted
    assert rig.hub.sched.queued == 4 and status(rig, three)["state"] == "running"
    reply = rig.request(ctl.FlowRun(doc=tomllib.loads(FAN), inputs={}))
    assert reply == ctl.Error(kind="queue_full", message="queue is full: 4 queued + 3 new exceeds daemon.max_queued=4:"
                                                         " the workflow's first 3 tasks were not accepted")
    assert rig.hub.sched.queued == 4  # nothing of the refused workflow is queued, stored or live
    assert [f["id"] for f in rig.request(ctl.FlowList()).flows] == [three]
    assert sorted(rig.hub.flows.live) == [three]
    assert rig.stored(one).state == "queued"


def test_flow_status_and_wait_cut_step_results_to_one_replys_budget(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config="[limits]\nmax_message_bytes = 65536\n", children=2).boot()  # budget: 32768 bytes
    wf = run(rig, FAN)
    for job, size in (("a", 10), ("b", 30_000), ("c", 40_000)):
        finish(rig, job, result="x" * size)
    rig.step(RequestReceived((b"w",), ctl.FlowWait(ids=[wf], timeout_s=5)))
    for reply in (rig.request(ctl.FlowStatus(id=wf)), [r for e, r in rig.control.replies if e == (b"w",)][0]):
        assert isinstance(reply, ctl.Flows), reply
        steps = {s["name"]: (len(s["result"]), s.get("result_cut_bytes")) for s in reply.flows[0]["steps"]}
        # a whole (10); b and c share the other 32758 bytes: 16379 each
        assert steps == {"a": (10, None), "b": (16_379, 13_621), "c": (16_379, 23_621)}, steps
    (c_task,) = status(rig, wf)["steps"][2]["task_ids"]
    assert len(rig.view(c_task).result or "") == 40_000  # the task keeps the whole result


def test_a_worktree_step_gets_its_repository_and_a_worktree_of_its_own(tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    rig = Rig(tmp_path, children=2).boot()
    doc = f'name = "wt"\n[steps.a]\nkind = "exec"\nargv = ["true"]\nworktree = true\ncwd = "{repo / "sub"}"\n'
    wf = run(rig, doc)
    (task,) = rig.hub.sched.running()
    assert (task.step, task.spec.repo, task.spec.worktree) == ("a", str(repo), True)
    _who, d = rig.dispatched(task.id)
    assert d.worktree is not None and d.worktree.branch == f"supd/{task.id}"
    assert status(rig, wf)["state"] == "running"
    bad = doc.replace(str(repo / "sub"), str(tmp_path))
    reply = rig.request(ctl.FlowRun(doc=tomllib.loads(bad), inputs={}))
    assert reply == ctl.Error(kind="bad_request", message=f"steps.a.cwd: {tmp_path} is not inside a git repository")


CHAT = """
name = "chat"
[steps.plan]
prompt = "make a plan"
cwd = "/srv/project"
[steps.act]
after = ["plan"]
prompt = "now do it"
resume_step = "plan"
"""


def test_a_resume_step_continues_the_earlier_steps_session_where_it_ran(rig: Rig) -> None:
    wf = run(rig, CHAT)
    finish_with = Outcome(exit_code=0, result="the plan", session_id="sess-1")
    (plan,) = [t for t in rig.hub.sched.running() if t.step == "plan"]
    rig.result(plan.id, outcome=finish_with)
    (act,) = [t for t in rig.hub.sched.running() if t.step == "act"]
    _who, d = rig.dispatched(act.id)
    assert (d.spec.prompt, d.spec.resume_session, d.spec.cwd) == ("now do it", "sess-1", "/srv/project")
    finish(rig, "act", result="done")
    assert status(rig, wf)["state"] == "succeeded"


def test_a_resume_step_whose_session_is_missing_fails_naming_the_step(rig: Rig) -> None:
    wf = run(rig, CHAT)
    finish(rig, "plan", result="no session")  # an outcome without a session id
    steps = {s["name"]: s for s in status(rig, wf)["steps"]}
    assert steps["act"]["state"] == "failed"
    (plan_task,) = steps["plan"]["task_ids"]
    assert steps["act"]["error"] == {"kind": "template", "message": "steps.act.resume_step: resume: task "
                                     f"{plan_task} has no Claude session to resume"}
    assert status(rig, wf)["state"] == "failed"
