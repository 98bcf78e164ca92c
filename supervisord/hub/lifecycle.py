"""The daemon's own life: its phase, signals, drain and stop, and what it tells systemd
and `ps` about itself.

Part of the hub (runs inside its loop, owns no state): functions that read and change
the `Daemon`'s phase and act through its spokes. Signals become the same commands the
client sends: TERM/INT -> shutdown (drain), HUP -> reload.
"""

from __future__ import annotations

import enum
import signal
from typing import TYPE_CHECKING

import setproctitle

from proto import children as cp
from supervisord.core.pool import ChildState
from supervisord.hub import childcare, commands
from supervisord.logs import log
from supervisord.spokes.systemd import format_status

if TYPE_CHECKING:
    from supervisord.hub.daemon import Daemon


class Phase(enum.Enum):
    STARTING = "starting"  # children booting; READY=1 not sent yet
    RUNNING = "running"
    DRAINING = "draining"  # no new work; running tasks finish up to drain_s
    STOPPING = "stopping"  # children told to stop
    STOPPED = "stopped"


def on_signal(d: Daemon, signum: int) -> None:
    log("signal", signal=signal.Signals(signum).name)
    if signum == signal.SIGHUP:
        commands.reload(d)
    elif d.phase in (Phase.DRAINING, Phase.STOPPING):
        d.drain_deadline = d.clock()  # a second TERM/INT: stop draining now
    else:
        begin_drain(d, f"signal {signal.Signals(signum).name}")


def begin_drain(d: Daemon, reason: str) -> None:
    """No new work; running tasks get `daemon.drain_s`, then are stopped (and re-queued)."""
    if d.phase in (Phase.DRAINING, Phase.STOPPING, Phase.STOPPED):
        return
    d.phase = Phase.DRAINING
    now = d.clock()
    d.drain_deadline = now + d.config.daemon.drain_s
    running = len(d.sched.running())
    log("daemon_draining", reason=reason, running=running, queued=d.sched.queued,
        drain_s=d.config.daemon.drain_s)
    d.notifier.stopping(f"draining {running} running tasks")
    d.notifier.extend_timeout(d.config.daemon.drain_s + 30)


def drain_step(d: Daemon, now: float) -> None:
    if d.phase is Phase.DRAINING:
        busy = [s for s in d.pool.slots if s.state is ChildState.BUSY]
        if busy and d.drain_deadline is not None and now >= d.drain_deadline:
            for slot in busy:
                d.transport.send(slot.identity, cp.Cancel(task_id=slot.task_id or "", reason="shutdown"))
            d.drain_deadline = None
        if not busy:
            d.phase = Phase.STOPPING
            for slot in d.pool.alive():
                if slot.state is not ChildState.STOPPING:
                    childcare.stop(d, slot, now, "shutdown")
    if d.phase is Phase.STOPPING and not d.pool.alive() and not d.orphans:
        d.phase = Phase.STOPPED


def show_status(d: Daemon) -> None:
    """After each batch: READY=1 once no child is booting, then STATUS= and the process
    title, each only when its text changed (an idle daemon sends WATCHDOG=1, nothing else)."""
    counts = d.pool.counts()
    line = status_line(d, counts)
    if d.phase is Phase.STARTING:
        if counts[ChildState.STARTING.value] + counts[ChildState.BACKOFF.value] == 0:
            d.phase = Phase.RUNNING  # STARTING -> RUNNING
            d._status_sent = line
            d.notifier.ready(line)
            log("daemon_ready", children=counts[ChildState.IDLE.value] + counts[ChildState.BUSY.value],
                fatal=counts[ChildState.FATAL.value], control=d.paths.control)
    elif d.notifier.enabled and line != d._status_sent:
        d._status_sent = line
        d.notifier.status(line)
    title = f"supd {d.paths.state_dir} [{d.phase.value}] {line}"
    if title != d._title:
        d._title = title
        setproctitle.setproctitle(title)


def status_line(d: Daemon, counts: dict[str, int] | None = None) -> str:
    counts = counts or d.pool.counts()
    ready = counts[ChildState.IDLE.value] + counts[ChildState.BUSY.value]
    failed = d.metrics.failed_total()
    return format_status(ready, d.pool.size, d.sched.queued, counts[ChildState.BUSY.value], failed)
