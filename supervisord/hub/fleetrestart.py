"""A fleet host's restart: the attempts of its previous life, held until their trees are dead.

At start, the attempts still `running` or `blocked` under this host's name in the journal
are its previous life's. Their children died with it, but their process trees may not have
(re-parented to init, escaped with setsid, still in their cgroups, or their child still
killing them). Rescuing them at once — a new epoch, re-queued, their keys freed — would let
another host claim the key's next task, or the same task again, while the old tree still
runs. So this host keeps them: their rows stay its own (renewed with its other leases by the
journal thread), their fleet-wide keys stay held, and each goes to the core exactly as on a
single host (`Recovered(tree_alive)`, see `tasks.recover`):

- a tree still alive: the task is BLOCKED, its tree killed and watched (`hub.orphans`), and
  only `TreeDead` re-queues it and frees its key in the journal, in one group commit;
- a tree already gone: re-queued (or failed, its retries spent) now, its key freed with
  that record.

Keys its previous life still held for tasks that had ended while their trees were being
killed are freed now, unless a tree of theirs is found.

A journal that cannot be read at start is asked again when it is back (`on_event`). Functions
of a `Hub` in fleet mode; every fate is the core's.
"""

from __future__ import annotations

import logging
from typing import Any

from supervisord.core import fate as core
from supervisord.core.task import Task
from supervisord.events import JournalChanged
from supervisord.hub import tasks
from supervisord.hub.state import Hub
from supervisord.logs import log


def recover(h: Hub) -> None:
    """Read this host's attempts of its previous life (the first journal job: before any claim)."""
    f = h.fleet
    assert f is not None
    host = f.host

    def done(found: tuple[list[Task], dict[str, int]] | None, error: str | None) -> None:
        if error or found is None:
            log("fleet_recover_failed", logging.ERROR, error=error, host=host)
            return
        f.recovered = True
        attempts, final_keys = found
        adopt(h, attempts, final_keys)

    f.journal.ask(lambda s: (s.attempts_of(host), s.final_keys_of(host)), done)


def on_event(h: Hub, event: Any) -> None:
    """The journal is back after a failed recovery read: read again."""
    f = h.fleet
    if f is not None and isinstance(event, JournalChanged) and event.problem is None and not f.recovered:
        recover(h)


def adopt(h: Hub, found: list[Task], final_keys: dict[str, int] | None = None) -> None:
    """The core decides for each attempt this host's previous life left; the hub carries it out.
    `final_keys`: keys held for tasks that ended while their trees were being killed (by task
    id, their epoch): freed now unless a tree of theirs is still found (then they stay held,
    and are freed when this host is next seen gone, `PgStore._free_orphaned_keys`)."""
    f = h.fleet
    assert f is not None
    found = [t for t in found if t.id not in h.sched.tasks]
    final_keys = final_keys or {}
    asked = [t.id for t in found] + list(final_keys)
    leftovers = h.spokes.procs.leftovers(asked) if asked else set()
    for tid, epoch in final_keys.items():
        if tid not in leftovers:
            f.key_epochs[tid] = epoch
            f.release_key(tid)
            log("key_released", task=tid, reason="final before the restart, no tree left", host=f.host)
    for task in found:
        alive = task.id in leftovers
        old = task.state
        task.host = f.host
        h.sched.adopt(task)
        if task.spec.key is not None:  # held in the journal since its claim, by this epoch
            f.key_epochs[task.id] = task.epoch
        fate = core.decide(task, core.Recovered(tree_alive=alive), tasks.context(h))
        log("task_recovered", task=task.id, state=old.value, verdict=fate.verdict.value, attempts=task.attempts,
            epoch=task.epoch, leftovers=alive or None, host=f.host, trace=task.trace_id)
        tasks.settle(h, task, fate)  # BLOCKED: its tree is killed, it waits for TreeDead
        if task.spec.key is not None and not fate.hold_key:
            f.release_key(task.id)  # no tree left: the key is free, in the commit of the record
    h.store.commit()
    if found:
        log("journal_recovered", tasks=len(found), waiting_for_trees=len(leftovers), host=f.host)
