"""Retention on a fleet: finished tasks are pruned once per period for the whole fleet, not
once per host.

- One row, `prunes` (id 1): when the fleet's last pruning pass began (on the database's
  clock), the host that ran it, how many passes and tasks so far.
- `chunk(...)` is one chunk of a pass, in one transaction. It first takes the fleet's prune
  lock (`pg_try_advisory_xact_lock`; a periodic pass skips its turn when another host holds
  it, a `supctl prune` waits for it). A pass's first chunk then reads the row: a periodic
  pass that finds the fleet pruned within its period stops there; otherwise the row says
  this host's pass began now. Then `PgStore.prune` deletes up to `limit` tasks (with their
  transcripts and finished workflows), counted in the row. Further chunks of a pass do not
  look at the period: a host that began a pass finishes it.

N hosts that each look once per period thus prune once per period. Imports the stdlib and
psycopg only; `store` is a `PgStore` (its `db` and `prune`), called on the journal thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the advisory lock key of the fleet's pruning ("prun" in ASCII)
PRUNE_LOCK = 0x7072756E

#: 5 -> 6: the fleet's last pruning pass (appended to `pgschema.MIGRATIONS`).
MIGRATION = (
    """CREATE TABLE prunes (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        began_at TIMESTAMPTZ NOT NULL,
        host TEXT NOT NULL,
        passes BIGINT NOT NULL DEFAULT 0,
        tasks BIGINT NOT NULL DEFAULT 0
    )""",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one chunk did: tasks deleted; why it did nothing, if it skipped; and, for a pass's
    first chunk, how long before it the fleet's previous pass began (None: never)."""

    pruned: int
    skipped: str | None = None
    since_s: float | None = None


def chunk(store: Any, finished_before: float, limit: int, host: str, *, first: bool,
          every_s: float | None = None, wait: bool = False) -> Chunk:
    """One chunk of a pruning pass (see the module docstring). `every_s`: a periodic pass's
    period (None: forced, as `supctl prune`); `wait`: wait for the lock instead of skipping."""
    db = store.db
    with db.transaction():
        if wait:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
        else:
            got = db.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)).fetchone()
            if not (got and got[0]):
                return Chunk(0, "another host is pruning the fleet's journal now")
        since_s = None
        if first:
            row = db.execute("SELECT EXTRACT(EPOCH FROM now() - began_at), host FROM prunes WHERE id=1").fetchone()
            since_s = max(0.0, float(row[0])) if row else None
            if every_s is not None and since_s is not None and since_s < every_s:
                return Chunk(0, f"the fleet's journal was pruned {since_s:.1f}s ago (by {row[1]}), within "
                                f"journal.prune_every_s = {every_s:g}", since_s)
            db.execute("INSERT INTO prunes (id, began_at, host, passes) VALUES (1, now(), %s, 1) ON CONFLICT (id)"
                       " DO UPDATE SET began_at=now(), host=EXCLUDED.host, passes=prunes.passes + 1", (host,))
        pruned = int(store.prune(finished_before, limit))
        if pruned:
            db.execute("UPDATE prunes SET tasks = tasks + %s WHERE id=1", (pruned,))
    return Chunk(pruned, None, since_s)


def last(db: Any) -> dict[str, object] | None:
    """The fleet's last pass: {began_s_ago, host, passes, tasks}, or None before the first."""
    row = db.execute("SELECT EXTRACT(EPOCH FROM now() - began_at), host, passes, tasks FROM prunes WHERE id=1"
                     ).fetchone()
    if row is None:
        return None
    return {"began_s_ago": round(float(row[0]), 3), "host": row[1], "passes": int(row[2]), "tasks": int(row[3])}
