"""Workflows in the shared PostgreSQL journal: the record, its engine's lease, its takeover.

A workflow's engine (the hub that feeds `supervisord.core.workflow` its events) runs on one
host at a time: the host that accepted it, until its lease on the workflow's row ends.

- **The row.** `workflows` holds the record (msgpack, saved after every event, as SQLite
  does), its owner (`host`), an **epoch** and a **lease** (`lease_until`, on the database's
  clock), and a `cancel_requested` flag any host may set (`flow cancel` from anywhere).
- **Saving is fenced.** A save (`save`) is conditional on (host, epoch): a save from an
  engine whose workflow was taken over is refused, and the tasks that save would have
  started are not inserted (same transaction): a stale engine never starts a step twice.
- **Renewal** (`renew`) extends the leases of the workflows a host runs, with the attempts'
  leases; an id missing from the answer was taken over.
- **Takeover** (`take`): a workflow whose lease ended (its host is dead or cut off), or one
  this host owned in a previous life, is taken by compare-and-swap on its epoch under
  `FOR UPDATE SKIP LOCKED`; the new engine `resume`s it with its tasks as the journal has
  them (`tasks_of`): a finished step is never started again, a running one is adopted.
- A final record sends `NOTIFY supd_flow_finished, <id>` (remote `flow wait`s wake up);
  a cancel request `NOTIFY supd_flow_cancel, <id>` (its engine cancels it).

Imports the stdlib, psycopg, msgspec and `supervisord.core` only; called by `PgStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from supervisord.core.workflow import Workflow

#: 2 -> 3: workflows and each task's workflow and job (appended to `pgschema.MIGRATIONS`).
MIGRATION = (
    "ALTER TABLE tasks ADD COLUMN workflow TEXT",
    "ALTER TABLE tasks ADD COLUMN step TEXT",
    "CREATE INDEX tasks_workflow ON tasks (workflow, step) WHERE workflow IS NOT NULL",
    """CREATE TABLE workflows (
        id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        trace_id TEXT,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        record BYTEA NOT NULL,
        host TEXT,
        epoch INTEGER NOT NULL DEFAULT 1,
        lease_until TIMESTAMPTZ,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    "CREATE INDEX workflows_seq ON workflows (seq)",
    "CREATE INDEX workflows_state ON workflows (state, seq)",
    "CREATE INDEX workflows_leases ON workflows (lease_until) WHERE state IN ('running', 'stopping')",
)

UNFINISHED = ("running", "stopping")

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Workflow)


class Noted(msgspec.Struct, frozen=True):
    """A record to save at the next commit, encoded when it was noted (the hub goes on
    changing its own)."""

    id: str
    state: str
    finished_at: float | None
    record: bytes

    @property
    def final(self) -> bool:
        return self.state not in UNFINISHED


def note(wf: Workflow) -> Noted:
    return Noted(wf.id, wf.state.value, wf.finished_at, _enc.encode(wf))


def decode(record: bytes) -> Workflow:
    return _dec.decode(record)


def insert(cur: psycopg.Cursor[Any], wf: Workflow, host: str, lease_s: float) -> None:
    """A new workflow, owned by `host` (epoch 1) with a lease."""
    cur.execute(
        "INSERT INTO workflows (id, name, state, trace_id, started_at, finished_at, record, host, lease_until)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now() + %s * interval '1 second')",
        (wf.id, wf.spec.name, wf.state.value, wf.trace_id, wf.started_at, wf.finished_at, _enc.encode(wf), host,
         lease_s))


def save(cur: psycopg.Cursor[Any], noted: Noted, host: str, epoch: int) -> bool:
    """The record, fenced on (host, epoch); a final one leaves its lease and wakes waiters.
    False: refused (the workflow is another engine's now)."""
    cur.execute(
        "UPDATE workflows SET state=%s, finished_at=%s, record=%s,"
        " lease_until = CASE WHEN %s THEN NULL ELSE lease_until END WHERE id=%s AND host=%s AND epoch=%s",
        (noted.state, noted.finished_at, noted.record, noted.final, noted.id, host, epoch))
    if cur.rowcount == 0:
        return False
    if noted.final:
        cur.execute("SELECT pg_notify('supd_flow_finished', %s)", (noted.id,))
    return True


def renew(db: psycopg.Connection[Any], host: str, lease_s: float) -> dict[str, tuple[int, bool]]:
    """Extend the leases of the unfinished workflows `host` owns: id -> (epoch, cancel requested)."""
    rows = db.execute(
        "UPDATE workflows SET lease_until = now() + %s * interval '1 second'"
        " WHERE host=%s AND state IN ('running', 'stopping') RETURNING id, epoch, cancel_requested",
        (lease_s, host)).fetchall()
    return {str(r[0]): (int(r[1]), bool(r[2])) for r in rows}


def take(db: psycopg.Connection[Any], host: str, lease_s: float, held: Sequence[str],
         limit: int) -> list[tuple[Workflow, int, bool, str | None]]:
    """Workflows whose lease ended, or that `host` owned in a previous life (not in `held`):
    now `host`'s, each with a new epoch (compare-and-swap on the old one). (record, epoch,
    cancel requested, previous owner) of each."""
    out = []
    with db.transaction():
        rows = db.execute(
            "SELECT id, epoch, host FROM workflows WHERE state IN ('running', 'stopping')"
            " AND (lease_until < now() OR lease_until IS NULL OR (host = %s AND NOT (id = ANY(%s))))"
            " ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED", (host, list(held), limit)).fetchall()
        for wf_id, epoch, owner in rows:
            got = db.execute(
                "UPDATE workflows SET host=%s, epoch=epoch + 1, lease_until = now() + %s * interval '1 second'"
                " WHERE id=%s AND epoch=%s RETURNING record, epoch, cancel_requested",
                (host, lease_s, wf_id, epoch)).fetchone()
            if got is not None:
                out.append((decode(got[0]), int(got[1]), bool(got[2]), owner))
    return out


def request_cancel(db: psycopg.Connection[Any], wf_id: str) -> Workflow | None:
    """Flag a workflow for cancelling (its engine, wherever it runs, sees the flag); the
    record as stored, or None if there is no such workflow."""
    row = db.execute("UPDATE workflows SET cancel_requested = (state IN ('running', 'stopping'))"
                     " OR cancel_requested WHERE id=%s RETURNING record, state", (wf_id,)).fetchone()
    if row is None:
        return None
    if row[1] in UNFINISHED:
        db.execute("SELECT pg_notify('supd_flow_cancel', %s)", (wf_id,))
    return decode(row[0])


def get(db: psycopg.Connection[Any], wf_id: str) -> Workflow | None:
    row = db.execute("SELECT record FROM workflows WHERE id=%s", (wf_id,)).fetchone()
    return decode(row[0]) if row else None


def listed(db: psycopg.Connection[Any], state: str | None, limit: int) -> list[Workflow]:
    """The newest first; `state` as `flow status` shows it (running includes stopping)."""
    if state is None:
        rows = db.execute("SELECT record FROM workflows ORDER BY seq DESC LIMIT %s", (limit,)).fetchall()
    else:
        states = list(UNFINISHED) if state == "running" else [state]
        rows = db.execute("SELECT record FROM workflows WHERE state = ANY(%s) ORDER BY seq DESC LIMIT %s",
                          (states, limit)).fetchall()
    return [decode(r[0]) for r in rows]


def unfinished(db: psycopg.Connection[Any]) -> list[Workflow]:
    rows = db.execute("SELECT record FROM workflows WHERE state IN ('running', 'stopping') ORDER BY seq").fetchall()
    return [decode(r[0]) for r in rows]


def prune(cur: psycopg.Cursor[Any], finished_before: float, held: Sequence[str], limit: int) -> None:
    """Finished workflows older than `finished_before` (their tasks go with the tasks' prune)."""
    cur.execute(
        "DELETE FROM workflows WHERE id IN (SELECT id FROM workflows WHERE finished_at < %s AND state NOT IN"
        " ('running', 'stopping') AND NOT (id = ANY(%s)) ORDER BY finished_at LIMIT %s)",
        (finished_before, list(held), limit))


#: the tasks' prune keeps the tasks of a workflow that is not over (a takeover looks them up)
KEEP_FLOW_TASKS = (" AND (workflow IS NULL OR workflow NOT IN (SELECT id FROM workflows WHERE state IN"
                   " ('running', 'stopping')))")
