"""Host pins in a fleet: which host must run a task, and why a pinned task waits.

A task is pinned (`TaskSpec.pin`, set by supd, never by a client) when what it needs is on
one host's disk:

- a `--worktree` task: its repository path was checked on the host that accepted it, and
  its worktree and branch are made there, so it is pinned to that host;
- a `--resume ID` task: the Claude session of ID is in the CLI's home of the host that ran
  ID (and so is its worktree, if it had one), so it is pinned to that host, wherever it is
  submitted;
- a `retry` keeps the pin of the task it submits again (it is in the stored spec).

The pin is part of the spec, so it stays through retries, rescues and restarts: only the
pinned host claims the task (the claim's filter in the store). On a single host nothing is
pinned.

Pure: no I/O, no clock. Must not import asyncio, zmq, sqlite3, psycopg or any spoke.
"""

from __future__ import annotations

from proto.task import TaskSpec
from supervisord.core.task import Task


def at_submit(spec: TaskSpec, host: str | None, resumed: Task | None = None) -> str | None:
    """The pin of a task accepted by `host` (None: a single host, no pins). `resumed` is the
    task a `--resume` spec continues (as the store has it)."""
    if host is None:
        return None
    if resumed is not None:
        return resumed.spec.pin or resumed.host or host
    if spec.worktree:
        return host
    return spec.pin


def waiting(pin: str | None, heartbeat_age_s: float | None, phase: str | None, live_s: float) -> str | None:
    """Why a queued task pinned to `pin` is not claimed, when its host is not live: it never
    beat (`heartbeat_age_s` None), it stopped (`phase` "stopped"), or its last heartbeat is
    older than `live_s` (a lease: by then its own attempts were rescued). None: it may run."""
    if pin is None:
        return None
    if heartbeat_age_s is None:
        return f"waiting for host {pin}: pinned to it, and it has never joined the fleet"
    if phase == "stopped":
        return f"waiting for host {pin}: pinned to it, and it is stopped"
    if heartbeat_age_s > live_s:
        return f"waiting for host {pin}: pinned to it, and it has not beaten for {heartbeat_age_s:.0f}s"
    return None


def elsewhere(task_id: str, pin: str, here: str, what: str) -> str | None:
    """The error of a request that only the pinned host can answer (its disk has `what`),
    asked of host `here`; None when `here` is that host."""
    if pin == here:
        return None
    return f"task {task_id}'s {what} is on host {pin}; run supctl against {pin}"
