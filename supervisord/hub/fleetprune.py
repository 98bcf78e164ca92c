"""Retention on a fleet: the periodic prune as a fleet singleton, and `supctl prune` of the
fleet's journal from any host.

Every host looks once per `[journal] prune_every_s` (`tick`); the journal decides whether the
fleet was pruned within that period already (`supervisord.store.pgprune`: an advisory lock
and one row), so N hosts prune once per period, not N times. A pass runs a chunk of
`PRUNE_CHUNK` tasks per journal job, so claims and commits go between its chunks.
`supctl prune` on any host runs a forced pass (it waits for the lock and ignores the period)
and answers with the number of tasks it deleted from the fleet's journal.

Functions of a `Hub` in fleet mode (`FleetState.prune_at`, `.pruning`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from proto import control as ctl
from supervisord.hub.state import Hub
from supervisord.logs import log
from supervisord.store import pgprune

#: tasks one chunk deletes (as `commands.PRUNE_CHUNK` on one host: ~25 ms)
PRUNE_CHUNK = 500

Envelope = tuple[bytes, ...]
Done = Callable[[int, str | None, pgprune.Chunk | None], None]


def tick(h: Hub, now: float) -> None:
    """Once per period: a pass, if the fleet has not had one within it."""
    f = h.fleet
    assert f is not None
    retain_s, every_s = h.config.journal.retain_s, h.config.journal.prune_every_s
    if not retain_s or f.pruning or now < f.prune_at:
        return
    f.prune_at = now + every_s
    f.pruning = True

    def done(total: int, error: str | None, first: pgprune.Chunk | None) -> None:
        f.pruning = False
        if error:
            log("journal_prune_failed", logging.WARNING, error=error)
        elif first is not None and first.skipped:
            log("journal_prune_skipped", logging.DEBUG, reason=first.skipped)
        else:
            log("journal_pruned", tasks=total, older_than_s=retain_s, reason="retain_s", fleet=True, host=f.host,
                since_last_s=round(first.since_s, 3) if first and first.since_s is not None else None)

    _pass(h, h.clock.wall() - retain_s, every_s, False, done)


def prune(h: Hub, envelope: Envelope, req: ctl.Prune) -> ctl.Reply | None:
    """`supctl prune` on a fleet: a forced pass over the fleet's journal, answered when done."""
    f = h.fleet
    assert f is not None
    older_than_s = req.older_than_s if req.older_than_s is not None else h.config.journal.retain_s
    if not older_than_s:
        return ctl.Ok(message="journal.retain_s = 0 keeps every task; give --older-than")

    def done(total: int, error: str | None, first: pgprune.Chunk | None) -> None:
        if error:
            h.spokes.control.reply(envelope, ctl.Error(kind="journal", message=f"prune failed after {total} tasks: "
                                                                                f"{error}"))
            return
        log("journal_pruned", tasks=total, older_than_s=older_than_s, reason="request", fleet=True, host=f.host)
        h.spokes.control.reply(envelope, ctl.Ok(message=f"pruned {total} finished tasks older than {older_than_s:g}s "
                                                        "from the fleet's journal"))

    _pass(h, h.clock.wall() - older_than_s, None, True, done)
    return None


@dataclass(slots=True)
class _Pass:
    total: int = 0
    #: the pass's first chunk (it says whether the fleet was pruned within the period)
    first: pgprune.Chunk | None = None


def _pass(h: Hub, before: float, every_s: float | None, wait: bool, done: Done) -> None:
    """Chunks until one deletes fewer than a chunk, each its own journal job."""
    f = h.fleet
    assert f is not None
    host, p = f.host, _Pass()

    def ask(first: bool) -> None:
        f.journal.ask(lambda s: pgprune.chunk(s, before, PRUNE_CHUNK, host, first=first, every_s=every_s, wait=wait),
                      lambda c, e: answered(c, e, first))

    def answered(c: pgprune.Chunk | None, error: str | None, first: bool) -> None:
        if first:
            p.first = c
        if error or c is None:
            done(p.total, error or "no answer", p.first)
            return
        p.total += c.pruned
        if c.skipped is None and c.pruned >= PRUNE_CHUNK:
            ask(False)
        else:
            done(p.total, None, p.first)

    ask(True)


HANDLERS = {ctl.Prune: prune}
