"""The PostgreSQL store: one database shared by a fleet of supd hosts.

Owns the schema in that database (`supd_schema.version`, migrated by supd itself under an
advisory lock, so two daemons starting at once do not race; the steps, statements and row
codecs are `supervisord.store.pgschema`'s), and everything a host asks of
it. Implements `supervisord.store.base.Store` with the same promises as SQLite:

- `accept` is its own transaction (durable on return: `synchronous_commit` is on), and
  sends `NOTIFY supd_submit` so idle daemons claim at once instead of at the next poll.
- `claim`/`record`/`request_cancel` are noted; `commit()` writes the group in one
  transaction, each row fenced by its epoch (`WHERE id = … AND epoch = …`): a write about
  an attempt that is no longer the task's is refused and returned. A final state sends
  `NOTIFY supd_finished, <id>` (delivered at commit), which wakes remote waiters.

And the fleet's own verbs (`Fleet` below), each one short transaction:

- `claim_next(n, kinds, host, lease_s)`: `FOR UPDATE SKIP LOCKED` over queued tasks that
  are due (priority, then age): each becomes an attempt (attempts + 1, epoch + 1) owned by
  `host` with a lease until the database's `now() + lease_s`. Leases are on the database's
  clock only, so hosts' clocks never meet.
- `renew(host, lease_s)`: extends the leases of every attempt `host` still owns; the hub
  compares the answer with what it runs (an attempt missing from it was rescued: its tree
  is killed at once).
- `rescue(limit)`: attempts whose lease ended (their host is dead or cut off) get their
  fate from the core (`supervisord.core.lease.rescued`: a new epoch, re-queued, or failed
  once the retry budget is spent), written as a compare-and-swap on the epoch of the row
  locked by `FOR UPDATE SKIP LOCKED`: a rescue never overwrites a finished task.
- `heartbeat`, `hosts`, `fleet_counts`, `cancel` (of a task not running here).
- Pins (`pgpins`): a pinned task is claimed only by its host, and keeps its pin through
  rescues; a queued one whose host is not live says so in its view (`waiting`).

The class is synchronous (psycopg 3): in the daemon it runs only on the journal thread
(`supervisord.spokes.journal`), never on the event loop. Imports the stdlib, psycopg,
msgspec, proto, `supervisord.core` and `supervisord.logs` only.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg

from proto.task import Line, TaskState, TaskView
from supervisord.core import fate as core
from supervisord.core import lease
from supervisord.core.batches import Batch
from supervisord.core.task import Task, view
from supervisord.core.workflow import Workflow
from supervisord.logs import log
from supervisord.store import group, pgevents, pgflows, pgpins, pgrules, pgtranscripts
from supervisord.store import pgschema as pq
from supervisord.store.base import StoreError

#: what a row costs in a `list` reply beyond its blobs
ROW_OVERHEAD_BYTES = 1024
#: the advisory lock key that serialises migrations across daemons ("supd" in ASCII)
MIGRATION_LOCK = 0x73757064
#: a connection that cannot be made within this is refused (seconds)
CONNECT_TIMEOUT_S = 5
#: a statement the server takes longer than this to run is cancelled (milliseconds)
STATEMENT_TIMEOUT_MS = 10_000
#: `accept` refreshes the planner's statistics of `tasks` once this host has added this share
#: of the rows they counted (and at least `ANALYZE_MIN_ROWS`): see `PgStore._analyze`
ANALYZE_GROWTH = 0.5
ANALYZE_MIN_ROWS = 200

_UNFINISHED = group.UNFINISHED
_UNFINISHED_SQL = group.UNFINISHED_SQL

def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def connect(url: str, *, application: str = "supd") -> psycopg.Connection[Any]:
    """A connection with bounded waits (connect, statements, dead peers); `StoreError` naming
    the server (never its password) when it cannot be made."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name=application,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", keepalives=1,
                               keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                               tcp_user_timeout=10_000)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to the journal at {_redact(url)}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class PgStore:
    """The `Store` of a fleet, in the database at `url` (schema checked and migrated at open)."""

    def __init__(self, url: str, *, host: str = "") -> None:
        self.url = url
        self.where = _redact(url)
        self.host = host
        self.write_errors = 0
        self._pending: group.Pending = {}
        self._cancels: dict[str, None] = {}
        #: attempts this store claimed with `claim_next`: their `claim` is already written
        self._claimed: dict[str, int] = {}
        #: keys to free at the next commit: task id -> the epoch of the attempt that held it
        self._releases: dict[str, int] = {}
        #: what the last commits found: batches whose cap they reached, batches they finished
        self.spent: builtins.list[str] = []
        self.done: builtins.list[Batch] = []
        #: the last claim skipped a key another host was claiming for (claim again soon)
        self.claim_contended = False
        #: the lease a workflow's engine holds on its row (set by the journal from `[journal] lease_s`)
        self.lease_s = 30.0
        #: workflow records noted for the next commit; the epoch this host's engine holds on each
        #: workflow it runs; workflows whose save was refused (taken over) since the last call
        self._flows: dict[str, pgflows.Noted] = {}
        self._flow_epochs: dict[str, int] = {}
        self.flows_lost: builtins.list[str] = []
        #: transcript chunks for the next commit
        self._chunks: builtins.list[pgtranscripts.Chunk] = []
        self._closed = False
        #: rows the planner's statistics of `tasks` counted when this store last looked, rows added since
        self._rows_counted, self._rows_added = 0.0, 0
        self.db = connect(url)
        try:
            self._migrate()
        except psycopg.Error as e:
            self.db.close()
            raise StoreError(f"{self.where}: cannot prepare the schema: {_first_line(e)}") from None
        except StoreError:
            self.db.close()
            raise

    def _migrate(self) -> None:
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self.db.execute("CREATE TABLE IF NOT EXISTS supd_schema (version INTEGER NOT NULL)")
            row = self.db.execute("SELECT version FROM supd_schema").fetchone()
            if row is None:
                self.db.execute("INSERT INTO supd_schema VALUES (0)")
            version = int(row[0]) if row else 0
            if version > pq.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} has supd schema version {version}, written by a newer supd (this one knows up to "
                    f"{pq.SCHEMA_VERSION}): upgrade this host's supd")
            for step in range(version, pq.SCHEMA_VERSION):
                for statement in pq.MIGRATIONS[step]:
                    self.db.execute(statement)
                self.db.execute("UPDATE supd_schema SET version=%s", (step + 1,))
        if version != pq.SCHEMA_VERSION:
            log("store_created" if version == 0 else "store_migrated", path=self.where, from_version=version,
                version=pq.SCHEMA_VERSION)

    def _fail(self, what: str, e: psycopg.Error) -> StoreError:
        return StoreError(f"{self.where}: {what}: {_first_line(e)}")

    # ---- the batch: durable before `Accepted` ------------------------------------------

    def accept(self, tasks: Sequence[Task], batch: Any = None) -> None:
        try:
            with self.db.transaction():
                with self.db.cursor() as cur:
                    cur.executemany(pq.INSERT, [pq.task_row(t) for t in tasks])
                    if isinstance(batch, Batch):
                        pgrules.accept_batch(cur, batch)
                    pgevents.send(cur, self.host, self.host, True, [(t.id, "queued", "queued") for t in tasks])
                self.db.execute("SELECT pg_notify('supd_submit', %s)", (str(len(tasks)),))
        except psycopg.Error as e:
            raise self._refused("batch", "a task id", e) from None
        self._grown(len(tasks))

    def _refused(self, what: str, ids: str, e: psycopg.Error) -> StoreError:
        """The error of an `accept` whose transaction failed: nothing of the `what` was stored."""
        if isinstance(e, psycopg.errors.UniqueViolation):
            return self._fail(f"{ids} is already taken (UNIQUE)", e)
        if isinstance(e, psycopg.OperationalError):
            return StoreError(f"the journal at {self.where} is unreachable ({_first_line(e)}): the {what} was not "
                              "stored")
        return self._fail(f"the {what} was not stored", e)

    def _grown(self, rows: int) -> None:
        self._rows_added += rows
        if self._rows_added >= max(ANALYZE_MIN_ROWS, self._rows_counted * ANALYZE_GROWTH):
            self._analyze()

    def _analyze(self) -> None:
        """Refresh the planner's statistics of `tasks` after it grew by half (and its cached
        plans with them, on every host). The claim is a prepared statement whose plan is made
        once: made while the table was nearly empty (a new journal), it would scan the table
        whole on every claim as it grows, until autovacuum's next ANALYZE (a minute or more).
        A failure costs nothing but the refresh."""
        self._rows_added = 0
        try:
            self.db.execute("ANALYZE tasks")
            row = self.db.execute("SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass").fetchone()
        except psycopg.Error as e:
            log("store_analyze_failed", logging.WARNING, path=self.where, error=_first_line(e))
            return
        self._rows_counted = max(0.0, float(row[0])) if row else 0.0

    def accept_workflow(self, wf: Workflow, tasks: Sequence[Task]) -> None:
        """A new workflow's record (this host its engine, with a lease) and its first tasks,
        all or nothing, durable on return."""
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                if tasks:
                    cur.executemany(pq.INSERT, [pq.task_row(t) for t in tasks])
                pgflows.insert(cur, wf, self.host, self.lease_s)
                cur.execute("SELECT pg_notify('supd_submit', %s)", (str(len(tasks)),))
        except psycopg.Error as e:
            raise self._refused("workflow", "a workflow or task id", e) from None
        self._flow_epochs[wf.id] = 1
        self._grown(len(tasks))

    # ---- the group: noted now, written by `commit` -------------------------------------

    def save_workflow(self, wf: Workflow, tasks: Sequence[Task] = ()) -> None:
        """Note the record (encoded now) and its new tasks: the next commit writes them, fenced
        on this host's epoch of the workflow, in the group's transaction."""
        self.save_noted(pgflows.note(wf), tasks)

    def save_noted(self, noted: pgflows.Noted, tasks: Sequence[Task] = ()) -> None:
        self._flows[noted.id] = noted
        for t in tasks:
            self._pending[t.id] = (t, pq.INSERT_FENCE)

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._cancels) + len(self._releases) + len(self._flows) + len(self._chunks)

    def release_key(self, task_id: str, epoch: int) -> None:
        """The attempt `epoch` of `task_id` is over and its tree dead: free its key at the next commit."""
        self._releases[task_id] = epoch

    def claim(self, task: Task) -> None:
        if self._claimed.get(task.id) == task.epoch:  # `claim_next` wrote the claim: note the child
            del self._claimed[task.id]
            self._note(task, task.epoch)
        else:
            self._note(task, task.epoch - 1)

    def record(self, task: Task) -> None:
        self._note(task, task.epoch)

    def _note(self, task: Task, fence: int) -> None:
        group.note(self._pending, task, fence)

    def request_cancel(self, task_id: str) -> None:
        self._cancels[task_id] = None

    def append_output(self, task_id: str, first: int, lines: builtins.list[Line], raw_bytes: int) -> None:
        self._chunks.append((task_id, first, lines, raw_bytes))

    # ---- transcripts (pgtranscripts) -------------------------------------------------------

    def transcript(self, task_id: str, after: int, budget_bytes: int) -> tuple[builtins.list[Line], int]:
        return pgtranscripts.read(self.db, task_id, after, budget_bytes, self._chunks)

    def transcript_extent(self, task_id: str) -> tuple[int, int]:
        return self.transcript_extents([task_id]).get(task_id, (0, 0))

    def transcript_extents(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(lines, raw bytes) so far of those of `ids` that have a transcript."""
        return pgtranscripts.extents(self.db, ids, self._chunks)

    def commit(self) -> list[tuple[str, int]]:
        if not self._pending and not self._cancels and not self._releases and not self._flows and not self._chunks:
            return []
        spent: builtins.list[str] = []
        done: builtins.list[Batch] = []
        refused: list[tuple[str, int]] = []
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                # Like SQLite's synchronous=NORMAL for the group: no WAL flush wait. A crash of
                # the database server may lose the last group; the attempts it described are
                # rescued and run again (at least once). Batches and claims stay synchronous:
                # a lost claim could hand one epoch to two hosts.
                cur.execute("SET LOCAL synchronous_commit TO OFF")
                # Workflow records first: a refused one (taken over) inserts none of its new tasks.
                lost = [wid for wid, noted in self._flows.items()
                        if (epoch := self._flow_epochs.get(wid)) is None or not pgflows.save(cur, noted, self.host, epoch)]
                inserted = 0
                finals: builtins.list[pgevents.Event] = []
                for tid, (task, fence) in self._pending.items():
                    if fence == pq.INSERT_FENCE:
                        if task.workflow not in lost:
                            cur.execute(pq.INSERT, pq.task_row(task))
                            inserted += 1
                        continue
                    cur.execute(pq.UPDATE, pq.update_args(task, fence))
                    if cur.rowcount == 0:
                        refused.append((tid, task.epoch))
                    elif task.state.final:
                        cur.execute("SELECT pg_notify('supd_finished', %s)", (tid,))
                        pgrules.tally(cur, task, spent, done)
                        finals.append((tid, "finished", task.state.value))
                pgevents.send(cur, self.host, self.host, True, finals)
                for tid in self._cancels:
                    cur.execute("UPDATE tasks SET cancel_requested=TRUE WHERE id=%s AND state IN"
                                " ('queued', 'blocked', 'running')", (tid,))
                pgrules.release_keys(cur, self._releases)
                if inserted:
                    cur.execute("SELECT pg_notify('supd_submit', %s)", (str(inserted),))
                pgtranscripts.write(cur, self._chunks)
        except psycopg.Error as e:
            self.write_errors += 1
            log("store_commit_failed", logging.ERROR, path=self.where, pending=self.pending,
                write_errors=self.write_errors, error=_first_line(e))
            return []
        self._pending.clear()
        self._cancels.clear()
        self._releases.clear()
        for wid, noted in self._flows.items():
            if noted.final or wid in lost:
                self._flow_epochs.pop(wid, None)
        for wid in lost:
            log("workflow_fenced", logging.WARNING, workflow=wid, host=self.host)
        self.flows_lost += lost
        self._flows.clear()
        self._chunks.clear()
        self.spent += spent
        self.done += done
        if spent:
            self.stop_spent(spent)
        return refused

    # ---- reads ---------------------------------------------------------------------------

    def unfinished(self) -> list[Task]:
        """Every unfinished task of the fleet (for one host: `unfinished` of SQLite)."""
        rows = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE state IN ('queued', 'blocked', 'running') ORDER BY seq")
        return group.unfinished(rows.fetchall(), self._pending, pq.task_of)

    def get(self, task_id: str) -> TaskView | None:
        held = self._pending.get(task_id)
        if held is not None:
            return view(held[0])
        row = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE id=%s", (task_id,)).fetchone()
        found = pq.view_of(row) if row else None
        if found is not None:
            pgpins.annotate(self.db, [found], self.lease_s)
        return found

    def views(self, ids: Sequence[str]) -> dict[str, TaskView]:
        """The stored tasks of `ids` that exist, by id (one query)."""
        found = {tid: view(self._pending[tid][0]) for tid in ids if tid in self._pending}
        rest = [tid for tid in ids if tid not in found]
        if rest:
            for row in self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE id = ANY(%s)", (rest,)):
                found[str(row[0])] = pq.view_of(row)
        pgpins.annotate(self.db, found.values(), self.lease_s)
        return found

    def list(self, state: str | None, limit: int, budget_bytes: int,
             batches: Sequence[str] | None = None) -> list[TaskView]:
        # First the rows' sizes (no blob read), to choose; then decode only those chosen.
        sql = "SELECT id, length(spec) + COALESCE(length(outcome), 0) FROM tasks"
        params: builtins.list[object] = []
        where = []
        if state is not None:  # a noted task is listed by its state in memory, not its stored one
            where.append("(state=%s OR id = ANY(%s))")
            params += [state, list(self._pending)]
        if batches is not None:  # a batch's id is its trace id
            where.append("trace_id = ANY(%s)")
            params.append(list(batches))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if state is None or not self._pending:
            sql += " LIMIT %s"
            params.append(limit)
        chosen: builtins.list[str] = []
        size = 0
        with self.db.cursor() as cur:
            cur.execute(sql, params)
            for tid, nbytes in cur:
                held = self._pending.get(tid)
                if held is not None and state is not None and held[0].state.value != state:
                    continue
                cost = (group.approx_bytes(held[0]) if held else int(nbytes)) + ROW_OVERHEAD_BYTES
                if chosen and size + cost > budget_bytes:
                    break
                chosen.append(str(tid))
                size += cost
                if len(chosen) >= limit:
                    break
        found = self.views(chosen)
        return [found[tid] for tid in chosen if tid in found]

    def known(self, ids: Sequence[str]) -> set[str]:
        found = {tid for tid in ids if tid in self._pending}
        rest = [tid for tid in ids if tid not in found]
        if rest:
            found.update(str(r[0]) for r in self.db.execute("SELECT id FROM tasks WHERE id = ANY(%s)", (rest,)))
        return found

    def counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")}

    # ---- workflows (pgflows) ---------------------------------------------------------------

    def workflow(self, wf_id: str) -> Workflow | None:
        held = self._flows.get(wf_id)
        return pgflows.decode(held.record) if held is not None else pgflows.get(self.db, wf_id)

    def workflows(self, state: str | None, limit: int) -> builtins.list[Workflow]:
        return pgflows.listed(self.db, state, limit)

    def unfinished_workflows(self) -> builtins.list[Workflow]:
        return pgflows.unfinished(self.db)

    def workflow_tasks(self, wf_id: str) -> dict[str, Task]:
        """A workflow's tasks by job key, as the fleet has them (noted states over stored ones)."""
        rows = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE workflow=%s", (wf_id,)).fetchall()
        found = {t.step or "": t for t in map(pq.task_of, rows)}
        for task, _fence in self._pending.values():
            if task.workflow == wf_id:
                found[task.step or ""] = task
        return found

    def task(self, task_id: str) -> Task | None:
        """One task's whole record (its spec too): pending state if any, else the stored one."""
        held = self._pending.get(task_id)
        if held is not None:
            return held[0]
        row = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE id=%s", (task_id,)).fetchone()
        return pq.task_of(row) if row else None

    def final_tasks(self, ids: Sequence[str]) -> builtins.list[Task]:
        """Those of `ids` that are final in the journal, whole (a workflow's engine feeds them)."""
        if not ids:
            return []
        rows = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE id = ANY(%s) AND state NOT IN"
                               " ('queued', 'blocked', 'running')", (list(ids),)).fetchall()
        return [pq.task_of(r) for r in rows]

    def renew_workflows(self, host: str, lease_s: float) -> tuple[dict[str, bool], builtins.list[str]]:
        """Extend the leases of the workflows this host's engine runs: (id -> cancel requested,
        the ids it ran that another host has taken over since)."""
        rows = pgflows.renew(self.db, host, lease_s)
        held = {wid: cancel for wid, (epoch, cancel) in rows.items() if self._flow_epochs.get(wid) == epoch}
        lost = [wid for wid in self._flow_epochs if wid not in held]
        for wid in lost:
            del self._flow_epochs[wid]
        lost += self.flows_lost
        self.flows_lost = []
        return held, lost

    def take_workflows(self, host: str, lease_s: float,
                       limit: int = 100) -> builtins.list[tuple[Workflow, dict[str, Task], bool]]:
        """Workflows whose engine's lease ended (or that this host ran in a previous life), now
        this host's by compare-and-swap: (record, its tasks by job, cancel requested) of each."""
        out = []
        for wf, epoch, cancel, owner in pgflows.take(self.db, host, lease_s, list(self._flow_epochs), limit):
            self._flow_epochs[wf.id] = epoch
            log("workflow_taken_over", workflow=wf.id, owner=owner, host=host, epoch=epoch, state=wf.state.value)
            out.append((wf, self.workflow_tasks(wf.id), cancel))
        return out

    def cancel_workflow(self, wf_id: str) -> Workflow | None:
        """Flag a workflow for cancelling, wherever its engine runs (None: no such workflow)."""
        return pgflows.request_cancel(self.db, wf_id)

    # ---- housekeeping ---------------------------------------------------------------------

    def prune(self, finished_before: float, limit: int = 500) -> int:
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                cur.execute(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < %s AND state NOT IN"
                    " ('queued', 'blocked', 'running') AND NOT (id = ANY(%s))" + pgflows.KEEP_FLOW_TASKS +
                    " ORDER BY finished_at LIMIT %s) RETURNING id", (finished_before, list(self._pending), limit))
                ids = [str(r[0]) for r in cur.fetchall()]
                gone = len(ids)
                pgtranscripts.forget(cur, ids)
                pgflows.prune(cur, finished_before, list(self._flows), limit)
        except psycopg.Error as e:
            raise self._fail("prune failed", e) from None
        return gone

    def check(self) -> str | None:
        if self.db.closed or self.db.broken:
            return f"the journal at {self.where} is unreachable: submits are refused until it is back"
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.commit()
        finally:
            self.db.close()

    # ---- the fleet --------------------------------------------------------------------------

    def claim_next(self, n: int, kinds: Sequence[str], host: str, lease_s: float,
                   limits: Mapping[str, int] | None = None) -> builtins.list[Task]:
        """Up to `n` due queued tasks of `kinds` (priority, then age), each now an attempt of
        `host` with a lease; at most `limits[KEY]` (default 1) attempts of the fleet hold a key,
        no Claude task while the fleet's gate is closed or of a spent batch (`pgrules.claim`).
        Returned as they were before the claim (QUEUED, the old epoch): the hub starts them
        with `core.fate.start`, which makes the same move in memory."""
        self.claim_contended = False
        if n <= 0 or not kinds:
            return []
        def started(db: psycopg.Connection[Any], rows: builtins.list[Any]) -> None:
            pgevents.send(db, host, host, True, [(str(r[0]), "started", "running") for r in rows])

        rows, self.claim_contended = pgrules.claim(self.db, n, kinds, host, lease_s, limits or {}, pq.T_COLUMNS, started)
        out = []
        for r in rows:
            task = pq.task_of(r)
            task.state, task.attempts, task.epoch = TaskState.QUEUED, task.attempts - 1, task.epoch - 1
            self._claimed[task.id] = task.epoch + 1
            out.append(task)
        out.sort(key=lambda t: (-t.spec.priority, t.seq))
        return out

    def release(self, task: Task) -> bool:
        """A claimed attempt that never started (no idle child after all): queued again, not counted."""
        self._claimed.pop(task.id, None)
        cur = self.db.execute("UPDATE tasks SET state='queued', attempts=attempts - 1, host=NULL, lease_until=NULL,"
                              " key_epoch=NULL WHERE id=%s AND epoch=%s AND state='running'",
                              (task.id, task.epoch + 1))
        if cur.rowcount:
            self.db.execute("SELECT pg_notify('supd_submit', '1')")
        return bool(cur.rowcount)

    def renew(self, host: str, lease_s: float) -> dict[str, tuple[int, bool]]:
        """Extend every lease `host` holds; its attempts, by id: (epoch, cancel requested)."""
        rows = self.db.execute(
            "UPDATE tasks SET lease_until = now() + %s * interval '1 second'"
            " WHERE host=%s AND state IN ('running', 'blocked') RETURNING id, epoch, cancel_requested",
            (lease_s, host)).fetchall()
        return {str(r[0]): (int(r[1]), bool(r[2])) for r in rows}

    def rescue(self, limit: int = 100, *, host: str | None = None) -> builtins.list[Task]:
        """Attempts whose lease ended (or, with `host`, every attempt of that host, whatever
        its trees: only for tests and tools; a restarting host uses `attempts_of` and waits for
        its trees) get the core's rescue fate, written by compare-and-swap on the epoch. The
        rescued tasks as written."""
        cond = "host=%s" if host is not None else "lease_until < now()"
        out: builtins.list[Task] = []
        events: dict[str | None, builtins.list[pgevents.Event]] = {}
        with self.db.transaction():
            rows = self.db.execute(
                f"SELECT {pq.COLUMNS} FROM tasks WHERE state IN ('running', 'blocked') AND {cond}"
                " ORDER BY lease_until LIMIT %s FOR UPDATE SKIP LOCKED",
                (host, limit) if host is not None else (limit,)).fetchall()
            for r in rows:
                task, owner = pq.task_of(r), r[-1]
                fence = task.epoch
                fate = lease.rescued(task, core.Context(now=0.0, wall=time.time(), rand=0.0))
                cur = self.db.execute(pq.UPDATE, pq.update_args(task, fence))
                if cur.rowcount == 0:  # pragma: no cover (the row is locked: cannot happen)
                    continue
                # its host is gone or stopped its attempts: the key its attempt held is free
                self.db.execute("UPDATE tasks SET key_epoch=NULL WHERE id=%s", (task.id,))
                if task.state.final:
                    self.db.execute("SELECT pg_notify('supd_finished', %s)", (task.id,))
                    with self.db.cursor() as tc:
                        pgrules.tally(tc, task, self.spent, self.done)
                self.db.execute("SELECT pg_notify('supd_submit', '1')")
                log("task_rescued", task=task.id, owner=owner, epoch=task.epoch, state=task.state.value,
                    reason=fate.reason, attempts=task.attempts)
                events.setdefault(owner, []).append(
                    (task.id, "finished" if task.state.final else "queued", task.state.value))
                out.append(task)
            for owner, evs in events.items():
                pgevents.send(self.db, self.host, owner, False, evs)
            self._free_orphaned_keys()
        return out

    def _free_orphaned_keys(self) -> None:
        """A key still held by a final task (its tree was being killed when it ended) whose host
        has not beaten for a lease, or said it stopped: nobody else would ever free it. Like a
        rescue, it trusts the lease rule (a host that cannot renew stops its own attempts)."""
        freed = self.db.execute(
            "UPDATE tasks t SET key_epoch=NULL FROM hosts h WHERE t.key_epoch IS NOT NULL AND h.host = t.host"
            f" AND t.state NOT IN {_UNFINISHED_SQL}"
            " AND (h.heartbeat_at < now() - %s * interval '1 second' OR h.phase = 'stopped')"
            " RETURNING t.id, t.key, t.host", (self.lease_s,)).fetchall()
        for tid, key, owner in freed:
            log("key_rescued", task=tid, key=key, owner=owner)
        if freed:
            self.db.execute("SELECT pg_notify('supd_submit', '1')")

    def final_keys_of(self, host: str) -> dict[str, int]:
        """Keys `host`'s previous life still holds for tasks that are already final (their trees
        were being killed), by task id: the epoch each is held by (hub.fleetrestart frees them
        once it has seen no tree of theirs)."""
        rows = self.db.execute(f"SELECT id, key_epoch FROM tasks WHERE host=%s AND key_epoch IS NOT NULL"
                               f" AND state NOT IN {_UNFINISHED_SQL}", (host,)).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def attempts_of(self, host: str) -> builtins.list[Task]:
        """The attempts `host` still owns (running or blocked in the journal), as stored: at a
        restart, what its previous life left. Nothing changes: they stay `host`'s (their leases
        renewed, their keys held) until the hub has seen their trees dead (hub.fleetrestart)."""
        rows = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE host=%s AND state IN ('running', 'blocked')"
                               " ORDER BY seq", (host,)).fetchall()
        return [pq.task_of(r) for r in rows]

    def cancel(self, task_id: str) -> TaskView | None:
        """Cancel a task this host does not run: a queued or blocked one now (final), a
        running one by its flag (its owner sees it when it renews, or is told by NOTIFY)."""
        with self.db.transaction():
            row = self.db.execute(f"SELECT {pq.COLUMNS} FROM tasks WHERE id=%s FOR UPDATE", (task_id,)).fetchone()
            if row is None:
                return None
            task = pq.task_of(row)
            if task.state.final:
                return view(task)
            if task.state is TaskState.RUNNING or (task.state is TaskState.BLOCKED and row[-1]):
                self.db.execute("UPDATE tasks SET cancel_requested=TRUE WHERE id=%s", (task_id,))
                self.db.execute("SELECT pg_notify('supd_cancel', %s)", (task_id,))
                task.cancel_requested = True
                return view(task)
            fence = task.epoch
            core.decide(task, core.CancelRequested(), core.Context(now=0.0, wall=time.time(), rand=0.0))
            self.db.execute(pq.UPDATE, pq.update_args(task, fence))
            self.db.execute("SELECT pg_notify('supd_finished', %s)", (task_id,))
            pgevents.send(self.db, self.host, row[-1], False, [(task_id, "finished", task.state.value)])
            with self.db.cursor() as tc:
                pgrules.tally(tc, task, self.spent, self.done)
            return view(task)

    # ---- the fleet's rules (pgrules) -----------------------------------------------------------

    def stop_spent(self, batch_ids: Sequence[str] | None = None) -> builtins.list[Task]:
        """Queued Claude tasks of spent batches end `cancelled`/`budget` (see pgrules)."""
        def write(cur: psycopg.Cursor[Any], task: Task, fence: int) -> bool:
            cur.execute(pq.UPDATE, pq.update_args(task, fence))
            if not cur.rowcount:
                return False
            cur.execute("SELECT pg_notify('supd_finished', %s)", (task.id,))
            pgevents.send(cur, self.host, task.host, False, [(task.id, "finished", task.state.value)])
            pgrules.tally(cur, task, self.spent, self.done)
            log("task_state", task=task.id, old="queued", new=task.state.value, reason="the batch's budget is spent",
                error="budget", trace=task.trace_id)
            return True

        return pgrules.stop_spent(self.db, write, pq.T_COLUMNS, pq.task_of, batch_ids)

    def close_gate(self, wait_s: float, task_id: str) -> None:
        pgrules.close_gate(self.db, wait_s, task_id)

    def gate(self) -> tuple[float, str | None] | None:
        return pgrules.gate(self.db)

    def key_holders(self) -> dict[str, builtins.list[str]]:
        return pgrules.key_holders(self.db)

    def get_batch(self, batch_id: str) -> Batch | None:
        return pgrules.get_batch(self.db, batch_id)

    def batch_ids(self, label: str, limit: int = 10_000) -> builtins.list[str]:
        rows = self.db.execute("SELECT id FROM batches WHERE label=%s ORDER BY submitted_at DESC LIMIT %s",
                               (label, limit)).fetchall()
        return [str(r[0]) for r in rows]

    def take_batch_news(self) -> tuple[builtins.list[str], builtins.list[Batch]]:
        """Batches whose cap, or whose last task, the commits since the last call reached."""
        spent, done = self.spent, self.done
        self.spent, self.done = [], []
        return spent, done

    def heartbeat(self, host: str, pid: int, started_at: float, children: int, running: int, phase: str) -> None:
        self.db.execute(
            "INSERT INTO hosts (host, pid, started_at, heartbeat_at, children, running, phase)"
            " VALUES (%s, %s, %s, now(), %s, %s, %s) ON CONFLICT (host) DO UPDATE SET pid=EXCLUDED.pid,"
            " started_at=EXCLUDED.started_at, heartbeat_at=now(), children=EXCLUDED.children,"
            " running=EXCLUDED.running, phase=EXCLUDED.phase",
            (host, pid, started_at, children, running, phase))

    def hosts(self) -> builtins.list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT h.host, h.pid, h.children, h.phase, EXTRACT(EPOCH FROM now() - h.heartbeat_at),"
            " (SELECT COUNT(*) FROM tasks t WHERE t.host = h.host AND t.state = 'running')"
            " FROM hosts h ORDER BY h.host").fetchall()
        return [{"host": r[0], "pid": int(r[1]), "children": int(r[2]), "phase": r[3],
                 "heartbeat_age_s": round(float(r[4]), 3), "running": int(r[5])} for r in rows]

    def fleet_counts(self) -> dict[str, object]:
        """Tasks per state over the fleet, and hosts that beat within the last minute."""
        states = self.counts()
        live = self.db.execute("SELECT COUNT(*) FROM hosts WHERE heartbeat_at > now() - interval '60 seconds'"
                               ).fetchone()
        return {"tasks": states, "hosts": int(live[0]) if live else 0,
                "pinned_waiting": pgpins.waiting_counts(self.db, self.lease_s)}
