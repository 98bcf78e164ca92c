"""The PostgreSQL store's workflows against a real PostgreSQL: a record and its first tasks
accepted together with this host as the engine, saves fenced on the engine's epoch (a
stale engine's save and the tasks it would start are refused together), takeover of an
expired lease by compare-and-swap (one host wins), a host's own workflows taken back after
its restart, cancel flags any host sets, and prune keeping what an unfinished workflow needs."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core.flowspec import parse_flow
from supervisord.core.task import Task
from supervisord.core.workflow import FlowState, new_workflow
from supervisord.store.postgres import PgStore

pytestmark = pytest.mark.timeout(60)
WALL = 1_754_000_000.0
FLOW = 'name = "two"\n[steps.a]\nkind = "exec"\nargv = ["true"]\n[steps.b]\nafter = ["a"]\nkind = "exec"\nargv = ["true"]\n'


def job_task(tid: str, wf_id: str, job: str) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=WALL, workflow=wf_id, step=job)


def store(url: str, host: str, lease_s: float = 30.0) -> PgStore:
    s = PgStore(url, host=host)
    s.lease_s = lease_s
    return s


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()


def test_a_workflow_and_its_first_tasks_are_stored_together_with_this_host_its_engine(pg_url: str) -> None:
    a = store(pg_url, "a")
    wf = new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL)
    a.accept_workflow(wf, [job_task("t1", "w1", "a")])
    assert rows(pg_url, "SELECT id, state, name, host, epoch FROM workflows") == [("w1", "running", "two", "a", 1)]
    assert rows(pg_url, "SELECT id, workflow, step, state FROM tasks") == [("t1", "w1", "a", "queued")]
    claimed = a.claim_next(5, ["exec"], "b", 30)
    assert [(t.id, t.workflow, t.step) for t in claimed] == [("t1", "w1", "a")], "any host claims a step, tagged"
    wf.cost_usd = 2.0
    a.save_workflow(wf, [job_task("t2", "w1", "b")])
    assert a.commit() == []
    got = store(pg_url, "b").workflow("w1")
    assert got is not None and got.cost_usd == 2.0
    assert sorted(a.workflow_tasks("w1")) == ["a", "b"]
    held, lost = a.renew_workflows("a", 30)
    assert held == {"w1": False} and lost == []


def test_a_stale_engines_save_is_refused_with_the_tasks_it_would_start(pg_url: str) -> None:
    a, b = store(pg_url, "a", lease_s=0.3), store(pg_url, "b")
    wf = new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL)
    a.accept_workflow(wf, [job_task("t1", "w1", "a")])
    assert b.take_workflows("b", 30) == [], "a's lease has not ended: nothing to take"
    time.sleep(0.5)
    (taken,) = b.take_workflows("b", 30)
    assert taken[0].id == "w1" and set(taken[1]) == {"a"} and taken[2] is False
    assert rows(pg_url, "SELECT host, epoch FROM workflows") == [("b", 2)]
    wf.cost_usd = 9.0
    a.save_workflow(wf, [job_task("t-stale", "w1", "b")])
    a.commit()
    assert rows(pg_url, "SELECT id FROM tasks ORDER BY id") == [("t1",)], "the stale engine started nothing"
    stored = b.workflow("w1")
    assert stored is not None and stored.cost_usd == 0.0, "nor overwrote the record"
    held, lost = a.renew_workflows("a", 30)
    assert held == {} and lost == ["w1"], "a hears it lost the workflow"
    b.save_workflow(taken[0], [job_task("t2", "w1", "b")])
    b.commit()
    assert rows(pg_url, "SELECT id FROM tasks ORDER BY id") == [("t1",), ("t2",)], "the new engine's save stands"


def test_two_hosts_taking_over_at_once_one_wins(pg_url: str) -> None:
    a = store(pg_url, "a", lease_s=0.2)
    spec = parse_flow(FLOW, "toml", {})
    for n in range(20):
        a.accept_workflow(new_workflow(f"w{n:02}", spec, {}, WALL + n), [])
    time.sleep(0.4)
    hosts = {"b": store(pg_url, "b"), "c": store(pg_url, "c")}
    got: dict[str, list[str]] = {"b": [], "c": []}

    def take(name: str) -> None:
        while found := hosts[name].take_workflows(name, 30, limit=3):
            got[name] += [wf.id for wf, _, _ in found]

    threads = [threading.Thread(target=take, args=(n,)) for n in hosts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got["b"] + got["c"]) == [f"w{n:02}" for n in range(20)]
    assert not set(got["b"]) & set(got["c"])
    assert rows(pg_url, "SELECT DISTINCT epoch FROM workflows") == [(2,)], "each taken once"


def test_a_restarted_host_takes_its_own_workflows_back_at_once(pg_url: str) -> None:
    before = store(pg_url, "a")
    before.accept_workflow(new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL), [])
    after = store(pg_url, "a")  # the same host in a new life (its lease has not ended)
    assert store(pg_url, "b").take_workflows("b", 30) == []
    (taken,) = after.take_workflows("a", 30)
    assert taken[0].id == "w1" and rows(pg_url, "SELECT host, epoch FROM workflows") == [("a", 2)]
    assert after.take_workflows("a", 30) == [], "held now: not taken again"
    held, lost = before.renew_workflows("a", 30)
    assert "w1" not in held and lost == ["w1"], "the old life's epoch is stale"


def test_a_cancel_flag_from_any_host_reaches_the_engines_renewal(pg_url: str) -> None:
    a, b = store(pg_url, "a"), store(pg_url, "b")
    wf = new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL)
    a.accept_workflow(wf, [])
    assert b.cancel_workflow("nope") is None
    flagged = b.cancel_workflow("w1")
    assert flagged is not None and flagged.state is FlowState.RUNNING
    assert a.renew_workflows("a", 30) == ({"w1": True}, [])
    wf.state, wf.finished_at = FlowState.CANCELLED, WALL + 1
    a.save_workflow(wf)
    a.commit()
    assert a.renew_workflows("a", 30) == ({}, []), "a final workflow is no longer leased"
    done = b.cancel_workflow("w1")
    assert done is not None and done.state is FlowState.CANCELLED
    assert [w.id for w in b.workflows("cancelled", 10)] == ["w1"] and b.unfinished_workflows() == []


def test_prune_keeps_the_tasks_of_an_unfinished_workflow(pg_url: str) -> None:
    a = store(pg_url, "a")
    spec = parse_flow(FLOW, "toml", {})
    live, over = new_workflow("live", spec, {}, WALL), new_workflow("over", spec, {}, WALL)
    a.accept_workflow(live, [job_task("t-live", "live", "a")])
    a.accept_workflow(over, [job_task("t-over", "over", "a")])
    for tid in ("t-live", "t-over"):
        t = a.task(tid)
        assert t is not None
        t.state, t.finished_at, t.outcome = TaskState.SUCCEEDED, WALL + 1, Outcome(exit_code=0)
        a.record(t)
    over.state, over.finished_at = FlowState.SUCCEEDED, WALL + 1
    a.save_workflow(over)
    a.commit()
    assert a.prune(WALL + 10) == 1
    assert rows(pg_url, "SELECT id FROM tasks") == [("t-live",)]
    assert rows(pg_url, "SELECT id FROM workflows") == [("live",)]
    assert [t.id for t in a.final_tasks(["t-live", "t-nope"])] == ["t-live"]
