"""Host pins in the shared journal against a real PostgreSQL: a pinned task is claimed only
by its host, a rescue re-queues a pinned attempt still pinned, a queued pinned task whose
host is not live says why it waits (in its view and in the fleet's totals), and a cancel
from another host ends it."""

from __future__ import annotations

import pytest

from proto.task import TaskSpec, TaskState
from supervisord.core import fate
from supervisord.core.task import Task
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(60)
S = TaskState


def task(tid: str, pin: str | None = None, retries: int = 0) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["true"], pin=pin), submitted_at=1.0, retries=retries)


def beat(s: PgStore, host: str, phase: str = "running") -> None:
    s.heartbeat(host, 1, 1.0, 1, 0, phase)


def test_a_pinned_task_is_claimed_by_its_host_only(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("pa1", pin="a"), task("free"), task("pa2", pin="a"), task("pb", pin="b")])
    assert [t.id for t in s.claim_next(10, ["exec"], "c", 30)] == ["free"], "c may run only the free one"
    assert [t.id for t in s.claim_next(10, ["exec"], "b", 30)] == ["pb"]
    claimed = s.claim_next(10, ["exec"], "a", 30)
    assert [t.id for t in claimed] == ["pa1", "pa2"]
    assert {t.spec.pin for t in claimed} == {"a"}, "the claimed spec carries its pin"
    assert s.db.execute("SELECT id, pin FROM tasks ORDER BY id").fetchall() == [
        ("free", None), ("pa1", "a"), ("pa2", "a"), ("pb", "b")]


def test_a_rescued_pinned_attempt_goes_back_pinned(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("p", pin="a", retries=2)])
    (t,) = s.claim_next(1, ["exec"], "a", 30)
    fate.start(t, "w00.1", 2.0)
    s.claim(t)
    s.commit()
    s.db.execute("UPDATE tasks SET lease_until = now() - interval '1 second'")
    (r,) = s.rescue()  # any host's rescue (here b's) of a's expired lease
    assert r.state is S.QUEUED and r.spec.pin == "a"
    assert s.claim_next(1, ["exec"], "b", 30) == [], "only a may run it again"
    (again,) = s.claim_next(1, ["exec"], "a", 30)
    assert again.id == "p" and again.attempts == 1, "as before the claim: the second attempt is next"


def test_a_pinned_task_of_a_host_that_is_not_live_says_it_waits(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.lease_s = 30.0
    s.accept([task("pa", pin="a"), task("pb", pin="b"), task("pc", pin="c"), task("free")])
    beat(s, "a")
    beat(s, "b", phase="stopped")
    live = s.get("pa")
    assert live is not None and live.pin == "a" and live.waiting is None, "a is live: pa just waits for a child"
    views = {v.id: v for v in s.list("queued", 10, 10**6)}
    assert views["pa"].waiting is None and views["free"].waiting is None and views["free"].pin is None
    assert views["pb"].waiting == "waiting for host b: pinned to it, and it is stopped"
    assert views["pc"].waiting == "waiting for host c: pinned to it, and it has never joined the fleet"
    assert views["pb"].pin == "b"
    s.db.execute("UPDATE hosts SET heartbeat_at = now() - interval '45 seconds' WHERE host='a'")
    got = s.get("pa")
    assert got is not None and got.waiting is not None and got.waiting.startswith(
        "waiting for host a: pinned to it, and it has not beaten for 45s"), got.waiting
    assert s.fleet_counts()["pinned_waiting"] == {"a": 1, "b": 1, "c": 1}
    beat(s, "a")
    assert s.fleet_counts()["pinned_waiting"] == {"b": 1, "c": 1}


def test_a_cancel_from_another_host_ends_a_queued_pinned_task(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    a.accept([task("p", pin="a")])
    v = b.cancel("p")
    assert v is not None and v.state == "cancelled" and v.pin == "a"
    assert a.claim_next(1, ["exec"], "a", 30) == [], "nothing left to claim"
    assert b.fleet_counts()["pinned_waiting"] == {}
