"""One running task inside a child: its process tree, pipes, deadlines and kill escalation.

The worker's poll loop asks a `RunningTask` which fds to watch (`watch()`) and when it
next needs the clock (`next_deadline()`), and hands back readiness (`on_ready`), time
(`on_time`) and SIGCHLD (`on_sigchld`, while `wants_sigchld`). When `finished`, `result()` is the one
`Result` of the attempt: it is only ready once the main process is reaped, its pipes are
at EOF and every descendant is dead and reaped, so a Result means "nothing of this task
is left". Processes are touched only through `supervisord.spokes.procs`.
Imports the stdlib, zmq (poll flags only), `proto`, `children.executors`/`children.log`
and `supervisord.spokes.procs`/`cgroups`; must not import the worker.

Containment: with a cgroup base (the daemon's `--cgroup`), the worker lives in a cgroup v2
of its own (`cgroups.WorkerGroup`) and each attempt is born there, marked with its name
while its processes may live: every process the task ever starts is in the group, and
the SIGKILL step is one `cgroup.kill` with no process scan. Without one, the fallback
finds the tree through the subreaper (our descendants) and the SUPD_TASK_ID tag.
"""

from __future__ import annotations

import enum
import functools
import os
import subprocess
import time
from collections.abc import Callable
from typing import IO

import msgspec
import zmq

from children.executors import (
    ClaudeExecutor,
    ExecExecutor,
    Launch,
    Transcriber,
    Verdict,
    make_executor,
    plan_launch,
)
from children.log import log
from proto.children import STARTED_AFTER_S, ChildMessage, Dispatch, Output, Progress, Result, Started
from proto.task import ErrorKind, Outcome, TaskError, TaskState
from supervisord.spokes import cgroups, procs

__all__ = ["RunningTask", "fit", "launch", "spawn_failure"]

READ_CHUNK = 1 << 16
#: Reads per fd per wake-up, so one flooding stream cannot starve the socket.
READS_PER_WAKE = 16
#: After SIGKILL, how often stragglers (new or unreaped) are looked for again, and when
#: to give up on a process that will not die (uninterruptible sleep) and report anyway.
RECHECK_S = 0.25
GIVE_UP_S = 5.0
#: transcript lines go up in one `Output` once this many bytes wait, or this long after the first
OUTPUT_FLUSH_BYTES, OUTPUT_FLUSH_S = 64 << 10, 0.2

Send = Callable[[ChildMessage], None]


class Phase(enum.Enum):
    RUNNING = "running"  # no signal sent yet
    TERMINATING = "terminating"  # SIGTERM sent to the tree; SIGKILL due at kill_at
    KILLED = "killed"  # SIGKILL sent; waiting for the tree to be reaped


#: zmq's poll flags as plain ints (an enum.Flag conversion per fd per turn costs microseconds)
POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)


class RunningTask:
    """A spawned task; see the module docstring for the protocol with the loop."""

    def __init__(self, dispatch: Dispatch, popen: subprocess.Popen[bytes] | procs.Spawned, stdin: bytes | None,
                 send: Send, now: float, cgroup: cgroups.WorkerGroup | None = None) -> None:
        self.task_id, self.attempt, self.limits = dispatch.task_id, dispatch.attempt, dispatch.limits
        self.epoch = dispatch.epoch
        self.executor: ExecExecutor | ClaudeExecutor = make_executor(dispatch)
        self.popen, self.pid, self.send = popen, popen.pid, send
        self.cgroup = cgroup  # the worker's group, marked with this attempt, when contained
        self.pgid = popen.pid  # own session: the process leads its group
        self.pidfd: int | None
        if isinstance(popen, procs.Spawned):
            self.pidfd, popen.pidfd = popen.pidfd, None  # ours now: closed once reaped
        else:
            self.pidfd = procs.pidfd_open(self.pid)
        self.started_at = time.time()
        self.returncode: int | None = None
        self.verdict: Verdict | None = None
        self.phase = Phase.RUNNING
        self.finished = False
        #: no child of ours is left, seen after the main process was reaped: nothing of the
        #: tree can come back then (an orphan is re-parented only from a live descendant)
        self.tree_empty = False
        self.out_fd = self._nonblocking(popen.stdout)
        self.err_fd = self._nonblocking(popen.stderr)
        self.in_fd = self._nonblocking(popen.stdin) if stdin else None
        self.in_data, self.in_off = memoryview(stdin or b""), 0
        if popen.stdin is not None and self.in_fd is None:
            popen.stdin.close()  # empty input: EOF at once
        self.wall_at: float | None = now + self.limits.timeout_s
        self.stall_at: float | None = self._stall_deadline(now)
        self.grace_at: float | None = None
        self.kill_at: float | None = None
        self.recheck_at: float | None = None
        self.give_up_at: float | None = None
        self.gave_up = False  # reported with processes left that would not die
        self.transcript = Transcriber(dispatch.limits.transcript_cap_bytes, dispatch.attempt,
                                      json_stdout=dispatch.spec.kind == "claude")
        self.flush_at: float | None = None
        #: when Started goes, unless a Progress or Output takes it along first (None: sent)
        self.announce_at: float | None = now + STARTED_AFTER_S
        #: the worktree the task runs in, and the commit its branch started from
        self.worktree = dispatch.worktree
        self.base = ""

    @staticmethod
    def _nonblocking(pipe: IO[bytes] | procs.PipeEnd | None) -> int | None:
        if pipe is None:
            return None
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        return fd

    def _stall_deadline(self, now: float) -> float | None:
        stall = self.limits.stall_timeout_s
        return now + stall if stall is not None else None

    # ---- what the loop polls ---------------------------------------------------------

    def watch(self) -> dict[int, int]:
        """fd -> poll flags to watch now."""
        fds: dict[int, int] = {fd: POLLIN for fd in (self.pidfd, self.out_fd, self.err_fd) if fd is not None}
        if self.in_fd is not None:
            fds[self.in_fd] = POLLOUT
        return fds

    def next_deadline(self) -> float | None:
        pending = [t for t in (self.wall_at, self.stall_at, self.grace_at, self.kill_at,
                               self.recheck_at, self.give_up_at, self.flush_at, self.announce_at) if t is not None]
        return min(pending) if pending else None

    @property
    def announced(self) -> bool:
        return self.announce_at is None

    @property
    def wants_sigchld(self) -> bool:
        """Whether the loop should catch SIGCHLD: while an orphan of ours may die (the task
        has run long enough to have made one, or its leftovers are being ended)."""
        return not self.finished and (self.announce_at is None or self.returncode is not None)

    def announce(self) -> None:
        """Send Started, once (before anything else of this attempt but its Result)."""
        if self.announce_at is not None:
            self.announce_at = None
            self.send(Started(task_id=self.task_id, attempt=self.attempt, epoch=self.epoch, pid=self.pid,
                              pgid=self.pgid))
            log("task_started", task=self.task_id, attempt=self.attempt, task_pid=self.pid)

    def on_ready(self, fd: int, now: float) -> None:
        if fd == self.pidfd:
            self._on_main_exit(now)
        elif fd == self.in_fd:
            self._write_stdin()
        elif fd in (self.out_fd, self.err_fd):
            self._read(fd, now, READS_PER_WAKE)
        self._check_done()

    def on_sigchld(self, now: float) -> None:
        """A child of ours changed state: maybe an adopted orphan died; reap it."""
        if self.returncode is None:
            self._reap_orphans()
        else:
            self._check_done()

    # ---- output ----------------------------------------------------------------------

    def _read(self, fd: int, now: float, max_reads: int) -> None:
        for _ in range(max_reads):
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                self._close_output(fd)
                return
            self._feed(fd, chunk, now)

    def _feed(self, fd: int, chunk: bytes, now: float) -> None:
        self.transcript.feed("stdout" if fd == self.out_fd else "stderr", chunk, time.time())
        if self.transcript.pending_bytes >= OUTPUT_FLUSH_BYTES:
            self.flush_output()
        elif self.transcript.pending and self.flush_at is None:
            self.flush_at = now + OUTPUT_FLUSH_S
        if fd == self.out_fd:
            active, progress = self.executor.feed_stdout(chunk)
            if progress:
                self.announce()
            for event, summary in progress:
                self.send(Progress(task_id=self.task_id, attempt=self.attempt, epoch=self.epoch, event=event,
                                   summary=summary))
            if self.executor.result_seen and self.grace_at is None and self.returncode is None:
                self._on_result_line(now)
        else:
            active = self.executor.feed_stderr(chunk)
        if active and self.stall_at is not None:
            self.stall_at = self._stall_deadline(now)

    def _on_result_line(self, now: float) -> None:
        # The CLI sometimes hangs after its result line: the line is the completion, the
        # process gets a short grace to exit. Wall and stall no longer apply.
        self.wall_at = self.stall_at = None
        self.grace_at = now + self.limits.result_grace_s
        log("result_line", task=self.task_id, grace_s=self.limits.result_grace_s)

    def _close_output(self, fd: int) -> None:
        pipe = self.popen.stdout if fd == self.out_fd else self.popen.stderr
        if pipe is not None:
            pipe.close()
        if fd == self.out_fd:
            self.out_fd = None
        else:
            self.err_fd = None

    def _write_stdin(self) -> None:
        assert self.in_fd is not None
        try:
            self.in_off += os.write(self.in_fd, self.in_data[self.in_off: self.in_off + READ_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.in_off = len(self.in_data)  # the process stopped reading: drop the rest
        if self.in_off >= len(self.in_data):
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except BrokenPipeError:
                pass  # its buffer is empty: we write with os.write; nothing was lost
        self.in_fd = None

    # ---- exit and leftovers ----------------------------------------------------------

    def _on_main_exit(self, now: float) -> None:
        rc = procs.reap(self.pid)
        if rc is None:
            return  # spurious wake-up: still running
        self.returncode = self.popen.returncode = rc
        self._close_pidfd()
        self._close_stdin()
        self.wall_at = self.stall_at = self.grace_at = None
        # Take what is already in the pipes, then end whatever the task left behind (a
        # leftover holding the pipe open would otherwise keep us from EOF forever).
        for fd in (self.out_fd, self.err_fd):
            if fd is not None:
                self._read(fd, now, READS_PER_WAKE)  # bounded: a leftover may write forever
        left = procs.children_pids(os.getpid())
        self.tree_empty = not left
        if self.phase is Phase.RUNNING and left:
            self._escalate(now, grace_s=0.0, why="leftovers")

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _reap_orphans(self) -> bool:
        """Reap adopted orphans by pid (never waitpid(-1)); the main pid is the pidfd's.
        Returns True if any child of ours is still alive."""
        alive = False
        for pid in procs.children_pids(os.getpid()):
            if pid == self.pid and self.pidfd is not None or procs.reap(pid) is None:
                alive = True
        return alive

    def _check_done(self) -> None:
        if self.finished or self.returncode is None or self.out_fd is not None or self.err_fd is not None:
            return
        if not self.tree_empty and self._reap_orphans():
            return  # a SIGCHLD will tell us when the rest is gone
        self.finished = True
        self.kill_at = self.recheck_at = self.give_up_at = None

    # ---- timeouts, cancel and the kill escalation ------------------------------------

    def flush_output(self, final: bool = False) -> None:
        """Send the transcript lines that wait (all of them, and the cap's note, when `final`)."""
        self.flush_at = None
        lines = self.transcript.take(time.time(), final)
        if lines:
            if not final:  # the last lines go right before the Result, which then names the pid
                self.announce()
            self.send(Output(task_id=self.task_id, attempt=self.attempt, epoch=self.epoch, lines=lines))

    def on_time(self, now: float) -> None:
        """Act on every deadline that has passed."""
        if self.announce_at is not None and now >= self.announce_at:
            self.announce()
        if self.flush_at is not None and now >= self.flush_at:
            self.flush_output()
        if self.wall_at is not None and now >= self.wall_at:
            message = f"wall-clock timeout of {self.limits.timeout_s:g}s"
            self.stop(TaskState.TIMED_OUT, TaskError(kind=ErrorKind.TIMEOUT, message=message), now)
        elif self.stall_at is not None and now >= self.stall_at:
            message = f"no output for {self.limits.stall_timeout_s:g}s"
            self.stop(TaskState.TIMED_OUT, TaskError(kind=ErrorKind.STALL, message=message), now)
        if self.grace_at is not None and now >= self.grace_at:
            self.grace_at = None
            self._escalate(now, self.limits.kill_grace_s, why="result_grace")
        if self.kill_at is not None and now >= self.kill_at:
            self._kill(now)
        if self.recheck_at is not None and now >= self.recheck_at:
            self._recheck(now)
        self._check_done()

    def stop(self, state: TaskState, error: TaskError, now: float, grace_s: float | None = None) -> None:
        """Timeout, cancel or shutdown: record why and start the escalation.

        The first reason wins. A task whose outcome is already known (its main process
        exited, or Claude printed its result line) keeps that outcome: the stop only ends
        what is left of it, so finished work is never reported as cancelled.
        """
        if self.verdict is None and self.returncode is None and not self.executor.result_seen:
            self.verdict = (state, error)
        self.wall_at = self.stall_at = self.grace_at = None
        grace = self.limits.kill_grace_s if grace_s is None else min(grace_s, self.limits.kill_grace_s)
        self._escalate(now, grace, why=error.kind)

    def _targets(self) -> list[procs.psutil.Process]:
        """Every process of this task: our descendants (the subreaper brings back those that
        escaped with setsid) plus, as a safety net, any process tagged with the task id.
        Contained in a cgroup, none: the group itself is the list (no scan)."""
        if self.cgroup is not None:
            return []
        found = {p.pid: p for p in procs.descendants(os.getpid())}
        for p in procs.tagged(self.task_id):
            found.setdefault(p.pid, p)
        return list(found.values())

    def _group(self) -> int | None:
        # Only while the leader is unreaped does its pid surely still name our group.
        return self.pgid if self.returncode is None else None

    def _escalate(self, now: float, grace_s: float, why: str) -> None:
        """The one kill escalation: SIGTERM to the session group and every process of the
        task now; SIGKILL to whatever is left at `kill_at` (a deadline, not a sleep)."""
        if self.phase is Phase.RUNNING:
            targets = self._targets()
            sent = procs.terminate_task(self._group(), targets)
            if self.cgroup is not None:
                sent += self.cgroup.terminate()
            self.phase = Phase.TERMINATING
            log("task_terminating", task=self.task_id, why=why, signalled=sent, grace_s=grace_s)
        if self.phase is Phase.TERMINATING:
            kill_at = now + grace_s
            self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)
            if grace_s <= 0:
                self._kill(now)

    def _kill(self, now: float) -> None:
        targets = [p for p in self._targets() if _alive(p)]
        sent = procs.kill_task(self._group(), targets)
        if self.cgroup is not None:
            sent += self.cgroup.kill()
        if self.phase is not Phase.KILLED:
            self.give_up_at = now + GIVE_UP_S
            log("task_killing", task=self.task_id, signalled=sent, alive=len(targets))
        self.phase = Phase.KILLED
        self.kill_at = None
        self.recheck_at = now + RECHECK_S

    def _recheck(self, now: float) -> None:
        self._reap_orphans()
        if self.give_up_at is not None and now >= self.give_up_at:
            self._give_up()
            return
        self._kill(now)

    def _give_up(self) -> None:
        left = procs.children_pids(os.getpid())
        log("task_leftovers_unkillable", task=self.task_id, pids=",".join(map(str, left)) or None,
            main_reaped=self.returncode is not None)
        for fd in (self.out_fd, self.err_fd):
            if fd is not None:
                self._close_output(fd)
        self._close_stdin()
        self._close_pidfd()
        self.finished = self.gave_up = True
        self.kill_at = self.recheck_at = self.give_up_at = None

    # ---- the end ---------------------------------------------------------------------

    def result(self) -> Result:
        """The attempt's Result; first its last transcript lines go, and its worktree's
        leftovers are committed (the tree is dead: nothing writes there any more)."""
        self.flush_output(final=True)
        state, outcome = self.executor.finish(self.returncode, self.verdict)
        if self.worktree is not None:
            # only worktree tasks pay for importing git (the child's boot stays small)
            from supervisord.spokes import git

            outcome.worktree = git.finish(self.worktree, self.base)
            log("task_worktree", task=self.task_id, branch=outcome.worktree.branch, head=outcome.worktree.head,
                files=outcome.worktree.files_changed, error=outcome.worktree.error)
        if self.announce_at is None or state is not TaskState.SUCCEEDED:
            # A quick success is the daemon's `task_state` line alone: the child's line, one write
            # per task into the log every child shares, is for what ran long enough to be announced
            # or ended otherwise.
            log("task_finished", task=self.task_id, attempt=self.attempt, state=state.value,
                error=outcome.error.kind if outcome.error else None, returncode=self.returncode, task_pid=self.pid)
        return Result(task_id=self.task_id, attempt=self.attempt, epoch=self.epoch, state=state.value,
                      outcome=outcome, started_at=self.started_at, finished_at=time.time(),
                      pid=self.pid if self.announce_at is not None else None)

    def close(self) -> None:
        """Release fds and the attempt's mark on the worker's group (idempotent); the pipes
        are closed by the Popen objects. A group still populated (an unkillable leftover) is
        left to the daemon, marked, and the worker moves to a new one."""
        if self.cgroup is not None:
            _settle(self.cgroup, self.task_id)
            self.cgroup = None
        self._close_pidfd()
        self._close_stdin()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


#: Room kept under `max_result_bytes` for msgpack headers, which grow with string lengths.
FIT_SLACK_BYTES = 64
#: What a Result without an error, a worktree or a structured output carries besides its
#: output, at most (usage, ids, numbers): one whose output is this far under the cap fits.
FIT_SURELY_BYTES = 64 << 10
_encode = msgspec.msgpack.Encoder().encode


def _clip_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode()
    return text if len(raw) <= max_bytes else raw[:max(0, max_bytes)].decode("utf-8", errors="ignore")


def fit(result: Result, max_bytes: int) -> Result:
    """Make the encoded Result at most `max_bytes` (0: no cap) by cutting the outcome's
    `result` and `stderr` (stderr gets at most a quarter of the room), marking it
    `truncated`: a message above the socket's limit would make libzmq drop the connection."""
    o = result.outcome
    if max_bytes <= 0 or (o.structured_output is None and o.error is None and o.worktree is None
                          and FIT_SURELY_BYTES + 4 * (len(o.result or "") + len(o.stderr or "")) <= max_bytes):
        return result  # surely fits (at most 4 bytes a character): not encoded just to measure it
    if len(_encode(result)) <= max_bytes:
        return result
    text, err = o.result or "", o.stderr or ""
    o.result, o.stderr, o.truncated = "", "", True
    room = max(0, max_bytes - len(_encode(result)) - FIT_SLACK_BYTES)
    err_room = min(len(err.encode()), room // 4 if text else room)
    o.stderr = _clip_utf8(err, err_room)
    o.result = _clip_utf8(text, room - len(o.stderr.encode()))
    while len(_encode(result)) > max_bytes and (o.result or o.stderr):  # headers we did not foresee
        o.result, o.stderr = o.result[: len(o.result) // 2], o.stderr[: len(o.stderr) // 2]
    return result


def _alive(proc: procs.psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != procs.psutil.STATUS_ZOMBIE)
    except procs.psutil.NoSuchProcess:
        return False


def spawn_failure(dispatch: Dispatch, exc: OSError, argv: list[str]) -> Result:
    """The Result of a task whose process could not be started."""
    program = argv[0] if argv else "(empty argv)"
    where = f" ({exc.filename})" if exc.filename and exc.filename != program else ""
    message = f"cannot start {program!r}: {exc.strerror or exc}{where}"
    log("task_spawn_failed", task=dispatch.task_id, program=program, error=message)
    now = time.time()
    outcome = Outcome(error=TaskError(kind=ErrorKind.SPAWN, message=message))
    return Result(task_id=dispatch.task_id, attempt=dispatch.attempt, epoch=dispatch.epoch,
                  state=TaskState.FAILED.value, outcome=outcome, started_at=now, finished_at=now)


def worktree_failure(dispatch: Dispatch, message: str) -> Result:
    """The Result of a task whose worktree could not be made."""
    log("task_worktree_failed", task=dispatch.task_id, error=message)
    now = time.time()
    outcome = Outcome(error=TaskError(kind=ErrorKind.WORKTREE, message=f"worktree: {message}"))
    return Result(task_id=dispatch.task_id, attempt=dispatch.attempt, epoch=dispatch.epoch,
                  state=TaskState.FAILED.value, outcome=outcome, started_at=now, finished_at=now)


def _with_worktree(result: Result, dispatch: Dispatch, base: str) -> Result:
    """A task that never started still leaves its worktree as `keep` says."""
    if dispatch.worktree is not None:
        from supervisord.spokes import git

        result.outcome.worktree = git.finish(dispatch.worktree, base)
    return result


@functools.cache
def _base_env() -> dict[str, str]:
    """The child's own environment, read once: it never changes after boot, and copying
    `os.environ` (which decodes every entry) per task is measurable on the hot path.
    `plan_launch` builds a new dict from it; it is never changed in place."""
    return dict(os.environ)


def _mark(dispatch: Dispatch, cg: cgroups.WorkerGroup | None) -> cgroups.WorkerGroup | None:
    """Mark the worker's group with the attempt about to be born there; None, and the
    fallback for this task, if that fails."""
    if cg is None:
        return None
    try:
        cg.mark(dispatch.task_id, dispatch.epoch, dispatch.attempt)
    except OSError as exc:
        log("task_cgroup_failed", task=dispatch.task_id, cgroup=cg.path, error=exc.strerror or str(exc))
        return None
    return cg


def _settle(cg: cgroups.WorkerGroup, task_id: str) -> None:
    try:
        problem = cg.settle()
    except OSError as exc:
        problem = f"group {cg.path}: {exc.strerror or exc}"
    if problem is not None:
        log("task_cgroup_busy", task=task_id, problem=problem)


def launch(dispatch: Dispatch, send: Send, now: float,
           cg: cgroups.WorkerGroup | None = None) -> RunningTask | Result:
    """Spawn the task in its own session (in the worker's group, given `cg`) and announce
    it; a spawn failure is a Result."""
    if dispatch.spec.kind == "claude" and not dispatch.claude_command:
        return spawn_failure(dispatch, OSError(0, "no Claude CLI command given"), ["claude"])
    cwd, base = dispatch.spec.cwd, ""
    if dispatch.worktree is not None:
        from supervisord.spokes import git  # only worktree tasks pay for it (the child's boot stays small)

        try:
            cwd, base = git.prepare(dispatch.worktree, dispatch.spec.cwd)
        except (git.GitError, OSError) as exc:
            return worktree_failure(dispatch, str(exc))
        log("task_worktree_ready", task=dispatch.task_id, path=cwd, branch=dispatch.worktree.branch, base=base)
    plan: Launch = plan_launch(dispatch, _base_env(), cwd)
    if not plan.argv:
        return _with_worktree(spawn_failure(dispatch, OSError(0, "empty argv"), plan.argv), dispatch, base)
    group = _mark(dispatch, cg)
    popen: subprocess.Popen[bytes] | procs.Spawned | None = None
    try:
        popen = procs.spawn(plan.argv, env=plan.env, cwd=plan.cwd, stdin_data=plan.stdin is not None,
                            new_session=True)
    except OSError as exc:  # FileNotFoundError, PermissionError, NotADirectoryError, ...
        return _with_worktree(spawn_failure(dispatch, exc, plan.argv), dispatch, base)
    except ValueError as exc:  # an env key with "=" or a NUL byte in argv/env
        return _with_worktree(spawn_failure(dispatch, OSError(0, str(exc)), plan.argv), dispatch, base)
    finally:
        if popen is None and group is not None:
            _settle(group, dispatch.task_id)  # nothing was born: no mark to keep
    task = RunningTask(dispatch, popen, plan.stdin, send, now, group)
    task.base = base
    return task
