"""The PostgreSQL journal's schema and rows: its migrations (`supd_schema.version` N -> N + 1,
each step one transaction, the later steps owned by the `pg*` modules of what they add), the
statements `supervisord.store.postgres` runs on `tasks`, and the codecs between its rows and
the core's tasks (spec and outcome are msgpack blobs; the rest are columns). Pure: no
connection is opened here.

Imports the stdlib, msgspec, proto, `supervisord.core` and the `pg*` modules' migrations only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from proto.task import Outcome, TaskSpec, TaskState, TaskView
from supervisord.core.task import Task, view
from supervisord.store import pgflows, pgpins, pgprune, pgrules, pgtranscripts

#: Step N takes a database from version N to N + 1; each runs in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: tasks (with their owner and lease), hosts.
    (
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            seq BIGINT GENERATED ALWAYS AS IDENTITY,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            retries INTEGER NOT NULL DEFAULT 0,
            epoch INTEGER NOT NULL DEFAULT 0,
            forgiven INTEGER NOT NULL DEFAULT 0,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            spec BYTEA NOT NULL,
            outcome BYTEA,
            child TEXT,
            trace_id TEXT,
            span_id TEXT,
            parent_span_id TEXT,
            tracestate TEXT,
            submitted_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            host TEXT,
            lease_until TIMESTAMPTZ,
            run_after TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
        )""",
        "CREATE INDEX tasks_queue ON tasks (kind, priority DESC, seq) WHERE state = 'queued'",
        "CREATE INDEX tasks_leases ON tasks (lease_until) WHERE state IN ('running', 'blocked')",
        "CREATE INDEX tasks_seq ON tasks (seq)",
        "CREATE INDEX tasks_state ON tasks (state, seq)",
        "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state NOT IN ('queued', 'blocked', 'running')",
        """CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at TIMESTAMPTZ NOT NULL,
            children INTEGER NOT NULL DEFAULT 0,
            running INTEGER NOT NULL DEFAULT 0,
            phase TEXT NOT NULL DEFAULT ''
        )""",
    ),
    # 1 -> 2: fleet-wide exclusive keys, the rate-limit gate, batches and their tally (pgrules).
    pgrules.MIGRATION,
    # 2 -> 3: workflows (the record, its engine's host, epoch and lease) and each task's job (pgflows).
    pgflows.MIGRATION,
    # 3 -> 4: transcripts, so `supctl logs` works from any host (pgtranscripts).
    pgtranscripts.MIGRATION,
    # 4 -> 5: a task's host pin, which the claim filters on (pgpins).
    pgpins.MIGRATION,
    # 5 -> 6: the fleet's last pruning pass, so N hosts prune once per period (pgprune).
    pgprune.MIGRATION,
    # 6 -> 7: the queue in the claim's order (priority, then age), whatever the kinds claimed: a
    # claim reads its first rows and stops, instead of sorting every queued task of its kinds
    # (index rows read per 2,000 claims: ~1M -> ~8k).
    (
        "CREATE INDEX tasks_queue_order ON tasks (priority DESC, seq) WHERE state = 'queued'",
        "DROP INDEX tasks_queue",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, seq, kind, state, priority, attempts, retries, spec, outcome, child, trace_id, span_id,"
    " parent_span_id, tracestate, submitted_at, started_at, finished_at, epoch, forgiven, cancel_requested, workflow, step, host"
)
INSERT = (
    "INSERT INTO tasks (id, kind, state, priority, attempts, retries, spec, outcome, child, trace_id, span_id,"
    " parent_span_id, tracestate, submitted_at, started_at, finished_at, epoch, forgiven, cancel_requested, key, workflow, step, pin)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
#: a noted task whose row does not exist yet (a workflow's task): its first write is an INSERT
INSERT_FENCE = -1
# A cancel request, once journaled, stays (OR). A task that leaves its attempt (queued, final)
# leaves its lease; a blocked one keeps it (its owner still waits for its tree). `host` stays:
# the last host that ran it (shown in the task's JSON).
UPDATE = (
    "UPDATE tasks SET state=%(state)s, attempts=%(attempts)s, epoch=%(epoch)s, forgiven=%(forgiven)s,"
    " cancel_requested = cancel_requested OR %(cancel)s, outcome=%(outcome)s, child=%(child)s,"
    " span_id=%(span_id)s, started_at=%(started_at)s, finished_at=%(finished_at)s,"
    " lease_until = CASE WHEN %(state)s IN ('running', 'blocked') THEN lease_until END,"
    " run_after = CASE WHEN %(state)s = 'queued' THEN now() + %(delay_s)s * interval '1 second'"
    "   ELSE run_after END"
    " WHERE id=%(id)s AND epoch=%(fence)s"
)

enc = msgspec.msgpack.Encoder()
spec_dec = msgspec.msgpack.Decoder(TaskSpec)
outcome_dec = msgspec.msgpack.Decoder(Outcome)


T_COLUMNS = ", ".join("t." + c.strip() for c in COLUMNS.split(","))


def task_row(t: Task) -> tuple[object, ...]:
    return (
        t.id, t.spec.kind, t.state.value, t.spec.priority, t.attempts, t.retries,
        enc.encode(t.spec), enc.encode(t.outcome) if t.outcome else None, t.child,
        t.trace_id, t.span_id, t.parent_span_id, t.tracestate, t.submitted_at, t.started_at, t.finished_at,
        t.epoch, t.forgiven, t.cancel_requested, t.spec.key, t.workflow, t.step, t.spec.pin,
    )


def update_args(t: Task, fence: int) -> dict[str, object]:
    delay_s = 0.0
    if t.state is TaskState.QUEUED and t.not_before:
        delay_s = max(0.0, t.not_before - time.monotonic())  # `not_before` is on the hub's monotonic clock
    return {
        "state": t.state.value, "attempts": t.attempts, "epoch": t.epoch, "forgiven": t.forgiven,
        "cancel": t.cancel_requested, "outcome": enc.encode(t.outcome) if t.outcome else None, "child": t.child,
        "span_id": t.span_id, "started_at": t.started_at, "finished_at": t.finished_at, "delay_s": delay_s,
        "id": t.id, "fence": fence,
    }


def task_of(r: Sequence[Any]) -> Task:
    (tid, seq, _kind, state, _prio, attempts, retries, spec, outcome, child, trace_id, span_id,
     parent_span_id, tracestate, submitted_at, started_at, finished_at, epoch, forgiven, cancel_requested,
     workflow, step, _host) = r
    return Task(
        id=str(tid), spec=spec_dec.decode(spec), submitted_at=float(submitted_at), seq=int(seq),
        state=TaskState(state), attempts=int(attempts), retries=int(retries), epoch=int(epoch),
        forgiven=int(forgiven), outcome=outcome_dec.decode(outcome) if outcome else None, child=child,
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id, tracestate=tracestate,
        started_at=started_at, finished_at=finished_at, cancel_requested=bool(cancel_requested), host=_host,
        workflow=workflow, step=step,
    )


def view_of(r: Sequence[Any]) -> TaskView:
    return view(task_of(r))
