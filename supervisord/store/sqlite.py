"""The SQLite store (WAL): every accepted task, its attempts and its final state, on one host.

Owns the database file and its migrating (`PRAGMA user_version`; the steps, statements and row
codecs are `supervisord.store.sqlschema`'s). Implements
`supervisord.store.base.Store`; the hub runs it on its event loop, so every call is short:

- `accept` is its own transaction, committed with `synchronous=FULL` (the WAL is fsynced:
  a power cut loses no acknowledged task); it shares a transaction with nothing, so a
  refused batch cannot undo other writes, nor they it.
- `claim`/`record`/`request_cancel` only note the task (a reference, latest state per id);
  `commit()` writes them all in one transaction with `synchronous=NORMAL` (no fsync: a
  power cut may lose the last group, and the attempts it described run again: at least
  once). If the commit fails (disk full — in WAL mode at COMMIT, not in the statement —,
  locked, I/O error), the group is rolled back and stays noted, whole, for the next one.
- Lock waits are capped at `LOCK_TIMEOUT_S` (not SQLite's 5 s): a database held by an
  outside process refuses a batch quickly instead of stalling the loop.
- Checkpoints run off the loop. With SQLite's auto-checkpoint the commit that crosses the
  threshold copies the whole WAL into the database and fsyncs it, inside the hub's loop:
  with megabytes of results that is a stall of a whole heartbeat or more. So the main
  connection sets `wal_autocheckpoint=0` and `checkpoint.Checkpointer`, a thread with its own
  connection, runs `wal_checkpoint(PASSIVE)` (never blocks a writer) when a write has
  grown the WAL past `checkpoint.CHECKPOINT_ABOVE_BYTES`. sqlite3 releases the GIL while SQLite
  works, so the loop runs on meanwhile. No `TRUNCATE` checkpoint: it holds the write lock
  while it copies, and a batch that landed since the last PASSIVE (50 MB in the bench)
  made `accept` wait past `LOCK_TIMEOUT_S` and refuse it. The disk comes back after a
  burst all the same: `journal_size_limit` makes the next writer that starts the WAL over
  (after a complete checkpoint) cut it to `WAL_KEEP_BYTES`, an ftruncate.
- At open: a corrupt file (bad header or page; `PRAGMA quick_check`) or a schema from a
  newer supd raises `StoreError` naming the file and what to do, instead of starting and
  failing later. `check()` notices the file deleted or replaced under us (st_dev/st_ino).

Imports the stdlib, msgspec, proto, `supervisord.core` and `supervisord.logs` only.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from proto.task import Line, TaskState, TaskView
from supervisord.core.batches import Batch
from supervisord.core.task import Task, view
from supervisord.core.workflow import Workflow
from supervisord.logs import log
from supervisord.store import group
from supervisord.store import sqlschema as sq
from supervisord.store.base import StoreError
from supervisord.store.checkpoint import Checkpointer

#: how long a write waits for a lock held by another connection before it fails
LOCK_TIMEOUT_S = 0.1
#: How often, at most, a commit wakes the checkpoint thread to look at the WAL's size.
CHECKPOINT_LOOK_S = 0.5
#: a WAL started over is cut back to this size (`journal_size_limit`)
WAL_KEEP_BYTES = 64 << 20
#: how many rows one `prune` call deletes at most (~25 ms for rows with 100 KiB results)
PRUNE_ROWS = 500
#: what a row costs in a `list` reply beyond its blobs (its other fields, the envelope)
ROW_OVERHEAD_BYTES = 1024

_UNFINISHED = group.UNFINISHED
_UNFINISHED_SQL = group.UNFINISHED_SQL

#: zlib level for transcript chunks (6: ~5x on stream-json, ~1 ms per 64 KiB)
TRANSCRIPT_ZLIB_LEVEL = 6

#: what to do, by SQLite's primary result code
_REMEDY = {
    5: "locked by another process: stop whatever holds it (a sqlite3 shell, a backup) and retry",  # BUSY
    6: "locked by another process: stop whatever holds it and retry",  # LOCKED
    8: "read-only: give supd write access to it and its directory",  # READONLY
    10: "I/O error: check the disk (dmesg)",  # IOERR
    11: "corrupt: move it aside; supd starts with an empty journal",  # CORRUPT
    13: "full: free disk space, or raise journal.max_mb",  # FULL
    14: "cannot be opened: check the state dir and its permissions",  # CANTOPEN
    26: "not a database (corrupt header): move it aside; supd starts with an empty journal",  # NOTADB
}


class SqliteStore:
    """The `Store` of one host, in `path` (WAL). `max_bytes` > 0 caps the file's size."""

    def __init__(self, path: Path | str, *, max_bytes: int = 0, group_sync: str = "NORMAL") -> None:
        self.group_sync = group_sync.upper()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.write_errors = 0
        #: noted writes, latest state per id: (the task itself, the epoch its row must have)
        self._pending: group.Pending = {}
        self._cancels: dict[str, None] = {}
        #: noted workflow records (the latest object per id) and the seq of noted new tasks
        self._flows: dict[str, Workflow] = {}
        self._insert_seq: dict[str, int] = {}
        #: noted batch tallies, latest per id
        self._batches: dict[str, Batch] = {}
        #: what the rows of open batches say (size, cap spent, done): a tally that only grew is not rewritten
        self._batch_marks: dict[str, tuple[int, bool, bool]] = {}
        #: transcript chunks not yet committed: (task_id, first line, lines, raw bytes)
        self._chunks: list[tuple[str, int, list[Line], int]] = []
        #: (task_id, repo, branch, path) of worktree tasks pruned since the last `take_pruned_worktrees`
        self._pruned_worktrees: list[tuple[str, str, str, str | None]] = []
        self._closed = False
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                      timeout=LOCK_TIMEOUT_S)
        except sqlite3.Error as e:
            raise StoreError(self._describe(e)) from None
        try:
            self._open()
        except sqlite3.Error as e:
            self.db.close()
            raise StoreError(self._describe(e)) from None
        except OSError as e:
            self.db.close()
            raise StoreError(f"{self.path}: {e.strerror}: check the state dir") from None
        except StoreError:
            self.db.close()
            raise
        self._checkpointer = Checkpointer(self.path)
        self._next_checkpoint_look = 0.0
        self._checkpointer.start()

    def _open(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")  # reads the header: "file is not a database"
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        found = [str(r[0]) for r in self.db.execute("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            problems = [p for line in found for p in line.splitlines() if not p.startswith("***")]
            raise StoreError(f"{self.path} is corrupt ({'; '.join(problems)}): move it aside; supd starts "
                             "with an empty journal")
        self._migrate()
        self.db.execute(f"PRAGMA synchronous={self.group_sync}")
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # `_Checkpointer` does it, off the loop
        self.db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
        # Some builds (Debian's) default to ON, which writes zeros over every freed page: a
        # prune of 10k rows with 100 KiB results took 3 s instead of 0.5 s. FAST still zeroes
        # what it can without extra I/O; the file is the daemon's own (0600, in a 0700 dir).
        self.db.execute("PRAGMA secure_delete=FAST")
        if self.max_bytes:
            page = self.db.execute("PRAGMA page_size").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count={max(16, self.max_bytes // page)}")
        self._seq = int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0])

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        fresh = self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        if version > sq.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, written by a newer supd (this one knows up to "
                f"{sq.SCHEMA_VERSION}): run that supd, or move the file aside; supd starts with an empty journal")
        for step in range(version, sq.SCHEMA_VERSION):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in sq.MIGRATIONS[step]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={step + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if version != sq.SCHEMA_VERSION:
            log("store_created" if fresh else "store_migrated", path=self.path, from_version=version,
                version=sq.SCHEMA_VERSION)

    # ---- the batch: durable before `Accepted` ------------------------------------------

    def accept(self, tasks: Sequence[Task], batch: Batch | None = None) -> None:
        self._accept(tasks, None, batch)

    def accept_workflow(self, wf: Workflow, tasks: Sequence[Task]) -> None:
        """A new workflow's record and its first tasks, all or nothing, durable on return."""
        self._accept(tasks, wf, None)

    def _accept(self, tasks: Sequence[Task], wf: Workflow | None, batch: Batch | None) -> None:
        problem = self.check()
        if problem:
            raise StoreError(problem)
        seq = self._seq
        rows = []
        for t in tasks:
            seq += 1
            rows.append(sq.task_row(t, seq))
        try:
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sq.INSERT, rows)
            worktrees = [sq.worktree_row(t) for t in tasks if t.spec.worktree and t.spec.repo]
            self.db.executemany(sq.SAVE_WORKTREE, worktrees)
            if wf is not None:
                self.db.execute(sq.SAVE_FLOW, sq.flow_args(wf))
            if batch is not None:
                self.db.execute("INSERT OR IGNORE INTO batches (id, label, size, submitted_at, max_cost_usd, tally,"
                                " done_at) VALUES (?, ?, ?, ?, ?, ?, ?)", sq.batch_row(batch))
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise StoreError(self._describe(e)) from None
        finally:
            try:
                self.db.execute(f"PRAGMA synchronous={self.group_sync}")
            except sqlite3.Error:
                pass  # the connection is unusable: the next write says why
        self._seq = seq
        if batch is not None and batch.done_at is None:
            self._batch_marks[batch.id] = sq.batch_mark(batch)
        self._checkpointer.wake.set()

    # ---- the group: noted now, written by `commit` -------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._cancels) + len(self._flows) + len(self._batches) + len(self._chunks)

    def record_batch(self, batch: Batch) -> None:
        """Note the batch if what its row says changed: its size, its cap spent, its end. A
        tally that only grew is not written per task: `open_batches` counts it again from
        the tasks' rows, which the same commits write."""
        mark = sq.batch_mark(batch)
        if self._batch_marks.get(batch.id) != mark:
            self._batches[batch.id] = batch

    def claim(self, task: Task) -> None:
        self._note(task, task.epoch - 1)

    def record(self, task: Task) -> None:
        self._note(task, task.epoch)

    def _note(self, task: Task, fence: int) -> None:
        group.note(self._pending, task, fence)

    def request_cancel(self, task_id: str) -> None:
        self._cancels[task_id] = None

    def append_output(self, task_id: str, first: int, lines: list[Line], raw_bytes: int) -> None:
        self._chunks.append((task_id, first, lines, raw_bytes))

    # ---- transcripts ---------------------------------------------------------------------

    def transcript(self, task_id: str, after: int, budget_bytes: int) -> tuple[list[Line], int]:
        """Lines `after`.. of the task's transcript, stopping past `budget_bytes` of text
        (at least one chunk); returns them and the number of the next line."""
        rows = self.db.execute("SELECT first, data FROM transcripts WHERE task_id=? AND first + count > ?"
                               " ORDER BY first", (task_id, after)).fetchall()
        chunks = [(int(f), sq.lines_dec.decode(zlib.decompress(d))) for f, d in rows]
        chunks += [(f, ls) for tid, f, ls, _ in self._chunks if tid == task_id and f + len(ls) > after]
        return group.transcript_page(chunks, after, budget_bytes)

    def transcript_extent(self, task_id: str) -> tuple[int, int]:
        """(lines, raw bytes) of the task's transcript so far."""
        n, b = self.db.execute("SELECT COALESCE(MAX(first + count), 0), COALESCE(SUM(raw_bytes), 0) FROM transcripts"
                               " WHERE task_id=?", (task_id,)).fetchone()
        for tid, first, lines, raw in self._chunks:
            if tid == task_id:
                n, b = max(int(n), first + len(lines)), int(b) + raw
        return int(n), int(b)

    def task(self, task_id: str) -> Task | None:
        """One task's whole record (its spec too): pending state if any, else the stored one."""
        held = self._pending.get(task_id)
        if held is not None:
            return held[0]
        row = self.db.execute(f"SELECT {sq.COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
        return sq.task_of(row) if row else None

    def worktree_tasks(self) -> dict[str, tuple[str, str]]:
        """task id -> (repo, branch) of every stored worktree task."""
        return {str(t): (str(r), str(b)) for t, r, b in self.db.execute("SELECT task_id, repo, branch FROM worktrees")}

    def take_pruned_worktrees(self) -> list[tuple[str, str, str, str | None]]:
        """(task id, repo, branch, path) of the worktree tasks pruned since the last call."""
        taken, self._pruned_worktrees = self._pruned_worktrees, []
        return taken

    def save_workflow(self, wf: Workflow, tasks: Sequence[Task] = ()) -> None:
        """Note the record and its new tasks: the next commit writes them in the same
        transaction as every other write of the group (each new task as it is then)."""
        self._flows[wf.id] = wf
        for t in tasks:
            self._seq += 1
            self._insert_seq[t.id] = self._seq
            self._pending[t.id] = (t, sq.INSERT_FENCE)

    def commit(self) -> list[tuple[str, int]]:
        if error := self._checkpointer.take_error():
            log("store_checkpoint_failed", logging.WARNING, path=self.path, error=error)
        if not self._pending and not self._cancels and not self._flows and not self._batches and not self._chunks:
            return []
        refused: list[tuple[str, int]] = []
        try:
            problem = self.check()
            if problem:
                raise StoreError(problem)
            self.db.execute("BEGIN IMMEDIATE")
            for tid, (task, fence) in self._pending.items():
                if fence == sq.INSERT_FENCE:
                    self.db.execute(sq.INSERT, sq.task_row(task, self._insert_seq[tid]))
                    if task.spec.worktree and task.spec.repo:
                        self.db.execute(sq.SAVE_WORKTREE, sq.worktree_row(task))
                elif self.db.execute(sq.UPDATE, sq.update_args(task, fence)).rowcount == 0:
                    refused.append((tid, task.epoch))
            for wf in self._flows.values():
                self.db.execute(sq.SAVE_FLOW, sq.flow_args(wf))
            for tid in self._cancels:
                self.db.execute(f"UPDATE tasks SET cancel_requested=1 WHERE id=? AND state IN {_UNFINISHED_SQL}",
                                (tid,))
            for b in self._batches.values():
                self.db.execute("UPDATE batches SET size=?, tally=?, done_at=? WHERE id=?",
                                (b.size, sq.tally(b), b.done_at, b.id))
            if self._chunks:
                self.db.executemany(
                    "INSERT OR REPLACE INTO transcripts (task_id, first, count, raw_bytes, data) VALUES (?, ?, ?, ?, ?)",
                    [(tid, first, len(lines), raw, zlib.compress(sq.enc.encode(lines), TRANSCRIPT_ZLIB_LEVEL))
                     for tid, first, lines, raw in self._chunks])
            self.db.execute("COMMIT")
        except Exception as e:  # noqa: BLE001 (whatever it was, nothing is lost: the group stays for the next commit)
            self._rollback()
            self.write_errors += 1
            reason = self._describe(e) if isinstance(e, sqlite3.Error) else str(e)
            log("store_commit_failed", logging.ERROR, path=self.path, pending=self.pending,
                write_errors=self.write_errors, error=reason)
            return []
        self._pending.clear()
        self._cancels.clear()
        self._flows.clear()
        self._insert_seq.clear()
        for b in self._batches.values():
            if b.done_at is None:
                self._batch_marks[b.id] = sq.batch_mark(b)
            else:
                self._batch_marks.pop(b.id, None)
        self._batches.clear()
        self._chunks.clear()
        now = time.monotonic()
        if now >= self._next_checkpoint_look:  # a look at the WAL's size at most so often: waking
            self._next_checkpoint_look = now + CHECKPOINT_LOOK_S  # the thread per commit costs the loop
            self._checkpointer.wake.set()
        return refused

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled it back (FULL, IOERR at COMMIT)

    # ---- reads ---------------------------------------------------------------------------

    def unfinished(self) -> list[Task]:
        rows = self.db.execute(f"SELECT {sq.COLUMNS} FROM tasks WHERE state IN {_UNFINISHED_SQL} ORDER BY seq")
        return group.unfinished(rows.fetchall(), self._pending, sq.task_of)

    def get(self, task_id: str) -> TaskView | None:
        held = self._pending.get(task_id)
        if held is not None:
            return view(held[0])
        row = self.db.execute(f"SELECT {sq.COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
        return view(sq.task_of(row)) if row else None

    def views(self, ids: Sequence[str]) -> dict[str, TaskView]:
        found = {tid: view(self._pending[tid][0]) for tid in ids if tid in self._pending}
        rest = [tid for tid in ids if tid not in found]
        if rest:
            rows = self.db.execute(f"SELECT {sq.COLUMNS} FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                                   (json.dumps(rest),))
            found.update((str(row[0]), view(sq.task_of(row))) for row in rows)
        return found

    def list(self, state: str | None, limit: int, budget_bytes: int,
             batches: Sequence[str] | None = None) -> list[TaskView]:
        # First the rows' sizes (length() reads no blob), to choose; then decode only those chosen.
        sql = "SELECT rowid, id, length(spec) + COALESCE(length(outcome), 0) FROM tasks"
        params: list[object] = []
        where: list[str] = []
        if state is not None:
            # a pending task is listed by its state in memory, not its (older) stored one
            where.append("(state=? OR id IN (SELECT value FROM json_each(?)))")
            params += [state, json.dumps(list(self._pending))]
        if batches is not None:
            where.append("trace_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(batches)))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if state is None or not self._pending:
            sql += " LIMIT ?"
            params.append(limit)
        chosen: list[int | Task] = []
        size = 0
        cur = self.db.execute(sql, params)
        try:
            for rowid, tid, nbytes in cur:
                held = self._pending.get(tid)
                if held is not None and state is not None and held[0].state.value != state:
                    continue
                cost = (group.approx_bytes(held[0]) if held else int(nbytes)) + ROW_OVERHEAD_BYTES
                if chosen and size + cost > budget_bytes:
                    break
                chosen.append(held[0] if held else int(rowid))
                size += cost
                if len(chosen) >= limit:
                    break
        finally:
            cur.close()
        rowids = [c for c in chosen if isinstance(c, int)]
        decoded: dict[int, TaskView] = {}
        if rowids:
            cur = self.db.execute(
                f"SELECT rowid, {sq.COLUMNS} FROM tasks WHERE rowid IN (SELECT value FROM json_each(?))",
                (json.dumps(rowids),))
            for r in cur:  # one row at a time: only the views are kept, not the raw blobs
                decoded[int(r[0])] = view(sq.task_of(r[1:]))
        # (a row gone between the two queries — pruned by an outside process — is left out)
        return [view(c) if isinstance(c, Task) else decoded[c] for c in chosen if isinstance(c, Task) or c in decoded]

    # ---- batches -----------------------------------------------------------------------

    def get_batch(self, batch_id: str) -> Batch | None:
        if batch_id in self._batches:
            return self._batches[batch_id]
        row = self.db.execute(f"SELECT {sq.BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)).fetchone()
        return sq.batch_of(row) if row else None

    def open_batches(self) -> builtins.list[Batch]:  # (`list` here is the method)
        rows = self.db.execute(f"SELECT {sq.BATCH_COLUMNS} FROM batches WHERE done_at IS NULL").fetchall()
        found = [self._batches.get(str(r[0])) or self._recount(sq.batch_of(r)) for r in rows]
        return [b for b in found if b.done_at is None]

    def _recount(self, b: Batch) -> Batch:
        """The tally of an open batch, counted from its final tasks' rows (the row's own
        tally is only written when the batch's size, cap or end changes)."""
        spent = b.budget_spent
        fresh = Batch(id=b.id, size=b.size, submitted_at=b.submitted_at, label=b.label, max_cost_usd=b.max_cost_usd,
                      budget_spent=spent)
        rows = self.db.execute(f"SELECT state, outcome, started_at, finished_at FROM tasks WHERE trace_id=?"
                               f" AND state NOT IN {_UNFINISHED_SQL}", (b.id,))
        for state, outcome, started_at, finished_at in rows:
            fresh.count(TaskState(state), sq.outcome_dec.decode(outcome) if outcome else None, started_at,
                        finished_at if finished_at is not None else b.submitted_at)
        self._batch_marks[b.id] = sq.batch_mark(fresh)
        return fresh

    def batch_ids(self, label: str, limit: int = 10_000) -> builtins.list[str]:
        rows = self.db.execute("SELECT id FROM batches WHERE label=? ORDER BY submitted_at DESC LIMIT ?",
                               (label, limit))
        return [str(r[0]) for r in rows.fetchall()]

    def known(self, ids: Sequence[str]) -> set[str]:
        found = {tid for tid in ids if tid in self._pending}
        rest = [tid for tid in ids if tid not in found]
        if rest:
            cur = self.db.execute("SELECT id FROM tasks WHERE id IN (SELECT value FROM json_each(?))",
                                  (json.dumps(rest),))
            found.update(str(r[0]) for r in cur.fetchall())
        return found

    # ---- workflows ------------------------------------------------------------------------

    def workflow(self, wf_id: str) -> Workflow | None:
        held = self._flows.get(wf_id)
        if held is not None:
            return held
        row = self.db.execute("SELECT record FROM workflows WHERE id=?", (wf_id,)).fetchone()
        return sq.flow_dec.decode(row[0]) if row else None

    def workflows(self, state: str | None, limit: int) -> builtins.list[Workflow]:
        """The newest first; `state` as `flow status` shows it (running includes stopping)."""
        if state is None:
            rows = self.db.execute("SELECT id, record FROM workflows ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            states = ["running", "stopping"] if state == "running" else [state]
            rows = self.db.execute("SELECT id, record FROM workflows WHERE state IN (SELECT value FROM json_each(?))"
                                   " ORDER BY seq DESC LIMIT ?", (json.dumps(states), limit))
        return [self._flows.get(str(wid)) or sq.flow_dec.decode(record) for wid, record in rows.fetchall()]

    def unfinished_workflows(self) -> builtins.list[Workflow]:
        rows = self.db.execute(f"SELECT record FROM workflows WHERE state IN {sq.FLOW_UNFINISHED_SQL} ORDER BY seq")
        return [sq.flow_dec.decode(r[0]) for r in rows.fetchall()]

    def workflow_tasks(self, wf_id: str) -> dict[str, Task]:
        """The tasks of a workflow by job key (noted states over stored ones)."""
        rows = self.db.execute(f"SELECT {sq.COLUMNS} FROM tasks WHERE workflow=?", (wf_id,))
        found = {t.step or "": t for t in map(sq.task_of, rows.fetchall())}
        for task, _fence in self._pending.values():
            if task.workflow == wf_id:
                found[task.step or ""] = task
        return found

    def counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")}

    # ---- housekeeping ---------------------------------------------------------------------

    def prune(self, finished_before: float, limit: int = PRUNE_ROWS) -> int:
        # oldest first, at most `limit`: freeing a row frees its blobs' overflow pages, which
        # SQLite must read one by one (10k rows of 100 KiB: ~0.5 s); a call stays short
        try:
            self.db.execute("BEGIN IMMEDIATE")
            ids = [str(r[0]) for r in self.db.execute(
                f"DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE finished_at < ?"
                f" AND state NOT IN {_UNFINISHED_SQL} AND id NOT IN (SELECT value FROM json_each(?))"
                # a workflow that is not over still needs its finished tasks (a restart looks them up)
                f" AND (workflow IS NULL OR workflow NOT IN (SELECT id FROM workflows WHERE state IN"
                f" {sq.FLOW_UNFINISHED_SQL}))"
                " ORDER BY finished_at LIMIT ?) RETURNING id",  # a noted write keeps its row
                (finished_before, json.dumps(list(self._pending)), limit)).fetchall()]
            gone = json.dumps(ids)
            self.db.execute("DELETE FROM transcripts WHERE task_id IN (SELECT value FROM json_each(?))", (gone,))
            worktrees = [(str(t), str(r), str(b), p) for t, r, b, p in self.db.execute(
                "DELETE FROM worktrees WHERE task_id IN (SELECT value FROM json_each(?))"
                " RETURNING task_id, repo, branch, path", (gone,)).fetchall()]
            self.db.execute(
                f"DELETE FROM workflows WHERE rowid IN (SELECT rowid FROM workflows WHERE finished_at < ?"
                f" AND state NOT IN {sq.FLOW_UNFINISHED_SQL} AND id NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY finished_at LIMIT ?)", (finished_before, json.dumps(list(self._flows)), limit))
            # a done batch goes with its last task
            self.db.execute("DELETE FROM batches WHERE done_at < ? AND NOT EXISTS (SELECT 1 FROM tasks WHERE"
                            " tasks.trace_id = batches.id)", (finished_before,))
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise StoreError(self._describe(e)) from None
        self._pruned_worktrees += worktrees
        self._checkpointer.wake.set()
        return len(ids)

    def check(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (f"{self.path} was deleted while supd had it open: submits are refused; restart supd "
                    "to start a new journal")
        except OSError as e:
            return f"{self.path}: {e.strerror}: check the state dir"
        if (st.st_dev, st.st_ino) != self._identity:
            return (f"{self.path} was replaced by another file while supd had it open: submits are refused; "
                    "restart supd to use the new file")
        return None

    def close(self) -> None:
        if self._closed:
            return
        self.commit()
        self._closed = True
        self._checkpointer.stop()
        self.db.close()

    def _describe(self, e: sqlite3.Error) -> str:
        code = getattr(e, "sqlite_errorcode", 1) & 0xFF
        remedy = _REMEDY.get(code)
        if code == 13 and self.max_bytes:
            remedy = f"full (journal.max_mb = {self.max_bytes / 2**20:g}): free disk space, or raise journal.max_mb"
        return f"{self.path}: {e}" + (f" — {remedy}" if remedy else "")
