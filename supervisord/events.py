"""The hub's inbox vocabulary: frozen, past-tense events that spokes `put_nowait`.

Owns nothing but these types. Spokes create them; only `Daemon` consumes them.
Imports proto and the stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proto import children as cp
from proto import control as ctl


@dataclass(frozen=True, slots=True)
class ChildSaid:
    """A decoded message from a child (any message counts as a heartbeat)."""

    identity: str
    message: cp.ChildMessage


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child process we spawned is gone and reaped."""

    identity: str
    pid: int
    returncode: int | None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A decoded control request; `envelope` routes the reply back."""

    envelope: tuple[bytes, ...]
    request: ctl.Request


@dataclass(frozen=True, slots=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The tick: the earliest deadline the hub asked to be woken at has passed."""


@dataclass(frozen=True, slots=True)
class TreesChecked:
    """A look at the process table (off the loop) for the trees of lost attempts: `alive`
    are the (task id, epoch) pairs of `checked` that still have a process."""

    checked: frozenset[tuple[str, int]]
    alive: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class GitAnswered:
    """A question the hub gave the git thread (`supervisord.spokes.gitjanitor`) is done:
    `then(result, error)` runs on the hub. `error` is git's failure in words (then `result`
    is None)."""

    then: Callable[[Any, str | None], None]
    result: Any
    error: str | None


# ---- the shared journal of a fleet (its thread posts these; see supervisord.store.journal) ----


@dataclass(frozen=True, slots=True)
class JournalAnswered:
    """A job the hub gave the journal thread is done: `then(result, error)` runs on the hub.
    `error` is the `StoreError` text when the job failed (then `result` is None)."""

    then: Callable[[Any, str | None], None]
    result: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class JournalNotified:
    """A PostgreSQL notification: `supd_submit` (work to claim), `supd_finished` (a task
    reached its final state; `payload` is its id), `supd_cancel` (cancel `payload`)."""

    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class JournalChanged:
    """The journal became reachable (`problem` None) or not (what is wrong, what it does)."""

    problem: str | None


@dataclass(frozen=True, slots=True)
class LeasesRenewed:
    """A renewal that began at `started_at` (monotonic) extended these attempts of ours:
    task id -> (epoch, cancel requested). An attempt the hub runs that is missing was rescued."""

    started_at: float
    held: dict[str, tuple[int, bool]]


@dataclass(frozen=True, slots=True)
class FleetNews:
    """What the fleet's shared rules did: batches whose cost cap a commit here reached (`spent`),
    batches whose last task it recorded (`done`, `supervisord.core.batches.Batch`: their hook
    runs here), and, from a periodic pass (`periodic`), the fleet's gate (seconds until it
    opens, the task that closed it; None: open)."""

    spent: list[str]
    done: list[Any]
    gate: tuple[float, str | None] | None
    periodic: bool


@dataclass(frozen=True, slots=True)
class FlowLeases:
    """A periodic pass over the workflows' engines: those this host runs that it still holds
    (id -> cancel requested), those taken from a dead or cut-off host (each `(Workflow, its
    tasks by job, cancel requested)`: resume them here), and those another host took over
    from this one (stop feeding them)."""

    held: dict[str, bool]
    taken: list[tuple[Any, dict[str, Any], bool]]
    lost: list[str]


@dataclass(frozen=True, slots=True)
class WritesFenced:
    """A group commit refused these (task id, epoch) writes: the attempts are no longer ours."""

    refused: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class HookFinished:
    """A hook command ended: `returncode` (None if it could not start or was killed at its
    timeout), and what went wrong, if anything."""

    name: str
    returncode: int | None
    problem: str | None = None


Event = (ChildSaid | ChildExited | RequestReceived | SignalReceived | TimerFired | TreesChecked | HookFinished
         | GitAnswered | JournalAnswered | JournalNotified | JournalChanged | LeasesRenewed | WritesFenced | FleetNews
         | FlowLeases)
