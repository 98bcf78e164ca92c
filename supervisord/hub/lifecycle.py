"""The daemon's own life: drain and stop, and what it tells systemd and `ps` about itself.

Functions of a `Hub` (no state of their own beyond `Life`, the core's phase machine).
Signals become the same commands the client sends (the daemon routes TERM/INT here and
HUP to `commands.reload`).
"""

from __future__ import annotations

from dataclasses import dataclass

import setproctitle

from proto import children as cp
from supervisord.core.phase import Phase
from supervisord.core.pool import ChildState
from supervisord.hub import childcare
from supervisord.hub.state import Hub
from supervisord.logs import log
from supervisord.spokes.systemd import format_status


def begin_drain(h: Hub, reason: str) -> None:
    """No new work; running tasks get `daemon.drain_s`, then are stopped (and re-queued).
    A second call (a second TERM) stops them now."""
    if h.life.winding_down:
        h.life.drain_deadline = h.clock.now()
        return
    if h.life.phase is Phase.STOPPED:
        return
    h.life.move(Phase.DRAINING)  # STARTING/RUNNING -> DRAINING
    d = h.config.daemon
    h.life.drain_deadline = h.clock.now() + d.drain_s
    running = len(h.sched.running())
    log("daemon_draining", reason=reason, running=running, queued=h.sched.queued, drain_s=d.drain_s)
    h.spokes.notifier.stopping(f"draining {running} running tasks")
    h.spokes.notifier.extend_timeout(d.drain_s + 30)


def drain_step(h: Hub, now: float) -> None:
    life = h.life
    if life.phase is Phase.DRAINING:
        busy = [s for s in h.pool.slots if s.state is ChildState.BUSY]
        if busy and life.drain_deadline is not None and now >= life.drain_deadline:
            for slot in busy:
                task = h.sched.tasks.get(slot.task_id or "")
                h.spokes.children.send(slot.identity, cp.Cancel(task_id=slot.task_id or "", reason="shutdown",
                                                                epoch=task.epoch if task else 0))
            life.drain_deadline = None
        if not busy and not h.pending_loss:
            life.move(Phase.STOPPING)  # DRAINING -> STOPPING
            log("daemon_stopping", children=len(h.pool.alive()))
            for slot in h.pool.alive():
                if slot.state is not ChildState.STOPPING:
                    childcare.stop(h, slot, "shutdown")
    if life.phase is Phase.STOPPING and not h.pool.alive() and not h.orphans and not h.pending_loss:
        life.move(Phase.STOPPED)  # STOPPING -> STOPPED


#: STATUS= and the process title are looked at most this often once running (a busy hub
#: turns hundreds of times a second; the last change is shown when the time comes)
STATUS_EVERY_S = 0.25


@dataclass(slots=True)
class Shown:
    """What was last told to systemd and to `ps` (each is sent again only when it changes)."""

    status: str = ""
    title: str = ""
    #: no look before this; `due`: a turn came meanwhile (the hub wakes at `next_at` for it)
    next_at: float = 0.0
    due: bool = False

    def wake_at(self) -> float | None:
        return self.next_at if self.due else None


def show_status(h: Hub, shown: Shown, now: float) -> None:
    """After each batch: READY=1 once no child is booting, then STATUS= and the process
    title, each only when its text changed and at most every STATUS_EVERY_S (an idle
    daemon sends WATCHDOG=1, nothing else)."""
    if h.life.phase is not Phase.STARTING and now < shown.next_at:
        shown.due = True
        return
    shown.due, shown.next_at = False, now + STATUS_EVERY_S
    counts = h.pool.counts()
    line = status_line(h, counts)
    notifier = h.spokes.notifier
    if h.life.phase is Phase.STARTING:
        if counts[ChildState.STARTING.value] + counts[ChildState.BACKOFF.value] == 0:
            h.life.move(Phase.RUNNING)  # STARTING -> RUNNING
            shown.status = line
            notifier.ready(line)
            log("daemon_ready", children=counts[ChildState.IDLE.value] + counts[ChildState.BUSY.value],
                fatal=counts[ChildState.FATAL.value], control=h.paths.control)
    elif notifier.enabled and line != shown.status:
        shown.status = line
        notifier.status(line)
    title = f"supd {h.paths.state_dir} [{h.life.phase.value}] {line}"
    if title != shown.title:
        shown.title = title
        setproctitle.setproctitle(title)


def status_line(h: Hub, counts: dict[str, int] | None = None) -> str:
    counts = counts or h.pool.counts()
    ready = counts[ChildState.IDLE.value] + counts[ChildState.BUSY.value]
    return format_status(ready, h.pool.size, h.sched.queued, counts[ChildState.BUSY.value], h.metrics.failed_total())
