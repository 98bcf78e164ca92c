"""A worktree task's diff on its dashboard page, in a real browser against a real daemon and
real git: the changed lines (added green, removed red, monospace), a diff too long for one
reply cut with its note, and the daemon's reason where there is no diff."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proto.task import TaskSpec
from tests.browser.conftest import shot
from tests.browser.test_dashboard import open_page, start

pytestmark = pytest.mark.timeout(180)

#: the smallest message limit the config takes: a diff past ~28 KiB is cut
SMALL = "[limits]\nmax_message_bytes = 65536\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_a_worktree_tasks_page_shows_its_diff_with_the_changed_lines_coloured(supd_factory, browser_context,
                                                                               tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "shared.txt").write_text("one\ntwo\nthree\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    d, url, token = start(supd_factory, config=SMALL)
    small, big, plain = d.submit(
        TaskSpec(kind="exec", argv=["sh", "-c", "sed -i 's/two/changed by the task/' shared.txt"], worktree=True,
                 cwd=str(repo)),
        TaskSpec(kind="exec", argv=["sh", "-c", "seq 1 9000 | sed 's/^/line /' > big.txt"], worktree=True,
                 cwd=str(repo)),
        TaskSpec(kind="exec", argv=["true"]))
    t, b, _ = d.wait([small, big, plain])
    assert t.state == b.state == "succeeded" and t.worktree is not None and b.worktree is not None

    page = open_page(browser_context, url, token, f"#/task/{small}")
    page.wait_for_selector("#diff-text")
    assert page.inner_text("#diff-text .add") == "+changed by the task"
    assert page.inner_text("#diff-text .del") == "-two"
    assert page.inner_text("#diff-text") == git(repo, "diff", t.worktree.base, t.worktree.head).rstrip("\n")
    style = page.evaluate("""() => ["#diff-text .add", "#diff-text .del", "#diff-text"].map((s) => {
        const c = getComputedStyle(document.querySelector(s)); return [c.color, c.fontFamily]; })""")
    assert style[0][0] == "rgb(27, 94, 32)" and style[1][0] == "rgb(183, 28, 28)"  # green, red
    assert "monospace" in style[2][1]
    assert page.locator("#diff-cut").count() == 0
    page.locator("#diff").scroll_into_view_if_needed()
    shot(page, "task-diff")

    page = open_page(browser_context, url, token, f"#/task/{big}")
    page.wait_for_selector("#diff-cut")
    said = page.evaluate(f"fetch('/api/task/{big}/diff').then((r) => r.json())")
    assert said["ok"] is True and said["left_out_bytes"] > 60_000
    assert page.inner_text("#diff-cut").startswith(f"cut: {said['left_out_bytes']} more bytes were left out")
    assert page.locator("#diff-text .add").count() > 2000  # the lines that fit are there, coloured
    assert page.inner_text("#diff-text .cut").startswith(f"[supd: {said['left_out_bytes']} more bytes")

    page = open_page(browser_context, url, token, f"#/task/{plain}")
    assert "not a worktree task" in page.inner_text("#diff")
    assert page.locator("#diff-text").count() == 0
    said = page.evaluate(f"fetch('/api/task/{plain}/diff').then((r) => r.json())")
    assert said == {"ok": False, "kind": "bad_request",
                    "error": f"task {plain} did not run in a worktree (submit it with --worktree)"}
