"""The SQLite store's workflow methods: a record and its first tasks accepted together, later
records written with the group they belong to, lookups a restart makes, and prune leaving
what an unfinished workflow still needs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from proto.task import Outcome, TaskSpec, TaskState
from supervisord.core.flowspec import parse_flow
from supervisord.core.task import Task
from supervisord.core.workflow import FlowState, new_workflow
from supervisord.store.sqlite import SqliteStore

WALL = 1_754_000_000.0
FLOW = 'name = "two"\n[steps.a]\nkind = "exec"\nargv = ["true"]\n[steps.b]\nafter = ["a"]\nkind = "exec"\nargv = ["true"]\n'


def job_task(tid: str, wf_id: str, job: str) -> Task:
    return Task(id=tid, spec=TaskSpec(kind="exec", argv=["true"]), submitted_at=WALL, workflow=wf_id, step=job)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_a_workflow_and_its_first_tasks_are_in_the_file_when_accept_returns(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "t.db")
    wf = new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL)
    s.accept_workflow(wf, [job_task("t1", "w1", "a")])
    assert rows(tmp_path / "t.db", "SELECT id, state, name FROM workflows") == [("w1", "running", "two")]
    assert rows(tmp_path / "t.db", "SELECT id, workflow, step FROM tasks") == [("t1", "w1", "a")]
    s.close()


def test_a_saved_record_and_its_new_task_are_written_by_the_next_commit_together(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "t.db")
    wf = new_workflow("w1", parse_flow(FLOW, "toml", {}), {}, WALL)
    s.accept_workflow(wf, [])
    wf.cost_usd = 1.5
    t2 = job_task("t2", "w1", "b")
    s.save_workflow(wf, [t2])
    t2.state, t2.attempts, t2.epoch = TaskState.RUNNING, 1, 1
    s.claim(t2)  # the row does not exist yet: the commit inserts the task as it is then
    assert s.get("t2") is not None and s.known(["t2"]) == {"t2"}
    assert rows(tmp_path / "t.db", "SELECT id FROM tasks") == []
    assert s.commit() == []
    assert rows(tmp_path / "t.db", "SELECT id, state, epoch, step FROM tasks") == [("t2", "running", 1, "b")]
    t2.state, t2.outcome = TaskState.SUCCEEDED, Outcome(exit_code=0, result="B")
    s.record(t2)  # the next write is an update fenced on epoch 1
    assert s.commit() == []
    s.close()
    again = SqliteStore(tmp_path / "t.db")
    got = again.workflow("w1")
    assert got is not None and got.cost_usd == 1.5
    assert {job: (t.id, t.state) for job, t in again.workflow_tasks("w1").items()} == {"b": ("t2", TaskState.SUCCEEDED)}
    assert [w.id for w in again.unfinished_workflows()] == ["w1"]
    again.close()


def test_lists_by_public_state_newest_first(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "t.db")
    spec = parse_flow(FLOW, "toml", {})
    for n in range(3):
        s.accept_workflow(new_workflow(f"w{n}", spec, {}, WALL + n), [])
    stopping = s.workflow("w1")
    assert stopping is not None
    stopping.state = FlowState.STOPPING  # undoing: still running for people
    done = s.workflow("w2")
    assert done is not None
    done.state, done.finished_at = FlowState.FAILED, WALL + 9
    s.save_workflow(stopping)
    s.save_workflow(done)
    s.commit()
    assert [w.id for w in s.workflows(None, 10)] == ["w2", "w1", "w0"]
    assert [w.id for w in s.workflows("running", 10)] == ["w1", "w0"]
    assert [w.id for w in s.workflows("failed", 10)] == ["w2"]
    assert [w.id for w in s.workflows(None, 1)] == ["w2"]
    s.close()


def test_prune_keeps_the_finished_tasks_of_an_unfinished_workflow(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "t.db")
    spec = parse_flow(FLOW, "toml", {})
    live, over = new_workflow("w-live", spec, {}, WALL), new_workflow("w-over", spec, {}, WALL)
    over.state, over.finished_at = FlowState.SUCCEEDED, WALL + 1  # (RUNNING -> SUCCEEDED, by hand)
    a, b = job_task("ta", "w-live", "a"), job_task("tb", "w-over", "a")
    s.accept_workflow(live, [a])
    s.accept_workflow(over, [b])
    for t in (a, b):
        t.state, t.finished_at = TaskState.SUCCEEDED, WALL + 1
        s.record(t)
    s.commit()
    assert s.prune(WALL + 100) == 1
    assert rows(tmp_path / "t.db", "SELECT id FROM tasks") == [("ta",)]
    assert rows(tmp_path / "t.db", "SELECT id FROM workflows") == [("w-live",)]
    s.close()
