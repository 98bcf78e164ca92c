"""One task's page with agent work, in a real browser against a real daemon and real git:
the stored transcript (what `supctl logs` reads) shown when the page opens, the worktree's
branch and diff size, and Retry from the page submitting the task again as a new task."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proto.task import TaskSpec
from tests.browser.conftest import shot
from tests.browser.test_dashboard import open_page, start

pytestmark = pytest.mark.timeout(180)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_a_worktree_tasks_page_shows_its_transcript_and_diff_and_retry_submits_it_again(
        supd_factory, browser_context, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "shared.txt").write_text("original\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    d, url, token = start(supd_factory)
    [tid] = d.submit(TaskSpec(kind="exec", argv=["sh", "-c", "echo edited > shared.txt; echo first words; exit 3"],
                              worktree=True, cwd=str(repo)))
    [t] = d.wait([tid])
    assert t.state == "failed" and t.worktree is not None and t.worktree.head
    page = open_page(browser_context, url, token, f"#/task/{tid}")
    # the stored transcript: the page was not open while the task ran, yet its lines are there
    assert "stdout: first words" in page.inner_text("#transcript")
    assert page.locator("#transcript .line.stored").count() >= 1
    assert page.inner_text('[data-field="branch"]') == f"supd/{tid}"
    assert page.inner_text('[data-field="diffstat"]') == "1 file changed, +1 −1"
    assert f"supctl diff {tid}" in page.inner_text("#diff")
    assert git(repo, "show", f"supd/{tid}:shared.txt") == "edited\n"
    assert page.is_disabled("#cancel") and not page.is_disabled("#retry")
    shot(page, "task-worktree")
    page.click("#retry")
    page.wait_for_selector("#retried")
    new = page.inner_text("#retried")
    assert new != tid and "retried as" in page.inner_text("#said")
    assert page.is_disabled("#retry")
    [again] = d.wait([new])
    assert again.state == "failed" and again.worktree is not None and again.worktree.branch == f"supd/{new}"
    page.click("#retried")
    page.wait_for_selector(f'body[data-ready="/task/{new}"]')
    page.wait_for_selector('[data-field="state"] [data-state="failed"]')
    assert page.inner_text('[data-field="branch"]') == f"supd/{new}"
    shot(page, "task-retried")


def test_retry_of_a_running_task_is_refused_with_the_daemons_reason(supd_factory, browser_context, tmp_path):
    d, url, token = start(supd_factory)
    [tid] = d.submit(TaskSpec(kind="exec", argv=["true"]))
    d.wait([tid])
    page = open_page(browser_context, url, token, f"#/task/{tid}")
    assert page.is_disabled("#retry")  # a task that succeeded is not retried
    said = page.evaluate(f"fetch('/api/task/{tid}/retry', {{method: 'POST'}}).then((r) => r.json())")
    assert said["ok"] is False and "only a failed, timed-out or cancelled task can be retried" in said["error"]
