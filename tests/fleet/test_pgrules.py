"""The fleet-wide rules of `PgStore` against a real PostgreSQL: exclusive keys whose capacity
two hosts claiming at once never overspend, released by the attempt's end or a rescue; the
shared rate-limit gate; batch budgets tallied in the database."""

from __future__ import annotations

import threading
import time

import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState
from supervisord.core import fate
from supervisord.core.batches import Batch
from supervisord.core.task import Task
from supervisord.store import pgrules
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(90)
S = TaskState
CTX = fate.Context(3.0, 3.0, 0.0)


def keyed(tid: str, key: str | None = "repo", kind: str = "exec", trace: str | None = None) -> Task:
    spec = (TaskSpec(kind="exec", argv=["true"], key=key) if kind == "exec"
            else TaskSpec(kind="claude", prompt="p", key=key))
    return Task(id=tid, spec=spec, submitted_at=1.0, trace_id=trace)


def run(store: PgStore, t: Task) -> None:
    fate.start(t, "w00.1", 2.0)
    store.claim(t)


def succeed(store: PgStore, t: Task, cost_usd: float | None = None) -> None:
    fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0, cost_usd=cost_usd)), CTX)
    store.record(t)
    if t.spec.key is not None:
        store.release_key(t.id, t.epoch)
    assert store.commit() == []


def test_two_hosts_claiming_at_once_never_run_more_holders_of_a_key_than_its_limit(pg_url: str) -> None:
    hosts = {"a": PgStore(pg_url), "b": PgStore(pg_url), "c": PgStore(pg_url)}
    hosts["a"].accept([keyed(f"k{i:02}") for i in range(24)] + [keyed(f"free{i}", key=None) for i in range(6)])
    holding: set[str] = set()
    most = [0]
    guard = threading.Lock()
    ran: list[str] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        store = hosts[name]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(ran) < 30:
                for t in store.claim_next(3, ["exec"], name, 30):
                    with guard:
                        if t.spec.key is not None:
                            holding.add(t.id)
                            most[0] = max(most[0], len(holding))
                        ran.append(t.id)
                    run(store, t)
                    time.sleep(0.002)  # the attempt runs
                    with guard:
                        holding.discard(t.id)  # its tree is dead: then its key is released
                    succeed(store, t)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in hosts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert most[0] == 1, "never two holders of key repo (limit 1) at once"
    assert sorted(ran) == sorted({*ran}) and len(ran) == 30, "every task claimed exactly once"
    assert hosts["a"].counts() == {"succeeded": 30}


def test_a_key_admits_its_limit_per_claim_and_skips_to_other_work(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([keyed("k1"), keyed("k2"), keyed("k3"), keyed("other", key="docs"), keyed("free", key=None)])
    got = s.claim_next(5, ["exec"], "a", 30, {"repo": 2})
    assert [t.id for t in got] == ["k1", "k2", "other", "free"], "two of repo (its limit), then what can run"
    assert s.claim_next(5, ["exec"], "b", 30, {"repo": 2}) == [], "repo is full on every host"
    assert s.key_holders() == {"repo": ["k1", "k2"], "docs": ["other"]}
    run(s, got[0])
    succeed(s, got[0])
    assert [t.id for t in s.claim_next(5, ["exec"], "b", 30, {"repo": 2})] == ["k3"], "freed by k1's end"


def test_a_key_stays_held_until_its_attempt_is_released_or_rescued(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([keyed("k1"), keyed("k2")])
    (t,) = s.claim_next(2, ["exec"], "a", 30)
    run(s, t)
    fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0)), CTX)
    s.record(t)
    s.commit()  # final, but its host has not yet seen its tree dead: the key is still held
    assert s.claim_next(2, ["exec"], "b", 30) == []
    s.release_key(t.id, t.epoch - 1)  # a stale release (an older attempt's) frees nothing
    s.commit()
    assert s.claim_next(2, ["exec"], "b", 30) == []
    s.release_key(t.id, t.epoch)
    s.commit()
    (t2,) = s.claim_next(2, ["exec"], "b", 30)
    assert t2.id == "k2"
    run(s, t2)
    s.commit()
    s.db.execute("UPDATE tasks SET lease_until = now() - interval '1 second'")
    assert [r.id for r in s.rescue()] == ["k2"], "b is gone"
    assert s.key_holders() == {}, "a rescue frees the key of the attempt it ends"


def test_the_fleet_gate_holds_claude_tasks_on_every_host_and_lets_exec_run(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    a.accept([keyed("c1", key=None, kind="claude"), keyed("e1", key=None)])
    assert a.gate() is None
    a.close_gate(30, "rl")
    a.close_gate(5, "shorter")  # an earlier reset does not open a gate closed for longer
    g = b.gate()
    assert g is not None and 29 < g[0] <= 30 and g[1] == "rl"
    assert [t.id for t in b.claim_next(5, ["exec", "claude"], "b", 30)] == ["e1"], "exec still runs"
    a.db.execute("UPDATE gate SET until = now() - interval '1 second'")
    assert b.gate() is None
    assert [t.id for t in b.claim_next(5, ["exec", "claude"], "b", 30)] == ["c1"], "open again at its reset"


def test_a_batch_budget_spent_on_one_host_stops_the_batch_everywhere(pg_url: str) -> None:
    a, b = PgStore(pg_url), PgStore(pg_url)
    tasks = [keyed(f"c{i}", key=None, kind="claude", trace="B") for i in range(4)]
    tasks.append(keyed("e", key=None, trace="B"))
    a.accept(tasks, Batch(id="B", size=5, submitted_at=1.0, label="nightly", max_cost_usd=1.0))
    first = a.claim_next(1, ["claude"], "a", 30)
    second = b.claim_next(1, ["claude"], "b", 30)
    run(a, first[0])
    run(b, second[0])
    succeed(a, first[0], cost_usd=0.6)
    assert a.take_batch_news() == ([], [])
    succeed(b, second[0], cost_usd=0.5)  # b's end spends the cap: b stops the queued Claude tasks
    spent, done = b.take_batch_news()
    assert spent == ["B"] and done == []
    views = a.views(["c2", "c3", "e"])
    assert [(views[t].state, views[t].error.kind if views[t].error else None) for t in ("c2", "c3")] == [
        ("cancelled", "budget"), ("cancelled", "budget")]
    assert views["e"].state == "queued", "exec tasks are not stopped"
    assert a.claim_next(5, ["exec", "claude"], "a", 30)[0].id == "e"
    batch = a.get_batch("B")
    assert batch is not None and batch.budget_spent and round(batch.cost_usd, 6) == 1.1
    assert (batch.succeeded, batch.cancelled, batch.done_at) == (2, 2, None)


def test_a_retry_written_back_into_a_spent_batch_is_stopped_by_the_periodic_pass(pg_url: str) -> None:
    s = PgStore(pg_url)
    s.accept([keyed("c0", key=None, kind="claude", trace="B"), keyed("c1", key=None, kind="claude", trace="B")],
             Batch(id="B", size=2, submitted_at=1.0, max_cost_usd=0.5))
    (r,) = s.claim_next(1, ["claude"], "a", 30)
    r.retries = 1
    run(s, r)
    (c,) = s.claim_next(1, ["claude"], "a", 30)
    run(s, c)
    s.commit()
    succeed(s, c, cost_usd=0.9)  # spends the cap while r still runs
    fate.decide(r, fate.Ended(r.epoch, S.FAILED, Outcome(error=TaskError(kind=ErrorKind.OVERLOADED, message="529"))),
                CTX)
    assert r.state is S.QUEUED, "r is retried"
    s.record(r)
    s.commit()
    assert s.claim_next(5, ["claude"], "b", 30) == [], "the claim skips a spent batch's Claude tasks"
    assert [t.id for t in s.stop_spent()] == [r.id]
    _, done = s.take_batch_news()
    assert [b.id for b in done] == ["B"], "its last task is final: the batch is done"
    v = s.get(r.id)
    assert v is not None and v.state == "cancelled" and v.error is not None and v.error.kind == "budget"


def test_a_claim_reads_the_head_of_a_deep_queue_in_order_not_the_whole_queue(pg_url: str) -> None:
    """3,000 queued tasks of two kinds: the claim's plan walks the queue's order index and
    stops at its LIMIT (no sort of every queued row), and takes the highest priority, then the oldest."""
    a = PgStore(pg_url)
    try:
        tasks = [keyed(f"deep{i:04}", key=None, kind="claude" if i % 3 else "exec") for i in range(3000)]
        tasks[1234].spec.priority = 5
        a.accept(tasks)  # past ANALYZE_MIN_ROWS: the statistics are fresh
        plan = "\n".join(r[0] for r in a.db.execute(
            "EXPLAIN " + pgrules._CANDIDATES,
            {"kinds": ["exec", "claude"], "seen": [], "full": [], "host": "a", "n": 4}).fetchall())
        assert "tasks_queue_order" in plan and "Sort" not in plan, plan
        rows, _ = pgrules.claim(a.db, 3, ["exec", "claude"], "a", 30.0, {}, "id")
        assert sorted(r[0] for r in rows) == ["deep0000", "deep0001", "deep1234"]  # (RETURNING has no order)
    finally:
        a.close()


def test_a_key_held_by_a_final_task_is_freed_once_its_host_is_gone_or_back_without_its_tree(pg_url: str) -> None:
    """A task ends while its tree is still being killed (its key stays held); then its host
    dies. Nobody else would free that key: a rescue does, once the host has not beaten for a
    lease; and a host that comes back finds the key among its previous life's (`final_keys_of`)."""
    a, b = PgStore(pg_url), PgStore(pg_url)
    try:
        a.lease_s = b.lease_s = 5.0
        a.accept([keyed("fk1"), keyed("fk2"), keyed("fk3")])
        a.heartbeat("host-a", 1, 1.0, 1, 1, "running")
        b.heartbeat("host-b", 2, 1.0, 1, 0, "running")
        (t,) = a.claim_next(1, ["exec"], "host-a", 30)
        run(a, t)
        fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0)), CTX)
        a.record(t)
        assert a.commit() == []
        assert a.final_keys_of("host-a") == {t.id: t.epoch}
        b.rescue()
        assert b.claim_next(1, ["exec"], "host-b", 30) == [], "host-a is alive: its key is still its own"
        b.db.execute("UPDATE hosts SET heartbeat_at = now() - interval '6 seconds' WHERE host = 'host-a'")
        b.rescue()
        assert b.key_holders() == {}
        (t2,) = b.claim_next(1, ["exec"], "host-b", 30)
        assert t2.id == "fk2" and a.final_keys_of("host-a") == {}
    finally:
        a.close()
        b.close()
