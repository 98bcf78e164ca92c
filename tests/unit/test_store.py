"""The stores against real files in tmp_path (and a real tmpfs for a full disk) and a real
PostgreSQL server: batches, fencing, group commits that fail and come back, reads, damage,
migration, prune. Tests that take `backend` run against both SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proto.task import ErrorKind, Outcome, TaskError, TaskSpec, TaskState, Usage
from supervisord.core import fate
from supervisord.core.fate import Context
from supervisord.core.scheduler import Scheduler
from supervisord.core.task import Task, view
from supervisord.store.base import StoreError
from supervisord.store.sqlite import SqliteStore
from supervisord.store.sqlschema import SCHEMA_VERSION

pytestmark = pytest.mark.timeout(30)

S = TaskState
WALL = 1_754_000_000.0


def task(tid: str, kind: str = "claude", **kw: object) -> Task:
    priority = int(kw.pop("priority", 0))  # type: ignore[call-overload]
    spec = (TaskSpec(kind="claude", prompt=f"prompt {tid}", priority=priority, model="m")
            if kind == "claude" else TaskSpec(kind="exec", argv=["echo", tid], env={"A": "1"}))
    return Task(id=tid, spec=spec, submitted_at=WALL, retries=2, trace_id="ab" * 16,
                parent_span_id="cd" * 8, tracestate="congo=x", **kw)  # type: ignore[arg-type]


def outside(path: Path) -> sqlite3.Connection:
    """Another process's view of the file (a connection that is not the store's)."""
    return sqlite3.connect(path, isolation_level=None)


def stored(path: Path, tid: str) -> tuple[str, int] | None:
    """(state, epoch) of a row, read by another connection: what is really on disk."""
    with outside(path) as db:
        row = db.execute("SELECT state, epoch FROM tasks WHERE id=?", (tid,)).fetchone()
    return (str(row[0]), int(row[1])) if row else None


class Backend:
    """One store backend as the tests see it: open a store, and read or change its rows the
    way another process would (SQL with `?` placeholders)."""

    def __init__(self, name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.path = tmp_path / "tasks.db"
        self.url = request.getfixturevalue("pg_url") if name == "postgres" else ""

    def open(self) -> Any:
        if self.name == "postgres":
            from supervisord.store.postgres import PgStore

            return PgStore(self.url)
        return SqliteStore(self.path)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        if self.name == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as db:
                cur = db.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []
        with outside(self.path) as db:
            return db.execute(sql, params).fetchall()

    def stored(self, tid: str) -> tuple[str, int] | None:
        rows = self.execute("SELECT state, epoch FROM tasks WHERE id=?", (tid,))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path, request)


@pytest.fixture
def store(backend: Backend) -> Iterator[Any]:
    s = backend.open()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "tasks.db")
    yield s
    s.close()


# ---- accept: a batch, durable, all or nothing ----------------------------------------------


def test_an_accepted_batch_is_durable_at_once_and_updates_wait_for_the_commit(backend: Backend, store: Any) -> None:
    a, b = task("a"), task("b", "exec")
    store.accept([a, b])
    assert backend.stored("b") == ("queued", 0)  # on disk before `Accepted` can be sent
    a.state, a.attempts, a.epoch = S.RUNNING, 1, 1
    store.claim(a)
    assert store.pending == 1
    assert backend.stored("a") == ("queued", 0)  # grouped: not yet
    assert store.commit() == []
    assert backend.stored("a") == ("running", 1)
    assert store.pending == 0 and store.commit() == []


def test_a_batch_with_a_duplicate_id_stores_nothing_of_it(store: Any) -> None:
    store.accept([task("a")])
    with pytest.raises(StoreError, match="UNIQUE"):
        store.accept([task("b"), task("a"), task("c")])
    assert store.known(["a", "b", "c"]) == {"a"}, "all of a batch or none of it"
    store.accept([task("d")])
    assert [t.id for t in store.unfinished()] == ["a", "d"]


def test_a_full_journal_refuses_a_whole_batch_and_leaves_pending_writes_alone(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "full.db", max_bytes=256 << 10)
    first = task("t-first")
    s.accept([first])
    first.state, first.attempts, first.epoch = S.RUNNING, 1, 1
    s.claim(first)  # noted before the failing batch: must survive it
    big = "x" * (40 << 10)
    refused = [Task(id=f"t-big{i}", spec=TaskSpec(kind="claude", prompt=big), submitted_at=WALL) for i in range(20)]
    with pytest.raises(StoreError) as e:
        s.accept(refused)
    assert "full" in str(e.value) and "journal.max_mb" in str(e.value) and str(tmp_path / "full.db") in str(e.value)
    assert s.known([t.id for t in refused]) == set(), "nothing of the refused batch"
    assert s.pending == 1
    assert s.commit() == []
    assert stored(tmp_path / "full.db", "t-first") == ("running", 1)
    s.accept([task("t-small")])  # a small batch still fits
    assert s.known(["t-small"]) == {"t-small"}
    s.close()


# ---- fencing -------------------------------------------------------------------------------

#: (the row's epoch, as another claimer left it; the write; the task's epoch; refused?)
FENCING = [
    (0, "claim", 1, False),   # the next attempt: row at 0, claim of epoch 1
    (1, "claim", 1, True),    # someone claimed epoch 1 first
    (1, "record", 1, False),  # the current attempt's end
    (2, "record", 1, True),   # a superseded attempt reports late
    (0, "record", 1, True),   # an attempt the row never saw claimed
]


@pytest.mark.parametrize(("row_epoch", "write", "epoch", "refused"), FENCING)
def test_a_write_for_an_attempt_that_is_not_current_is_refused_and_the_row_unchanged(
        backend: Backend, store: Any, row_epoch: int, write: str, epoch: int, refused: bool) -> None:
    t = task("t1")
    store.accept([t])
    backend.execute("UPDATE tasks SET epoch=?, state='blocked' WHERE id='t1'", (row_epoch,))
    t.state, t.attempts, t.epoch = (S.RUNNING if write == "claim" else S.SUCCEEDED), 1, epoch
    store.claim(t) if write == "claim" else store.record(t)
    assert store.commit() == ([("t1", epoch)] if refused else [])
    expected = ("blocked", row_epoch) if refused else (t.state.value, epoch)
    assert backend.stored("t1") == expected
    assert store.pending == 0, "a refused write is reported once, not retried"


def test_a_claim_and_the_attempts_end_in_one_group_are_one_write(backend: Backend, store: Any) -> None:
    sched = Scheduler()
    t = task("t1")
    store.accept([t])
    sched.add(t, 0.0)
    assert sched.take(0.0, True) is t
    fate.start(t, "w00.1", WALL)  # bumps the epoch: 0 -> 1
    store.claim(t)
    fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED, Outcome(exit_code=0, result="ok")), Context(1.0, WALL + 1, 0.0))
    store.record(t)
    assert store.commit() == []
    assert backend.stored("t1") == ("succeeded", 1)
    sched.add(t2 := task("t2"), 0.0)
    store.accept([t2])
    for _ in range(3):  # three attempts, each claimed and ended (retry), one group
        sched.tasks[t2.id] = t2
        t2.state = S.QUEUED
        fate.start(t2, "w00.1", WALL)
        store.claim(t2)
        t2.state = S.QUEUED
        store.record(t2)
    assert store.commit() == []
    assert backend.stored("t2") == ("queued", 3)


# ---- a group whose commit fails keeps every write ----------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs: the disk really fills, and SQLite (WAL) fails at COMMIT."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(dir_: Path) -> Path:
    """Fill the disk but for a few KiB; returns the filler (delete it to give the space back)."""
    filler = dir_ / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError:
            pass
    return filler


#: result size -> where SQLite fails: 64 KiB x 16 fits its page cache, so the statements pass and
#: the COMMIT (the WAL write) fails; 256 KiB x 16 spills the cache, so a statement fails
@pytest.mark.parametrize("result_kib", [64, 256])
def test_a_group_whose_commit_fails_on_a_full_disk_stays_pending_and_lands_once_space_is_back(
        tiny_disk: Path, result_kib: int) -> None:
    path = tiny_disk / "tasks.db"
    s = SqliteStore(path)
    tasks = [task(f"t{i:02d}") for i in range(16)]
    s.accept(tasks)
    filler = fill(tiny_disk)
    with pytest.raises(StoreError, match="full"):  # a batch is refused while the disk is full
        s.accept([Task(id="t-new", spec=TaskSpec(kind="claude", prompt="p" * (200 << 10)), submitted_at=WALL)])
    for t in tasks:
        t.state, t.attempts, t.epoch = S.SUCCEEDED, 1, 1
        t.outcome = Outcome(exit_code=0, result=f"{t.id} " + "r" * (result_kib << 10))
        s.claim(t)
    assert s.commit() == []
    assert (s.pending, s.write_errors) == (16, 1)
    assert stored(path, "t07") == ("queued", 0), "nothing half-written"
    got = s.get("t07")
    assert got is not None and got.state == "succeeded", "clients see the truth, not the stale row"
    assert s.commit() == []  # still full: still pending, counted again
    assert (s.pending, s.write_errors) == (16, 2)
    filler.unlink()
    assert s.commit() == []
    assert (s.pending, s.write_errors) == (0, 2)
    s.close()
    s = SqliteStore(path)
    try:
        for t in tasks:
            v = s.get(t.id)
            assert v is not None and (v.state, v.attempts, v.result) == ("succeeded", 1, t.outcome.result)  # type: ignore[union-attr]
    finally:
        s.close()


def test_a_group_past_max_mb_stays_pending_until_it_fits(tmp_path: Path) -> None:
    path = tmp_path / "capped.db"
    s = SqliteStore(path, max_bytes=256 << 10)
    done = task("t-done")
    s.accept([done])
    done.state, done.attempts, done.epoch = S.SUCCEEDED, 1, 1
    done.outcome = Outcome(exit_code=0, result="y" * (1 << 20))  # far past the cap
    s.claim(done)
    assert s.commit() == [] and (s.pending, s.write_errors) == (1, 1)
    assert stored(path, "t-done") == ("queued", 0)
    done.outcome = Outcome(exit_code=0, result="y" * 100, truncated=True)  # the same task object, smaller now
    assert s.commit() == [] and s.pending == 0
    assert stored(path, "t-done") == ("succeeded", 1)
    s.close()


# ---- a lock held by an outside process -----------------------------------------------------


def test_an_outside_lock_refuses_a_batch_fast_and_a_group_waits_for_it(tmp_path: Path,
                                                                     sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    path = tmp_path / "tasks.db"
    t = task("t1")
    store.accept([t])
    holder = outside(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.accept([task("t2")])
        assert time.monotonic() - started < 1.0, "fails fast, not after SQLite's default 5 s"
        t.state, t.attempts, t.epoch = S.RUNNING, 1, 1
        store.claim(t)
        assert store.commit() == []
        assert (store.pending, store.write_errors) == (1, 1)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert store.commit() == [] and store.pending == 0
    assert stored(path, "t1") == ("running", 1)
    assert store.known(["t2"]) == set()


# ---- damage: refused at open, naming the file ----------------------------------------------


def _populated(path: Path) -> None:
    s = SqliteStore(path)
    s.accept([Task(id=f"t{i:04d}", spec=TaskSpec(kind="exec", argv=["echo", "z" * 500]), submitted_at=WALL)
              for i in range(400)])
    s.close()


def _corrupt_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is no sqlite file!" * 4)


def _corrupt_page(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:  # the b-tree pages after the schema page, garbage
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def _newer_schema(path: Path) -> None:
    with outside(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")


#: how the file was damaged -> what the refusal says (besides the file's name)
DAMAGE: list[tuple[Callable[[Path], None], list[str]]] = [
    (_corrupt_header, ["not a database", "move it aside"]),
    (_corrupt_page, ["corrupt", "move it aside"]),
    (_newer_schema, ["newer supd", "move the file aside"]),
]


@pytest.mark.parametrize(("damage", "says"), DAMAGE)
def test_a_damaged_or_newer_file_is_refused_at_open_by_name(tmp_path: Path, damage: Callable[[Path], None],
                                                            says: list[str]) -> None:
    path = tmp_path / "tasks.db"
    _populated(path)
    damage(path)
    with pytest.raises(StoreError) as e:
        SqliteStore(path)
    assert str(path) in str(e.value)
    for phrase in says:
        assert phrase in str(e.value)


# ---- migration from the first supd's file -------------------------------------------------

V0_SCHEMA = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0, spec BLOB NOT NULL, outcome BLOB, child TEXT, trace_id TEXT,
    span_id TEXT, parent_span_id TEXT, tracestate TEXT, submitted_at REAL NOT NULL, started_at REAL,
    finished_at REAL
);
CREATE INDEX tasks_state ON tasks (state, seq);
"""


def test_a_file_from_the_first_supd_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    enc = msgspec.msgpack.Encoder()
    with outside(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(V0_SCHEMA)
        db.execute(
            "INSERT INTO tasks (id, seq, kind, state, attempts, retries, spec, child, submitted_at, started_at)"
            " VALUES ('old-run', 1, 'exec', 'running', 1, 2, ?, 'w00.1', ?, ?)",
            (enc.encode(TaskSpec(kind="exec", argv=["sleep", "1"])), WALL, WALL + 1))
        db.execute(
            "INSERT INTO tasks (id, seq, kind, state, attempts, spec, outcome, submitted_at, finished_at)"
            " VALUES ('old-done', 2, 'claude', 'succeeded', 1, ?, ?, ?, ?)",
            (enc.encode(TaskSpec(prompt="hi")), enc.encode(Outcome(exit_code=0, result="42")), WALL, WALL + 2))
    s = SqliteStore(path)
    try:
        (run,) = s.unfinished()
        assert (run.id, run.state, run.attempts, run.retries, run.child) == ("old-run", S.RUNNING, 1, 2, "w00.1")
        assert (run.epoch, run.forgiven, run.cancel_requested) == (0, 0, False)
        assert run.spec.argv == ["sleep", "1"]
        done = s.get("old-done")
        assert done is not None and (done.state, done.result) == ("succeeded", "42")
        run.state, run.attempts, run.epoch = S.RUNNING, 2, 1
        s.claim(run)  # the migrated row takes part in fencing (epoch 0 -> 1)
        assert s.commit() == []
        s.accept([task("new")])
        assert [v.id for v in s.list(None, 10, 1 << 20)] == ["new", "old-done", "old-run"]
    finally:
        s.close()
    with outside(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5  # every step ran
    assert stored(path, "old-run") == ("running", 1)
    SqliteStore(path).close()  # and a migrated file opens again as it is


# ---- the file deleted or replaced under us -------------------------------------------------


def test_a_deleted_journal_is_noticed_and_submits_are_refused(tmp_path: Path, sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    path = tmp_path / "tasks.db"
    store.accept([task("a")])
    assert store.check() is None
    path.unlink()
    problem = store.check()
    assert problem is not None and "deleted" in problem and str(path) in problem
    with pytest.raises(StoreError, match="deleted"):
        store.accept([task("b")])


def test_a_replaced_journal_is_noticed_and_submits_are_refused(tmp_path: Path, sqlite_store: SqliteStore) -> None:
    store = sqlite_store
    path = tmp_path / "tasks.db"
    store.accept([task("a")])
    (tmp_path / "other.db").write_bytes(path.read_bytes())
    os.replace(tmp_path / "other.db", path)
    problem = store.check()
    assert problem is not None and "replaced" in problem
    with pytest.raises(StoreError, match="replaced"):
        store.accept([task("b")])


# ---- reads ---------------------------------------------------------------------------------


def test_get_sees_pending_writes_first(backend: Backend, store: Any) -> None:
    t = task("a")
    store.accept([t])
    t.state, t.attempts, t.epoch, t.child = S.RUNNING, 1, 1, "w00.1"
    store.claim(t)
    got = store.get("a")
    assert got is not None and (got.state, got.child) == ("running", "w00.1")
    assert backend.stored("a") == ("queued", 0)
    assert store.get("nope") is None
    assert store.known(["a", "nope"]) == {"a"}


def test_views_reads_many_at_once_pending_writes_first(backend: Backend, store: Any) -> None:
    a, b, c = task("a"), task("b"), task("c")
    store.accept([a, b, c])
    b.state, b.attempts, b.epoch, b.child = S.RUNNING, 1, 1, "w00.2"
    store.claim(b)  # pending: the store's reply is this, not the stored row
    got = store.views(["c", "nope", "b", "a"])
    assert sorted(got) == ["a", "b", "c"], "an unknown id is left out"
    assert (got["a"].state, got["b"].state, got["b"].child, got["c"].state) == ("queued", "running", "w00.2", "queued")
    assert store.views([]) == {}


def _outcome(kib: int) -> Outcome:
    return Outcome(exit_code=0, result="r" * (kib << 10))


def _listed(store: Any) -> None:
    """a..e, oldest first; a (failed) and d (failed) and b (running) have moved on."""
    tasks = {tid: task(tid, "exec") for tid in "abcde"}
    store.accept(list(tasks.values()))
    for tid, state in (("a", S.FAILED), ("b", S.RUNNING), ("d", S.FAILED)):
        tasks[tid].state = state
        tasks[tid].outcome = _outcome(10)
        store.record(tasks[tid])
    store.commit()


#: (state, limit, budget_bytes) -> ids; a row costs its blobs + 1 KiB: a, d ≈ 11 KiB, b ≈ 11 KiB, c, e ≈ 1 KiB
LISTS = [
    (None, 10, 1 << 20, ["e", "d", "c", "b", "a"]),
    (None, 2, 1 << 20, ["e", "d"]),
    (None, 10, 14 << 10, ["e", "d", "c"]),  # b would pass the budget
    (None, 10, 1, ["e"]),  # at least one
    ("failed", 10, 1 << 20, ["d", "a"]),
    ("failed", 10, 12 << 10, ["d"]),
    ("failed", 10, 1, ["d"]),
    ("queued", 10, 1 << 20, ["e", "c"]),
    ("queued", 1, 1 << 20, ["e"]),
    ("running", 10, 1 << 20, ["b"]),
    ("succeeded", 10, 1 << 20, []),
]


@pytest.mark.parametrize(("state", "limit", "budget", "ids"), LISTS)
def test_list_is_newest_first_within_limit_and_budget(store: Any, state: str | None, limit: int,
                                                      budget: int, ids: list[str]) -> None:
    _listed(store)
    assert [v.id for v in store.list(state, limit, budget)] == ids


def test_list_decodes_only_the_rows_it_returns(backend: Backend, store: Any) -> None:
    _listed(store)
    # b's outcome cannot be decoded: list must not touch it
    backend.execute("UPDATE tasks SET outcome=? WHERE id='b'", (b"\xc1" * (12 << 10),))
    assert [v.id for v in store.list(None, 10, 14 << 10)] == ["e", "d", "c"]


def test_list_shows_pending_tasks_by_their_state_in_memory(store: Any) -> None:
    _listed(store)
    c = task("c", "exec")  # the hub's object for c (same id)
    c.state, c.attempts, c.epoch = S.RUNNING, 1, 1
    store.claim(c)
    assert [v.id for v in store.list("running", 10, 1 << 20)] == ["c", "b"]
    assert [v.id for v in store.list("queued", 10, 1 << 20)] == ["e"]
    assert [(v.id, v.state) for v in store.list(None, 3, 1 << 20)] == [("e", "queued"), ("d", "failed"),
                                                                      ("c", "running")]


# ---- cancel requests, prune ----------------------------------------------------------------


def test_cancel_requests_survive_a_reopen(backend: Backend) -> None:
    s = backend.open()
    run, done = task("run"), task("done")
    s.accept([run, done, task("other")])
    run.state, run.attempts, run.epoch = S.RUNNING, 1, 1
    s.claim(run)
    done.state, done.finished_at = S.SUCCEEDED, WALL + 5
    s.record(done)
    s.commit()
    s.request_cancel("run")
    s.request_cancel("done")  # already final: nothing to cancel
    assert s.pending == 2
    run.state = S.QUEUED  # a later record of the attempt does not undo the request
    s.record(run)
    s.commit()
    s.close()
    s = backend.open()
    try:
        assert [(t.id, t.cancel_requested) for t in s.unfinished()] == [("run", True), ("other", False)]
    finally:
        s.close()


def test_prune_deletes_final_tasks_finished_before_the_cutoff(store: Any) -> None:
    #: id -> (state, finished_at)
    rows = {
        "old-ok": (S.SUCCEEDED, WALL - 100),
        "old-failed": (S.FAILED, WALL - 50),
        "new-ok": (S.SUCCEEDED, WALL + 1),
        "at-cutoff": (S.CANCELLED, WALL),
        "queued": (S.QUEUED, None),
        "running": (S.RUNNING, WALL - 100),  # a stale finished_at does not make it final
    }
    tasks = [task(tid) for tid in rows]
    store.accept(tasks)
    for t in tasks:
        t.state, t.finished_at = rows[t.id]
        store.record(t)
    store.commit()
    assert store.prune(WALL, limit=1) == 1  # the oldest first
    assert store.known(list(rows)) == {"old-failed", "new-ok", "at-cutoff", "queued", "running"}
    assert store.prune(WALL) == 1
    assert store.known(list(rows)) == {"new-ok", "at-cutoff", "queued", "running"}
    assert store.prune(WALL) == 0


# ---- a whole life, through a reopen ---------------------------------------------------------


def test_round_trip_through_a_reopen(backend: Backend) -> None:
    s = backend.open()
    tasks = [task("a"), task("b", "exec"), task("c"), task("d")]
    s.accept(tasks)
    sched = Scheduler()
    for t in tasks:
        sched.add(t, 0.0)
    a = sched.take(0.0, True)
    b = sched.take(0.0, True)
    assert a is tasks[0] and b is tasks[1]
    a.span_id = "ef" * 8
    fate.start(a, "w00.1", WALL + 1)
    fate.start(b, "w01.1", WALL + 1)
    b.forgiven = 1
    s.claim(a)
    s.claim(b)
    outcome = Outcome(exit_code=0, result="42", usage=Usage(input_tokens=5, output_tokens=7), cost_usd=0.01,
                      session_id="sess", num_turns=2, is_error=False)
    fate.decide(a, fate.Ended(a.epoch, S.SUCCEEDED, outcome), Context(3.0, WALL + 3.5, 0.0))
    s.record(a)
    fate.decide(tasks[2], fate.CancelRequested(), Context(2.0, WALL + 2, 0.0))
    s.record(tasks[2])
    s.close()  # close commits

    s = backend.open()
    try:
        unfinished = s.unfinished()
        assert [(t.id, t.state, t.attempts, t.epoch, t.forgiven, t.child) for t in unfinished] == [
            ("b", S.RUNNING, 1, 1, 1, "w01.1"), ("d", S.QUEUED, 0, 0, 0, None)]
        b2 = unfinished[0]
        assert b2.spec == b.spec and b2.retries == 2 and b2.submitted_at == WALL
        assert (b2.trace_id, b2.parent_span_id, b2.tracestate) == ("ab" * 16, "cd" * 8, "congo=x")
        assert b2.started_at == WALL + 1 and b2.finished_at is None

        got = s.get("a")
        assert got is not None
        assert (got.state, got.attempts, got.exit_code, got.result, got.error) == ("succeeded", 1, 0, "42", None)
        assert (got.child, got.span_id, got.started_at, got.finished_at) == ("w00.1", "ef" * 8, WALL + 1, WALL + 3.5)
        assert got.duration_s == 2.5
        assert got.usage == Usage(input_tokens=5, output_tokens=7)
        assert (got.cost_usd, got.session_id, got.num_turns) == (0.01, "sess", 2)

        c = s.get("c")
        assert c is not None and c.state == "cancelled"
        assert c.error == TaskError(kind=ErrorKind.CANCELLED, message="cancelled by request")
        assert s.counts() == {"succeeded": 1, "running": 1, "cancelled": 1, "queued": 1}
        s.accept([task("e")])  # seq keeps counting across a reopen: newest first
        assert [v.id for v in s.list(None, 10, 1 << 20)] == ["e", "d", "c", "b", "a"]
    finally:
        s.close()


def test_close_stops_the_checkpointer_and_the_loop_connection_never_checkpoints(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "tasks.db")
    assert s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    checkpointer = s._checkpointer
    assert checkpointer.is_alive()
    s.close()
    assert not checkpointer.is_alive()
    s.close()  # twice is harmless


# ---- view ----------------------------------------------------------------------------------


def test_view_of_a_live_task() -> None:
    t = task("a", "exec", attempts=1, child="w03.2", started_at=WALL + 1.0, span_id="12" * 8)
    t.state = S.RUNNING
    v = view(t)
    assert (v.id, v.kind, v.state, v.attempts, v.child) == ("a", "exec", "running", 1, "w03.2")
    assert (v.exit_code, v.result, v.error, v.usage, v.stderr, v.truncated) == (None, None, None, None, None, False)
    assert (v.trace_id, v.span_id, v.parent_span_id) == ("ab" * 16, "12" * 8, "cd" * 8)
    assert (v.submitted_at, v.started_at, v.finished_at, v.duration_s) == (WALL, WALL + 1.0, None, None)
    assert (v.argv, v.prompt, v.priority) == (["echo", "a"], None, 0)


def test_view_rounds_the_duration() -> None:
    t = task("a", started_at=WALL, finished_at=WALL + 1.23456789)
    t.state = S.FAILED
    error = TaskError(kind="exit", message="exit 2")
    t.outcome = Outcome(exit_code=2, stderr="oops", truncated=True, error=error)
    v = view(t)
    assert v.duration_s == pytest.approx(1.234568, abs=1e-6)
    assert (v.exit_code, v.stderr, v.truncated, v.error) == (2, "oops", True, error)


# ---- a batch's tally: written when its row changes, counted again from its tasks ---------------


def test_an_open_batchs_tally_is_counted_from_its_tasks_after_a_crash(tmp_path: Path) -> None:
    from supervisord.core.batches import Batch

    s = SqliteStore(tmp_path / "tasks.db")
    ts = [task(f"t{i}") for i in range(3)]
    batch = Batch(id="ab" * 16, size=3, submitted_at=WALL, label="nightly", max_cost_usd=5.0)
    s.accept(ts, batch)
    costs = {"t0": 0.25, "t1": 1.5}
    for t in ts[:2]:  # two of three end; the third still runs when the daemon dies
        fate.start(t, "w00.1", WALL)
        s.claim(t)
        fate.decide(t, fate.Ended(t.epoch, S.SUCCEEDED if t.id == "t0" else S.FAILED,
                                  Outcome(exit_code=0, cost_usd=costs[t.id], usage=Usage(input_tokens=10, output_tokens=7))),
                    Context(1.0, WALL + 2, 0.0))
        s.record(t)
        assert batch.task_ended(t, WALL + 2) == (False, False)
        s.record_batch(batch)
        assert s.pending == 1, "the task's row only: a tally that only grew is not a write of its own"
        assert s.commit() == []
    fate.start(ts[2], "w00.1", WALL)
    s.claim(ts[2])
    assert s.commit() == []
    s.close()  # no final write of the tally: as after kill -9

    again = SqliteStore(tmp_path / "tasks.db")
    try:
        [found] = again.open_batches()
        assert (found.id, found.size, found.label, found.max_cost_usd) == ("ab" * 16, 3, "nightly", 5.0)
        assert (found.succeeded, found.failed, found.cancelled) == (1, 1, 0)
        assert found.cost_usd == 1.75 and (found.input_tokens, found.output_tokens) == (20, 14)
        assert found.done_at is None and found.budget_spent is False
        ts[2].state = S.RUNNING
        fate.decide(ts[2], fate.Ended(ts[2].epoch, S.SUCCEEDED, Outcome(exit_code=0, cost_usd=4.0)),
                    Context(1.0, WALL + 3, 0.0))
        again.record(ts[2])
        assert found.task_ended(ts[2], WALL + 3) == (True, True)  # 5.75 >= 5.0, and the last one
        again.record_batch(found)
        assert again.commit() == []
        stored = again.get_batch(found.id)
        assert stored is not None and stored.done_at == WALL + 3 and stored.budget_spent
        assert (stored.succeeded, stored.failed, stored.cost_usd) == (2, 1, 5.75)
        assert again.open_batches() == []
    finally:
        again.close()
