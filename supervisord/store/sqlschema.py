"""The SQLite journal's schema and rows: its migrations (`PRAGMA user_version` N -> N + 1, each
step one transaction), the statements `supervisord.store.sqlite` runs, and the codecs between
its rows and the core's records (a task's spec and outcome, a workflow's record and a batch's
tally are msgpack blobs; the rest are columns). Pure: no connection is opened here.

Imports the stdlib, msgspec, proto and `supervisord.core` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from proto.task import Line, Outcome, TaskSpec, TaskState
from supervisord.core.batches import Batch
from supervisord.core.task import Task
from supervisord.core.workflow import Workflow

#: Step N takes a database from `user_version` N to N + 1; each runs in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first supd's schema (it set no version). A no-op on the files it wrote.
    (
        """CREATE TABLE IF NOT EXISTS tasks (
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
        )""",
        "CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq)",
    ),
    # 1 -> 2: fencing epochs, forgiven attempts, journaled cancel requests; indexes for
    # `list` (newest first) and `prune`.
    (
        "ALTER TABLE tasks ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN forgiven INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX tasks_seq ON tasks (seq)",
        "CREATE INDEX tasks_finished ON tasks (finished_at)",
    ),
    # 2 -> 3: workflows (the record, saved after every event) and each task's workflow and job.
    (
        "ALTER TABLE tasks ADD COLUMN workflow TEXT",
        "ALTER TABLE tasks ADD COLUMN step TEXT",
        "CREATE INDEX tasks_workflow ON tasks (workflow, step) WHERE workflow IS NOT NULL",
        """CREATE TABLE workflows (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            state TEXT NOT NULL,
            trace_id TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            record BLOB NOT NULL
        )""",
        "CREATE INDEX workflows_seq ON workflows (seq)",
        "CREATE INDEX workflows_state ON workflows (state, seq)",
    ),
    # 3 -> 4: batches (every submit; its id is its trace id): label, cost cap and tally;
    # tasks by batch.
    (
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            label TEXT,
            size INTEGER NOT NULL,
            submitted_at REAL NOT NULL,
            max_cost_usd REAL,
            tally BLOB,
            done_at REAL
        )""",
        "CREATE INDEX batches_label ON batches (label)",
        "CREATE INDEX batches_open ON batches (done_at)",
        "CREATE INDEX tasks_trace ON tasks (trace_id, seq)",
    ),
    # 4 -> 5: transcripts (chunks of lines, zlib-compressed msgpack, in arrival order) and
    # the git worktree branches of tasks (so that prune can remove them).
    (
        """CREATE TABLE transcripts (
            task_id TEXT NOT NULL,
            first INTEGER NOT NULL,
            count INTEGER NOT NULL,
            raw_bytes INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (task_id, first)
        ) WITHOUT ROWID""",
        "CREATE TABLE worktrees (task_id TEXT PRIMARY KEY, repo TEXT NOT NULL, branch TEXT NOT NULL, path TEXT)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, seq, kind, state, priority, attempts, retries, spec, outcome, child, trace_id, span_id,"
    " parent_span_id, tracestate, submitted_at, started_at, finished_at, epoch, forgiven, cancel_requested,"
    " workflow, step"
)
INSERT = f"INSERT INTO tasks ({COLUMNS}) VALUES ({', '.join('?' * 22)})"
#: a workflow's record: inserted once (its seq then fixed), replaced after every event
SAVE_FLOW = (
    "INSERT INTO workflows (id, seq, name, state, trace_id, started_at, finished_at, record)"
    " VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM workflows), ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET state=excluded.state, finished_at=excluded.finished_at, record=excluded.record"
)
FLOW_UNFINISHED_SQL = "('running', 'stopping')"
#: a noted task whose row does not exist yet (a workflow's task): its first write is an INSERT
INSERT_FENCE = -1
# A cancel request, once journaled, stays (MAX): a later record of the attempt cannot undo it.
UPDATE = (
    "UPDATE tasks SET state=?, attempts=?, epoch=?, forgiven=?, cancel_requested=MAX(cancel_requested, ?),"
    " outcome=?, child=?, span_id=?, started_at=?, finished_at=? WHERE id=? AND epoch=?"
)

enc = msgspec.msgpack.Encoder()
spec_dec = msgspec.msgpack.Decoder(TaskSpec)
outcome_dec = msgspec.msgpack.Decoder(Outcome)
lines_dec = msgspec.msgpack.Decoder(list[Line])
SAVE_WORKTREE = "INSERT OR REPLACE INTO worktrees (task_id, repo, branch, path) VALUES (?, ?, ?, ?)"
flow_dec = msgspec.msgpack.Decoder(Workflow)


BATCH_COLUMNS = "id, label, size, submitted_at, max_cost_usd, tally, done_at"
#: the tally's fields (the rest are columns)
TALLY = ("succeeded", "failed", "cancelled", "cost_usd", "input_tokens", "output_tokens", "first_started_at",
          "last_finished_at", "budget_spent")


def tally(b: Batch) -> bytes:
    return enc.encode({name: getattr(b, name) for name in TALLY})


def batch_mark(b: Batch) -> tuple[int, bool, bool]:
    return (b.size, b.budget_spent, b.done_at is not None)


def batch_row(b: Batch) -> tuple[object, ...]:
    return (b.id, b.label, b.size, b.submitted_at, b.max_cost_usd, tally(b), b.done_at)


def batch_of(r: Sequence[Any]) -> Batch:
    bid, label, size, submitted_at, max_cost_usd, tally, done_at = r
    b = Batch(id=str(bid), size=int(size), submitted_at=float(submitted_at), label=label,
              max_cost_usd=max_cost_usd, done_at=done_at)
    for name, value in (msgspec.msgpack.decode(tally) if tally else {}).items():
        if name in TALLY:
            setattr(b, name, value)
    return b


def task_row(t: Task, seq: int) -> tuple[object, ...]:
    return (
        t.id, seq, t.spec.kind, t.state.value, t.spec.priority, t.attempts, t.retries,
        enc.encode(t.spec), enc.encode(t.outcome) if t.outcome else None, t.child,
        t.trace_id, t.span_id, t.parent_span_id, t.tracestate, t.submitted_at, t.started_at, t.finished_at,
        t.epoch, t.forgiven, int(t.cancel_requested), t.workflow, t.step,
    )


def flow_args(wf: Workflow) -> tuple[object, ...]:
    return (wf.id, wf.spec.name, wf.state.value, wf.trace_id, wf.started_at, wf.finished_at, enc.encode(wf))


def worktree_row(t: Task) -> tuple[object, ...]:
    return (t.id, t.spec.repo, t.spec.worktree_branch or f"supd/{t.id}", None)


def update_args(t: Task, fence: int) -> tuple[object, ...]:
    return (
        t.state.value, t.attempts, t.epoch, t.forgiven, int(t.cancel_requested),
        enc.encode(t.outcome) if t.outcome else None, t.child, t.span_id, t.started_at, t.finished_at,
        t.id, fence,
    )


def task_of(r: Sequence[Any]) -> Task:
    (tid, seq, _kind, state, _prio, attempts, retries, spec, outcome, child, trace_id, span_id,
     parent_span_id, tracestate, submitted_at, started_at, finished_at, epoch, forgiven, cancel_requested,
     workflow, step) = r
    return Task(
        id=str(tid), spec=spec_dec.decode(spec), submitted_at=float(submitted_at), seq=int(seq),
        state=TaskState(state), attempts=int(attempts), retries=int(retries), epoch=int(epoch),
        forgiven=int(forgiven), outcome=outcome_dec.decode(outcome) if outcome else None, child=child,
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id, tracestate=tracestate,
        started_at=started_at, finished_at=finished_at, cancel_requested=bool(cancel_requested),
        workflow=workflow, step=step,
    )
