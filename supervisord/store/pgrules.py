"""The fleet-wide rules in the shared PostgreSQL journal: exclusive keys, the rate-limit gate
and batch budgets, each held by the database, so they hold whichever host claims or finishes.

- **Keys.** A task row carries its `key` and `key_epoch`, the epoch of the attempt that holds
  it (NULL: none). The claim (`claim`) is one transaction: candidates are locked with
  `FOR UPDATE SKIP LOCKED`; for each key among them it takes a per-key advisory transaction
  lock (`pg_try_advisory_xact_lock`, NOWAIT: a key another host is claiming for right now is
  skipped this round, and the answer says "contended" so the host claims again at once),
  then counts the key's holders *after* the lock (READ COMMITTED: every claim that held the
  lock before has committed) and admits at most the room left. SKIP LOCKED alone would let
  two hosts each see one free slot and both spend it. A key is held until the attempt's tree
  is dead: its host releases it (`release_keys`, fenced on `key_epoch`, in the group commit
  that records the end), or a rescue does; each release sends `supd_submit`.
- **The gate.** One row (`gate.until`, on the database's clock): a Claude attempt that ended
  `rate_limited` with a reset time moves it later (`close_gate`, `NOTIFY supd_gate`); the
  claim takes no Claude task while `until > now()`.
- **Budgets.** `batches` holds each batch's record and tally; a final task is tallied in the
  same transaction that records it (`tally`, only when its fenced write succeeded: once per
  task). The write that reaches the cap marks the batch spent; the claim skips Claude tasks of
  a spent batch, and `stop_spent` ends its queued Claude tasks `cancelled`/`budget` (the
  core's `BudgetSpent` fate), right after that commit and on every periodic pass (a retry
  written back later by any host).

Imports the stdlib, psycopg, proto and `supervisord.core` only; called by `PgStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

from proto.task import TaskState
from supervisord.core import fate as core
from supervisord.core.batches import Batch, budget_message
from supervisord.core.keys import DEFAULT_LIMIT
from supervisord.core.task import Task

#: the advisory lock class of exclusive keys (the second number is the key's hash)
KEY_LOCK = 0x6B6579  # "key"
#: claim rounds in one transaction (a round whose keyed candidates were over their room
#: looks further down the queue)
CLAIM_ROUNDS = 4

#: 1 -> 2: fleet-wide keys, gate and batches (appended to `pgschema.MIGRATIONS`).
MIGRATION = (
    "ALTER TABLE tasks ADD COLUMN key TEXT",
    "ALTER TABLE tasks ADD COLUMN key_epoch INTEGER",
    "CREATE INDEX tasks_key_holders ON tasks (key) WHERE key_epoch IS NOT NULL",
    "CREATE INDEX tasks_trace ON tasks (trace_id)",
    "CREATE TABLE gate (id INTEGER PRIMARY KEY CHECK (id = 1), until TIMESTAMPTZ NOT NULL, task TEXT)",
    """CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL,
        label TEXT,
        max_cost_usd DOUBLE PRECISION,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        first_started_at DOUBLE PRECISION,
        last_finished_at DOUBLE PRECISION,
        budget_spent BOOLEAN NOT NULL DEFAULT FALSE,
        done_at DOUBLE PRECISION
    )""",
    "CREATE INDEX batches_label ON batches (label, submitted_at)",
)

BATCH_COLUMNS = ("id, size, submitted_at, label, max_cost_usd, succeeded, failed, cancelled, cost_usd, input_tokens,"
                 " output_tokens, first_started_at, last_finished_at, budget_spent, done_at")

# Claude tasks wait while the gate is closed or their batch has spent its cap; a task pinned
# to another host waits for that host.
_CANDIDATES = (
    "SELECT t.id, t.key FROM tasks t WHERE t.state='queued' AND t.kind = ANY(%(kinds)s) AND t.run_after <= now()"
    " AND NOT (t.id = ANY(%(seen)s)) AND (t.key IS NULL OR NOT (t.key = ANY(%(full)s)))"
    " AND (t.pin IS NULL OR t.pin = %(host)s)"  # a pinned task only for its host (pgpins)
    " AND (t.kind <> 'claude' OR (NOT EXISTS (SELECT 1 FROM gate WHERE until > now())"
    "  AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = t.trace_id AND b.budget_spent)))"
    " ORDER BY t.priority DESC, t.seq LIMIT %(n)s FOR UPDATE OF t SKIP LOCKED"
)


def claim(db: psycopg.Connection[Any], n: int, kinds: Sequence[str], host: str, lease_s: float,
          limits: Mapping[str, int], columns: str,
          claimed: Callable[[psycopg.Connection[Any], list[Any]], None] | None = None) -> tuple[list[Any], bool]:
    """Claim up to `n` tasks (one transaction): the rows as updated, and whether a key was
    skipped because another host held its lock (claim again soon). `claimed(db, rows)` runs
    in the same transaction (the fleet's `started` events)."""
    admitted: list[str] = []
    seen: list[str] = []
    full: set[str] = set()
    taken: dict[str, int] = {}  # key -> room left in this transaction (after its lock)
    contended = False
    with db.transaction():
        for _ in range(CLAIM_ROUNDS):
            asked = n - len(admitted)
            rows = db.execute(_CANDIDATES, {"kinds": list(kinds), "seen": seen, "full": sorted(full),
                                            "n": asked, "host": host}).fetchall()
            seen += [str(r[0]) for r in rows]
            over = False
            for tid, key in rows:
                if key is None:
                    admitted.append(str(tid))
                    continue
                if key not in taken and key not in full:
                    got = db.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (KEY_LOCK, key)).fetchone()
                    if not (got and got[0]):
                        contended = True
                        full.add(key)
                        continue
                    held = db.execute("SELECT COUNT(*) FROM tasks WHERE key=%s AND key_epoch IS NOT NULL",
                                      (key,)).fetchone()
                    taken[key] = limits.get(key, DEFAULT_LIMIT) - (int(held[0]) if held else 0)
                if key in full or taken.get(key, 0) <= 0:
                    full.add(key)
                    over = True
                    continue
                taken[key] -= 1
                admitted.append(str(tid))
            if not over or len(admitted) >= n or len(rows) < asked:
                break
        if not admitted:
            return [], contended
        out = db.execute(
            "UPDATE tasks t SET state='running', attempts=t.attempts + 1, epoch=t.epoch + 1, host=%s,"
            " lease_until = now() + %s * interval '1 second', started_at=%s, finished_at=NULL,"
            " key_epoch = CASE WHEN t.key IS NULL THEN NULL ELSE t.epoch + 1 END"
            f" WHERE t.id = ANY(%s) RETURNING {columns}",
            (host, lease_s, time.time(), admitted)).fetchall()
        if claimed is not None:
            claimed(db, out)
    return out, contended


def release_keys(cur: psycopg.Cursor[Any], releases: Mapping[str, int]) -> int:
    """Free the keys these attempts (task id -> epoch) held; how many were freed."""
    freed = 0
    for tid, epoch in releases.items():
        cur.execute("UPDATE tasks SET key_epoch=NULL WHERE id=%s AND key_epoch=%s", (tid, epoch))
        freed += cur.rowcount
    if freed:
        cur.execute("SELECT pg_notify('supd_submit', 'key')")
    return freed


def key_holders(db: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Every held key of the fleet: key -> the task ids that hold it."""
    out: dict[str, list[str]] = {}
    for key, tid in db.execute("SELECT key, id FROM tasks WHERE key_epoch IS NOT NULL ORDER BY key, seq"):
        out.setdefault(str(key), []).append(str(tid))
    return out


# ---- the gate -------------------------------------------------------------------------------


def close_gate(db: psycopg.Connection[Any], wait_s: float, task_id: str) -> None:
    """No host starts a Claude task for `wait_s` from now (the database's now); a gate already
    closed for longer stays as it is."""
    db.execute("INSERT INTO gate VALUES (1, now() + %s * interval '1 second', %s) ON CONFLICT (id) DO UPDATE"
               " SET until=EXCLUDED.until, task=EXCLUDED.task WHERE gate.until < EXCLUDED.until",
               (wait_s, task_id))
    db.execute("SELECT pg_notify('supd_gate', %s)", (task_id,))


def gate(db: psycopg.Connection[Any]) -> tuple[float, str | None] | None:
    """The fleet's closed gate: (seconds until it opens, the task that closed it), or None."""
    row = db.execute("SELECT EXTRACT(EPOCH FROM until - now()), task FROM gate WHERE until > now()").fetchone()
    return (float(row[0]), row[1]) if row else None


# ---- batches ----------------------------------------------------------------------------------


def accept_batch(cur: psycopg.Cursor[Any], b: Batch) -> None:
    """A submit's batch record (one that joins an earlier batch grows it)."""
    cur.execute("INSERT INTO batches (id, size, submitted_at, label, max_cost_usd) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET size = batches.size + EXCLUDED.size, done_at = NULL",
                (b.id, b.size, b.submitted_at, b.label, b.max_cost_usd))


def tally(cur: psycopg.Cursor[Any], task: Task, spent: list[str], done: list[Batch]) -> None:
    """`task` was just recorded final (once): count it in its batch. A batch whose cap this
    reached goes to `spent`, one whose last task this was to `done`."""
    if task.trace_id is None:
        return
    o = task.outcome
    usage = o.usage if o else None
    end = task.finished_at or time.time()
    cur.execute(
        "UPDATE batches SET succeeded = succeeded + %s, failed = failed + %s, cancelled = cancelled + %s,"
        " cost_usd = cost_usd + %s, input_tokens = input_tokens + %s, output_tokens = output_tokens + %s,"
        " first_started_at = LEAST(first_started_at, %s), last_finished_at = GREATEST(last_finished_at, %s)"
        " WHERE id=%s RETURNING cost_usd, max_cost_usd, budget_spent, succeeded + failed + cancelled, size, done_at",
        (int(task.state is TaskState.SUCCEEDED), int(task.state in (TaskState.FAILED, TaskState.TIMED_OUT)),
         int(task.state is TaskState.CANCELLED), (o.cost_usd if o else None) or 0.0,
         usage.input_tokens if usage else 0, usage.output_tokens if usage else 0, task.started_at, end,
         task.trace_id))
    row = cur.fetchone()
    if row is None:
        return
    cost, cap, was_spent, finished, size, done_at = row
    if cap is not None and not was_spent and float(cost) >= float(cap):
        cur.execute("UPDATE batches SET budget_spent=TRUE WHERE id=%s AND NOT budget_spent", (task.trace_id,))
        if cur.rowcount:
            spent.append(task.trace_id)
    if done_at is None and int(finished) >= int(size):
        cur.execute(f"UPDATE batches SET done_at=%s WHERE id=%s AND done_at IS NULL RETURNING {BATCH_COLUMNS}",
                    (time.time(), task.trace_id))
        if (got := cur.fetchone()) is not None:
            done.append(batch(got))


def stop_spent(db: psycopg.Connection[Any], write: Callable[[psycopg.Cursor[Any], Task, int], bool],
               columns: str, decode: Callable[[Any], Task], batch_ids: Sequence[str] | None = None,
               limit: int = 500) -> list[Task]:
    """Queued Claude tasks of spent batches (of `batch_ids`, or all) get the core's
    `BudgetSpent` fate, written fenced by `write(cur, task, fence)`. The tasks ended."""
    cond = "b.id = ANY(%s)" if batch_ids is not None else "TRUE"
    out: list[Task] = []
    with db.transaction(), db.cursor() as cur:
        cur.execute(
            f"SELECT {columns} FROM tasks t JOIN batches b ON b.id = t.trace_id WHERE b.budget_spent AND {cond}"
            " AND t.state='queued' AND t.kind='claude' ORDER BY t.seq LIMIT %s FOR UPDATE OF t SKIP LOCKED",
            (list(batch_ids), limit) if batch_ids is not None else (limit,))
        rows = cur.fetchall()
        caps = {}
        for r in rows:
            task = decode(r)
            if task.trace_id not in caps:
                got = db.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id=%s", (task.trace_id,)).fetchone()
                caps[task.trace_id] = budget_message(batch(got)) if got else "its batch spent its --max-cost-usd"
            fence = task.epoch
            core.decide(task, core.BudgetSpent(caps[task.trace_id]), core.Context(now=0.0, wall=time.time(), rand=0.0))
            if write(cur, task, fence):
                out.append(task)
    return out


def batch(r: Sequence[Any]) -> Batch:
    (bid, size, submitted_at, label, cap, succeeded, failed, cancelled, cost, tin, tout, first, last, spent,
     done_at) = r
    return Batch(id=str(bid), size=int(size), submitted_at=float(submitted_at), label=label,
                 max_cost_usd=float(cap) if cap is not None else None, succeeded=int(succeeded), failed=int(failed),
                 cancelled=int(cancelled), cost_usd=float(cost), input_tokens=int(tin), output_tokens=int(tout),
                 first_started_at=first, last_finished_at=last, budget_spent=bool(spent), done_at=done_at)


def get_batch(db: psycopg.Connection[Any], batch_id: str) -> Batch | None:
    row = db.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id=%s", (batch_id,)).fetchone()
    return batch(row) if row else None
