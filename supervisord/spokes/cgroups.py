"""Containment of task attempts in cgroup v2, so nothing a task starts outlives it,
whatever it does (`env -i`, `setsid`, double forks, killing its own worker).

Layout: each child worker lives in a group of its own, where its attempts are born:

    <root>/supd-<hash of the state dir>/<worker identity>-<worker pid>

and the group is marked (a `user.supd.attempt` xattr: "<task id> <epoch> <attempt>") for
as long as an attempt's processes may be in it, so the daemon can kill an attempt whose
worker is gone, and a new daemon what a dead one left, by task id. A mark is cleared only
once the attempt's tree is dead and reaped. No process moves between groups on the
per-task path (a move of the worker costs ~25 µs of CPU each way and a mkdir/rmdir pair
~60 µs more): the worker leaves its group only to kill it (`cgroup.kill` kills every
member), and comes back once it is empty, or makes a new one if it will not empty.

`root` is the daemon's own cgroup (under systemd with `Delegate=yes`, the service's own
subtree; in a container, often the cgroup2 mount itself) when it is cgroup v2, writable,
has `cgroup.kill` (Linux 5.14) and user xattrs. A kill is one write to `cgroup.kill`; an
empty group is removed with rmdir. No process table scan anywhere on this path.

Where no writable cgroup exists (or `SUPD_CGROUPS=0`), the fallback is the subreaper +
`SUPD_TASK_ID` tag scheme of `procs`; `Containment.mode` says which one is in use.

Both the daemon (`Containment`) and each child (`WorkerGroup`) import it: the stdlib and
`procs` only, no asyncio. Signals go through pidfds (`procs.signal_pidfd`).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterable

from supervisord.spokes import procs

__all__ = [
    "MARK",
    "SWITCH_ENV",
    "Containment",
    "WorkerGroup",
    "create",
    "enter",
    "groups",
    "home_dir",
    "kill",
    "marked_task",
    "members",
    "open_base",
    "populated",
    "remove",
    "signal_members",
    "worker_group",
]

#: Set to 0/off/no to force the subreaper fallback even where cgroups are writable.
SWITCH_ENV = "SUPD_CGROUPS"
#: The xattr naming the attempt whose processes a worker's group may hold.
MARK = "user.supd.attempt"


def _mountpoint() -> str | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
    layout), from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def home_dir(pid: int | str = "self") -> str | None:
    """The cgroup v2 directory a process is in (its `0::` line), or None."""
    mount = _mountpoint()
    if mount is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    rel = line[3:].strip().removesuffix(" (deleted)")
                    return os.path.normpath(mount + rel) if rel != "/" else mount
    except OSError:
        pass
    return None


def open_base(state_dir: str) -> tuple[str | None, str]:
    """Create (or reuse) the daemon's subtree: (its path, why) or (None, why not)."""
    if os.environ.get(SWITCH_ENV, "").lower() in ("0", "off", "no", "false"):
        return None, f"{SWITCH_ENV}=0"
    root = home_dir()
    if root is None:
        return None, "no cgroup v2 mounted"
    if not os.path.exists(os.path.join(root, "cgroup.kill")) and root != _mountpoint():
        return None, f"no cgroup.kill in {root} (Linux < 5.14)"
    import hashlib  # the daemon's start only: the child's boot does not pay for it

    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]
    base = os.path.join(root, f"supd-{digest}")
    try:
        os.makedirs(base, exist_ok=True)
        probe = os.path.join(base, "probe")
        os.mkdir(probe)
        try:
            has_kill = os.path.exists(os.path.join(probe, "cgroup.kill"))
            os.setxattr(probe, MARK, b"probe")
        finally:
            os.rmdir(probe)
    except OSError as exc:
        what = "has no user xattrs" if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) else "not writable"
        return None, f"{root} {what} ({exc.strerror})"
    if not has_kill:
        return None, "no cgroup.kill (Linux < 5.14)"
    return base, f"cgroup v2 under {base}"


def worker_group(base: str, identity: str, pid: int) -> str:
    """The group a child worker lives in (a new pid, a new group: never a stale one)."""
    return os.path.join(base, f"{identity}-{pid}")


def marked_task(path: str) -> str | None:
    """The task whose attempt the group at `path` may hold, or None (idle, or gone)."""
    try:
        raw = os.getxattr(path, MARK)
    except OSError:  # no mark (ENODATA), or no group
        return None
    return raw.decode(errors="replace").rsplit(" ", 2)[0] if raw else None


def groups(base: str, task_id: str | None = None) -> list[str]:
    """The groups under `base` (only those marked with `task_id`'s attempts, if given)."""
    try:
        paths = [e.path for e in os.scandir(base) if e.is_dir()]
    except FileNotFoundError:
        return []
    return paths if task_id is None else [p for p in paths if marked_task(p) == task_id]


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def create(path: str) -> None:
    """mkdir a group. OSError (FileExistsError for a name taken)."""
    os.mkdir(path)


def enter(path: str) -> None:
    """Move this process (all its threads) into the group at `path`. OSError."""
    _write(os.path.join(path, "cgroup.procs"), "0")


def kill(path: str) -> bool:
    """SIGKILL every process in the group at once; False if the group is gone."""
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
    except FileNotFoundError:
        return False
    return True


def members(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


def populated(path: str) -> bool:
    """Whether any process is still in the group (zombies are not)."""
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as fh:
            return b"populated 1" in fh.read()
    except FileNotFoundError:
        return False


def remove(path: str) -> bool:
    """rmdir the group; False while it is still populated."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def signal_members(path: str, sigs: Iterable[int], spare: Iterable[int] = ()) -> int:
    """Send each of `sigs` to every process in the group but those in `spare` (a worker
    living there), through a pidfd opened and then checked to be in the group (a pid
    listed and reused meanwhile is not signalled)."""
    sigs, sent, spared = list(sigs), 0, set(spare)
    rel = "/" + os.path.basename(path)
    for pid in members(path):
        if pid in spared:
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            where = home_dir(pid)
            if where is not None and where.endswith(rel):
                for sig in sigs:
                    sent += procs.signal_pidfd(pidfd, sig)
        finally:
            os.close(pidfd)
    return sent


def terminate(path: str, spare: Iterable[int] = ()) -> int:
    """SIGCONT + SIGTERM to every member but `spare` (step one of the escalation)."""
    return signal_members(path, (signal.SIGCONT, signal.SIGTERM), spare)


class WorkerGroup:
    """A child worker's side: the group it lives in and its attempts are born in.

    `open()` makes it and moves the worker in (once, at boot); `mark()` names the attempt
    about to be spawned, `settle()` clears the name once the attempt's tree is dead and
    reaped. `kill()` first moves the worker out to its home group (`cgroup.kill` spares
    nobody), and `settle()` brings it back, or into a new group if the old one will not
    empty (an unkillable leftover: the group is left marked, for the daemon).
    """

    def __init__(self, base: str, identity: str, home: str) -> None:
        self.base, self.identity, self.home = base, identity, home
        self.path = ""
        #: the group's directory, held open: the mark is set and cleared through it, twice
        #: per task, with no path walk through cgroupfs (~10-20 µs each, cache-cold)
        self.fd = -1
        self.outside = True  # not in `path` (yet, or after a kill)
        self.marked = False

    def open(self) -> None:
        """Make a group of our own and move in. OSError."""
        stem = worker_group(self.base, self.identity, os.getpid())
        for n in range(100):
            path = stem if n == 0 else f"{stem}-{n}"
            try:
                create(path)
            except FileExistsError:  # a stale group of a past worker with our pid
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                remove(path)
                raise
            try:
                enter(path)
            except OSError:
                os.close(fd)
                remove(path)
                raise
            self.close()  # a group left behind (populated) is the daemon's now
            self.path, self.fd, self.outside = path, fd, False
            return
        raise FileExistsError(errno.EEXIST, "every group name is taken", stem)

    def close(self) -> None:
        """Let go of the group's directory (idempotent); the group itself stays."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def mark(self, task_id: str, epoch: int, attempt: int) -> None:
        """Name the attempt about to be born here. OSError."""
        os.setxattr(self.fd, MARK, f"{task_id} {epoch} {attempt}".encode())
        self.marked = True

    def terminate(self) -> int:
        return terminate(self.path, spare=(os.getpid(),))

    def kill(self) -> int:
        """SIGKILL every process of the attempt at once (the worker steps out first)."""
        if not self.outside:
            enter(self.home)  # must not fail: we came from there
            self.outside = True
        return int(kill(self.path))

    def settle(self) -> str | None:
        """The attempt's tree is dead and reaped: clear the mark and be back inside. The
        problem (a group that stays populated is left to the daemon), or None."""
        if self.outside and populated(self.path):
            kill(self.path)
            left, problem = self.path, f"group {self.path} still populated: left marked for the daemon"
            try:
                self.open()
            except OSError as exc:
                self.path = left
                return f"{problem}; no new group ({exc.strerror or exc})"
            self.marked = False
            return problem
        if self.marked:
            os.removexattr(self.fd, MARK)
            self.marked = False
        if self.outside:
            enter(self.path)
            self.outside = False
        return None


class Containment:
    """The daemon's side of containment: the mode, its cgroup subtree (if any), the child
    workers it spawned (by pid, with their pidfds) and the orphans re-parented to it.

    Creating one makes the daemon a subreaper, in both modes: orphans of a dead worker
    then come to the daemon, which kills and reaps them by pid (`procs.Adopted`), instead
    of becoming zombies of an init that may never reap them.
    """

    def __init__(self, state_dir: str, grace_s: float) -> None:
        procs.set_child_subreaper()
        self.base, self.why = open_base(state_dir)
        self.mode = "cgroup" if self.base is not None else "subreaper"
        self.spawned: dict[int, procs.Spawned] = {}
        self.adopted = procs.Adopted(grace_s)
        self.doomed: set[str] = set()  # groups killed, to be removed once empty

    def child_args(self) -> list[str]:
        """Extra arguments of `python -m children` for this mode."""
        return ["--cgroup", self.base] if self.base is not None else []

    def kill_task(self, task_id: str) -> int:
        """SIGKILL every group marked with an attempt of `task_id` (a lost attempt's: its
        worker, if still there, goes with it) and remove the empty ones. No process scan:
        cgroup mode only (0 otherwise)."""
        if self.base is None:
            return 0
        killed = 0
        for path in groups(self.base, task_id):
            if kill(path):
                killed += 1
                self.doomed.add(path)
        self.remove_empty()
        return killed

    def terminate_task(self, task_id: str) -> int:
        """SIGCONT + SIGTERM to every process of every group marked with `task_id`, but
        the workers."""
        if self.base is None:
            return 0
        return sum(terminate(path, spare=self.spawned.keys()) for path in groups(self.base, task_id))

    def worker_exited(self, identity: str, pid: int) -> None:
        """A worker is gone: its groups go once empty (one still holding a lost attempt's
        tree is killed by the look at that attempt, `kill_task`)."""
        if self.base is None:
            return
        stem = os.path.basename(worker_group(self.base, identity, pid))
        self.doomed.update(p for p in groups(self.base)
                           if (name := os.path.basename(p)) == stem or name.startswith(stem + "-"))
        self.remove_empty()

    def kill_all(self) -> int:
        """SIGKILL every group (the daemon is leaving, or starting after a crash)."""
        if self.base is None:
            return 0
        found = groups(self.base)
        self.doomed.update(found)
        killed = sum(kill(path) for path in found)
        self.remove_empty()
        return killed

    def remove_empty(self) -> None:
        """rmdir the killed groups that have emptied (the rest stay doomed)."""
        for path in list(self.doomed):
            if not populated(path) and remove(path):
                self.doomed.discard(path)
