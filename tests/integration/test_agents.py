"""Agent work end to end: real git, the real Claude CLI against the stand-in API, real daemons.

Worktree tasks (each on its own branch, the main checkout untouched, no directory left),
`--resume` (the stand-in receives the earlier conversation), `retry`, transcripts through
`supctl logs` after a restart, `--json-schema`, and prune removing branches and transcripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proto import control as ctl
from proto.task import TaskSpec

pytestmark = pytest.mark.timeout(180)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "shared.txt").write_text("original\n")
    (path / "sub").mkdir()
    (path / "sub" / "keep.txt").write_text("x\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return path


def test_four_parallel_worktree_tasks_each_get_their_own_branch(supd_factory, claude_config, state_dir, fakeapi):
    repo = make_repo(state_dir / "repo")
    head = git(repo, "rev-parse", "HEAD").strip()
    d = supd_factory(children=4, config=claude_config).start()
    ids = d.submit(*[TaskSpec(prompt=f"[[bash:echo from task {i} > shared.txt && pwd > where.txt]] edit {i}",
                              allowed_tools=["Bash"], worktree=True, cwd=str(repo), timeout_s=120)
                     for i in range(4)])
    tasks = d.wait(ids, timeout_s=150)
    assert [t.state for t in tasks] == ["succeeded"] * 4, [(t.error, t.stderr) for t in tasks]
    assert max(t.started_at for t in tasks) < min(t.finished_at for t in tasks), "the four ran at the same time"
    for i, t in enumerate(tasks):
        wt = t.worktree
        assert wt is not None and wt.branch == f"supd/{t.id}" and wt.repo == str(repo)
        assert wt.base == head and wt.head and wt.head != head
        assert (wt.files_changed, wt.insertions, wt.deletions) == (2, 2, 1)
        assert git(repo, "show", f"{wt.branch}:shared.txt") == f"from task {i}\n"
        where = git(repo, "show", f"{wt.branch}:where.txt").strip()
        assert where == str(state_dir / "worktrees" / t.id), "the task ran in its own worktree"
        log = git(repo, "log", "-1", "--format=%an|%s", wt.branch).strip()
        assert log == f"supd|{t.id}: [[bash:echo from task {i} > shared.txt && pwd > where.txt]] edit {i}"
    # the main checkout is untouched, and no worktree directory is left
    assert (repo / "shared.txt").read_text() == "original\n"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert [p for p in (state_dir / "worktrees").iterdir() if p.is_dir()] == []
    assert git(repo, "worktree", "list").count("\n") == 1
    # supctl diff prints the branch's diff against its base
    diff = d.supctl("diff", ids[2])
    assert diff.returncode == 0, diff.stderr
    assert "+from task 2" in diff.stdout and "-original" in diff.stdout
    shown = d.supctl("result", "--json", ids[2])
    assert json.loads(shown.stdout)["worktree"]["files_changed"] == 2


def test_worktree_needs_a_git_repository_and_a_known_base(supd_factory, state_dir):
    plain = state_dir / "plain"
    plain.mkdir()
    d = supd_factory(children=1).start()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], worktree=True, cwd=str(plain))]))
    assert isinstance(reply, ctl.Error) and reply.kind == "bad_request"
    assert reply.message == f"worktree: cwd {plain} is not inside a git repository"
    out = d.supctl("submit", "--kind", "exec", "--worktree", "--cwd", str(plain), "--", "true")
    assert out.returncode == 2 and "not inside a git repository" in out.stderr
    repo = make_repo(state_dir / "repo")
    out = d.supctl("submit", "--kind", "exec", "--worktree", "--cwd", str(repo), "--base", "nope", "--", "true")
    assert out.returncode == 2 and "--base nope: not a commit" in out.stderr
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], repo="/x")]))
    assert isinstance(reply, ctl.Error) and reply.message == "repo: set by supd, not by a client"


def test_exec_worktree_in_a_subdirectory_with_base_and_keep_none(supd_factory, state_dir):
    repo = make_repo(state_dir / "repo")
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "shared.txt").write_text("second\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    d = supd_factory(children=1, config='[worktrees]\nkeep = "none"\n').start()
    out = d.supctl("submit", "--json", "--kind", "exec", "--worktree", "--cwd", str(repo / "sub"), "--base",
                   first, "--", "sh", "-c", "pwd; cat ../shared.txt; echo new > made.txt")
    (tid,) = json.loads(out.stdout)["ids"]
    (t,) = d.wait([tid])
    assert t.state == "succeeded"
    assert t.result == f"{state_dir / 'worktrees' / tid / 'sub'}\noriginal\n"
    assert t.worktree.base == first and t.worktree.files_changed == 1
    assert git(repo, "branch", "--list", f"supd/{tid}") == "", "keep = none: the branch went too"
    assert [p for p in (state_dir / "worktrees").iterdir() if p.is_dir()] == []


def test_resume_continues_the_session_and_the_stand_in_gets_the_earlier_turns(supd_factory, claude_config,
                                                                               fakeapi):
    d = supd_factory(children=1, config=claude_config).start()
    (first,) = d.wait(d.submit(TaskSpec(prompt="remember the word pelican")))
    assert first.state == "succeeded" and first.session_id
    fakeapi.reset()
    out = d.supctl("submit", "--wait", "--json", "--resume", first.id, "what was the word?")
    second = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert second["resumed_from"] == first.id and second["session_id"] == first.session_id
    assert second["result"] == "ECHO: what was the word? (turn 2, first: remember the word pelican)"
    (convo,) = fakeapi.conversations()
    assert ["user", "remember the word pelican"] in convo
    assert ["assistant", "ECHO: remember the word pelican"] in convo
    assert convo[-1] == ["user", "what was the word?"]
    bad = d.request(ctl.Submit(tasks=[TaskSpec(prompt="x", resume="nosuchtask")]))
    assert isinstance(bad, ctl.Error) and bad.message == "resume: no task with id 'nosuchtask'"


def test_the_cli_home_is_under_the_state_dir_by_default(supd_factory, fakeapi, state_dir):
    import fakeapi as fake_module

    env = fake_module.claude_env(fakeapi.url, str(state_dir / "home"))
    del env["CLAUDE_CONFIG_DIR"]
    from tests.conftest import toml_table

    d = supd_factory(children=1, config="[claude]\nenv = " + toml_table(env) + "\n").start()
    (t,) = d.wait(d.submit(TaskSpec(prompt="where do sessions go")))
    assert t.state == "succeeded"
    sessions = list((state_dir / "claude").rglob(f"{t.session_id}.jsonl"))
    assert sessions, "the CLI wrote its session under STATE_DIR/claude"
    assert not (state_dir / "home" / ".claude" / "projects").exists()


def test_retry_submits_a_failed_task_again(supd_factory, state_dir):
    flag = state_dir / "flag"
    d = supd_factory(children=1).start()
    argv = [sys.executable, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 5)"]
    (failed,) = d.wait(d.submit(TaskSpec(kind="exec", argv=argv)))
    assert failed.state == "failed" and failed.exit_code == 5
    flag.touch()
    out = d.supctl("retry", "--json", failed.id)
    assert out.returncode == 0, out.stderr
    (new_id,) = json.loads(out.stdout)["ids"]
    (again,) = d.wait([new_id])
    assert again.state == "succeeded" and again.retry_of == failed.id and again.argv == argv
    refused = d.supctl("retry", again.id)
    assert refused.returncode == 1 and "only a failed, timed-out or cancelled task can be retried" in refused.stderr


def test_transcripts_survive_a_restart_and_logs_prints_them(supd_factory, claude_config, state_dir):
    d = supd_factory(children=2, config=claude_config).start()
    script = "import sys\nfor i in range(3):\n    print('out', i, flush=True)\n    print('err', i, file=sys.stderr, flush=True)"
    ex, cl = d.wait(d.submit(TaskSpec(kind="exec", argv=[sys.executable, "-c", script]),
                             TaskSpec(prompt="[[bash:echo tool-output-here]] run it", allowed_tools=["Bash"])),
                    timeout_s=120)
    assert ex.state == cl.state == "succeeded"
    d.stop()
    d = supd_factory(children=1, config=claude_config).start()
    out = d.supctl("logs", ex.id)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "-- attempt 1 started on child" in lines[0]
    body = [line.split(" ", 1)[1] for line in lines[1:]]
    assert sorted(body) == sorted([f"stdout: out {i}" for i in range(3)] + [f"stderr: err {i}" for i in range(3)])
    assert [b for b in body if b.startswith("stdout")] == [f"stdout: out {i}" for i in range(3)]
    raw = [json.loads(x) for x in d.supctl("logs", "--json", cl.id).stdout.splitlines()]
    assert all(set(r) == {"at", "stream", "attempt", "line"} for r in raw)
    events = [json.loads(r["line"]) for r in raw if r["stream"] == "stdout"]
    assert events[0]["type"] == "system" and events[-1]["type"] == "result"
    shown = d.supctl("logs", cl.id).stdout
    assert 'tool call Bash: {"command": "echo tool-output-here", "description": "x"}' in shown
    assert "tool result: tool-output-here" in shown
    assert "assistant: DONE: tool-output-here" in shown
    assert "[result success] turns=2" in shown
    follow = d.supctl("logs", "--follow", cl.id)  # a final task: prints all, exits with its state
    assert follow.returncode == 0 and follow.stdout == shown


def test_logs_follow_streams_until_the_task_ends(supd_factory, state_dir):
    gate = state_dir / "go"
    d = supd_factory(children=1).start()
    script = (f"import os, time\nprint('before', flush=True)\nwhile not os.path.exists({str(gate)!r}):"
              " time.sleep(0.02)\nprint('after', flush=True)")
    (tid,) = d.submit(TaskSpec(kind="exec", argv=[sys.executable, "-c", script]))
    proc = subprocess.Popen([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(d.state_dir), "logs",
                             "--follow", tid], stdout=subprocess.PIPE, text=True, env=d.env)
    assert proc.stdout is not None
    seen = [proc.stdout.readline() for _ in range(2)]
    assert "-- attempt 1" in seen[0] and seen[1].endswith("stdout: before\n")
    gate.touch()
    rest = proc.stdout.read()
    assert proc.wait(30) == 0
    assert rest.endswith("stdout: after\n")


def test_the_transcript_is_capped_per_task(supd_factory):
    d = supd_factory(children=1, config="[tasks]\ntranscript_cap_bytes = 1000\n").start()
    (t,) = d.wait(d.submit(TaskSpec(kind="exec", argv=[sys.executable, "-c", "for i in range(500): print('x' * 20)"])))
    assert t.state == "succeeded" and t.result.count("\n") == 500, "the result itself is not capped by it"
    raw = [json.loads(x) for x in d.supctl("logs", "--json", t.id).stdout.splitlines()]
    kept = [r for r in raw if r["stream"] == "stdout"]
    assert len(kept) == 50  # 50 lines of 20 bytes (newlines are not counted) fill 1000
    assert raw[-1]["stream"] == "supd" and "450 lines (9000 bytes) left out" in raw[-1]["line"]


def test_json_schema_gives_structured_output(supd_factory, claude_config, state_dir):
    schema = state_dir / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"answer": {"type": "string"},
                                                                   "score": {"type": "integer"}},
                                  "required": ["answer", "score"]}))
    d = supd_factory(children=1, config=claude_config).start()
    out = d.supctl("submit", "--wait", "--json", "--json-schema", str(schema), "rate this")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["structured_output"] == {"answer": "ECHO: rate this", "score": 1}
    bad = state_dir / "bad.json"
    bad.write_text("[1, 2]")
    out = d.supctl("submit", "--json-schema", str(bad), "x")
    assert out.returncode == 2 and "a JSON Schema is an object" in out.stderr


def test_prune_removes_transcripts_and_merged_branches_but_keeps_unmerged_ones(supd_factory, state_dir):
    repo = make_repo(state_dir / "repo")
    d = supd_factory(children=2).start()
    changed, untouched = d.wait(d.submit(
        TaskSpec(kind="exec", argv=["sh", "-c", "echo changed > shared.txt"], worktree=True, cwd=str(repo)),
        TaskSpec(kind="exec", argv=["true"], worktree=True, cwd=str(repo))))
    assert changed.worktree.files_changed == 1 and untouched.worktree.files_changed == 0
    assert d.request(ctl.Prune(older_than_s=0.001)).message.startswith("pruned 2")
    d.stop()  # the git thread finishes its jobs before the daemon exits
    branches = git(repo, "branch", "--list", "supd/*").split()
    assert branches == [f"supd/{changed.id}"], "the unmerged branch is kept, the empty one deleted"
    import sqlite3

    with sqlite3.connect(state_dir / "tasks.db") as db:
        assert db.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0] == 0
    d = supd_factory(children=1).start()
    (forced,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["sh", "-c", "echo more > shared.txt"], worktree=True,
                                         cwd=str(repo))))
    assert d.supctl("prune", "--older-than", "0.001s", "--force").returncode == 0
    d.stop()
    assert git(repo, "branch", "--list", "supd/*").split() == [f"supd/{changed.id}"], "--force deletes it"
