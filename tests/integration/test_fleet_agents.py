"""Agent work on a fleet: real daemons on one real PostgreSQL. A task's transcript is in the
shared journal (`supctl logs` from a host that did not run it, numbered on across attempts
on different hosts), `retry` from any host. Host pins: `--worktree` tasks run on the host
that accepted them (their branches in its repository), `--resume` runs where the session
is wherever it is submitted, `diff` from another host names the host, and a pinned task
whose host is down stays queued (saying so) until it is cancelled from another host."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import assert_no_leftovers, descendants_of, short_tmpdir, toml_table
from tests.integration.test_agents import git, make_repo
from tests.integration.test_fleet import Fleet, fleet  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(180)


def test_logs_from_any_host_and_retry_from_any_host(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=1)
    b.request(ctl.Scale(children=0))  # a runs the first attempt
    flag = tmp_path / "flag"
    code = (f"import os, sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n"
            f"sys.exit(0 if os.path.exists({str(flag)!r}) else 5)")
    argv = [sys.executable, "-c", code]
    (failed,) = a.wait(a.submit(TaskSpec(kind="exec", argv=argv)))
    assert failed.state == "failed" and failed.host == "a"
    out = b.supctl("logs", failed.id)  # b never ran it
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "-- attempt 1 started on child" in lines[0]
    assert sorted(line.split(" ", 1)[1] for line in lines[1:]) == ["stderr: err", "stdout: out"]
    flag.touch()
    b.request(ctl.Scale(children=1))
    a.request(ctl.Scale(children=0))  # b runs the retry
    r = b.supctl("retry", "--json", failed.id)
    assert r.returncode == 0, r.stderr
    (new_id,) = json.loads(r.stdout)["ids"]
    (again,) = a.wait([new_id])
    assert again.state == "succeeded" and again.retry_of == failed.id and again.argv == argv and again.host == "b"
    shown = a.supctl("logs", new_id)
    assert shown.returncode == 0 and "stdout: out" in shown.stdout
    refused = a.supctl("retry", again.id)
    assert refused.returncode == 1 and "only a failed, timed-out or cancelled task can be retried" in refused.stderr
    missing = a.supctl("logs", "nope")
    assert missing.returncode != 0 and "no task with id" in missing.stderr


def test_a_retried_attempt_on_another_host_numbers_its_transcript_on(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=1)
    b.request(ctl.Scale(children=0))
    marker = tmp_path / "ran"
    # fails the first time (on a), succeeds the second (its own retry, on b)
    code = (f"import os, sys\nfirst = not os.path.exists({str(marker)!r})\nopen({str(marker)!r}, 'a').write('x')\n"
            f"print('first' if first else 'second', flush=True)\nsys.exit(3 if first else 0)")
    spec = TaskSpec(kind="exec", argv=[sys.executable, "-c", code], retries=1, retry_on_exit=True)
    (tid,) = a.submit(spec)
    deadline = time.monotonic() + 20
    while fleet.rows()[tid][:2] != ("queued", 1):  # back in the queue after a's attempt, for its retry delay
        assert time.monotonic() < deadline, fleet.rows()
        time.sleep(0.02)
    b.request(ctl.Scale(children=1))
    a.request(ctl.Scale(children=0))
    (done,) = b.wait([tid], 60)
    assert done.state == "succeeded" and done.attempts == 2 and done.host == "b"
    raw = [json.loads(x) for x in b.supctl("logs", "--json", tid).stdout.splitlines()]
    assert [r["line"] for r in raw if r["stream"] == "stdout"] == ["first", "second"], raw
    assert [r["attempt"] for r in raw if r["stream"] == "supd"][:2] == [1, 2]


def _until(what: str, check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return got


def test_worktree_tasks_run_on_the_host_that_accepted_them_and_diff_elsewhere_names_it(fleet: Fleet,
                                                                                      tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=2)  # b is idle and eager
    repo = make_repo(tmp_path / "repo")
    specs = [TaskSpec(kind="exec", argv=["sh", "-c", f"sleep 0.2; pwd > where.txt; echo {i} > shared.txt"],
                      worktree=True, cwd=str(repo)) for i in range(4)]
    ids = a.submit(*specs)
    done = b.wait(ids, 90)
    assert [(t.state, t.host, t.pin) for t in done] == [("succeeded", "a", "a")] * 4, done
    for i, t in enumerate(done):
        assert git(repo, "show", f"supd/{t.id}:shared.txt") == f"{i}\n", "its branch is in a's repository"
        where = git(repo, "show", f"supd/{t.id}:where.txt").strip()
        assert where == str(a.state_dir / "worktrees" / t.id), "it ran in a worktree under a's state dir"
    assert fleet.rows()[ids[0]][2] == "a"
    elsewhere = b.supctl("diff", ids[1])
    assert elsewhere.returncode == 1, elsewhere
    assert f"diff: task {ids[1]}'s worktree is on host a; run supctl against a" in elsewhere.stderr
    here = a.supctl("diff", ids[1])
    assert here.returncode == 0 and "+1" in here.stdout and "-original" in here.stdout, here.stderr
    # a failed pinned task retried from b keeps its pin: a runs it again
    flag = tmp_path / "go"
    failing = TaskSpec(kind="exec", argv=["sh", "-c", f"test -e {flag} || exit 3; echo ok > done.txt"], worktree=True,
                       cwd=str(repo))
    (failed,) = a.wait(a.submit(failing))
    assert (failed.state, failed.host, failed.pin) == ("failed", "a", "a")
    flag.touch()
    r = b.supctl("retry", "--json", failed.id)
    assert r.returncode == 0, r.stderr
    (again,) = b.wait(json.loads(r.stdout)["ids"], 60)
    assert (again.state, again.host, again.pin, again.retry_of) == ("succeeded", "a", "a", failed.id), again
    assert git(repo, "show", f"supd/{again.id}:done.txt") == "ok\n"


def _claude(fakeapi: Any, name: str) -> str:
    """A `[claude]` table of its own for one host: its own CLI home (sessions are on its disk)."""
    import fakeapi as fake_module

    return "[claude]\nenv = " + toml_table(fake_module.claude_env(fakeapi.url, str(short_tmpdir(f"home-{name}-")))) + "\n"


def test_resume_submitted_on_b_runs_on_a_where_the_session_is(fleet: Fleet, fakeapi: Any) -> None:
    a = fleet.start("a", children=1, extra=_claude(fakeapi, "a"))
    b = fleet.start("b", children=0, extra=_claude(fakeapi, "b"))
    (first,) = a.wait(a.submit(TaskSpec(prompt="remember the word pelican")))
    assert first.state == "succeeded" and first.session_id and first.host == "a" and first.pin is None
    a.request(ctl.Scale(children=0))
    b.request(ctl.Scale(children=1))  # only b has an idle child now
    fakeapi.reset()
    out = b.supctl("submit", "--json", "--resume", first.id, "what was the word?")
    assert out.returncode == 0, out.stderr
    (tid,) = json.loads(out.stdout)["ids"]
    time.sleep(1.0)  # b polls and is woken by the submit: it does not take a task pinned to a
    got = b.request(ctl.Get(id=tid))
    assert isinstance(got, ctl.Tasks)
    (queued,) = got.tasks
    assert (queued.state, queued.pin, queued.waiting) == ("queued", "a", None), "a is live: it just has no child"
    a.request(ctl.Scale(children=1))
    (second,) = b.wait([tid], 90)
    assert (second.state, second.host, second.pin) == ("succeeded", "a", "a"), second
    assert second.resumed_from == first.id and second.session_id == first.session_id
    assert second.result == "ECHO: what was the word? (turn 2, first: remember the word pelican)"
    (convo,) = fakeapi.conversations()
    assert ["user", "remember the word pelican"] in convo and convo[-1] == ["user", "what was the word?"]


def test_a_pinned_task_whose_host_died_stays_queued_saying_so_and_is_cancelled_from_b(fleet: Fleet,
                                                                                       tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1, lease_s=2.0), fleet.start("b", children=2, lease_s=2.0)
    repo = make_repo(tmp_path / "repo")
    (tid,) = a.submit(TaskSpec(kind="exec", argv=["sleep", "60"], worktree=True, cwd=str(repo)))
    _until("a runs it", lambda: fleet.rows()[tid][0] == "running")
    assert a.proc is not None
    a_tree = [a.proc.pid] + [p.pid for p in descendants_of(a.proc.pid)]
    a.proc.kill()
    a.proc.wait()
    # b rescues the attempt once its lease ends: queued again, still pinned to a, and b leaves it
    _until("rescued", lambda: fleet.rows()[tid][:2] == ("queued", 1))
    listed = _until("shown waiting", lambda: [v for v in b.request(ctl.List(state="queued")).tasks  # type: ignore[union-attr]
                                             if v.id == tid and v.waiting])
    assert listed[0].pin == "a" and listed[0].waiting.startswith("waiting for host a: pinned to it"), listed
    time.sleep(1.0)
    assert fleet.rows()[tid][:2] == ("queued", 1), "b never ran it"
    # the fleet's totals are refreshed every couple of seconds
    _until("counted in status", lambda: b.info(ctl.Status())["fleet"]["pinned_waiting"] == {"a": 1}, 10)
    shown = b.supctl("list", "--state", "queued")
    assert "queued (waiting for host a)" in shown.stdout, shown.stdout
    out = b.supctl("cancel", tid)
    assert out.returncode == 0, out.stderr
    (v,) = b.wait([tid], 20)
    assert v.state == "cancelled" and v.attempts == 1
    assert_no_leftovers(a_tree, {tid})
