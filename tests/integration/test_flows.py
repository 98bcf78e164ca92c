"""Workflows end to end: a real daemon, real processes, supctl, the real Claude CLI against
the stand-in API, `kill -9` of the daemon mid-step and mid-rollback. Each step's task
writes to a log file, so "ran once" is counted from what the processes did."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tracing import _poll, otlp  # noqa: F401  (the collector fixture)

pytestmark = pytest.mark.timeout(180)


def write(tmp: Path, text: str, name: str = "flow.toml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def run_json(d: Any, path: Path, *args: str, timeout_s: float = 120) -> tuple[int, dict[str, Any]]:
    r = d.supctl("flow", "run", str(path), "--wait", "--json", *args, timeout_s=timeout_s)
    assert r.stdout, (r.returncode, r.stderr, d.log()[-3000:])
    return r.returncode, json.loads(r.stdout)


def start(d: Any, path: Path, *args: str) -> str:
    r = d.supctl("flow", "run", str(path), "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


def status(d: Any, wf_id: str) -> dict[str, Any]:
    r = d.supctl("flow", "status", wf_id, "--json")
    return json.loads(r.stdout)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def logged(log: Path, word: str) -> str:
    """A shell command that appends `word` to `log` (what the tests count)."""
    return f"echo {word} >> {log}"


def test_a_diamond_passes_results_into_argv_and_stdin_and_tags_its_tasks(supd_factory, tmp_path):
    d = supd_factory(children=2).start()
    flow = write(tmp_path, """
name = "diamond"
[steps.a]
kind = "exec"
argv = ["sh", "-c", "echo '{\\"n\\": 21}'"]
[steps.b]
after = ["a"]
kind = "exec"
argv = ["expr", "{{steps.a.json.n}}", "*", "2"]
[steps.c]
after = ["a"]
kind = "exec"
argv = ["tr", "a-z", "A-Z"]
input = "from {{inputs.who}}: {{steps.a.result}}"
[steps.d]
after = ["b", "c"]
kind = "exec"
argv = ["sh", "-c", "printf '%s|' \\"$0\\" \\"$(cat)\\"", "{{steps.b.result}}"]
input = "{{steps.c.result}}"
""")
    rc, wf = run_json(d, flow, "--set", "who=me")
    assert rc == 0 and wf["state"] == "succeeded", wf
    steps = {s["name"]: s for s in wf["steps"]}
    assert steps["b"]["result"] == "42\n"
    assert steps["c"]["result"] == 'FROM ME: {"N": 21}\n'
    assert steps["d"]["result"] == '42\n|FROM ME: {"N": 21}|'
    assert [s["state"] for s in wf["steps"]] == ["succeeded"] * 4
    assert set(wf) >= {"id", "name", "state", "trace_id", "started_at", "finished_at", "cost_usd", "error", "steps",
                       "undo"}
    listed = json.loads(d.supctl("list", "--json").stdout)["tasks"]
    ours = {t["step"]: t for t in listed if t["workflow"] == wf["id"]}
    assert sorted(ours) == ["a", "b", "c", "d"]
    assert [ours[n]["id"] for n in "abcd"] == [steps[n]["task_ids"][0] for n in "abcd"]
    shown = d.supctl("result", steps["d"]["task_ids"][0])
    assert f"flow:   {wf['id']}  step=d" in shown.stdout
    human = d.supctl("flow", "status", wf["id"])
    assert human.returncode == 0 and "└─ d" in human.stdout and "also after b" in human.stdout, human.stdout


def test_a_bad_file_is_exit_2_naming_each_problem_and_nothing_is_accepted(supd_factory, tmp_path):
    d = supd_factory(children=1).start()
    flow = write(tmp_path, 'name = "bad"\n[steps.a]\nkind = "exec"\nargv = ["true"]\nafter = ["a"]\n'
                           '[steps.b]\nkind = "exec"\nargv = ["echo", "{{steps.zz.result}}"]\ncolor = 1\n')
    r = d.supctl("flow", "run", str(flow))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"supctl: {flow}: steps.b.color: unknown key",
        f"{flow}: steps.a.after: cycle: a after a",
    ], r.stderr
    assert json.loads(d.supctl("flow", "list", "--json").stdout) == {"flows": []}
    assert json.loads(d.supctl("list", "--json").stdout) == {"tasks": []}


def test_a_map_runs_its_items_in_parallel_and_joins_results_in_item_order(supd_factory, tmp_path):
    d = supd_factory(children=4).start()
    flow = write(tmp_path, """
name = "map"
[steps.files]
kind = "exec"
argv = ["printf", "x3\\n\\nx2\\nx1\\nx0\\n"]
[steps.each]
after = ["files"]
map = "files"
kind = "exec"
argv = ["sh", "-c", "sleep 0.$(echo $0 | tr -d x)5; echo {{index}}-$0", "{{item}}"]
[steps.all]
after = ["each"]
kind = "exec"
argv = ["echo", "{{steps.each.results}}"]
""")
    rc, wf = run_json(d, flow)
    assert rc == 0, wf
    each = wf["steps"][1]
    assert each["result"] == "0-x3\n1-x2\n2-x1\n3-x0"
    assert json.loads(wf["steps"][2]["result"]) == ["0-x3", "1-x2", "2-x1", "3-x0"]
    tasks = [json.loads(d.supctl("result", tid, "--json").stdout) for tid in each["task_ids"]]
    assert [t["step"] for t in tasks] == ["each[0]", "each[1]", "each[2]", "each[3]"]
    first_end = min(t["finished_at"] for t in tasks)
    assert all(t["started_at"] < first_end for t in tasks), "all four ran at once"
    assert tasks[0]["finished_at"] > tasks[3]["finished_at"], "x3 sleeps longest, yet its result comes first"


def test_compensate_with_continue_stands_in_and_without_it_fails_the_workflow(supd_factory, tmp_path):
    d = supd_factory(children=2).start()
    text = """
name = "comp"
[steps.try]
kind = "exec"
argv = ["sh", "-c", "exit 3"]
compensate = {{ kind = "exec", argv = ["echo", "fallback"], continue = {go} }}
[steps.next]
after = ["try"]
kind = "exec"
argv = ["echo", "got {{{{steps.try.result}}}}"]
"""
    rc, wf = run_json(d, write(tmp_path, text.format(go="true"), "a.toml"))
    assert rc == 0, wf
    assert [(s["state"], s["result"]) for s in wf["steps"]] == [("compensated", "fallback\n"),
                                                                  ("succeeded", "got fallback\n\n")]
    assert len(wf["steps"][0]["task_ids"]) == 2
    rc, wf = run_json(d, write(tmp_path, text.format(go="false"), "b.toml"))
    assert rc == 1 and wf["state"] == "failed", wf
    assert [s["state"] for s in wf["steps"]] == ["failed", "skipped"]
    assert wf["error"]["kind"] == "exit"


def test_undo_runs_last_finished_first_and_a_failing_undo_does_not_stop_the_rest(supd_factory, tmp_path):
    d = supd_factory(children=2).start()
    log = tmp_path / "log"
    flow = write(tmp_path, f"""
name = "undo"
undo_retries = 1
[steps.p]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'p')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-p')}"] }}
[steps.q]
after = ["p"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'q')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-q')}; exit 1"] }}
[steps.r]
after = ["q"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'r')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-r')}"] }}
[steps.boom]
after = ["r"]
kind = "exec"
argv = ["sh", "-c", "exit 1"]
""")
    rc, wf = run_json(d, flow)
    assert rc == 1 and wf["state"] == "failed"
    assert lines(log) == ["p", "q", "r", "undo-r", "undo-q", "undo-q", "undo-p"]
    assert [(u["step"], u["state"], u["attempts"]) for u in wf["undo"]] == [
        ("r", "succeeded", 1), ("q", "failed", 2), ("p", "succeeded", 1)]
    assert [s["state"] for s in wf["steps"]] == ["undone", "undo_failed", "undone", "failed"]


def test_cancel_during_a_map_stops_its_items_and_undoes_what_succeeded(supd_factory, tmp_path):
    d = supd_factory(children=3).start()
    log = tmp_path / "log"
    flow = write(tmp_path, f"""
name = "cancel"
[steps.first]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'first')}; printf 'a\\\\nb\\\\nc\\\\n'"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-first')}"] }}
[steps.slow]
after = ["first"]
map = "first"
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'slow-$0')}; exec sleep 60", "{{{{item}}}}"]
[steps.never]
after = ["slow"]
kind = "exec"
argv = ["true"]
""")
    wf_id = start(d, flow)
    assert _poll(lambda: len([x for x in lines(log) if x.startswith("slow-")]) == 3, 30), lines(log)
    r = d.supctl("flow", "cancel", wf_id)
    assert r.returncode == 0, r.stderr
    r = d.supctl("flow", "wait", wf_id, "--json", "--timeout", "60")
    assert r.returncode == 1, r.stdout
    wf = json.loads(r.stdout)
    assert wf["state"] == "cancelled" and wf["error"]["kind"] == "cancelled"
    assert [s["state"] for s in wf["steps"]] == ["undone", "cancelled", "skipped"]
    items = [json.loads(d.supctl("result", t, "--json").stdout) for t in wf["steps"][1]["task_ids"]]
    assert [t["state"] for t in items] == ["cancelled"] * 3
    assert lines(log)[-1] == "undo-first"


def _wait_for(predicate: Any, what: str, timeout_s: float = 30) -> None:
    assert _poll(predicate, timeout_s), what


def test_kill_9_during_a_step_then_a_restart_finishes_without_rerunning_finished_steps(supd_factory, tmp_path):
    log, gate = tmp_path / "log", tmp_path / "gate"
    flow = write(tmp_path, f"""
name = "crash"
[steps.a]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'a')}; echo A"]
[steps.b]
after = ["a"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'b')}; while [ ! -e {gate} ]; do sleep 0.05; done; echo B-$0", "{{{{steps.a.result}}}}"]
[steps.c]
after = ["b"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'c')}; echo $0", "{{{{steps.b.result}}}}"]
""")
    d = supd_factory(children=2).start()
    wf_id = start(d, flow)
    _wait_for(lambda: "b" in lines(log), "b started")
    d.proc.kill()
    d.proc.wait()
    again = supd_factory(children=2).start()
    _wait_for(lambda: lines(log).count("b") == 2, "b runs again (at least once)")
    gate.touch()
    r = again.supctl("flow", "wait", wf_id, "--json", "--timeout", "60")
    assert r.returncode == 0, (r.stdout, again.log()[-3000:])
    wf = json.loads(r.stdout)
    assert wf["steps"][2]["result"] == "B-A\n"
    assert lines(log) == ["a", "b", "b", "c"], "a finished before the crash and never ran again"


def test_kill_9_during_a_rollback_then_a_restart_continues_it_where_it_stopped(supd_factory, tmp_path):
    log, gate = tmp_path / "log", tmp_path / "gate"
    flow = write(tmp_path, f"""
name = "crash-undo"
[steps.p]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'p')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-p')}"] }}
[steps.q]
after = ["p"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'q')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-q')}; while [ ! -e {gate} ]; do sleep 0.05; done"] }}
[steps.r]
after = ["q"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'r')}"]
undo = {{ kind = "exec", argv = ["sh", "-c", "{logged(log, 'undo-r')}"] }}
[steps.boom]
after = ["r"]
kind = "exec"
argv = ["sh", "-c", "{logged(log, 'boom')}; exit 1"]
""")
    d = supd_factory(children=2).start()
    wf_id = start(d, flow)
    _wait_for(lambda: "undo-q" in lines(log), "the rollback reached q")
    d.proc.kill()
    d.proc.wait()
    again = supd_factory(children=2).start()
    _wait_for(lambda: lines(log).count("undo-q") == 2, "q's undo runs again")
    gate.touch()
    r = again.supctl("flow", "wait", wf_id, "--json", "--timeout", "60")
    assert r.returncode == 1
    wf = json.loads(r.stdout)
    assert wf["state"] == "failed" and [u["step"] for u in wf["undo"]] == ["r", "q", "p"]
    assert [u["state"] for u in wf["undo"]] == ["succeeded"] * 3
    assert lines(log) == ["p", "q", "r", "boom", "undo-r", "undo-q", "undo-q", "undo-p"], \
        "no finished step or undo ran twice; the interrupted undo ran again"


def test_a_claude_steps_answer_feeds_the_next_step(supd_factory, fakeapi, claude_config, tmp_path):
    d = supd_factory(children=2, config=claude_config).start()
    run = uuid.uuid4().hex[:8]
    flow = write(tmp_path, f"""
name = "ask"
[steps.ask]
prompt = "hello {run}"
model = "claude-sonnet-4-5"
[steps.shout]
after = ["ask"]
kind = "exec"
argv = ["tr", "a-z", "A-Z"]
input = "{{{{steps.ask.result}}}}"
[steps.summary]
after = ["ask"]
prompt = "Summarise these reviews."
input = "{{{{steps.ask.result}}}}"
""")
    rc, wf = run_json(d, flow)
    assert rc == 0, wf
    steps = {s["name"]: s for s in wf["steps"]}
    assert steps["ask"]["result"] == f"ECHO: hello {run}"
    assert steps["shout"]["result"] == f"ECHO: HELLO {run.upper()}"
    assert steps["summary"]["result"] == f"ECHO: Summarise these reviews.\n\nECHO: hello {run}"
    assert wf["cost_usd"] > 0
    assert fakeapi.stats()["by_prompt"].get(f"hello {run}") == 1


def test_one_trace_per_workflow_with_a_span_per_step_and_attempts_under_their_step(supd_factory, otlp, tmp_path):
    d = supd_factory(children=2, config=f'[tracing]\nexporter = "otlp-http"\nendpoint = "{otlp.url}"\n').start()
    flow = write(tmp_path, """
name = "traced"
[steps.a]
kind = "exec"
argv = ["printf", "1\\n2\\n"]
[steps.m]
after = ["a"]
map = "a"
kind = "exec"
argv = ["echo", "{{item}}"]
""")
    before = time.time_ns()
    rc, wf = run_json(d, flow)
    after = time.time_ns()
    assert rc == 0, wf
    trace_id = wf["trace_id"]
    assert before <= int(trace_id[:16], 16) <= after, "the trace id starts with time_ns() at the submit"
    tasks = [json.loads(d.supctl("result", t, "--json").stdout) for s in wf["steps"] for t in s["task_ids"]]
    assert {t["trace_id"] for t in tasks} == {trace_id}
    assert d.stop() == 0

    def complete() -> bool:
        names = [s["name"] for s in otlp.snapshot()]
        return "supd.workflow traced" in names and names.count("supd.task exec") >= 3

    assert _poll(complete, 30), [s["name"] for s in otlp.snapshot()]
    spans = [s for s in otlp.snapshot() if s["trace_id"] == trace_id]
    (root,) = [s for s in spans if s["name"] == "supd.workflow traced"]
    step_spans = {s["name"]: s for s in spans if s["name"].startswith("supd.step ")}
    assert sorted(step_spans) == ["supd.step a", "supd.step m"]
    assert {s["parent"] for s in step_spans.values()} == {root["span_id"]}
    for task in tasks:
        (attempt,) = [s for s in spans if s["span_id"] == task["span_id"]]
        step = task["step"].split("[")[0]
        assert attempt["parent"] == step_spans[f"supd.step {step}"]["span_id"] == task["parent_span_id"]


def test_worktree_steps_each_commit_on_a_branch_of_their_own_and_leave_the_checkout_clean(supd_factory, tmp_path):
    """A map step with `worktree = true`: each item edits the same file in its own worktree; the
    next step sees the results; the main checkout is untouched and each branch has its edit."""
    from tests.integration.test_agents import git, make_repo

    repo = make_repo(tmp_path / "repo")
    d = supd_factory(children=2).start()
    path = write(tmp_path, f"""
name = "edits"
[steps.items]
kind = "exec"
argv = ["printf", "one\\\\ntwo\\\\n"]
[steps.edit]
after = ["items"]
map = "items"
kind = "exec"
worktree = true
cwd = "{repo / "sub"}"
argv = ["sh", "-c", "echo {{{{item}}}} >> ../shared.txt; git rev-parse --show-toplevel"]
[steps.done]
after = ["edit"]
kind = "exec"
argv = ["echo", "{{{{steps.edit.results}}}}"]
""")
    code, flow = run_json(d, path)
    assert code == 0 and flow["state"] == "succeeded", flow
    edit = next(s for s in flow["steps"] if s["name"] == "edit")
    assert len(edit["task_ids"]) == 2
    tops = json.loads(next(s for s in flow["steps"] if s["name"] == "done")["result"])
    assert sorted(Path(t.strip()).name for t in tops) == sorted(edit["task_ids"]), "each item in its own worktree"
    assert git(repo, "status", "--porcelain") == "" and (repo / "shared.txt").read_text() == "original\n"
    for tid, word in zip(edit["task_ids"], ["one", "two"]):
        assert git(repo, "show", f"supd/{tid}:shared.txt") == f"original\n{word}\n"


def test_a_resume_step_continues_the_earlier_claude_session(supd_factory, claude_config, fakeapi, tmp_path):
    """The real CLI, `--resume`d by supd: the stand-in API sees the earlier step's turns."""
    d = supd_factory(children=1, config=claude_config).start()
    path = write(tmp_path, """
name = "chat"
[steps.plan]
prompt = "remember the word heron"
[steps.ask]
after = ["plan"]
prompt = "what was the word?"
resume_step = "plan"
""")
    fakeapi.reset()
    code, flow = run_json(d, path)
    assert code == 0 and flow["state"] == "succeeded", flow
    ask = next(s for s in flow["steps"] if s["name"] == "ask")
    assert ask["result"] == "ECHO: what was the word? (turn 2, first: remember the word heron)"
    convo = fakeapi.conversations()[-1]
    assert ["user", "remember the word heron"] in convo and convo[-1] == ["user", "what was the word?"]
