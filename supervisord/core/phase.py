"""The daemon's own life as a state machine: starting, running, draining, stopping, stopped.

Pure: `now` is an argument. The hub's lifecycle verbs move it and act on the moves.
Must not import asyncio, zmq, sqlite3 or any spoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Phase(enum.Enum):
    STARTING = "starting"  # children booting; READY=1 not sent yet
    RUNNING = "running"
    DRAINING = "draining"  # no new work; running tasks finish up to drain_s
    STOPPING = "stopping"  # children told to stop
    STOPPED = "stopped"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.DRAINING}),  # booted; a TERM while booting
    Phase.RUNNING: frozenset({Phase.DRAINING}),
    Phase.DRAINING: frozenset({Phase.STOPPING}),  # nothing runs any more
    Phase.STOPPING: frozenset({Phase.STOPPED}),  # every child and tree is gone
    Phase.STOPPED: frozenset(),
}


class PhaseError(Exception):
    pass


@dataclass(slots=True)
class Life:
    phase: Phase = Phase.STARTING
    #: when running tasks are told to stop (monotonic); None once told, or when not draining
    drain_deadline: float | None = None

    def move(self, to: Phase) -> Phase:
        if to not in TRANSITIONS[self.phase]:
            raise PhaseError(f"daemon: {self.phase.value} -> {to.value} is not allowed")
        old, self.phase = self.phase, to
        return old

    @property
    def accepting(self) -> bool:
        """New tasks are accepted and dispatched."""
        return self.phase in (Phase.STARTING, Phase.RUNNING)

    @property
    def winding_down(self) -> bool:
        """Draining or stopping: a task stopped now runs again at the next start, for free."""
        return self.phase in (Phase.DRAINING, Phase.STOPPING)
