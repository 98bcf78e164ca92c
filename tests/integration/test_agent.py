"""Agent work through a real supd, the real Claude CLI and the stand-in API: exclusive keys,
batch cost caps, the on-done hook and the rate-limit gate."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import assert_no_leftovers

pytestmark = pytest.mark.timeout(150)


def claude(prompt: str, **kw: object) -> TaskSpec:
    return TaskSpec(kind="claude", prompt=prompt, model="claude-sonnet-4-5", **kw)  # type: ignore[arg-type]


def overlaps(a: ctl.TaskView, b: ctl.TaskView) -> bool:
    assert a.started_at and a.finished_at and b.started_at and b.finished_at
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_tasks_with_one_key_never_overlap_and_all_succeed_while_distinct_keys_overlap(supd_factory, fakeapi,
                                                                                      claude_config):
    d = supd_factory(children=4, config=claude_config).start()
    run = uuid.uuid4().hex[:8]
    same = d.submit(*[claude(f"[[latency:0.5]] same key {i} {run}", key="repo") for i in range(4)])
    tasks = d.wait(same, timeout_s=120)
    assert [t.state for t in tasks] == ["succeeded"] * 4, [t.error for t in tasks]
    assert [t.key for t in tasks] == ["repo"] * 4
    assert not any(overlaps(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:]), \
        [(t.started_at, t.finished_at) for t in tasks]
    apart = d.submit(*[claude(f"[[latency:1.5]] own key {i} {run}", key=f"k{i}") for i in range(2)])
    a, b = d.wait(apart, timeout_s=60)
    assert (a.state, b.state) == ("succeeded", "succeeded")
    assert overlaps(a, b), "distinct keys run at once"
    pids = d.children_pids()
    assert d.stop() == 0
    assert_no_leftovers(pids, set(same + apart))


def test_a_batch_cost_cap_stops_its_queued_claude_tasks(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=1, config=claude_config).start()
    run = uuid.uuid4().hex[:8]
    prompts = [f"capped {i} {run}" for i in range(4)]
    r = d.supctl("submit", "--json", "--label", f"cap-{run}", "--max-cost-usd", "0.01", "--file", "-",
                 input_text="".join(json.dumps({"kind": "claude", "prompt": p, "model": "claude-sonnet-4-5"}) + "\n"
                                    for p in prompts))
    assert r.returncode == 0, r.stderr
    submitted = json.loads(r.stdout)
    tasks = d.wait(submitted["ids"], timeout_s=60)
    assert tasks[0].state == "succeeded" and tasks[0].cost_usd > 0.01
    assert [(t.state, t.error.kind if t.error else None) for t in tasks[1:]] == [("cancelled", "budget")] * 3
    assert [fakeapi.stats()["by_prompt"].get(p) for p in prompts] == [1, None, None, None]
    b = d.supctl("batch", submitted["batch"])
    assert b.returncode == 1, b.stdout  # a done batch with cancelled tasks
    assert f"batch {submitted['batch']} [cap-{run}] done: 4 tasks, 1 succeeded, 0 failed, 3 cancelled" in b.stdout
    assert "(budget spent)" in b.stdout and b.stdout.count("cancelled (budget)") == 3
    listed = d.supctl("list", "--json", "--label", f"cap-{run}")
    assert sorted(t["id"] for t in json.loads(listed.stdout)["tasks"]) == sorted(submitted["ids"])


def test_the_on_done_hook_gets_the_batch_summary_and_a_failing_hook_is_only_logged(supd_factory, state_dir: Path):
    out = state_dir / "hook.json"
    script = f"import sys, pathlib; pathlib.Path({str(out)!r}).write_text(sys.stdin.read()); sys.exit(3)"
    config = f'[hooks]\non_batch_done = [{json.dumps(sys.executable)}, "-c", {json.dumps(script)}]\ntimeout_s = 10\n'
    d = supd_factory(children=2, config=config).start()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"]), TaskSpec(kind="exec", argv=["false"])],
                                 label="nightly"))
    assert isinstance(reply, ctl.Accepted)
    d.wait(reply.ids)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    summary = json.loads(out.read_text())
    assert {k: summary[k] for k in ("id", "label", "tasks", "succeeded", "failed", "cancelled", "state")} == {
        "id": reply.batch, "label": "nightly", "tasks": 2, "succeeded": 1, "failed": 1, "cancelled": 0,
        "state": "done"}
    while "hook_failed" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "exited with 3" in d.log()  # logged, never fatal:
    assert d.info(ctl.Status())["phase"] == "running"
    assert d.stop() == 0


def test_a_429_with_retry_after_holds_every_claude_task_until_then(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=3, config=claude_config).start()
    run = uuid.uuid4().hex[:8]
    limited = f"[[status:429]] [[retry_after:3]] [[once]] first {run}"
    (first,) = d.submit(claude(limited, retries=1))
    deadline = time.monotonic() + 30
    while d.info(ctl.Status())["gate"]["state"] != "closed":
        assert time.monotonic() < deadline, d.log()[-3000:]
        time.sleep(0.02)
    health = d.info(ctl.Health())
    # retry-after: 3, and the unified reset header (whole epoch seconds, rounded up): the later one
    assert health["gate"]["state"] == "closed" and 0 < health["gate"]["wait_s"] <= 4.0
    others = d.submit(*[claude(f"after the 429 {i} {run}") for i in range(3)])
    (shell,) = d.submit(TaskSpec(kind="exec", argv=["true"]))
    (exec_task,) = d.wait([shell], timeout_s=10)
    assert exec_task.state == "succeeded"  # exec tasks still run behind the gate
    assert d.info(ctl.Status())["gate"]["state"] == "closed"
    tasks = d.wait([first, *others], timeout_s=90)
    assert [t.state for t in tasks] == ["succeeded"] * 4, [t.error for t in tasks]
    assert tasks[0].attempts == 2
    log = [e for e in fakeapi.stats()["log"] if run in e["prompt"]]
    rejected_at = log[0]["at"]
    assert "status" in log[0]["behaviours"]
    later = [e["at"] - rejected_at for e in log[1:]]
    assert len(later) == 4 and min(later) >= 2.9, later  # nothing reached the API for 3 s (less a clock tick)
    gate_lines = [line for line in d.log().splitlines() if "gate" in line and "state=" in line]
    assert any("state=closed" in line for line in gate_lines) and any("state=open" in line for line in gate_lines)
