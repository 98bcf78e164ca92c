"""The fleet's verbs of `PgStore` against a real PostgreSQL: claims that two hosts never
share, priority then age, leases renewed by their owner, rescue as a compare-and-swap that
counts against the retry budget, late writes of a rescued owner refused, schema checks."""

from __future__ import annotations

import threading

import psycopg
import pytest

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core import fate
from supervisord.core.task import Task
from supervisord.store.base import StoreError
from supervisord.store.pgschema import SCHEMA_VERSION
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(60)
S = TaskState


def task(tid: str, priority: int = 0, retries: int = 0) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["true"], priority=priority), submitted_at=1.0,
                retries=retries)


def started(store: PgStore, t: Task, child: str = "w00.1") -> Task:
    fate.start(t, child, 2.0)  # the hub's move, the same as the claim's in SQL
    store.claim(t)
    return t


def test_two_hosts_claiming_at_once_never_get_the_same_task(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    a.accept([task(f"t{i:03}") for i in range(200)])
    got: dict[str, list[str]] = {"a": [], "b": []}

    def drain(store: PgStore, name: str) -> None:
        while batch := store.claim_next(7, ["exec"], name, 30):
            got[name] += [t.id for t in batch]

    threads = [threading.Thread(target=drain, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got["a"]) + len(got["b"]) == 200
    assert not set(got["a"]) & set(got["b"]), "SKIP LOCKED: each task claimed by one host"
    assert a.counts() == {"running": 200}


def test_claims_take_priority_then_age_and_only_due_kinds(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("old"), task("high", priority=5), task("new")])
    s.accept([Task(id="c", spec=TaskSpec(kind="claude", prompt="p", priority=9), submitted_at=1.0)])
    claimed = s.claim_next(2, ["exec"], "h", 30)
    assert [t.id for t in claimed] == ["high", "old"]
    assert [(t.state, t.attempts, t.epoch) for t in claimed] == [(S.QUEUED, 0, 0)] * 2, "as before the claim"
    assert [t.id for t in s.claim_next(5, ["exec", "claude"], "h", 30)] == ["c", "new"]


def test_the_owner_renews_and_a_rescue_waits_for_the_lease_to_end(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("t", retries=1)])
    (t,) = s.claim_next(1, ["exec"], "a", 30)
    started(s, t)
    s.commit()
    assert s.renew("a", 30) == {"t": (1, False)}
    assert s.renew("b", 30) == {}
    assert s.rescue() == [], "a live lease is left alone"
    s.db.execute("UPDATE tasks SET lease_until = now() - interval '1 second'")
    (r,) = s.rescue()
    assert (r.state, r.attempts, r.epoch) == (S.QUEUED, 1, 2), "re-queued with a new epoch"
    assert s.renew("a", 30) == {}, "the old owner learns it lost the attempt"
    # the old owner's late success is refused: fenced on its epoch
    fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0)), fate.Context(3.0, 3.0, 0.0))
    s.record(t)
    assert s.commit() == [("t", 1)]
    assert s.get("t") is not None and s.get("t").state == "queued"  # type: ignore[union-attr]


def test_rescued_attempts_use_up_the_retry_budget(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("t", retries=0)])
    states = []
    for _ in range(3):
        claimed = s.claim_next(1, ["exec"], "a", 30)
        if not claimed:
            break
        started(s, claimed[0])
        s.commit()
        s.db.execute("UPDATE tasks SET lease_until = now() - interval '1 second'")
        states += [r.state for r in s.rescue()]
    # one free re-run after a lost host (RECOVERY_FLOOR), then worker_lost
    assert states == [S.QUEUED, S.FAILED]
    v = s.get("t")
    assert v is not None and v.error is not None and v.error.kind == "worker_lost"


def test_a_rescue_never_overwrites_a_finished_task(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("t")])
    (t,) = s.claim_next(1, ["exec"], "a", 30)
    started(s, t)
    fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0)), fate.Context(3.0, 3.0, 0.0))
    s.record(t)
    assert s.commit() == []
    s.db.execute("UPDATE tasks SET lease_until = now() - interval '1 second'")
    assert s.rescue() == []
    assert s.get("t").state == "succeeded"  # type: ignore[union-attr]


def test_a_cancel_from_another_host_flags_a_running_task_and_ends_a_queued_one(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([task("run"), task("wait")])
    (r,) = s.claim_next(1, ["exec"], "a", 30)
    assert r.id == "run"
    v = s.cancel("run")
    assert v is not None and v.state == "running"
    assert s.renew("a", 30) == {"run": (1, True)}, "the owner sees the request when it renews"
    w = s.cancel("wait")
    assert w is not None and w.state == "cancelled"
    assert s.cancel("nope") is None


def test_a_schema_from_a_newer_supd_is_refused_and_migrations_are_checked(pg_url: str) -> None:
    PgStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        assert db.execute("SELECT version FROM supd_schema").fetchone() == (SCHEMA_VERSION,)
        db.execute("UPDATE supd_schema SET version = version + 1")
    with pytest.raises(StoreError, match="newer supd"):
        PgStore(pg_url)


def test_an_unreachable_server_is_one_line_naming_it_without_the_password() -> None:
    with pytest.raises(StoreError) as e:
        PgStore("postgresql://supd:s3cret@127.0.0.1:1/supd")
    assert "127.0.0.1" in str(e.value) and "s3cret" not in str(e.value) and "\n" not in str(e.value)
