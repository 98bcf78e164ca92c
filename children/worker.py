"""The child's event loop: one DEALER socket, one task at a time, no threads, no asyncio.

Owns the conversation with the daemon (Hello, Heartbeat, Dispatch/Cancel/Stop ->
Started/Progress/Result), daemon liveness, signals (as a wakeup fd) and the decision
to exit.

Two rules about the daemon:
- It is gone when its process is gone (its pidfd, taken at boot, polls readable; or we
  were re-parented), not when it is silent: a daemon stopped (SIGSTOP, a VM pause, a
  debugger) or merely slow must find its children and their tasks still there when it
  comes back. Silence beyond liveness is logged, nothing more.
- A message that is not Progress or Heartbeat is never dropped: when the socket is full
  (a stream-json flood, a paused daemon) it waits in a backlog, in order, and goes when
  the socket drains; Progress is dropped meanwhile. The exit waits for the backlog up
  to its linger. A single `zmq_poll` watches the socket, the wakeup fd and whatever the
running task asks for; its timeout is the time to the next deadline (heartbeat,
liveness, the task's timers). Process work is delegated to `children.running`.

SIGCHLD is caught only while a task may leave orphans to reap (it has run 50 ms, or its
main process is gone and the rest of its tree is not): a short task's own exit comes
through its pidfd, with no signal, wake-up byte or interrupted poll. The default
disposition is not SIG_IGN, so nothing is reaped behind our back meanwhile.
Imports the stdlib, zmq, msgspec, setproctitle (late), `proto`, `children.running`/`children.log`
and `supervisord.spokes.procs`; must not import asyncio or any daemon spoke.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import zmq

import proto
from children.log import log
from children.running import POLLIN, POLLOUT, RunningTask, fit, launch
from proto.children import (
    BOOT_FAILURE_EXIT,
    Cancel,
    ChildMessage,
    DaemonMessage,
    Dispatch,
    Heartbeat,
    Hello,
    Progress,
    Result,
    Stop,
)
from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.spokes import cgroups, procs

__all__ = ["DAEMON_LOST_EXIT", "Worker", "WorkerConfig"]

#: Exit code when the daemon died: the child killed its task and left.
DAEMON_LOST_EXIT = 4
#: The cap on the kill grace when leaving on SIGTERM or daemon loss (a Stop uses the
#: task's own kill_grace_s: the daemon asked and is waiting).
EXIT_GRACE_S = 1.0
#: The child's own heartbeat is a fallback for when the daemon's pings (every heartbeat_s,
#: answered at once) are late; it fires after this many intervals of our silence.
OWN_BEAT_FACTOR = 1.5
#: How long a final Result may wait in the socket when we exit (LINGER is 0 otherwise).
EXIT_LINGER_MS = 1000


class WorkerConfig(NamedTuple):
    identity: str
    daemon_pid: int
    heartbeat_s: float
    liveness: int
    cgroup_base: str = ""  #: the daemon's cgroup subtree for attempts ("": fallback)


_EVENTS, _NOBLOCK = int(zmq.EVENTS), int(zmq.NOBLOCK)
#: setproctitle.setproctitle, once imported (after Hello)
_setproctitle: Callable[[str], None] | None = None

#: Messages that may be dropped under back-pressure; any other is kept until sent.
DROPPABLE = (Progress, Heartbeat)


class Worker:
    """The loop. `run()` returns the process exit code. `daemon_pidfd` (a pidfd of the
    daemon, taken at boot) polls readable when the daemon process is gone."""

    def __init__(self, sock: zmq.Socket[bytes], config: WorkerConfig, daemon_pidfd: int | None = None) -> None:
        self.sock, self.config = sock, config
        self.daemon_pidfd = daemon_pidfd
        self.backlog: deque[bytes] = deque()
        self.dropped = 0  # Progress/Heartbeats dropped since the socket last drained
        self.silent_logged = False
        self.cgroup: cgroups.WorkerGroup | None = None  # the group we live in, once opened
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(DaemonMessage).decode
        self.task: RunningTask | None = None
        self.exiting: int | None = None  # exit code once leaving was decided
        self.exit_code: int | None = None  # set when the loop may end
        self.signals: list[int] = []
        self.sigchld = False  # SIGCHLD caught (see the module docstring)
        #: processes of a task we gave up on (unkillable) may still die and need reaping
        self.stragglers = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_fd = self.wake_r.fileno()
        self.titled: str | None = None  # the task our process title names (None: idle)
        now = time.monotonic()
        self.last_sent = now
        self.daemon_seen = now

    # ---- plumbing --------------------------------------------------------------------

    def install_signals(self) -> None:
        """Handlers only record; the wakeup fd makes the poll return."""
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._record_signal)

    def _catch_sigchld(self, on: bool, now: float) -> None:
        """Catch SIGCHLD from now on (and look at once for what died before), or no more."""
        signal.signal(signal.SIGCHLD, self._record_signal if on else signal.SIG_DFL)
        self.sigchld = on
        if on:
            self._on_sigchld(now)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def send(self, msg: ChildMessage) -> None:
        self.last_sent = time.monotonic()
        droppable = isinstance(msg, DROPPABLE)
        if self.backlog:
            if droppable:
                self.dropped += 1
            else:
                self.backlog.append(self.encode(msg))  # behind what waits already: order kept
            return
        data = self.encode(msg)
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            # High-water mark: the daemon is not reading (paused, or a flood).
            if droppable:
                self.dropped += 1
                return
            self.backlog.append(data)
            log("send_backlogged", msg=type(msg).__name__)

    def _flush(self) -> None:
        """Send what waits in the backlog, as far as the socket takes it."""
        while self.backlog:
            try:
                self.sock.send(self.backlog[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self.backlog.popleft()
        if self.dropped:
            log("progress_dropped", count=self.dropped)
            self.dropped = 0

    def _title(self, task_id: str | None) -> None:
        """Show `task_id` (None: idle) in our process title. A task is shown once it is
        announced (runs 50 ms), like `Started`: a short one changes no title."""
        global _setproctitle
        if _setproctitle is None:
            # Imported here, first used after Hello: setproctitle imports `logging` (~20 ms),
            # and the time to Hello is how long a crashed child's slot stays empty.
            from setproctitle import setproctitle as _setproctitle
        self.titled = task_id
        _setproctitle(f"supd-child {self.config.identity} {f'busy {task_id}' if task_id else 'idle'}")

    def _poll_items(self) -> list[tuple[zmq.Socket[bytes] | int, int]]:
        """What the poll watches now: the socket (for room too while a backlog waits), the
        wake-up fd, the daemon's pidfd and the running task's fds. A fresh list per turn
        handed to `zmq_poll` as it is: cheaper than a Poller's register/unregister per fd
        as a task comes and goes."""
        items: list[tuple[zmq.Socket[bytes] | int, int]] = [
            (self.sock, (POLLIN | POLLOUT) if self.backlog else POLLIN), (self.wake_fd, POLLIN)]
        if self.daemon_pidfd is not None:
            items.append((self.daemon_pidfd, POLLIN))
        if self.task is not None:
            items += self.task.watch().items()
        return items

    def _timeout_ms(self, now: float) -> int:
        cfg = self.config
        deadlines = [self.last_sent + cfg.heartbeat_s * OWN_BEAT_FACTOR]
        if self.exiting is None and not self.silent_logged:  # once leaving or logged, moot (no busy loop)
            deadlines.append(self.daemon_seen + cfg.heartbeat_s * cfg.liveness)
        if self.task is not None and (task_at := self.task.next_deadline()) is not None:
            deadlines.append(task_at)
        return max(0, math.ceil((min(deadlines) - now) * 1000))

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        self.send(Hello(protocol=proto.PROTOCOL_VERSION, slot=self.config.identity, pid=os.getpid()))
        log("child_ready", daemon_pid=self.config.daemon_pid)
        self._title(None)
        try:
            procs.finish_imports()  # after Hello: the slot is ready sooner; a broken install still fails at boot
        except ImportError as exc:
            log("boot_failed", error=f"{type(exc).__name__}: {exc}", code=BOOT_FAILURE_EXIT)
            return BOOT_FAILURE_EXIT
        self._open_group()
        while self.exit_code is None:
            ready = dict(zmq.zmq_poll(self._poll_items(), self._timeout_ms(time.monotonic())))
            now = time.monotonic()
            if self.wake_fd in ready:
                self._drain_wakeup()
            if self.daemon_pidfd is not None and self.daemon_pidfd in ready:
                os.close(self.daemon_pidfd)  # stays readable: watch it no more
                self.daemon_pidfd = None
                self._leave(DAEMON_LOST_EXIT, "daemon exited", EXIT_GRACE_S, now)
            if self.backlog:
                self._flush()
            if self.sock in ready:
                self._receive(now)
            if self.task is not None:
                for fd in self.task.watch().keys() & ready.keys():
                    self.task.on_ready(fd, now)
                self.task.on_time(now)
                if self.task.announced and self.titled is None:
                    self._title(self.task.task_id)
            # after the task's fds: the SIGCHLD of a main process whose pidfd was ready too
            # then finds it reaped, and does not look for orphans again
            self._on_signals(now)
            self._finish_task()
            wanted = self.task.wants_sigchld if self.task is not None else self.stragglers
            if wanted != self.sigchld:
                self._catch_sigchld(wanted, now)
            self._on_time(now)
        return self.exit_code

    def _open_group(self) -> None:
        """Move into a cgroup of our own, where every attempt is born (the daemon's subtree
        given): a Dispatch waits behind this, so it comes before the first one."""
        base = self.config.cgroup_base
        home = cgroups.home_dir() if base else None
        if not base or home is None:
            return
        group = cgroups.WorkerGroup(base, self.config.identity, home)
        try:
            group.open()
        except OSError as exc:  # every attempt falls back to the subreaper and the tag
            log("cgroup_failed", base=base, error=exc.strerror or str(exc))
            return
        self.cgroup = group

    def _drain_wakeup(self) -> None:
        # One read: a byte per signal, so 4096 is all there is (what is left, if ever, polls
        # readable again); reading until EAGAIN would raise once per signal.
        try:
            self.wake_r.recv(4096)
        except BlockingIOError:
            pass

    def _on_signals(self, now: float) -> None:
        signals, self.signals = self.signals, []
        if signals:  # their wake-up bytes are in already (the C handler writes first): no second turn
            self._drain_wakeup()
        for signum in signals:
            if signum == signal.SIGCHLD:
                self._on_sigchld(now)
            else:
                self._leave(0, f"signal {signal.Signals(signum).name}", EXIT_GRACE_S, now)

    def _on_sigchld(self, now: float) -> None:
        if self.task is not None:
            self.task.on_sigchld(now)
            return
        left = [pid for pid in procs.children_pids(os.getpid()) if procs.reap(pid) is None]
        self.stragglers = bool(left)  # from a task we gave up on: caught until they are reaped

    def _on_time(self, now: float) -> None:
        cfg = self.config
        silent_s = now - self.daemon_seen
        # re-parented: the daemon is gone (looked at only without its pidfd, which tells at once)
        if self.exiting is None and self.daemon_pidfd is None and os.getppid() != cfg.daemon_pid:
            self._leave(DAEMON_LOST_EXIT, f"daemon lost (parent {os.getppid()})", EXIT_GRACE_S, now)
        elif self.exiting is None and not self.silent_logged and silent_s > cfg.heartbeat_s * cfg.liveness:
            # Alive (its pidfd has not fired) but silent: stopped or slow. Stay.
            self.silent_logged = True
            log("daemon_silent", silent_s=round(silent_s, 1), daemon_pid=cfg.daemon_pid,
                task=self.task.task_id if self.task else None)
        if now >= self.last_sent + cfg.heartbeat_s * OWN_BEAT_FACTOR and self.exit_code is None:
            self._beat()

    def _beat(self) -> None:
        task_id = self.task.task_id if self.task else None
        epoch = self.task.epoch if self.task else 0
        self.send(Heartbeat(task_id=task_id, epoch=epoch, rss_bytes=procs.rss_bytes(os.getpid())))

    def _apply_settings(self, msg: Heartbeat) -> None:
        """A reload's new heartbeat settings, carried by the daemon's ping."""
        hb = msg.heartbeat_s if msg.heartbeat_s is not None and msg.heartbeat_s > 0 else self.config.heartbeat_s
        live = msg.liveness if msg.liveness is not None and msg.liveness >= 1 else self.config.liveness
        if (hb, live) != (self.config.heartbeat_s, self.config.liveness):
            self.config = self.config._replace(heartbeat_s=hb, liveness=live)
            log("heartbeat_settings", heartbeat_s=hb, liveness=live)

    # ---- messages --------------------------------------------------------------------

    def _receive(self, now: float) -> None:
        # While the socket says a message waits (zmq_poll is level-triggered for it): no
        # zmq.Again raised per wake-up.
        while self.sock.getsockopt(_EVENTS) & POLLIN:
            try:
                frames = self.sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            self.daemon_seen = now  # any message counts as a heartbeat
            if self.silent_logged:
                self.silent_logged = False
                log("daemon_back")
            try:
                msg = self.decode(frames[-1])
            except proto.DECODE_ERRORS as exc:
                log("bad_frame", frames=len(frames), size=len(frames[-1]), error=str(exc)[:120])
                continue
            self._handle(msg, now)

    def _handle(self, msg: Dispatch | Cancel | Heartbeat | Stop, now: float) -> None:
        match msg:
            case Dispatch():
                self._on_dispatch(msg, now)
            case Cancel():
                self._on_cancel(msg, now)
            case Stop():
                self._leave(0, f"stop: {msg.reason}", None, now)
            case Heartbeat():
                self._apply_settings(msg)
                # Answer the daemon's ping at once: all children's beats then reach the hub
                # together (one wake-up, not one per child), and our own timer stays a fallback.
                if now >= self.last_sent + self.config.heartbeat_s / 2 and self.exit_code is None:
                    self._beat()

    def _on_dispatch(self, msg: Dispatch, now: float) -> None:
        if self.task is not None or self.exiting is not None:
            busy_with = self.task.task_id if self.task else "exiting"
            log("dispatch_refused", task=msg.task_id, busy_with=busy_with)
            error = TaskError(kind=ErrorKind.WORKER_BUSY, message=f"child {self.config.identity} is busy ({busy_with})")
            stamp = time.time()
            self.send(Result(task_id=msg.task_id, attempt=msg.attempt, epoch=msg.epoch, state=TaskState.FAILED.value,
                             outcome=Outcome(error=error), started_at=stamp, finished_at=stamp))
            return
        started = launch(msg, self.send, now, self.cgroup)
        if isinstance(started, Result):
            self.send(started)
            return
        self.task = started

    def _on_cancel(self, msg: Cancel, now: float) -> None:
        if self.task is None or self.task.task_id != msg.task_id:
            return  # not ours (any more): the daemon's view is a message behind
        kind = ErrorKind.SHUTDOWN if msg.reason == "shutdown" else ErrorKind.CANCELLED
        log("task_cancel", task=msg.task_id, reason=msg.reason)
        self.task.stop(TaskState.CANCELLED, TaskError(kind=kind, message=f"cancelled: {msg.reason}"), now)

    # ---- ending ----------------------------------------------------------------------

    def _leave(self, code: int, why: str, grace_s: float | None, now: float) -> None:
        """Decide to exit: stop the task (its Result goes first), then end the loop."""
        if self.exiting is None:
            self.exiting = code
            log("child_leaving", why=why, code=code, task=self.task.task_id if self.task else None)
        if self.task is not None:
            error = TaskError(kind=ErrorKind.SHUTDOWN, message=f"child stopping: {why}")
            self.task.stop(TaskState.CANCELLED, error, now, grace_s)
        else:
            self.exit_code = self.exiting

    def _finish_task(self) -> None:
        if self.task is None or not self.task.finished:
            return
        task, self.task = self.task, None
        result = fit(task.result(), task.limits.max_result_bytes)
        task.close()
        self.stragglers = task.gave_up
        self.send(result)
        if self.titled is not None:
            self._title(None)
        if self.exiting is not None:
            self.exit_code = self.exiting

    def close(self) -> None:
        """Give a last Result (and anything backlogged) a moment to leave, unless the
        daemon is gone."""
        linger = 0 if self.exit_code == DAEMON_LOST_EXIT else EXIT_LINGER_MS
        deadline = time.monotonic() + linger / 1000
        while self.backlog and (left_ms := math.ceil((deadline - time.monotonic()) * 1000)) > 0:
            if self.sock.poll(left_ms, zmq.POLLOUT):
                self._flush()
        if self.backlog:
            log("send_unsent", messages=len(self.backlog))
        signal.set_wakeup_fd(-1)
        self.sock.close(linger=max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        if self.daemon_pidfd is not None:
            os.close(self.daemon_pidfd)
            self.daemon_pidfd = None
        self.wake_r.close()
        self.wake_w.close()
        log("child_exit", code=self.exit_code)
