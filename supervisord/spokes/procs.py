"""Process syscalls: the one module of supd that spawns, signals, kills or reaps.

Both the daemon (to start children, and as a backstop kill) and each child (to run
tasks) import it, so it stays light: the stdlib and psutil only, nothing else from
the project, and no asyncio. Nothing here sleeps, except `kill_tree_now`, which is
meant for an emergency exit.

Rules it keeps for everyone:
- Processes are started through posix_spawn (glibc: clone with CLONE_VFORK) or
  CPython's own spawn path (vfork), never forked from an interpreter that holds
  threads, and never with a `preexec_fn`.
- Reaping is per pid (`waitpid(pid, WNOHANG)`), never `waitpid(-1)`: a status
  stolen from another owner is a lost exit code.
- Signals to a process we spawned go through its pidfd (`pidfd_send_signal`): a pidfd
  names one process for good, where a bare pid may have been reused. Signals to a listed
  process go through psutil, which checks the pid was not reused since it was listed.
  A process group is signalled only while its leader is verifiably the task's.
- A stopped process gets SIGCONT before SIGTERM, or the SIGTERM waits for ever.
- Nothing here touches an event loop: the scans (`tagged`, `tagged_by_task`,
  `descendants`) may run in a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import importlib.util
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import psutil


def _lazy(name: str) -> ModuleType:
    """`name`, imported at the first use of one of its attributes (the module if imported already)."""
    if (found := sys.modules.get(name)) is not None:
        return found
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if not TYPE_CHECKING:
    # The child worker needs psutil only off its hot path (the subreaper fallback's scans, the
    # targets of a kill): imported before its Hello it was ~20 ms of every child's start (a
    # crashed child's slot stays empty that long). `finish_imports` loads it right after.
    psutil = _lazy("psutil")


def finish_imports() -> None:
    """Run what `_lazy` deferred, now (ImportError if the install is broken): a child calls it
    once it has said Hello, so a broken psutil fails its boot, not a kill later."""
    psutil.Process  # noqa: B018 (the attribute access runs the deferred import)


__all__ = [
    "Adopted",
    "PipeEnd",
    "Spawned",
    "children_pids",
    "descendants",
    "finish_imports",
    "kill_task",
    "kill_tree_now",
    "leads_task_group",
    "pidfd_open",
    "reap",
    "rss_bytes",
    "set_child_subreaper",
    "set_parent_death_signal",
    "signal_group",
    "signal_pid",
    "signal_pidfd",
    "spawn",
    "spawn_child",
    "spawn_fed",
    "tagged",
    "terminate_task",
]

#: The environment variable every task process carries, so its tree can be found.
TASK_ENV = "SUPD_TASK_ID"

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

#: A process to signal: a pid, or a psutil.Process (pid-reuse safe).
Target: TypeAlias = "int | psutil.Process"


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}): {os.strerror(err)}")


def set_child_subreaper() -> None:
    """Become a subreaper: orphaned descendants (even ones that escaped with setsid)
    are re-parented to us instead of init, so they can be found and killed. Raises OSError."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


#: The calling thread's scheduling policy when it is not the normal one (`run_batch`); what
#: it starts is put back to SCHED_OTHER (a task never inherits a policy meant for its worker).
_own_policy: int | None = None
_NORMAL = (os.SCHED_OTHER, os.sched_param(0))
#: Every signal a process may set: what posix_spawn starts at SIG_DFL. A process we start
#: begins with default dispositions, SIGPIPE and SIGXFSZ too (Python ignores them, and an
#: ignored disposition would pass through exec), as with Popen's `restore_signals`. Named
#: in full, glibc sets each once in the new process (~60 calls) instead of first reading
#: each of them (~120).
_DEFAULT_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))


def run_batch() -> None:
    """Run the calling thread SCHED_BATCH: woken, it does not preempt the thread that runs,
    it waits for that one's slice (fewer context switches on a busy machine; a child worker's
    latency of a millisecond costs nothing). Needs no privilege. Raises OSError."""
    global _own_policy
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    _own_policy = os.SCHED_BATCH


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` when our parent dies. Note: it fires when the parent
    *thread* that spawned us exits, so the daemon must spawn children from its main thread."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


class PipeEnd:
    """Our end of a task's pipe: its fd, `fileno()` and an idempotent `close()` — what the
    running task uses of a Popen's pipe objects (an `os.fdopen` per pipe cost ~5 µs of
    the per-task path)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        if self.fd < 0:
            raise ValueError("I/O operation on closed pipe")
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Spawned:
    """What `spawn`/`spawn_child` return: the pid, a pidfd for it (opened while the pid is
    our unreaped child, so it surely names that process) and our ends of its pipes
    (`PipeEnd`s, or None). Not a `subprocess.Popen`: CPython's `subprocess._cleanup()`
    reaps dropped Popen objects behind our back, and an exit status stolen that way reads
    as None (a boot failure missed)."""

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None) -> None:
        self.pid = pid
        self.pidfd: int | None = os.pidfd_open(pid)
        self.returncode: int | None = None
        self.stdin = PipeEnd(stdin) if stdin is not None else None
        self.stdout = PipeEnd(stdout) if stdout is not None else None
        self.stderr = PipeEnd(stderr) if stderr is not None else None

    def poll(self) -> int | None:
        """The returncode once it has exited (reaped by pid here), else None."""
        if self.returncode is None:
            self.returncode = reap(self.pid)
            if self.returncode is not None:
                self.close_pidfd()
        return self.returncode

    def wait(self, timeout_s: float) -> int | None:
        """Block up to `timeout_s` for the exit (on the pidfd, no polling sleep)."""
        if self.pidfd is not None and self.returncode is None:
            select.select([self.pidfd], [], [], max(0.0, timeout_s))
        return self.poll()

    def send_signal(self, sig: int) -> bool:
        """Signal it through the pidfd; False once it has exited."""
        return self.pidfd is not None and self.returncode is None and signal_pidfd(self.pidfd, sig)

    def close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _program(argv0: str, env: dict[str, str]) -> str:
    """argv[0] resolved like Popen does: a path as given, else searched in the task's PATH."""
    if os.sep in argv0:
        return argv0
    for directory in os.get_exec_path(env):
        candidate = os.path.join(directory, argv0)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv0)


@functools.cache
def _stdin_is_devnull() -> bool:
    """Whether our fd 0 is /dev/null and inherited across exec (a child worker's is: the
    daemon spawns it so), so a task can be given it as it is."""
    try:
        st, null = os.fstat(0), os.stat(os.devnull)
        inherited = not fcntl.fcntl(0, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    except OSError:
        return False
    return inherited and stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def _posix_spawn(argv: list[str], env: dict[str, str], stdin_data: bool, new_session: bool,
                 capture: bool = True) -> Spawned:
    """posix_spawn with pipes: ~70 µs of our CPU per task where Popen spends ~150-220 µs.
    Our fds are all close-on-exec (Python's default, libzmq's and pidfds' too), so only
    the three given here reach the task. Without `capture`, stdout/stderr are ours."""
    # The PATH search in C (posix_spawnp) when the task's PATH is ours, as it mostly is: it
    # searches as execvp does, like `_program`, in a tenth of the time.
    spawnp = os.sep not in argv[0] and env.get("PATH") == os.environ.get("PATH")
    program = argv[0] if spawnp else _program(argv[0], env)
    ours: list[int] = []
    theirs: list[int] = []
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = []
    try:
        if stdin_data:
            r, w = os.pipe()
            ours.append(w), theirs.append(r)
            actions.append((os.POSIX_SPAWN_DUP2, r, 0))
        elif not _stdin_is_devnull():  # else it is inherited: no open() in the new process
            actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
        for target in (1, 2) if capture else ():
            r, w = os.pipe()
            ours.append(r), theirs.append(w)
            actions.append((os.POSIX_SPAWN_DUP2, w, target))
        spawn = os.posix_spawnp if spawnp else os.posix_spawn
        # the new process runs as normal, not as its worker does (posix_spawn takes no None)
        policy = {} if _own_policy is None else {"scheduler": _NORMAL}
        pid = spawn(program, argv, env, file_actions=actions, setsid=new_session, setsigdef=_DEFAULT_SIGNALS, **policy)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    stdin = ours.pop(0) if stdin_data else None
    return Spawned(pid, stdin, ours[0], ours[1]) if capture else Spawned(pid, stdin, None, None)


def spawn_child(argv: list[str], *, env: dict[str, str]) -> Spawned:
    """Start a child worker (the daemon's side): posix_spawn in its own session, stdin
    /dev/null, stdout/stderr the daemon's. The caller keeps the `Spawned` (its pidfd)
    until it has reaped the pid. Raises OSError."""
    return _posix_spawn(argv, env, stdin_data=False, new_session=True, capture=False)


def spawn_fed(argv: list[str], *, env: dict[str, str], data: bytes) -> Spawned:
    """Start a hook command (the daemon's side): posix_spawn in its own session, `data` on
    its stdin (a sealed memfd: no pipe to keep fed from the loop), stdout /dev/null, stderr
    the daemon's (its complaints reach the daemon's log). Raises OSError."""
    program = _program(argv[0], env)
    fd = os.memfd_create("supd-hook-stdin", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
        pid = os.posix_spawn(program, argv, env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS)
    finally:
        os.close(fd)
    return Spawned(pid, None, None, None)


def spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    stdin_data: bool,
    new_session: bool,
    capture: bool = True,
) -> subprocess.Popen[bytes] | Spawned:
    """Start `argv` (no shell).

    stdout/stderr are pipes when `capture`, else inherited; stdin is a pipe when
    `stdin_data`, else /dev/null. `new_session` makes the process a session and group
    leader (pgid == pid). Raises OSError (FileNotFoundError, PermissionError, ...) when
    the program or `cwd` cannot be used. Captured tasks without a `cwd` (the hot path)
    go through posix_spawn, which has no chdir here; the rest through Popen's vfork path.
    """
    if capture and cwd is None:
        return _posix_spawn(argv, env, stdin_data, new_session)
    out = subprocess.PIPE if capture else None
    if _own_policy is not None:  # forked as normal: nothing of it inherits our policy
        os.sched_setscheduler(0, *_NORMAL)
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            close_fds=True,
            start_new_session=new_session,
        )
    finally:
        if _own_policy is not None:
            os.sched_setscheduler(0, _own_policy, os.sched_param(0))


def pidfd_open(pid: int) -> int:
    """A pidfd for `pid` (close-on-exec): it polls readable when the process exits."""
    return os.pidfd_open(pid)


def reap(pid: int) -> int | None:
    """Collect the exit status of our child `pid` without blocking.

    Returns a Popen-style returncode (negative signal number if killed), or None while it
    still runs. A pid that is not (or no longer) our child also gives None.
    """
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def signal_pidfd(pidfd: int, sig: int) -> bool:
    """Send `sig` to the process a pidfd names; False if it has exited."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def leads_task_group(pgid: int | None, task_id: str) -> bool:
    """Whether process `pgid` is alive, leads its group and carries `task_id`'s tag: only
    then may a group signal to `pgid` be sent on the strength of an old `Started` (a stale
    pgid can name another session after pid wrap)."""
    if pgid is None or pgid <= 1:
        return False
    try:
        proc = psutil.Process(pgid)
        return bool(os.getpgid(pgid) == pgid and _has_tag(proc, task_id, os.getuid()))
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`; False if the group is gone. Only for a group
    whose leader is known to be the task's (unreaped by us, or `leads_task_group`)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_pid(pid: Target, sig: int) -> bool:
    """Send `sig` to one process; False if it is gone (or its pid was reused, for a
    psutil.Process)."""
    try:
        if isinstance(pid, psutil.Process):
            pid.send_signal(sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
    except psutil.AccessDenied:
        return False
    return True


def children_pids(pid: int) -> list[int]:
    """Direct children of `pid`, zombies included, for a process that forks only from its
    main thread (the child worker; zmq's I/O threads never fork).

    Reads /proc/PID/task/PID/children: O(children), no scan of every process, one file on
    the per-task path. Orphans re-parented to a subreaper go to its main thread while that
    thread lives (the kernel's find_alive_thread starts at the group leader), so the main
    thread's list is the whole list. Falls back to psutil without CONFIG_PROC_CHILDREN.
    Our own list's file stays open: a seq_file read again from offset 0 is made afresh, so
    each look is one `pread` (no path walk through procfs, no open and close).
    """
    global _own_children
    held = _own_children is not None and _own_children[0] == pid  # not a forked copy's parent's
    fd = _own_children[1] if held and _own_children is not None else -1
    if not held:
        try:
            fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                return []
            return [p.pid for p in _safe_children(pid, recursive=False)]
        if pid == os.getpid():
            _own_children, held = (pid, fd), True
    chunks: list[bytes] = []
    offset = 0
    try:
        while chunk := os.pread(fd, 1 << 16, offset):  # a short read is not yet the end
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        if not held:
            os.close(fd)
    return [int(p) for p in b"".join(chunks).split()]


#: (our pid, the open file of our children list), once looked at (see `children_pids`)
_own_children: tuple[int, int] | None = None


def _safe_children(pid: int, *, recursive: bool) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=recursive))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def descendants(pid: int) -> list[psutil.Process]:
    """Every descendant of `pid` (children, grandchildren, ...), zombies included.

    Tolerant of races: processes that vanish while the tree is walked are left out.
    """
    return _safe_children(pid, recursive=True)


def _has_tag(proc: psutil.Process, task_id: str, uid: int) -> bool:
    try:
        if proc.uids().real != uid:
            return False
        return bool(proc.environ().get(TASK_ENV) == task_id)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def tagged(task_id: str, among: list[psutil.Process] | None = None) -> list[psutil.Process]:
    """Processes of our uid whose environment has SUPD_TASK_ID=task_id.

    Scans every process unless `among` narrows it (reading each environ costs a few µs;
    keep it for kill paths). Processes we may not read or that vanish are skipped.
    """
    uid = os.getuid()
    pool: Iterable[psutil.Process] = among if among is not None else psutil.process_iter()
    me = os.getpid()
    return [p for p in pool if p.pid != me and _has_tag(p, task_id, uid)]


def tagged_by_task() -> dict[str, list[psutil.Process]]:
    """One scan of the process table: our uid's tagged processes, grouped by task id
    (for recovery, where many task ids are looked up at once)."""
    uid, me = os.getuid(), os.getpid()
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.uids().real != uid:
                continue
            tag = proc.environ().get(TASK_ENV)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if tag:
            found.setdefault(tag, []).append(proc)
    return found


def _signal_all(pgid: int | None, pids: Iterable[Target], sig: int) -> int:
    sent = 0
    if pgid is not None and pgid > 1:
        sent += signal_group(pgid, sig)
    for pid in pids:
        sent += signal_pid(pid, sig)
    return sent


def terminate_task(pgid: int | None, pids: Iterable[Target]) -> int:
    """Step one of the escalation: SIGCONT then SIGTERM to the task's session group and to
    each listed process (a SIGSTOPped process would hold a SIGTERM pending for ever).
    Never SIGINT (the Claude CLI exits 0 on it). Returns how many SIGTERMs were
    delivered. The caller schedules `kill_task` after its grace."""
    targets = list(pids)
    _signal_all(pgid, targets, signal.SIGCONT)
    return _signal_all(pgid, targets, signal.SIGTERM)


def kill_task(pgid: int | None, pids: Iterable[Target]) -> int:
    """Step two of the escalation: SIGKILL to the group and to each listed process."""
    return _signal_all(pgid, pids, signal.SIGKILL)


def kill_tree_now(pids: Sequence[Target], wait_s: float = 1.0) -> list[int]:
    """Emergency exit: SIGKILL every listed process at once, then wait up to `wait_s` for
    them to die (our own children are reaped by pid). Returns the pids still alive."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            procs.append(pid if isinstance(pid, psutil.Process) else psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    kill_task(None, procs)
    deadline = time.monotonic() + wait_s
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
    return [p.pid for p in alive]


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 if it is gone). Reads /proc/PID/statm: it is
    on every heartbeat, and a psutil.Process costs several times more."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Adopted:
    """Orphans re-parented to this process as a subreaper that it did not spawn: what is
    left of a dead child worker's task tree. The daemon is a subreaper so that they come
    to it (not to init, which in a container may never reap them), and it kills and reaps
    them by pid, never with waitpid(-1).

    A process carrying a task tag gets SIGCONT+SIGTERM when first seen and SIGKILL at the
    first sweep `grace_s` later; one without a tag (it scrubbed its environment) gets
    SIGKILL at once. Each is watched through a pidfd; when one exits, sweep again: its own
    children have just been re-parented to us.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.watched: dict[int, tuple[int, float]] = {}  # pid -> (pidfd, SIGKILL due at)

    def sweep(self, spawned: Iterable[int], now: float, kill_all: bool = False) -> list[tuple[int, int]]:
        """Signal (and reap, if dead) every child of ours not in `spawned`. Returns the
        (pid, pidfd) pairs newly watched: the caller polls each pidfd and calls `reaped`."""
        mine, new = set(spawned), []
        for pid in children_pids(os.getpid()):
            if pid in mine:
                continue
            if pid not in self.watched:
                try:
                    pidfd = os.pidfd_open(pid)  # our unreaped child: the pid is surely it
                except ProcessLookupError:
                    continue
                tagged_ = _tag_of(pid) is not None
                self.watched[pid] = (pidfd, now + self.grace_s if tagged_ else now)
                new.append((pid, pidfd))
                if tagged_ and not kill_all:
                    signal_pidfd(pidfd, signal.SIGCONT)
                    signal_pidfd(pidfd, signal.SIGTERM)
            pidfd, kill_at = self.watched[pid]
            if kill_all or now >= kill_at:
                signal_pidfd(pidfd, signal.SIGKILL)
        return new

    def reaped(self, pid: int) -> int | None:
        """The pidfd of `pid` polled readable: reap it, stop watching. Its returncode."""
        rc = reap(pid)
        if rc is not None and (entry := self.watched.pop(pid, None)) is not None:
            os.close(entry[0])
        return rc

    def close(self) -> None:
        for pidfd, _ in self.watched.values():
            os.close(pidfd)
        self.watched.clear()


def _tag_of(pid: int) -> str | None:
    """SUPD_TASK_ID of `pid` from /proc/PID/environ (None if absent or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for entry in fh.read().split(b"\0"):
                if entry.startswith(b"SUPD_TASK_ID="):
                    return entry[len(b"SUPD_TASK_ID="):].decode(errors="replace")
    except OSError:
        pass
    return None
