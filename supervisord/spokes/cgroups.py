"""Containment of task attempts: one cgroup v2 per attempt, so nothing a task starts
outlives it, whatever it does (`env -i`, `setsid`, double forks, killing its own worker).

Layout, deterministic so the daemon can kill an attempt whose worker is gone, and a new
daemon can kill what a dead one left:

    <root>/supd-<hash of the state dir>/<task id>-<epoch>-<attempt>

`root` is the daemon's own cgroup (under systemd with `Delegate=yes`, the service's own
subtree; in a container, often the cgroup2 mount itself) when it is cgroup v2, writable
and has `cgroup.kill` (Linux 5.14). The child worker creates its attempt's group, moves
itself in, posix_spawns the task (born inside: no window in which a fork escapes), and
moves back to its home cgroup. A kill is one write to `cgroup.kill`; an empty group is
removed with rmdir. No process table scan anywhere on this path.

Where no writable cgroup exists (or `SUPD_CGROUPS=0`), the fallback is the subreaper +
`SUPD_TASK_ID` tag scheme of `procs`; `Containment.mode` says which one is in use.

Both the daemon (`Containment`) and each child (the module functions) import it: the
stdlib and `procs` only, no asyncio. Signals go through pidfds (`procs.signal_pidfd`).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterable

from supervisord.spokes import procs

__all__ = [
    "SWITCH_ENV",
    "Containment",
    "create",
    "enter",
    "group_path",
    "home_dir",
    "kill",
    "members",
    "open_base",
    "populated",
    "remove",
    "signal_members",
]

#: Set to 0/off/no to force the subreaper fallback even where cgroups are writable.
SWITCH_ENV = "SUPD_CGROUPS"


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
        has_kill = os.path.exists(os.path.join(probe, "cgroup.kill"))
        os.rmdir(probe)
    except OSError as exc:
        return None, f"{root} not writable ({exc.strerror})"
    if not has_kill:
        return None, "no cgroup.kill (Linux < 5.14)"
    return base, f"cgroup v2 under {base}"


def _safe(task_id: str) -> str:
    return task_id.replace("/", "_").lstrip(".") or "_"


def group_path(base: str, task_id: str, epoch: int, attempt: int) -> str:
    return os.path.join(base, f"{_safe(task_id)}-{epoch}-{attempt}")


def _task_of(name: str) -> str:
    return name.rsplit("-", 2)[0]


def groups(base: str, task_id: str | None = None) -> list[str]:
    """The attempt groups under `base` (of `task_id` only, if given)."""
    try:
        names = [e.name for e in os.scandir(base) if e.is_dir()]
    except FileNotFoundError:
        return []
    want = _safe(task_id) if task_id is not None else None
    return [os.path.join(base, n) for n in names if want is None or _task_of(n) == want]


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def create(path: str) -> None:
    """mkdir the attempt's group; a leftover of the same name is killed first. OSError."""
    try:
        os.mkdir(path)
    except FileExistsError:
        kill(path)


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


def signal_members(path: str, sigs: Iterable[int]) -> int:
    """Send each of `sigs` to every process in the group, through a pidfd opened and then
    checked to be in the group (a pid listed and reused meanwhile is not signalled)."""
    sigs, sent = list(sigs), 0
    rel = "/" + os.path.basename(path)
    for pid in members(path):
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


def terminate(path: str) -> int:
    """SIGCONT + SIGTERM to every member (step one of the escalation)."""
    return signal_members(path, (signal.SIGCONT, signal.SIGTERM))


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

    def kill_task(self, task_id: str, spare_attempt: int | None = None) -> int:
        """SIGKILL every attempt group of `task_id` (but those of `spare_attempt`, a retry
        running now) and remove the empty ones. No scan: cgroup mode only (0 otherwise)."""
        if self.base is None:
            return 0
        killed = 0
        for path in groups(self.base, task_id):
            if spare_attempt is not None and path.endswith(f"-{spare_attempt}"):
                continue
            if kill(path):
                killed += 1
                self.doomed.add(path)
        self.remove_empty()
        return killed

    def terminate_task(self, task_id: str) -> int:
        """SIGCONT + SIGTERM to every process of every attempt group of `task_id`."""
        if self.base is None:
            return 0
        return sum(terminate(path) for path in groups(self.base, task_id))

    def kill_all(self) -> int:
        """SIGKILL every attempt group (the daemon is leaving, or starting after a crash)."""
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
