"""The hub with fakes: exclusive keys held and released across results, losses, cancels and
recovery; batches, their cost cap and their hook; the rate-limit gate.

Each test names the promise it holds to. Expected outcomes are written out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proto import children as cp
from proto import control as ctl
from proto.task import ErrorKind, Outcome, TaskError, TaskSpec
from tests.hub.rig import Rig, exec_spec

pytestmark = pytest.mark.timeout(30)

CONFIG = "[tasks]\nkill_grace_s = 1.0\nretry_base_s = 0.01\nretry_max_s = 0.01\n"


def dispatched_ids(rig: Rig) -> list[str]:
    return [d.task_id for d in rig.children.of(cp.Dispatch)]


def claude(prompt: str = "hi", **kw: object) -> TaskSpec:
    return TaskSpec(kind="claude", prompt=prompt, **kw)  # type: ignore[arg-type]


# ---- keys -------------------------------------------------------------------------------------


def test_tasks_with_one_key_run_one_after_another_in_priority_order(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG, children=4).boot()
    a, b, c, d = rig.submit(exec_spec(key="repo"), exec_spec(key="repo"), exec_spec(key="repo", priority=3),
                            exec_spec(key="other"))
    assert dispatched_ids(rig) == [c, d]  # one "repo" (the priority-3 one), one "other"; two children idle
    status = rig.request(ctl.Status())
    assert isinstance(status, ctl.Info)
    assert status.data["keys"] == {"other": {"limit": 1, "held_by": [d], "waiting": 0},
                                   "repo": {"limit": 1, "held_by": [c], "waiting": 2}}
    rig.result(c)
    assert dispatched_ids(rig) == [c, d, a]  # then by arrival
    rig.result(a)
    assert dispatched_ids(rig) == [c, d, a, b]
    rig.result(b)
    rig.result(d)
    assert [rig.view(t).state for t in (a, b, c, d)] == ["succeeded"] * 4


def test_a_lost_attempt_holds_its_key_until_its_tree_is_dead(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG + "retries = 1\n", children=2).boot()
    a, b = rig.submit(exec_spec(key="k"), exec_spec(key="k"))
    who, _ = rig.dispatched(a)
    rig.exit(who)
    rig.advance(0.3)  # lost: blocked until its tree is dead
    assert rig.view(a).state == "blocked"
    rig.advance(2.0)
    assert dispatched_ids(rig) == [a]  # b does not start while a's tree may still run
    rig.trees_dead()
    rig.advance(0.1)
    assert dispatched_ids(rig) == [a, a] and rig.dispatched(a)[1].epoch == 2  # the older task first
    rig.result(a)
    assert dispatched_ids(rig) == [a, a, b]


def test_a_lost_attempt_that_fails_for_good_still_holds_its_key_until_its_tree_is_dead(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG, children=2).boot()
    a, b = rig.submit(exec_spec(key="k"), exec_spec(key="k"))
    who, _ = rig.dispatched(a)
    rig.exit(who)
    rig.advance(0.3)
    assert rig.view(a).state == "failed" and rig.view(a).error.kind == "worker_lost"
    rig.advance(2.0)
    assert dispatched_ids(rig) == [a]
    rig.trees_dead()
    rig.advance(0.1)
    assert dispatched_ids(rig) == [a, b]


def test_a_cancelled_holder_frees_its_key_at_its_result_and_a_cancelled_waiter_never_runs(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG, children=2).boot()
    a, b, c = rig.submit(exec_spec(key="k"), exec_spec(key="k"), exec_spec(key="k"))
    rig.request(ctl.Cancel(id=b))  # a waiter
    rig.request(ctl.Cancel(id=a))  # the holder: its child is asked to end it
    assert dispatched_ids(rig) == [a]
    rig.result(a, state="cancelled", outcome=Outcome(error=TaskError(kind=ErrorKind.CANCELLED, message="x")))
    assert dispatched_ids(rig) == [a, c]
    assert (rig.view(a).state, rig.view(b).state) == ("cancelled", "cancelled")


def test_a_recovered_attempt_with_a_live_tree_holds_its_key_until_it_is_dead(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG + "retries = 2\n", children=2).boot()
    a, b = rig.submit(exec_spec(key="k"), exec_spec(key="k"))
    rig.store.close()
    again = Rig(tmp_path, config=CONFIG + "retries = 2\n", children=2)
    again.procs.alive_at_start = {a}
    again.boot()
    assert again.view(a).state == "blocked" and dispatched_ids(again) == []  # b waits for a's old tree
    again.advance(1.5)
    again.trees_dead()
    again.advance(0.1)
    assert dispatched_ids(again) == [a]  # one at a time: the older first
    again.result(a)
    assert dispatched_ids(again) == [a, b]


# ---- batches ---------------------------------------------------------------------------------


def test_a_batch_over_its_cost_cap_cancels_its_queued_claude_tasks_and_runs_its_hook(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG + '[hooks]\non_batch_done = ["/bin/cat"]\ntimeout_s = 5\n', children=1).boot()
    reply = rig.request(ctl.Submit(tasks=[claude("a"), claude("b"), claude("c"), exec_spec()], label="nightly",
                                   max_cost_usd=0.05))
    assert isinstance(reply, ctl.Accepted) and reply.batch == reply.trace_id
    a, b, c, e = reply.ids
    rig.result(a, outcome=Outcome(exit_code=0, result="ok", cost_usd=0.06))
    assert [rig.view(t).state for t in (b, c)] == ["cancelled", "cancelled"]
    assert rig.view(b).error.kind == "budget"
    assert rig.procs.hooks == []  # the exec task still runs: the batch is not done
    rig.result(e)
    ((name, argv, data, timeout_s),) = rig.procs.hooks
    summary = json.loads(data)
    assert (argv, timeout_s, name) == (["/bin/cat"], 5.0, f"on_batch_done:{reply.batch}")
    assert {k: summary[k] for k in ("label", "tasks", "succeeded", "failed", "cancelled", "cost_usd",
                                    "budget_spent", "state")} == {
        "label": "nightly", "tasks": 4, "succeeded": 2, "failed": 0, "cancelled": 2, "cost_usd": 0.06,
        "budget_spent": True, "state": "done"}
    got = rig.request(ctl.Batch(id=reply.batch))
    assert isinstance(got, ctl.Info) and got.data["batch"]["cancelled"] == 2
    assert [t["id"] for t in got.data["tasks"]] == [a, b, c, e]
    listed = rig.request(ctl.List(label="nightly"))
    assert isinstance(listed, ctl.Tasks) and {t.id for t in listed.tasks} == {a, b, c, e}
    none = rig.request(ctl.List(label="other"))
    assert isinstance(none, ctl.Tasks) and none.tasks == []


def test_a_batch_done_before_a_crash_recorded_it_runs_its_hook_after_the_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG + '[hooks]\non_batch_done = ["/bin/true"]\n', children=1).boot()
    (tid,) = rig.submit(exec_spec())
    rig.result(tid)
    assert len(rig.procs.hooks) == 1
    rig.store.close()
    again = Rig(tmp_path, config=CONFIG + '[hooks]\non_batch_done = ["/bin/true"]\n', children=1).boot()
    assert again.procs.hooks == []  # it was recorded done: not run twice
    unknown = again.request(ctl.Batch(id="nope"))
    assert isinstance(unknown, ctl.Error) and unknown.kind == "not_found"


# ---- the gate ----------------------------------------------------------------------------------


def test_a_429_with_retry_after_holds_every_claude_task_but_not_exec_tasks(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG + "retries = 1\n", children=3).boot()
    a, b = rig.submit(claude("a"), claude("b"))
    rl = Outcome(exit_code=1, error=TaskError(kind=ErrorKind.RATE_LIMITED, message="API 429"), retry_after_s=3.0)
    rig.result(a, state="failed", outcome=rl)
    health = rig.request(ctl.Health())
    assert isinstance(health, ctl.Info) and health.data["gate"]["state"] == "closed"
    assert health.data["gate"]["wait_s"] == 3.0 and health.data["status"] == "degraded"
    (e,) = rig.submit(exec_spec())
    assert dispatched_ids(rig) == [a, b, e]  # the exec task runs; a's retry waits behind the gate
    rig.advance(2.9)
    assert dispatched_ids(rig) == [a, b, e]
    assert "gate/closed" in rig.bus.topics and "gate/open" not in rig.bus.topics
    rig.advance(0.2)
    assert dispatched_ids(rig) == [a, b, e, a]
    assert "gate/open" in rig.bus.topics
    status = rig.request(ctl.Status())
    assert isinstance(status, ctl.Info) and status.data["gate"]["state"] == "open"


def test_a_429_without_a_reset_time_leaves_the_gate_open(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG, children=1).boot()
    a, b = rig.submit(claude("a"), claude("b"))
    rig.result(a, state="failed", outcome=Outcome(exit_code=1, error=TaskError(kind=ErrorKind.RATE_LIMITED,
                                                                                 message="API 429")))
    assert dispatched_ids(rig) == [a, b]


# ---- transcripts and tallies on the dispatch path ------------------------------------------------


def transcript(rig: Rig, task_id: str) -> list[tuple[str, str]]:
    rig.store.commit()
    got = rig.request(ctl.Logs(id=task_id))
    assert isinstance(got, ctl.Transcript), got
    return [(line.stream, line.text) for line in got.lines]


def test_an_attempts_note_heads_its_lines_and_a_silent_success_writes_no_transcript(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config=CONFIG, children=1).boot()
    quiet, loud, failing = rig.submit(exec_spec(), exec_spec(), exec_spec())
    rig.result(quiet)
    assert transcript(rig, quiet) == []
    who, d = rig.dispatched(loud)
    rig.say(who, cp.Output(task_id=loud, attempt=1, epoch=d.epoch, lines=[cp.Line(1.0, "stdout", 1, "hello")]))
    rig.result(loud)
    assert transcript(rig, loud) == [("supd", f"attempt 1 started on child {who}"), ("stdout", "hello")]
    rig.result(failing, state="failed", outcome=Outcome(exit_code=3))
    assert transcript(rig, failing) == [("supd", f"attempt 1 started on child {who}")]


def test_an_open_batchs_counts_after_a_crash_come_from_its_tasks(tmp_path: Path) -> None:
    config = CONFIG + '[hooks]\non_batch_done = ["/bin/cat"]\n'
    rig = Rig(tmp_path, config=config, children=1).boot()
    reply = rig.request(ctl.Submit(tasks=[exec_spec(), exec_spec(), exec_spec()], label="nightly"))
    assert isinstance(reply, ctl.Accepted)
    a, b, c = reply.ids
    rig.result(a, outcome=Outcome(exit_code=0, cost_usd=0.5))
    rig.result(b, state="failed", outcome=Outcome(exit_code=1, cost_usd=0.25))
    rig.dispatched(c)
    rig.store.commit()
    rig.store.close()  # c was running: the daemon died
    again = Rig(tmp_path, config=config, children=1).boot()
    again.hello(next(iter(again.procs.spawned)))
    again.result(c)
    ((_name, _argv, data, _timeout),) = again.procs.hooks
    summary = json.loads(data)
    assert {k: summary[k] for k in ("label", "tasks", "succeeded", "failed", "cost_usd", "state")} == {
        "label": "nightly", "tasks": 3, "succeeded": 2, "failed": 1, "cost_usd": 0.75, "state": "done"}
