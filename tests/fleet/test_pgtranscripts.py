"""Transcripts in the PostgreSQL store: chunks written by the group commit, read back from
another host's store across attempts, the extent a claimed retry numbers on from, the
first writer of a chunk kept, and pruned tasks' transcripts gone with them."""

from __future__ import annotations

import pytest

from proto.task import Line, Outcome, TaskSpec, TaskState
from supervisord.core.task import Task
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(60)


def line(text: str, attempt: int = 1) -> Line:
    return Line(1.0, "stdout", attempt, text)


def test_chunks_are_read_from_any_host_in_order_with_pending_ones(pg_url: str) -> None:
    a, b = PgStore(pg_url, host="a"), PgStore(pg_url, host="b")
    a.accept([Task(id="t", spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=1.0)])
    a.append_output("t", 0, [line("one"), line("two")], 6)
    assert b.transcript("t", 0, 10_000) == ([], 0), "not committed yet"
    assert a.transcript("t", 0, 10_000)[1] == 2, "the writer sees its pending lines"
    a.commit()
    b.append_output("t", 2, [line("three", 2)], 5)  # the next attempt, on b
    b.commit()
    lines, nxt = a.transcript("t", 1, 10_000)
    assert [x.text for x in lines] == ["two", "three"] and nxt == 3
    assert b.transcript_extents(["t", "none"]) == {"t": (3, 11)}
    a.append_output("t", 2, [line("stale")], 5)  # a late chunk of a stale owner: the first writer's stays
    a.commit()
    assert [x.text for x in b.transcript("t", 0, 10_000)[0]] == ["one", "two", "three"]


def test_prune_takes_a_tasks_transcript_with_it(pg_url: str) -> None:
    a = PgStore(pg_url, host="a")
    a.accept([Task(id="t", spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=1.0)])
    a.append_output("t", 0, [line("x")], 1)
    t = a.task("t")
    assert t is not None
    t.state, t.finished_at, t.outcome = TaskState.SUCCEEDED, 2.0, Outcome(exit_code=0)
    a.record(t)
    a.commit()
    assert a.prune(10.0) == 1
    assert a.transcript_extent("t") == (0, 0)
