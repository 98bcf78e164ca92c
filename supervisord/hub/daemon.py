"""The hub: one owner of state, one inbox, one loop.

`Daemon.run()` consumes the inbox. Spokes (children transport, control socket, pidfd
watchers, signal handlers, the timer) only `put_nowait` frozen events; the hub decides
with the pure core (`pool`, `scheduler`) and acts through the spokes. A submitted batch
is committed to the journal before its `Accepted`; the state updates of a batch of
events share one commit at its end (group commit), and replies go out after it. Beside it, as functions of the hub's state: the control
verbs (`commands`), the child verbs (`childcare`) and the daemon's own life (`lifecycle`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from proto import children as cp
from proto import control as ctl
from proto.task import ErrorKind, Outcome, TaskState
from supervisord import logs
from supervisord.config import Config
from supervisord.core import taskenv, traceids
from supervisord.core.breaker import Breaker
from supervisord.core.metrics import Metrics
from supervisord.core.pool import ChildState, Due, Pool, Slot
from supervisord.core.scheduler import Scheduler
from supervisord.core.task import Task
from supervisord.events import ChildExited, ChildSaid, Event, RequestReceived, SignalReceived, TimerFired
from supervisord.hub import childcare, commands, lifecycle
from supervisord.hub.childcare import Orphans, policy_of
from supervisord.hub.commands import Waiter
from supervisord.hub.lifecycle import Phase
from supervisord.logs import log
from supervisord.spokes import claude_cli, curve, procs
from supervisord.spokes.control import ControlServer
from supervisord.spokes.eventbus import EventBus
from supervisord.spokes.systemd import Notifier
from supervisord.spokes.tracing import make_tracer
from supervisord.spokes.transport import ChildTransport
from supervisord.store.journal import Journal, view


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path
    runtime_dir: Path

    @property
    def control(self) -> str:
        return f"ipc://{self.runtime_dir / 'control.sock'}"

    @property
    def children(self) -> str:
        return f"ipc://{self.runtime_dir / 'children.sock'}"

    @property
    def events(self) -> str:
        return f"ipc://{self.runtime_dir / 'events.sock'}"

    @property
    def journal(self) -> Path:
        return self.state_dir / "tasks.db"


@dataclass
class Daemon:
    config: Config
    paths: Paths
    config_path: Path | None = None
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    rand: Callable[[], float] = random.random
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        self.phase = Phase.STARTING
        self.pool = Pool(policy_of(self.config))
        self.sched = Scheduler(max_queued=self.config.daemon.max_queued)
        self.breaker = Breaker(self.config.breaker.threshold, self.config.breaker.open_s)
        self.metrics = Metrics()
        self.notifier = Notifier.from_env(self.environ)
        self.tracer = make_tracer(self.config.tracing)
        self.claude = claude_cli.resolve(self.config.claude.command, self.environ.get("PATH"))
        self.child_env = taskenv.child_environ(self.environ, frozenset(self.config.security.pass_env))
        self.waiters: list[Waiter] = []
        self.orphans: list[Orphans] = []
        self.task_pgid: dict[str, int] = {}
        self.task_pid: dict[str, int] = {}
        self.after_commit: list[tuple[tuple[bytes, ...], ctl.Reply]] = []
        self.started_mono = self.clock()
        self.drain_deadline: float | None = None
        self.next_heartbeat = 0.0
        self.next_watchdog = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._title = ""
        self._status_sent = ""

    # ---- run ----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        j = self.config.journal
        self.journal = Journal(self.paths.journal, j.synchronous.upper(), int(j.max_mb * 2**20))
        self.ctx = zmq.asyncio.Context()
        limit = self.config.limits.max_message_bytes
        self.transport = ChildTransport(self.ctx, self.paths.children, self.inbox, limit)
        keys = curve.server_keys(self.config.security)  # main() already refused bad keys with exit 2
        tcp = (self.config.security.control_endpoint or "", keys) if keys else None
        self.control = ControlServer(self.ctx, self.paths.control, self.inbox, limit, tcp)
        self.events = EventBus(self.ctx, self.paths.events)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.inbox.put_nowait, SignalReceived(signum))
        self._recover()
        self.transport.start()
        self.events.start()
        self.control.start()
        self.prom = None
        if self.config.metrics.prometheus_port > 0:
            from supervisord.spokes import prom  # prometheus_client is loaded only when asked for

            self.prom = prom.start(self)
        log("daemon_started", pid=os.getpid(), state_dir=self.paths.state_dir, children=self.config.daemon.children,
            claude=" ".join(self.claude.argv), claude_source=self.claude.source)
        self.pool.resize(self.config.daemon.children, self.clock())
        try:
            await self._loop()
        finally:
            self._close()
        log("daemon_stopped", pid=os.getpid())
        logs.flush()
        return 0

    async def _loop(self) -> None:
        self._after_events()
        while self.phase is not Phase.STOPPED:
            event = await self.inbox.get()
            self._handle(event)
            for _ in range(4095):  # drain what is already here: one commit for the lot
                if self.inbox.empty():
                    break
                self._handle(self.inbox.get_nowait())
            self._after_events()

    def _after_events(self) -> None:
        now = self.clock()
        self._on_timers(now)
        self.pump(now)
        self.journal.commit()
        for envelope, reply in self.after_commit:
            self.control.reply(envelope, reply)
        self.after_commit.clear()
        self._arm_timer(now)
        lifecycle.show_status(self, )
        logs.flush()

    def _handle(self, event: Event) -> None:
        match event:
            case ChildSaid(identity, message):
                childcare.on_message(self, identity, message)
            case ChildExited(identity, pid, returncode):
                childcare.on_exit(self, identity, pid, returncode)
            case RequestReceived(envelope, request):
                commands.handle(self, envelope, request)
            case SignalReceived(signum):
                lifecycle.on_signal(self, signum)
            case TimerFired():
                self._timer_at = None

    def _close(self) -> None:
        for slot in self.pool.alive():  # only on an abnormal exit; a drain leaves none
            if slot.pid:
                procs.signal_pid(slot.pid, signal.SIGKILL)
        self.transport.close()
        self.control.close()
        self.events.close()
        if self.prom is not None:
            self.prom.stop()
        self.tracer.shutdown()
        self.ctx.term()
        self.journal.close()
        self.notifier.close()

    # ---- recovery -------------------------------------------------------------------

    def _recover(self) -> None:
        """Re-queue what a previous daemon accepted and did not finish."""
        now = self.clock()
        tasks = self.journal.unfinished()
        leftovers_by_task = procs.tagged_by_task() if any(t.state is TaskState.RUNNING for t in tasks) else {}
        for task in tasks:
            if task.state is TaskState.RUNNING:
                task.move(TaskState.QUEUED)  # RUNNING -> QUEUED (daemon restarted)
                task.child = None
                self.journal.saved(task)
                # If its child died with the old daemon (kill -9 of both), the tree lives on
                # under init: end it before the task runs again (SIGKILL after the grace).
                leftovers = [p.pid for p in leftovers_by_task.get(task.id, [])]
                if leftovers:
                    procs.terminate_task(None, leftovers)
                    self.orphans.append(Orphans(task.id, None, now + self.config.tasks.kill_grace_s))
                log("task_recovered", task=task.id, attempts=task.attempts, trace=task.trace_id,
                    leftovers=len(leftovers) or None)
            self.sched.add(task, now)
        self.journal.commit()
        if tasks:
            log("journal_recovered", tasks=len(tasks))

    # ---- children -------------------------------------------------------------------

    def finish(self, task: Task, state: TaskState, outcome: Outcome, now: float,
                started_at: float | None = None, finished_at: float | None = None) -> None:
        """One attempt ended: breaker, retry or final state, journal, waiters, metrics."""
        error_kind = outcome.error.kind if outcome.error else None
        if task.spec.kind == "claude":
            changed = self.breaker.record(None if state is TaskState.SUCCEEDED else error_kind, now)
            if changed:
                self.breaker_changed(changed.value)
        if started_at:
            task.started_at = started_at
        pid = self.task_pid.pop(task.id, None)
        self.tracer.attempt_finished(task, state.value, outcome, time.time_ns(), pid)
        if error_kind == ErrorKind.SHUTDOWN and self.winding_down:
            task.outcome = outcome
            self.sched.requeue(task, now)  # RUNNING -> QUEUED: runs again on the next start
            self.journal.saved(task)
            log("task_requeued", task=task.id, reason="shutdown", attempts=task.attempts)
            return
        t = self.config.tasks
        retried = self.sched.finish(task, state, outcome, now, finished_at or self.wall(),
                                    retry=(t.retry_base_s, t.retry_max_s, self.rand()))
        self.journal.saved(task)
        if retried:
            self.metrics.retries += 1
            log("task_retry", task=task.id, attempts=task.attempts, error=error_kind,
                delay_s=round(max(0.0, task.not_before - now), 3), trace=task.trace_id)
            self.events.publish(f"task/{task.id}/retry", task=task.id, attempts=task.attempts, error=error_kind)
            return
        duration = (task.finished_at - task.started_at) if task.finished_at and task.started_at else None
        usage = outcome.usage
        self.metrics.finish(task.spec.kind, task.state.value, error_kind, duration,
                            usage.input_tokens if usage else 0, usage.output_tokens if usage else 0,
                            outcome.cost_usd or 0.0)
        log("task_finished", task=task.id, state=task.state.value, error=error_kind,
            exit_code=outcome.exit_code, attempts=task.attempts, child=task.child, trace=task.trace_id)
        self.task_done(task)

    def task_done(self, task: Task) -> None:
        """A task reached its final state: trace, publish, answer the waiters waiting for it."""
        self.tracer.task_final(task, time.time_ns())
        error = task.error
        self.events.publish(f"task/{task.id}/finished", task=task.id, state=task.state.value,
                            error=error.kind if error else None, attempts=task.attempts)
        for waiter in list(self.waiters):
            if task.id in waiter.pending:
                waiter.pending.discard(task.id)
                if not waiter.pending:
                    self.answer_waiter(waiter)

    def answer_waiter(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)
        done = [v for tid in waiter.ids if tid not in waiter.pending and (v := self.task_view(tid))]
        # Final tasks past the reply's byte budget come back as pending: the client asks again
        # and gets them at once (they are final), a reply at a time.
        views, later = commands.within_budget(done, commands.reply_budget(self))
        self.after_commit.append((waiter.envelope, ctl.Tasks(tasks=views, pending=sorted(waiter.pending) + later)))

    def task_view(self, task_id: str) -> ctl.TaskView | None:
        live = self.sched.tasks.get(task_id)
        return view(live) if live else self.journal.get(task_id)

    # ---- dispatch -------------------------------------------------------------------

    def pump(self, now: float) -> None:
        """The ready-pump: give each idle child the next runnable task."""
        if self.phase is not Phase.RUNNING and self.phase is not Phase.STARTING:
            return
        for slot in self.pool.idle():
            task = self.sched.take(now, self.breaker.allows(now))
            if task is None:
                return
            self._dispatch(slot, task, now)

    def _dispatch(self, slot: Slot, task: Task, now: float) -> None:
        spec, t = task.spec, self.config.tasks
        task.span_id = traceids.span_id(random.getrandbits(64))
        self.sched.start(task, slot.identity, self.wall())
        if spec.kind == "claude" and (changed := self.breaker.started(now)):
            self.breaker_changed(changed.value, probe=task.id)
        if spec.kind == "claude" and spec.model is None and self.config.claude.model:
            spec = msgspec.structs.replace(spec, model=self.config.claude.model)
        timeout_s = spec.timeout_s or t.timeout_s
        limits = cp.Limits(
            timeout_s=timeout_s, stall_timeout_s=spec.stall_timeout_s or t.stall_timeout_s,
            result_grace_s=t.result_grace_s, kill_grace_s=t.kill_grace_s, output_cap_bytes=t.output_cap_bytes,
        )
        backstop = timeout_s + t.result_grace_s + 2 * t.kill_grace_s + self.config.daemon.heartbeat_s * (
            self.config.daemon.liveness + 1)
        self.pool.assign(slot, task.id, now + backstop)
        span = traceids.SpanRef(task.trace_id or "", task.span_id)
        env = taskenv.task_env(span, task.tracestate, spec.kind, self.config.claude.env, self.config.claude.max_retries)
        if spec.kind == "claude":
            env.update(self.tracer.claude_env())
        self.tracer.attempt_started(task, slot.identity, time.time_ns())
        self.journal.saved(task)
        self.transport.send(slot.identity, cp.Dispatch(
            task_id=task.id, attempt=task.attempts, spec=spec, limits=limits, env=env,
            claude_command=self.claude.argv if spec.kind == "claude" else [],
        ))
        log("task_started", task=task.id, child=slot.identity, attempt=task.attempts, trace=task.trace_id,
            span=task.span_id)
        self.events.publish(f"task/{task.id}/started", task=task.id, child=slot.identity, attempt=task.attempts,
                            trace_id=task.trace_id, span_id=task.span_id)

    def breaker_changed(self, state: str, **fields: object) -> None:
        log("breaker", state=state, failures=self.breaker.failures, **fields)
        self.events.publish(f"breaker/{state}", state=state, failures=self.breaker.failures)

    # ---- timers ---------------------------------------------------------------------

    def _on_timers(self, now: float) -> None:
        for due in self.pool.due(now):
            self._apply(due, now)
        for orphan in [o for o in self.orphans if o.deadline <= now]:
            self.orphans.remove(orphan)
            procs.kill_task(orphan.pgid, childcare.orphaned(self, orphan.task_id))
        for waiter in [w for w in self.waiters if w.deadline <= now]:
            self.answer_waiter(waiter)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.config.daemon.heartbeat_s
            for spoke in (self.control, self.transport, self.events):
                spoke.check_socket()  # a deleted socket file is rebound, not left unreachable
            for slot in self.pool.slots:
                if slot.state in (ChildState.IDLE, ChildState.BUSY):
                    self.transport.send(slot.identity, cp.Heartbeat())
        if self.notifier.watchdog_interval_s and now >= self.next_watchdog:
            self.next_watchdog = now + self.notifier.watchdog_interval_s
            self.notifier.watchdog()
        lifecycle.drain_step(self, now)

    def _apply(self, due: Due, now: float) -> None:
        if due.action == "spawn":
            if self.phase in (Phase.STARTING, Phase.RUNNING):
                childcare.spawn(self, due.slot, now)
        elif due.action == "kill":
            childcare.kill(self, due.slot, now, due.reason)
        else:
            childcare.stop(self, due.slot, now, due.reason)

    def _arm_timer(self, now: float) -> None:
        candidates = [self.pool.next_deadline(), self.sched.next_due(), self.next_heartbeat,
                      *(o.deadline for o in self.orphans), *(w.deadline for w in self.waiters)]
        if self.sched.queued and (b := self.breaker.next_change()) is not None:
            candidates.append(b)
        if self.notifier.watchdog_interval_s:
            candidates.append(self.next_watchdog)
        if self.drain_deadline is not None:
            candidates.append(self.drain_deadline)
        # A deadline at or before `now` was handled by `_on_timers` with this same `now`, or
        # cannot be acted on until an event arrives (a due retry with no idle child, a breaker
        # ready for a probe with no child free): waking for it again would only spin.
        at = min((c for c in candidates if c is not None and c > now), default=now + self.config.daemon.heartbeat_s)
        if self._timer_at is not None and abs(self._timer_at - at) < 0.0005:
            return
        if self._timer:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_at(loop.time() + (at - now), self.inbox.put_nowait, TimerFired())

    # ---- signals, drain and stop ----------------------------------------------------

    @property
    def winding_down(self) -> bool:
        """Draining or stopping: a task stopped now is re-queued for the next start, not failed."""
        return self.phase in (Phase.DRAINING, Phase.STOPPING)
