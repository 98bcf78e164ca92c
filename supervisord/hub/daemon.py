"""The daemon: one inbox, one loop, and the turn that follows every batch of events.

`Daemon.run()` builds the real spokes around a `Hub` and consumes the inbox. Spokes
(children transport, control socket, pidfd watchers, signal handlers, the timer) only
`put_nowait` frozen events; `handle` routes each to its verb module and `turn` does
what follows a batch: timers, the ready-pump, one store commit for the lot, then the
replies that promise durability, then the next wake-up. `handle` and `turn` need no
event loop, so tests/hub drives them in-process with fakes of every spoke.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.asyncio

import proto
from supervisord.config import Config
from supervisord.core import taskenv
from supervisord.core.traceids import Ids
from supervisord.events import (
    ChildExited,
    ChildSaid,
    Event,
    FleetNews,
    FlowLeases,
    GitAnswered,
    HookFinished,
    JournalAnswered,
    JournalChanged,
    JournalNotified,
    LeasesRenewed,
    RequestReceived,
    SignalReceived,
    TimerFired,
    TreesChecked,
    WritesFenced,
)
from supervisord.hub import (
    agents,
    batches,
    childcare,
    commands,
    fleet,
    fleetflows,
    fleetprune,
    fleetrestart,
    fleetwatch,
    flows,
    lifecycle,
    ratelimit,
    tasks,
)
from supervisord.hub.state import Clock, Hub, Paths, Spokes
from supervisord.logs import flush, log
from supervisord.spokes import claude_cli, curve
from supervisord.spokes.control import ControlServer
from supervisord.spokes.eventbus import EventBus
from supervisord.spokes.gitjanitor import Janitor
from supervisord.spokes.processes import ProcessSpoke
from supervisord.spokes.systemd import Notifier
from supervisord.spokes.tracing import make_tracer
from supervisord.spokes.transport import ChildTransport
from supervisord.store.base import Store
from supervisord.store.journal import FleetStore

__all__ = ["Daemon", "Paths", "Turn"]


@dataclass(slots=True)
class Turn:
    """The hub's clockwork between batches: periodic duties and the armed wake-up."""

    next_heartbeat: float = 0.0
    next_watchdog: float = 0.0
    next_prune: float = 0.0
    #: when the hub asked to be woken; a wake-up far later than that means it was stalled
    armed_at: float | None = None
    shown: lifecycle.Shown = field(default_factory=lifecycle.Shown)
    #: called at the end of every turn (the Prometheus snapshot, when it is on: ~10 µs)
    on_turn: Callable[[], None] | None = None
    #: fleet mode: the next lease check or poll
    fleet_due: float | None = None


def handle(h: Hub, event: Event) -> None:
    """Route one event to its verb. A bug in one costs that event, never the daemon."""
    try:
        match event:
            case ChildSaid(identity, message):
                childcare.on_message(h, identity, message)
            case ChildExited(identity, pid, returncode):
                childcare.on_exit(h, identity, pid, returncode)
            case RequestReceived(envelope, request):
                commands.handle(h, envelope, request)
            case SignalReceived(signum):
                on_signal(h, signum)
            case TreesChecked(checked, alive):
                for tree in h.orphans.checked(checked, alive, h.clock.now()):
                    log("tree_dead", task=tree.task_id, epoch=tree.epoch)
                    tasks.tree_dead(h, tree.task_id)
            case HookFinished(name, returncode, problem):
                batches.hook_finished(h, name, returncode, problem)
            case TimerFired():
                pass
            case JournalAnswered(then, result, error) | GitAnswered(then, result, error):
                then(result, error)
            case JournalNotified():
                fleet.on_event(h, event)
                fleetflows.on_event(h, event)
                fleetwatch.on_event(h, event)
            case JournalChanged() | LeasesRenewed() | WritesFenced() | FleetNews():
                fleet.on_event(h, event)
                fleetrestart.on_event(h, event)
            case FlowLeases():
                fleetflows.on_event(h, event)
    except Exception as e:  # noqa: BLE001 (a bug in one handler must not end the daemon)
        log("event_failed", logging.ERROR, event=type(event).__name__, error=repr(e),
            traceback=traceback.format_exc(limit=8).replace("\n", " | "))


def on_signal(h: Hub, signum: int) -> None:
    log("signal", signal=signal.Signals(signum).name)
    if signum == signal.SIGHUP:
        commands.reload(h)
    else:
        lifecycle.begin_drain(h, f"signal {signal.Signals(signum).name}")


def turn(h: Hub, t: Turn) -> None:
    """What follows a batch of events."""
    now = h.clock.now()
    _notice_stall(h, t, now)
    _timers(h, t, now)
    flows.turn(h)
    if h.fleet is not None:
        fleet.pump(h)  # claims from the shared queue
    else:
        tasks.pump(h)
    for task_id, epoch in h.store.commit():  # a write for an attempt no longer current
        log("store_fenced", logging.WARNING, task=task_id, epoch=epoch)
    for envelope, reply in h.after_commit:
        h.spokes.control.reply(envelope, reply)
    h.after_commit.clear()
    lifecycle.show_status(h, t.shown, now)
    t.armed_at = _next_wake(h, t, now)
    h.spokes.wake_at(t.armed_at)
    if t.on_turn is not None:
        t.on_turn()


def _notice_stall(h: Hub, t: Turn, now: float) -> None:
    """Woken long after the hub asked (the process was stopped, the machine paused or
    starved): the children's silence was ours. Their liveness starts over, and attempts
    lost in the next liveness window are re-run at no cost to their tasks."""
    d = h.config.daemon
    if t.armed_at is None or now - t.armed_at < d.heartbeat_s * d.liveness / 2:
        return
    gap = now - t.armed_at
    log("hub_stalled", logging.WARNING, late_s=round(gap, 3))
    h.pool.forgive(now, gap)
    h.forgive_until = now + d.heartbeat_s * (d.liveness + 1)
    t.next_heartbeat = now


def _timers(h: Hub, t: Turn, now: float) -> None:
    for due in h.pool.due(now):
        childcare.apply(h, due)
    childcare.mourn_due(h, now)
    ratelimit.tick(h, now)
    if trees := h.orphans.due(now):
        h.spokes.procs.check_trees([tree.attempt for tree in trees])
    for waiter in h.waiters.due(now):
        tasks.answer(h, waiter)
    if now >= t.next_heartbeat:
        t.next_heartbeat = now + h.config.daemon.heartbeat_s
        childcare.ping(h)
        for spoke in (h.spokes.control, h.spokes.children, h.spokes.events):
            spoke.check_socket()  # a deleted socket file is rebound, not left unreachable
        h.store_problem = h.store.check()
        if h.store_problem:
            log("journal_problem", logging.ERROR, problem=h.store_problem)
    n = h.spokes.notifier
    if n.watchdog_interval_s and now >= t.next_watchdog:
        t.next_watchdog = now + n.watchdog_interval_s
        n.watchdog()
    if h.fleet is not None:
        fleetprune.tick(h, now)  # once per period for the whole fleet
        fleetwatch.tick(h)
    elif h.config.journal.retain_s and now >= t.next_prune:
        t.next_prune = now + h.config.journal.prune_every_s
        h.prune_before = max(h.prune_before or 0.0, h.clock.wall() - h.config.journal.retain_s)
    # a chunk per turn: a big prune never stalls the loop
    if h.prune_before is not None:
        if h.store.prune(h.prune_before, commands.PRUNE_CHUNK) < commands.PRUNE_CHUNK:
            h.prune_before = None
        agents.after_prune(h, force=False)
    lifecycle.drain_step(h, now)
    if h.fleet is not None:
        t.fleet_due = fleet.tick(h, now)


def _next_wake(h: Hub, t: Turn, now: float) -> float:
    candidates = [h.pool.next_deadline(), h.sched.next_due(), t.next_heartbeat, h.orphans.next_deadline(),
                  h.waiters.next_deadline(), h.flows.waiters.next_deadline(),
                  *(p.deadline for p in h.pending_loss.values()), t.fleet_due, t.shown.wake_at()]
    if h.prune_before is not None:
        candidates.append(now + 0.01)
    if h.sched.queued and (b := h.breaker.next_change()) is not None:
        candidates.append(b)
    if (g := h.gate.next_change()) is not None:
        candidates.append(g)
    if h.spokes.notifier.watchdog_interval_s:
        candidates.append(t.next_watchdog)
    if h.life.drain_deadline is not None:
        candidates.append(h.life.drain_deadline)
    # A deadline at or before `now` was handled with this same `now`, or cannot be acted on
    # until an event arrives (a due retry with no idle child): waking for it would only spin.
    return min((c for c in candidates if c is not None and c > now), default=now + h.config.daemon.heartbeat_s)


@dataclass
class Daemon:
    """The real thing: spokes on sockets and pidfds, a SQLite store, an asyncio loop."""

    config: Config
    paths: Paths
    config_path: Path | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    async def run(self, store: Store) -> int:
        loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        ctx = zmq.asyncio.Context()
        ctx.set(zmq.THREAD_SCHED_POLICY, proto.IO_THREAD_SCHED_POLICY)
        limit = self.config.limits.max_message_bytes
        transport = ChildTransport(ctx, self.paths.children, self.inbox, limit)
        keys = curve.server_keys(self.config.security)  # main() already refused bad keys with exit 2
        tcp = (self.config.security.control_endpoint or "", keys) if keys else None
        control = ControlServer(ctx, self.paths.control, self.inbox, limit, tcp)
        bus = EventBus(ctx, self.paths.events)
        procs = ProcessSpoke(self.inbox, transport.drain, str(self.paths.state_dir), self.config.tasks.kill_grace_s)
        timer = _Timer(loop, self.inbox)
        clock = Clock(now=time.monotonic, wall=time.time, wall_ns=time.time_ns, rand=random.random)
        notifier = Notifier.from_env(self.environ)
        tracer = make_tracer(self.config.tracing)
        janitor = Janitor(lambda event: loop.call_soon_threadsafe(self.inbox.put_nowait, event))
        spokes = Spokes(children=transport, control=control, events=bus, procs=procs, notifier=notifier,
                        tracer=tracer, wake_at=timer.wake_at, git=janitor)
        web = None
        self.hub = h = Hub(
            config=self.config, paths=self.paths, clock=clock, ids=Ids(random.getrandbits), store=store,
            spokes=spokes, claude=claude_cli.resolve(self.config.claude.command, self.environ.get("PATH")),
            child_env=taskenv.child_environ(self.environ, frozenset(self.config.security.pass_env)),
            environ=self.environ, config_path=self.config_path,
        )
        t = Turn()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.inbox.put_nowait, SignalReceived(signum))
        if isinstance(store, FleetStore):
            j = store.journal
            h.fleet = fleet.FleetState(journal=j, host=j.host, lease_s=j.lease_s, renewed_at=clock.now())
            h.answer_from_fleet = fleet.answer
            bus.host = j.host
            fleetflows.install(h)
            j.start(lambda event: loop.call_soon_threadsafe(self.inbox.put_nowait, event))
        if h.fleet is not None:
            fleetrestart.recover(h)
        else:
            tasks.recover(h)
        flows.recover(h)
        store.commit()
        transport.start()
        bus.start()
        control.start()
        prom = None
        if self.config.metrics.prometheus_port > 0:
            from supervisord.spokes import prom as prom_mod  # prometheus_client is loaded only when asked for

            self.latest = prom_snapshot(h)
            t.on_turn = lambda: setattr(self, "latest", prom_snapshot(h))
            prom = prom_mod.start(self.config.metrics, lambda: self.latest)
        if self.config.web.port > 0:
            from supervisord.hub import web as web_mod  # aiohttp is loaded only when asked for

            web = await web_mod.start(self.config.web, ctx, self.paths.events, self.inbox, self.paths.state_dir,
                                      clock.wall)
            if web is not None:
                spokes.control = web_mod.Replies(control, web)  # the dashboard's answers go back to it
        log("daemon_started", pid=os.getpid(), state_dir=self.paths.state_dir, children=self.config.daemon.children,
            claude=" ".join(h.claude.argv), claude_source=h.claude.source)
        h.pool.resize(self.config.daemon.children, clock.now())
        clean = False
        try:
            turn(h, t)
            while h.life.phase.value != "stopped":
                handle(h, await self.inbox.get())
                for _ in range(4095):  # drain what is already here: one commit for the lot
                    if self.inbox.empty():
                        break
                    handle(h, self.inbox.get_nowait())
                turn(h, t)
                flush()
            clean = True
        finally:
            timer.cancel()
            if web is not None:
                await web.close()
            procs.close(abnormal=not clean)
            transport.close()
            control.close()
            bus.close()
            if prom is not None:
                prom.stop()
            tracer.shutdown()
            janitor.close()
            ctx.term()
            store.close()
            notifier.close()
        log("daemon_stopped", pid=os.getpid())
        flush()
        return 0


def prom_snapshot(h: Hub) -> dict[str, Any]:
    """What Prometheus reads from its own thread: plain copies, built on the loop."""
    m, counts = h.metrics, h.pool.counts()
    return {
        "received": dict(m.received), "finished": dict(m.finished), "errors": dict(m.errors),
        "input_tokens": m.input_tokens, "output_tokens": m.output_tokens, "cost_usd": m.cost_usd,
        "retries": m.retries, "child_restarts": m.child_restarts, "child_fatal": m.child_fatal,
        "journal_write_errors": h.store.write_errors, "dropped_child_frames": h.spokes.children.dropped,
        "bad_requests": h.spokes.control.bad_requests,
        "duration_counts": list(m.duration.counts), "duration_sum_s": m.duration.sum_s,
        "queued": h.sched.queued, "running": len(h.sched.running()),
        "ready": counts["idle"] + counts["busy"], "pool_size": h.pool.size, "breaker": h.breaker.state.value,
        "spares_ready": h.pool.spare_counts()["ready"],
        "gate": h.gate.state.value,
        "fleet": fleet.status(h) if h.fleet is not None else None,
    }


class _Timer:
    """The one armed wake-up of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Event]) -> None:
        self.loop, self.inbox = loop, inbox
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def wake_at(self, at: float) -> None:
        if self._at is not None and abs(self._at - at) < 0.0005:
            return
        if self._handle:
            self._handle.cancel()
        self._at = at
        self._handle = self.loop.call_at(self.loop.time() + (at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._at = None
        self.inbox.put_nowait(TimerFired())

    def cancel(self) -> None:
        if self._handle:
            self._handle.cancel()
