"""The fleet's prune as a singleton (`pgprune.chunk`) against a real PostgreSQL: two hosts that
both look within one period prune once; a host holding the prune lock makes the other skip
its turn; a forced prune waits for the lock and ignores the period; a pass's later chunks
finish what its first began."""

from __future__ import annotations

import threading

import psycopg
import pytest

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core.task import Task
from supervisord.store import pgprune
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(60)


def finished(tid: str) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=1.0, state=TaskState.SUCCEEDED,
                outcome=Outcome(exit_code=0), started_at=1.0, finished_at=2.0)


def test_two_hosts_within_one_period_prune_once(pg_url: str) -> None:
    a, b = PgStore(pg_url, host="a"), PgStore(pg_url, host="b")
    a.accept([finished(f"t{i}") for i in range(5)])
    first = pgprune.chunk(a, 10.0, 500, "a", first=True, every_s=3600)
    assert (first.pruned, first.skipped, first.since_s) == (5, None, None), "the fleet's first pass"
    b.accept([finished("late")])
    second = pgprune.chunk(b, 10.0, 500, "b", first=True, every_s=3600)
    assert second.pruned == 0 and second.skipped is not None and "by a" in second.skipped
    assert second.since_s is not None and second.since_s < 3600
    assert pgprune.last(b.db) == {"began_s_ago": pytest.approx(second.since_s, abs=1.0), "host": "a", "passes": 1,
                                  "tasks": 5}
    assert b.counts() == {"succeeded": 1}, "b pruned nothing: the fleet was pruned within the period"
    forced = pgprune.chunk(b, 10.0, 500, "b", first=True)  # supctl prune: no period
    assert forced.pruned == 1 and forced.skipped is None
    last = pgprune.last(a.db)
    assert last is not None and (last["host"], last["passes"], last["tasks"]) == ("b", 2, 6)


def test_a_host_holding_the_lock_makes_the_other_skip_and_a_forced_prune_wait(pg_url: str) -> None:
    a = PgStore(pg_url, host="a")
    a.accept([finished(f"t{i}") for i in range(3)])
    holder = psycopg.connect(pg_url)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (pgprune.PRUNE_LOCK,))  # another host mid-chunk
    skipped = pgprune.chunk(a, 10.0, 500, "a", first=True, every_s=60)
    assert skipped.pruned == 0 and skipped.skipped is not None and "another host" in skipped.skipped
    assert pgprune.last(a.db) is None, "a skipped turn is not a pass"
    got: list[pgprune.Chunk] = []
    th = threading.Thread(target=lambda: got.append(pgprune.chunk(PgStore(pg_url, host="b"), 10.0, 500, "b",
                                                                  first=True, wait=True)))
    th.start()
    th.join(0.5)
    assert th.is_alive() and not got, "a forced prune waits for the lock"
    holder.rollback()  # the other host's chunk is over
    th.join(10)
    assert [c.pruned for c in got] == [3]
    holder.close()


def test_a_pass_goes_on_chunk_by_chunk_without_looking_at_the_period(pg_url: str) -> None:
    a = PgStore(pg_url, host="a")
    a.accept([finished(f"t{i:02}") for i in range(7)])
    assert pgprune.chunk(a, 10.0, 3, "a", first=True, every_s=3600).pruned == 3
    assert pgprune.chunk(a, 10.0, 3, "a", first=False, every_s=3600).pruned == 3
    assert pgprune.chunk(a, 10.0, 3, "a", first=False, every_s=3600).pruned == 1
    assert pgprune.chunk(a, 10.0, 3, "a", first=True, every_s=3600).skipped is not None, "the next pass waits"
    last = pgprune.last(a.db)
    assert last is not None and (last["passes"], last["tasks"]) == (1, 7)
    assert a.counts() == {}
