"""The SQLite journal (WAL): every accepted task, its attempts and its final state.

Owns the database file and its schema. Writes are grouped: the hub calls the write
methods while it handles a batch of events, then `commit()` once, and only then sends
the replies that promise durability (`Accepted`). Reads see uncommitted writes of the
same connection. Must not import the hub or any other spoke.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import msgspec

from proto.task import Outcome, TaskSpec, TaskState, TaskView
from supervisord.core.task import Task
from supervisord.logs import log

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    spec BLOB NOT NULL,
    outcome BLOB,
    child TEXT,
    trace_id TEXT,
    span_id TEXT,
    parent_span_id TEXT,
    tracestate TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
"""

_COLUMNS = (
    "id, seq, kind, state, priority, attempts, retries, spec, outcome, child, trace_id, span_id,"
    " parent_span_id, tracestate, submitted_at, started_at, finished_at"
)

#: How many tasks with an unwritten state `Journal.unsaved` remembers.
UNSAVED_CAP = 10_000

_enc = msgspec.msgpack.Encoder()
_spec_dec = msgspec.msgpack.Decoder(TaskSpec)
_outcome_dec = msgspec.msgpack.Decoder(Outcome)


class JournalError(Exception):
    """A batch could not be journaled (disk full, `journal.max_mb` reached); nothing of it was."""


class Journal:
    def __init__(self, path: Path, synchronous: str = "NORMAL", max_bytes: int = 0) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(SCHEMA)
        if max_bytes:
            page = self.db.execute("PRAGMA page_size").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count={max(16, max_bytes // page)}")
        self._dirty = False
        self.write_errors = 0
        #: tasks whose latest state could not be written (disk full), newest last
        self.unsaved: dict[str, Task] = {}
        self._seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]

    # ---- writes (grouped; `commit` ends the group) -------------------------------

    def _begin(self) -> None:
        if not self._dirty:
            self.db.execute("BEGIN")
            self._dirty = True

    def accepted(self, tasks: Iterable[Task]) -> None:
        """All of a batch or none of it, committed at once. Raises `JournalError`.

        A batch is its own transaction: on "disk full" SQLite may roll back a whole
        transaction, so a batch shares one with nothing — a later failing write cannot undo
        an acknowledged batch, and a failing batch cannot undo the group's other writes. Two
        commits per submitted batch (not per task); state updates stay grouped."""
        self.commit()
        self._begin()
        rows = []
        for t in tasks:
            self._seq += 1
            rows.append(_row(t, self._seq))
        try:
            self.db.executemany(f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 17)})", rows)
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._dirty = False
            raise JournalError(str(e)) from None
        self.commit()

    def saved(self, task: Task) -> None:
        """Record a task's current state (started, re-queued, finished). A failed write (disk
        full) is logged and counted, not raised: the task goes on, and the journal keeps its
        previous state, so after a restart it runs again rather than being lost."""
        self._begin()
        try:
            self._update(task)
        except sqlite3.Error as e:
            self.write_errors += 1
            if not self.db.in_transaction:
                self._dirty = False  # SQLite rolled the group back: earlier updates in it lag too
            self.unsaved[task.id] = task  # clients still see the truth (`get`) until it is written
            while len(self.unsaved) > UNSAVED_CAP:
                del self.unsaved[next(iter(self.unsaved))]
            log("journal_write_failed", logging.ERROR, task=task.id, state=task.state.value, error=str(e))
            return
        self.unsaved.pop(task.id, None)

    def _update(self, task: Task) -> None:
        self.db.execute(
            "UPDATE tasks SET state=?, attempts=?, outcome=?, child=?, span_id=?, started_at=?, finished_at=?"
            " WHERE id=?",
            (
                task.state.value,
                task.attempts,
                _enc.encode(task.outcome) if task.outcome else None,
                task.child,
                task.span_id,
                task.started_at,
                task.finished_at,
                task.id,
            ),
        )

    def commit(self) -> bool:
        """End the current group; True if there was anything to commit."""
        if not self._dirty or not self.db.in_transaction:
            self._dirty = False
            return False
        self.db.execute("COMMIT")
        self._dirty = False
        return True

    # ---- reads -------------------------------------------------------------------

    def unfinished(self) -> list[Task]:
        """Tasks a previous daemon accepted but did not finish, in arrival order."""
        cur = self.db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE state IN ('queued', 'running') ORDER BY seq"
        )
        return [_task(r) for r in cur]

    def get(self, task_id: str) -> TaskView | None:
        if task_id in self.unsaved:
            return view(self.unsaved[task_id])
        row = self.db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
        return view(_task(row)) if row else None

    def list(self, state: str | None, limit: int) -> list[TaskView]:
        if state:
            cur = self.db.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE state=? ORDER BY seq DESC LIMIT ?", (state, limit)
            )
        else:
            cur = self.db.execute(f"SELECT {_COLUMNS} FROM tasks ORDER BY seq DESC LIMIT ?", (limit,))
        return [view(_task(r)) for r in cur]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())

    def close(self) -> None:
        self.commit()
        self.db.close()


def _row(t: Task, seq: int) -> tuple[object, ...]:
    return (
        t.id, seq, t.spec.kind, t.state.value, t.spec.priority, t.attempts, t.retries,
        _enc.encode(t.spec), _enc.encode(t.outcome) if t.outcome else None, t.child,
        t.trace_id, t.span_id, t.parent_span_id, t.tracestate, t.submitted_at, t.started_at, t.finished_at,
    )


def _task(r: tuple[object, ...]) -> Task:
    (tid, seq, _kind, state, _prio, attempts, retries, spec, outcome, child, trace_id, span_id,
     parent_span_id, tracestate, submitted_at, started_at, finished_at) = r
    return Task(
        id=str(tid), spec=_spec_dec.decode(spec), submitted_at=float(submitted_at),  # type: ignore[arg-type]
        seq=int(seq), state=TaskState(state), attempts=int(attempts), retries=int(retries),  # type: ignore[call-overload]
        outcome=_outcome_dec.decode(outcome) if outcome else None,  # type: ignore[arg-type]
        child=child, trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id,  # type: ignore[arg-type]
        tracestate=tracestate, started_at=started_at, finished_at=finished_at,  # type: ignore[arg-type]
    )


def view(t: Task) -> TaskView:
    """A task as clients see it. Pure; used for live and journaled tasks alike."""
    o = t.outcome or Outcome()
    duration = (t.finished_at - t.started_at) if (t.finished_at and t.started_at) else None
    return TaskView(
        id=t.id, kind=t.spec.kind, state=t.state.value, attempts=t.attempts, exit_code=o.exit_code,
        result=o.result, error=o.error, child=t.child, trace_id=t.trace_id, span_id=t.span_id,
        parent_span_id=t.parent_span_id, submitted_at=t.submitted_at, started_at=t.started_at,
        finished_at=t.finished_at, duration_s=round(duration, 6) if duration is not None else None,
        priority=t.spec.priority, stderr=o.stderr, truncated=o.truncated, usage=o.usage,
        cost_usd=o.cost_usd, session_id=o.session_id, num_turns=o.num_turns,
        prompt=t.spec.prompt, argv=t.spec.argv,
    )
