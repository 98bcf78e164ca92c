"""Workflows on a fleet: real daemons on one real PostgreSQL. A diamond submitted on one host
whose steps run on both; `flow status/list/wait/cancel` from the other host; `kill -9` of
the host running the engine mid-workflow, the other host takes it over and finishes it with
no finished step run twice (each step appends its name to a log file: what ran is counted
from what the processes did)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Supd, assert_no_leftovers, descendants_of
from tests.integration.test_fleet import Fleet, fleet  # noqa: F401  (the fixture)
from proto import control as ctl

pytestmark = pytest.mark.timeout(180)


def write(tmp: Path, text: str) -> Path:
    path = tmp / "flow.toml"
    path.write_text(text)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def start(d: Supd, path: Path) -> str:
    r = d.supctl("flow", "run", str(path), "--json")
    assert r.returncode == 0, (r.stdout, r.stderr, d.log()[-3000:])
    return str(json.loads(r.stdout)["id"])


def flow_wait(d: Supd, wf_id: str, timeout_s: float = 90) -> dict[str, Any]:
    r = d.supctl("flow", "wait", wf_id, "--json", "--timeout", str(timeout_s), timeout_s=timeout_s + 10)
    assert r.stdout, (r.returncode, r.stderr, d.log()[-3000:])
    return dict(json.loads(r.stdout))


def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_a_diamond_submitted_on_one_host_runs_its_steps_on_both_and_any_host_answers(
        fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=1)
    flow = write(tmp_path, """
name = "diamond"
max_parallel = 2  # the default is the engine host's pool (1 child here)
[steps.top]
kind = "exec"
argv = ["sh", "-c", "echo 21"]
[steps.left]
after = ["top"]
kind = "exec"
argv = ["sh", "-c", "sleep 1; expr $0 '*' 2", "{{steps.top.result}}"]
[steps.right]
after = ["top"]
kind = "exec"
argv = ["sh", "-c", "sleep 1; echo right-$0", "{{steps.top.result}}"]
[steps.bottom]
after = ["left", "right"]
kind = "exec"
argv = ["sh", "-c", "printf '%s|%s' $0 $1", "{{steps.left.result}}", "{{steps.right.result}}"]
""")
    wf_id = start(a, flow)
    wf = flow_wait(b, wf_id)  # waited for on the host that is not its engine: woken by supd_flow_finished
    assert wf["state"] == "succeeded", wf
    steps = {s["name"]: s for s in wf["steps"]}
    assert steps["bottom"]["result"] == "42|right-21"
    ids = [steps[n]["task_ids"][0] for n in ("top", "left", "right", "bottom")]
    views = {v.id: v for v in b.wait(ids, 10)}
    assert {views[steps[n]["task_ids"][0]].host for n in ("left", "right")} == {"a", "b"}, "both hosts ran a step"
    assert all(v.workflow == wf_id for v in views.values()), "each step's task is tagged with its workflow"
    assert len(wf_id) == 36 and all(len(i) == 36 for i in ids), "UUIDv7-style ids: hosts make them without talking"
    shown = json.loads(b.supctl("flow", "status", wf_id, "--json").stdout)
    assert shown["state"] == "succeeded" and [s["state"] for s in shown["steps"]] == ["succeeded"] * 4
    listed = json.loads(b.supctl("flow", "list", "--json").stdout)
    assert [f["id"] for f in listed["flows"]] == [wf_id] and listed["flows"][0]["steps_succeeded"] == 4
    r = b.supctl("flow", "cancel", wf_id)
    assert r.returncode != 0 and "already finished" in r.stderr + r.stdout
    r = b.supctl("flow", "status", "nope")
    assert r.returncode != 0 and "no workflow" in r.stderr + r.stdout


def test_flow_cancel_on_another_host_reaches_the_engine(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=1)
    log = tmp_path / "log"
    flow = write(tmp_path, f"""
name = "slow"
[steps.one]
kind = "exec"
argv = ["sh", "-c", "echo one >> {log}; sleep 60"]
[steps.two]
after = ["one"]
kind = "exec"
argv = ["sh", "-c", "echo two >> {log}"]
""")
    wf_id = start(a, flow)
    until(lambda: "one" in lines(log), "step one runs")
    r = b.supctl("flow", "cancel", wf_id)
    assert r.returncode == 0, (r.stdout, r.stderr)
    wf = flow_wait(b, wf_id)
    assert wf["state"] == "cancelled" and [s["state"] for s in wf["steps"]] == ["cancelled", "skipped"], wf
    assert lines(log) == ["one"]


def test_kill_9_of_the_engines_host_the_other_takes_over_and_no_finished_step_runs_twice(
        fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1, lease_s=2.0), fleet.start("b", children=1, lease_s=2.0)
    a.request(ctl.Scale(children=0))  # every step runs on b: the step running at the kill is b's, adopted
    log, gate = tmp_path / "log", tmp_path / "gate"
    flow = write(tmp_path, f"""
name = "crash"
[steps.s1]
kind = "exec"
argv = ["sh", "-c", "echo s1 >> {log}; echo A"]
[steps.s2]
after = ["s1"]
kind = "exec"
argv = ["sh", "-c", "echo s2 >> {log}; while [ ! -e {gate} ]; do sleep 0.05; done; echo B-$0", "{{{{steps.s1.result}}}}"]
[steps.s3]
after = ["s2"]
kind = "exec"
argv = ["sh", "-c", "echo s3 >> {log}; echo $0", "{{{{steps.s2.result}}}}"]
""")
    wf_id = start(a, flow)
    until(lambda: "s2" in lines(log), "s2 started")
    assert a.proc is not None
    a_tree = [a.proc.pid] + [p.pid for p in descendants_of(a.proc.pid)]
    a.proc.kill()
    a.proc.wait()

    def owner() -> str | None:
        with psycopg.connect(fleet.url) as db:
            row = db.execute("SELECT host FROM workflows WHERE id=%s", (wf_id,)).fetchone()
        return row[0] if row else None

    until(lambda: owner() == "b", "b took the workflow over (a's lease ended)", timeout_s=20)
    gate.touch()
    wf = flow_wait(b, wf_id)
    assert wf["state"] == "succeeded", (wf, b.log()[-3000:])
    assert wf["steps"][2]["result"] == "B-A\n"
    assert lines(log) == ["s1", "s2", "s3"], "s1 finished before the kill and never ran again; s2 was adopted"
    assert "workflow_taken_over" in b.log()
    assert_no_leftovers(a_tree, set())


def test_a_worktree_or_resume_step_is_refused_in_a_fleet_naming_it(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.start("a")
    path = write(tmp_path, f'name = "wt"\n[steps.edit]\nkind = "exec"\nargv = ["true"]\nworktree = true\n'
                           f'cwd = "{tmp_path}"\n')
    r = a.supctl("flow", "run", str(path))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)  # refused by the daemon
    assert "steps.edit.worktree: a fleet runs a workflow's steps on any host" in r.stderr, r.stderr
    path = write(tmp_path, 'name = "chat"\n[steps.a]\nprompt = "p"\n[steps.b]\nafter = ["a"]\nprompt = "q"\n'
                           'resume_step = "a"\n')
    r = a.supctl("flow", "run", str(path))
    assert r.returncode == 1 and "steps.b.resume_step: a fleet runs a workflow's steps on any host" in r.stderr
    assert a.request(ctl.FlowList()).flows == []
