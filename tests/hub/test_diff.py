"""The hub with fakes: the `Diff` verb. Its checks answer at once; the git work is a question
to the git thread (never run on the loop), whose answer becomes the reply — the diff, cut to
one reply with a note, or git's failure in words.

Each test names the promise it holds to. Expected outcomes are written out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proto import control as ctl
from proto.task import Outcome, WorktreeInfo
from supervisord.spokes import git
from tests.hub.rig import Rig, exec_spec

pytestmark = pytest.mark.timeout(30)

BASE, HEAD = "b" * 40, "h" * 40
#: the smallest message limit the config takes: a reply carries 32 KiB, the diff 28 KiB of it
CONFIG = "[limits]\nmax_message_bytes = 65536\n"
BUDGET = 65536 // 2 - 4096


def repo_dir(tmp: Path) -> Path:
    """A directory the submit check takes for a checkout (it only looks for `.git`)."""
    repo = tmp / "repo"
    (repo / ".git").mkdir(parents=True)
    return repo


def finished_worktree_task(rig: Rig, repo: Path) -> str:
    [tid] = rig.submit(exec_spec("true", worktree=True, cwd=str(repo)))
    info = WorktreeInfo(repo=str(repo), branch=f"supd/{tid}", base=BASE, head=HEAD, files_changed=1, insertions=1)
    rig.result(tid, outcome=Outcome(exit_code=0, result="", worktree=info))
    assert rig.view(tid).state == "succeeded"
    return tid


def test_a_final_worktree_tasks_diff_is_asked_of_the_git_thread_and_its_answer_is_the_reply(tmp_path):
    rig = Rig(tmp_path, config=CONFIG).boot()
    repo = repo_dir(tmp_path)
    tid = finished_worktree_task(rig, repo)
    sent = len(rig.control.replies)
    assert rig.request(ctl.Diff(id=tid)) is None, "no answer until git has run"
    assert len(rig.control.replies) == sent
    [(what, _then, fn, args, _kw)] = rig.git.questions
    assert what == f"diff of {tid}" and fn is git.diff
    assert args == (str(repo), f"supd/{tid}", BASE, HEAD, False, BUDGET)
    rig.answer_git(result=("diff --git a/f b/f\n-old\n+new\n", 0))
    [reply] = rig.replied()
    assert reply == ctl.DiffText(id=tid, repo=str(repo), branch=f"supd/{tid}", base=BASE, head=HEAD, stat=False,
                                 text="diff --git a/f b/f\n-old\n+new\n", left_out_bytes=0)


def test_stat_is_passed_to_git_and_said_in_the_reply(tmp_path):
    rig = Rig(tmp_path).boot()
    tid = finished_worktree_task(rig, repo_dir(tmp_path))
    rig.request(ctl.Diff(id=tid, stat=True))
    assert rig.git.questions[0][3][4] is True
    rig.answer_git(result=(" f | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n", 0))
    [reply] = rig.replied()
    assert isinstance(reply, ctl.DiffText) and reply.stat is True
    assert reply.text == " f | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n"


def test_a_diff_cut_to_the_reply_budget_ends_with_a_note_saying_how_much_was_left_out(tmp_path):
    rig = Rig(tmp_path, config=CONFIG).boot()
    tid = finished_worktree_task(rig, repo_dir(tmp_path))
    rig.request(ctl.Diff(id=tid))
    rig.answer_git(result=("+line\n", 123_456))
    [reply] = rig.replied()
    assert isinstance(reply, ctl.DiffText) and reply.left_out_bytes == 123_456
    assert reply.text == (
        "+line\n\n[supd: 123456 more bytes of this diff were left out: one reply carries 28672 bytes of it at most "
        f"(see limits.max_message_bytes); git diff {BASE} {HEAD} in the task's repository prints all of it]\n")


def test_a_git_failure_is_the_reply_in_gits_words(tmp_path):
    rig = Rig(tmp_path).boot()
    tid = finished_worktree_task(rig, repo_dir(tmp_path))
    rig.request(ctl.Diff(id=tid))
    rig.answer_git(error=f"the head commit {HEAD} is no longer in /r: branch supd/{tid} is gone (deleted or pruned)")
    [reply] = rig.replied()
    assert reply == ctl.Error(kind="git", message=(
        f"task {tid}: the head commit {HEAD} is no longer in /r: branch supd/{tid} is gone (deleted or pruned)"))


def test_a_repository_that_is_gone_is_named(tmp_path):
    rig = Rig(tmp_path).boot()
    repo = repo_dir(tmp_path)
    tid = finished_worktree_task(rig, repo)
    (repo / ".git").rmdir()
    rig.request(ctl.Diff(id=tid))
    rig.run_git()  # the job itself: it looks before it runs git
    [reply] = rig.replied()
    assert reply == ctl.Error(kind="git", message=f"task {tid}: the repository {repo} is gone (no .git there)")


def test_the_checks_answer_at_once_without_asking_git(tmp_path):
    rig = Rig(tmp_path, children=1).boot()
    repo = repo_dir(tmp_path)
    assert rig.request(ctl.Diff(id="nope")) == ctl.Error(kind="not_found", message="no task with id 'nope'")
    [plain] = rig.submit(exec_spec("true"))
    rig.result(plain)
    assert rig.request(ctl.Diff(id=plain)) == ctl.Error(
        kind="bad_request", message=f"task {plain} did not run in a worktree (submit it with --worktree)")
    [running] = rig.submit(exec_spec("sleep", "9", worktree=True, cwd=str(repo)))
    assert rig.view(running).state == "running"
    assert rig.request(ctl.Diff(id=running)) == ctl.Error(
        kind="not_final", message=f"task {running} is running: its branch supd/{running} is committed when the "
                                  "task ends; ask again then")
    [queued] = rig.submit(exec_spec("true", worktree=True, cwd=str(repo)))
    assert rig.view(queued).state == "queued"  # the one child is busy
    reply = rig.request(ctl.Diff(id=queued))
    assert isinstance(reply, ctl.Error) and reply.kind == "not_final" and f"task {queued} is queued" in reply.message
    assert rig.git.questions == []


def test_a_final_worktree_task_whose_child_recorded_no_branch_has_no_diff(tmp_path):
    rig = Rig(tmp_path).boot()
    repo = repo_dir(tmp_path)
    [lost] = rig.submit(exec_spec("true", worktree=True, cwd=str(repo)))
    rig.result(lost, state="failed", outcome=Outcome(exit_code=1))  # its child sent no worktree info
    assert rig.request(ctl.Diff(id=lost)) == ctl.Error(
        kind="no_diff", message=f"task {lost} has no diff: its attempt ended without its child recording the branch")
    [broken] = rig.submit(exec_spec("true", worktree=True, cwd=str(repo)))
    info = WorktreeInfo(repo=str(repo), branch=f"supd/{broken}", base=BASE, error="git commit: disk full")
    rig.result(broken, outcome=Outcome(exit_code=0, worktree=info))
    assert rig.request(ctl.Diff(id=broken)) == ctl.Error(
        kind="no_diff", message=f"task {broken} has no diff: git commit: disk full")
    assert rig.git.questions == []


def test_a_task_finished_before_a_restart_is_found_in_the_store(tmp_path):
    keep = "[journal]\nretain_s = 0\n"  # the rig's results finished in 1970: no pruning at boot
    first = Rig(tmp_path, config=keep).boot()
    repo = repo_dir(tmp_path)
    tid = finished_worktree_task(first, repo)
    first.store.commit()
    first.store.close()
    rig = Rig(tmp_path, config=keep).boot()
    assert tid not in rig.hub.sched.tasks
    rig.request(ctl.Diff(id=tid))
    assert rig.git.questions[0][3][:4] == (str(repo), f"supd/{tid}", BASE, HEAD)
    rig.answer_git(result=("", 0))
    [reply] = rig.replied()
    assert isinstance(reply, ctl.DiffText) and reply.text == "" and reply.id == tid


def test_without_a_git_thread_the_verb_says_so(tmp_path):
    rig = Rig(tmp_path).boot()
    tid = finished_worktree_task(rig, repo_dir(tmp_path))
    rig.hub.spokes.git = None
    assert rig.request(ctl.Diff(id=tid)) == ctl.Error(kind="unavailable",
                                                      message="this daemon has no git thread to run git on")
