"""The child's event loop: one DEALER socket, one task at a time, no threads, no asyncio.

Owns the conversation with the daemon (Hello, Heartbeat, Dispatch/Cancel/Stop ->
Started/Progress/Result), daemon liveness, signals (as a wakeup fd) and the decision
to exit. A single `zmq.Poller` watches the socket, the wakeup fd and whatever the
running task asks for; its timeout is the time to the next deadline (heartbeat,
liveness, the task's timers). Process work is delegated to `children.running`.
Imports the stdlib, zmq, msgspec, setproctitle (late), `proto`, `children.running`/`children.log`
and `supervisord.spokes.procs`; must not import asyncio or any daemon spoke.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from dataclasses import dataclass

import msgspec
import zmq

import proto
from children.log import log
from children.running import RunningTask, launch
from proto.children import Cancel, ChildMessage, DaemonMessage, Dispatch, Heartbeat, Hello, Result, Stop
from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.spokes import procs

__all__ = ["DAEMON_LOST_EXIT", "Worker", "WorkerConfig"]

#: Exit code when the daemon went silent or died: the child killed its task and left.
DAEMON_LOST_EXIT = 4
#: The cap on the kill grace when leaving on SIGTERM or daemon loss (a Stop uses the
#: task's own kill_grace_s: the daemon asked and is waiting).
EXIT_GRACE_S = 1.0
#: The child's own heartbeat is a fallback for when the daemon's pings (every heartbeat_s,
#: answered at once) are late; it fires after this many intervals of our silence.
OWN_BEAT_FACTOR = 1.5
#: How long a final Result may wait in the socket when we exit (LINGER is 0 otherwise).
EXIT_LINGER_MS = 1000


@dataclass(frozen=True)
class WorkerConfig:
    identity: str
    daemon_pid: int
    heartbeat_s: float
    liveness: int


class Worker:
    """The loop. `run()` returns the process exit code."""

    def __init__(self, sock: zmq.Socket[bytes], config: WorkerConfig) -> None:
        self.sock, self.config = sock, config
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(DaemonMessage).decode
        self.task: RunningTask | None = None
        self.exiting: int | None = None  # exit code once leaving was decided
        self.exit_code: int | None = None  # set when the loop may end
        self.signals: list[int] = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.poller = zmq.Poller()
        self.polled: dict[int, int] = {}
        now = time.monotonic()
        self.last_sent = now
        self.daemon_seen = now

    # ---- plumbing --------------------------------------------------------------------

    def install_signals(self) -> None:
        """Handlers only record; the wakeup fd makes the poll return."""
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def send(self, msg: ChildMessage) -> None:
        self.last_sent = time.monotonic()
        try:
            self.sock.send(self.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            # High-water mark: the daemon is not reading. Liveness will decide its fate.
            log("send_dropped", msg=type(msg).__name__)

    def _title(self) -> None:
        # Imported here, first used after Hello: setproctitle imports `logging` (~20 ms), and
        # the time to Hello is how long a crashed child's slot stays empty.
        from setproctitle import setproctitle

        state = f"busy {self.task.task_id}" if self.task else "idle"
        setproctitle(f"supd-child {self.config.identity} {state}")

    def _sync_poller(self) -> None:
        wanted: dict[int, int] = {self.wake_r.fileno(): int(zmq.POLLIN)}
        if self.task is not None:
            wanted.update(self.task.watch())
        for fd in self.polled.keys() - wanted.keys():
            self.poller.unregister(fd)
        for fd, flags in wanted.items():
            if self.polled.get(fd) != flags:
                self.poller.register(fd, flags)
        self.polled = wanted

    def _timeout_ms(self, now: float) -> int:
        cfg = self.config
        deadlines = [self.last_sent + cfg.heartbeat_s * OWN_BEAT_FACTOR]
        if self.exiting is None:  # once leaving, liveness is moot (and past: no busy loop)
            deadlines.append(self.daemon_seen + cfg.heartbeat_s * cfg.liveness)
        if self.task is not None and (task_at := self.task.next_deadline()) is not None:
            deadlines.append(task_at)
        return max(0, math.ceil((min(deadlines) - now) * 1000))

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        self.poller.register(self.sock, zmq.POLLIN)
        self.send(Hello(protocol=proto.PROTOCOL_VERSION, slot=self.config.identity, pid=os.getpid()))
        log("child_ready", daemon_pid=self.config.daemon_pid)
        self._title()
        while self.exit_code is None:
            self._sync_poller()
            ready = dict(self.poller.poll(self._timeout_ms(time.monotonic())))
            now = time.monotonic()
            if self.wake_r.fileno() in ready:
                self._drain_wakeup()
            self._on_signals(now)
            if self.sock in ready:
                self._receive(now)
            if self.task is not None:
                for fd in self.task.watch().keys() & ready.keys():
                    self.task.on_ready(fd, now)
                self.task.on_time(now)
            self._finish_task()
            self._on_time(now)
        return self.exit_code

    def _drain_wakeup(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_signals(self, now: float) -> None:
        signals, self.signals = self.signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                self._on_sigchld(now)
            else:
                self._leave(0, f"signal {signal.Signals(signum).name}", EXIT_GRACE_S, now)

    def _on_sigchld(self, now: float) -> None:
        if self.task is not None:
            self.task.on_sigchld(now)
            return
        for pid in procs.children_pids(os.getpid()):
            procs.reap(pid)  # a straggler from a task we gave up on

    def _on_time(self, now: float) -> None:
        cfg = self.config
        silent_s = now - self.daemon_seen
        if self.exiting is None and (silent_s > cfg.heartbeat_s * cfg.liveness or os.getppid() != cfg.daemon_pid):
            why = f"daemon lost (silent {silent_s:.1f}s, parent {os.getppid()})"
            self._leave(DAEMON_LOST_EXIT, why, EXIT_GRACE_S, now)
        if now >= self.last_sent + cfg.heartbeat_s * OWN_BEAT_FACTOR and self.exit_code is None:
            self._beat()

    def _beat(self) -> None:
        task_id = self.task.task_id if self.task else None
        self.send(Heartbeat(task_id=task_id, rss_bytes=procs.rss_bytes(os.getpid())))

    # ---- messages --------------------------------------------------------------------

    def _receive(self, now: float) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.daemon_seen = now  # any message counts as a heartbeat
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
            self.send(Result(task_id=msg.task_id, attempt=msg.attempt, state=TaskState.FAILED.value,
                             outcome=Outcome(error=error), started_at=stamp, finished_at=stamp))
            return
        started = launch(msg, self.send, now)
        if isinstance(started, Result):
            self.send(started)
            return
        self.task = started
        self._title()

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
        result = task.result()
        task.close()
        self.send(result)
        self._title()
        if self.exiting is not None:
            self.exit_code = self.exiting

    def close(self) -> None:
        """Give a last Result a moment to leave, unless the daemon is gone."""
        linger = 0 if self.exit_code == DAEMON_LOST_EXIT else EXIT_LINGER_MS
        signal.set_wakeup_fd(-1)
        self.sock.close(linger=linger)
        self.wake_r.close()
        self.wake_w.close()
        log("child_exit", code=self.exit_code)
