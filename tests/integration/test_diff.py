"""A worktree task's diff from the daemon (`Diff`, `supctl diff`), against real git and a real
daemon: exactly what `git diff BASE HEAD` prints, cut to one reply with a note when it is
longer, and clear errors when the task is not a worktree task, not final, or its repository
or branch is gone. The fixture checks that no process is left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from proto import control as ctl
from proto.task import TaskSpec

pytestmark = pytest.mark.timeout(120)

#: the smallest message limit the config takes: one reply carries 32 KiB, the diff 28 KiB of it
SMALL = "[limits]\nmax_message_bytes = 65536\n"
BUDGET = 65536 // 2 - 4096


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "shared.txt").write_text("one\ntwo\nthree\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return path


def worktree_task(d, repo: Path, script: str) -> ctl.TaskView:
    [t] = d.wait(d.submit(TaskSpec(kind="exec", argv=["sh", "-c", script], worktree=True, cwd=str(repo))))
    assert t.state == "succeeded" and t.worktree is not None and t.worktree.head, (t.error, t.stderr)
    return t


def test_diff_is_exactly_what_git_diff_base_head_prints(supd_factory, state_dir):
    repo = make_repo(state_dir / "repo")
    d = supd_factory(children=1).start()
    t = worktree_task(d, repo, "sed -i 's/two/TWO/' shared.txt && echo fresh > new.txt")
    wt = t.worktree
    want = git(repo, "diff", wt.base, wt.head)
    assert "-two\n+TWO\n" in want and "+fresh\n" in want  # the task's change is in it
    reply = d.request(ctl.Diff(id=t.id), timeout_s=30)
    assert reply == ctl.DiffText(id=t.id, repo=str(repo), branch=f"supd/{t.id}", base=wt.base, head=wt.head,
                                 stat=False, text=want, left_out_bytes=0)
    stat = d.request(ctl.Diff(id=t.id, stat=True), timeout_s=30)
    assert isinstance(stat, ctl.DiffText) and stat.text == git(repo, "diff", "--stat", wt.base, wt.head)
    # supctl diff asks the same verb
    out = d.supctl("diff", t.id)
    assert out.returncode == 0 and out.stdout == want, out.stderr
    shown = json.loads(d.supctl("diff", "--json", t.id).stdout)
    assert shown["diff"] == want and shown["left_out_bytes"] == 0 and shown["files_changed"] == 2
    assert d.supctl("diff", "--stat", t.id).stdout == stat.text


def test_a_diff_longer_than_one_reply_is_cut_at_a_line_with_a_note(supd_factory, state_dir):
    repo = make_repo(state_dir / "repo")
    d = supd_factory(children=1, config=SMALL).start()
    t = worktree_task(d, repo, "seq 1 9000 | sed 's/^/a longer line of the diff, number /' > big.txt")
    full = git(repo, "diff", t.worktree.base, t.worktree.head).encode()
    assert len(full) > 10 * BUDGET
    reply = d.request(ctl.Diff(id=t.id), timeout_s=30)
    assert isinstance(reply, ctl.DiffText)
    kept, note = reply.text.rsplit("\n\n[supd: ", 1)
    kept = kept.encode() + b"\n"
    assert full.startswith(kept) and len(kept) <= BUDGET and len(kept) > BUDGET - 100
    assert reply.left_out_bytes == len(full) - len(kept)
    assert note.startswith(f"{reply.left_out_bytes} more bytes of this diff were left out")
    out = d.supctl("diff", t.id)
    assert out.returncode == 1 and out.stdout == reply.text  # shown, but not all of it: exit 1


def test_errors_name_the_problem(supd_factory, state_dir):
    repo = make_repo(state_dir / "repo")
    d = supd_factory(children=2).start()
    assert d.request(ctl.Diff(id="nope")) == ctl.Error(kind="not_found", message="no task with id 'nope'")
    [plain] = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    out = d.supctl("diff", plain.id)
    assert out.returncode == 1
    assert out.stderr == f"supctl: bad_request: task {plain.id} did not run in a worktree (submit it with --worktree)\n"
    [slow] = d.submit(TaskSpec(kind="exec", argv=["sleep", "30"], worktree=True, cwd=str(repo)))
    reply = d.request(ctl.Diff(id=slow))
    assert isinstance(reply, ctl.Error) and reply.kind == "not_final", reply
    assert reply.message.startswith(f"task {slow} is ")  # queued or running, not final
    d.request(ctl.Cancel(id=slow))
    # the branch deleted and its commits collected
    gone = worktree_task(d, repo, "echo changed > shared.txt")
    git(repo, "branch", "-D", f"supd/{gone.id}")
    git(repo, "update-ref", "-d", f"refs/supd-base/supd/{gone.id}")
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    reply = d.request(ctl.Diff(id=gone.id), timeout_s=30)
    assert reply == ctl.Error(kind="git", message=(
        f"task {gone.id}: the head commit {gone.worktree.head} is no longer in {repo}: "
        f"branch supd/{gone.id} is gone (deleted or pruned)"))
    # the repository removed
    kept = worktree_task(d, repo, "echo again > shared.txt")
    shutil.rmtree(repo)
    reply = d.request(ctl.Diff(id=kept.id), timeout_s=30)
    assert reply == ctl.Error(kind="git", message=f"task {kept.id}: the repository {repo} is gone (no .git there)")
    d.wait([slow])
