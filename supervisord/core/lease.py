"""Leases in a fleet: when an owner must stop its own attempts, and what a rescue decides.

An attempt claimed from a shared store is leased to its host until the database's
`now() + lease_s`; the owner renews every `renew_every_s(lease_s)`. Two rules keep two
hosts from ever running one attempt past a lease:

- The owner stops its attempts itself at `stop_at(renewed_at, lease_s)` (monotonic, from
  the start of its last renewal that succeeded: the database's lease ended later than
  that), leaving a third of the lease for the kill escalation.
- Another host rescues an attempt only once its lease has ended, and a rescue is a new
  epoch, so every late write of the old owner is refused by fencing.

Pure: no I/O, no clock. Must not import asyncio, zmq, sqlite3, psycopg or any spoke.
"""

from __future__ import annotations

from supervisord.core import fate as core
from supervisord.core.task import Task


def renew_every_s(lease_s: float) -> float:
    """How often the owner renews: three chances before it must stop."""
    return lease_s / 4


def stop_at(renewed_at: float, lease_s: float) -> float:
    """When an owner that could not renew since `renewed_at` stops its attempts."""
    return renewed_at + lease_s * 2 / 3


def rescued(task: Task, ctx: core.Context) -> core.Fate:
    """The fate of an attempt whose lease ended (its host is dead or cut off): the same as a
    daemon restart's (`Recovered`, its tree gone with its host): re-queued while the retry
    budget lasts (a rescued attempt counts against it), else failed `worker_lost`; either
    way a new epoch, so the old owner's late writes are refused."""
    fate = core.decide(task, core.Recovered(tree_alive=False), ctx)  # RUNNING/BLOCKED -> QUEUED or final
    task.epoch += 1
    return fate
