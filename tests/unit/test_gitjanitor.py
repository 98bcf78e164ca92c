"""The git thread: a question is answered exactly once through `post` — its result, or the
failure in words — and housekeeping jobs are only logged. A real thread, no git."""

from __future__ import annotations

import queue

import pytest

from supervisord.events import GitAnswered
from supervisord.spokes.git import GitError
from supervisord.spokes.gitjanitor import Janitor

pytestmark = pytest.mark.timeout(30)


def failing(why: str) -> str:
    raise GitError(why)


def buggy() -> str:
    raise KeyError("oops")


def test_each_question_is_answered_once_in_order_with_its_result_or_its_failure():
    posted: queue.Queue[GitAnswered] = queue.Queue()
    j = Janitor(posted.put)
    try:
        j.run("housekeeping", lambda: "removed")  # logged, never posted
        j.ask("sum", lambda r, e: None, sum, [1, 2, 3])
        j.ask("gone", lambda r, e: None, failing, "the repository /r is gone")
        j.ask("bug", lambda r, e: None, buggy)
        got = [posted.get(timeout=10) for _ in range(3)]
    finally:
        j.close()
    assert [(a.result, a.error) for a in got] == [
        (6, None), (None, "the repository /r is gone"), (None, "bug failed inside supd: KeyError('oops') (see its log)")]
    assert posted.empty()


def test_a_janitor_without_an_inbox_refuses_questions():
    j = Janitor()
    try:
        with pytest.raises(RuntimeError, match="no inbox to answer through"):
            j.ask("x", lambda r, e: None, sum, [])
    finally:
        j.close()
