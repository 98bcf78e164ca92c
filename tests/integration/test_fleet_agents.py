"""Agent work on a fleet: real daemons on one real PostgreSQL. A task's transcript is in the
shared journal (`supctl logs` from a host that did not run it, numbered on across attempts
on different hosts), `retry` from any host, and `--resume`/`--worktree` refused on a fleet
with the reason (the session or worktree is on one host's disk)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_fleet import Fleet, fleet  # noqa: F401  (the fixture)
from proto import control as ctl
from proto.task import TaskSpec

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


def test_resume_and_worktree_are_refused_on_a_fleet_saying_why(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.start("a", children=1)
    r = a.request(ctl.Submit(tasks=[TaskSpec(prompt="go on", resume="0190c2d4-0000-7000-8000-000000000000")]))
    assert isinstance(r, ctl.Error) and r.kind == "bad_request"
    assert r.message.startswith("resume: is not supported on a fleet") and "session" in r.message, r.message
    r = a.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"]),
                                    TaskSpec(prompt="edit", worktree=True, cwd=str(tmp_path))]))
    assert isinstance(r, ctl.Error) and r.message.startswith("task 2: worktree: is not supported on a fleet"), r.message
    assert fleet.rows() == {}, "nothing of a refused batch was accepted"
