"""The hub's process spoke: children spawned and watched, lost attempts' trees ended.

Owns the daemon's `cgroups.Containment` (its mode, the children it spawned with their
pidfds, the orphans re-parented to it as a subreaper) and a worker thread for what must
not run on the loop: scans of the process table in the fallback mode. A child's exit
becomes a `ChildExited` on the inbox after the children socket has been drained, so a
child's last messages reach the hub before its exit does; a look at a lost attempt's
tree comes back as `TreesChecked`. Syscalls themselves are `procs`'s and `cgroups`'s.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil

from supervisord.events import ChildExited, Event, HookFinished, TreesChecked
from supervisord.logs import log
from supervisord.spokes import cgroups, procs

#: After a SIGKILL, how long the look at a tree waits for its processes to be gone.
KILL_WAIT_S = 0.5
#: Hooks running at once; one more is not started (and says so in the log).
MAX_HOOKS = 16

#: On an abnormal exit: how long children get to kill their task trees after SIGTERM
#: (a child's SIGTERM path kills its task with a grace capped at 1 s).
CLOSE_WAIT_S = 1.5


class ProcessSpoke:
    def __init__(self, inbox: asyncio.Queue[Event], drain_first: Callable[[], None], state_dir: str,
                 kill_grace_s: float) -> None:
        self.inbox = inbox
        self.drain_first = drain_first
        self.loop = asyncio.get_running_loop()
        self.c = cgroups.Containment(state_dir, kill_grace_s)  # also makes the daemon a subreaper
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supd-procs")
        #: running hooks: pid -> (name, process, its timeout's timer)
        self._hooks: dict[int, tuple[str, procs.Spawned, asyncio.TimerHandle]] = {}
        log("containment", mode=self.c.mode, detail=self.c.why, leftover_groups=self.c.kill_all() or None)

    @property
    def mode(self) -> str:
        return self.c.mode

    # ---- children ------------------------------------------------------------------

    def spawn_child(self, identity: str, argv: list[str], env: dict[str, str]) -> int:
        # posix_spawn, no Popen: a dropped Popen is reaped by CPython's subprocess._cleanup()
        # and its exit status (a boot failure's 3) would read as None.
        proc = procs.spawn_child(argv + self.c.child_args(), env=env)
        assert proc.pidfd is not None
        self.c.spawned[proc.pid] = proc
        self.loop.add_reader(proc.pidfd, self._exited, identity, proc)
        return proc.pid

    def _exited(self, identity: str, proc: procs.Spawned) -> None:
        if proc.pidfd is not None:
            self.loop.remove_reader(proc.pidfd)
        self.drain_first()  # what the child said before it died goes ahead of its exit
        returncode = proc.poll()  # reaped by pid
        proc.close_pidfd()
        self.c.spawned.pop(proc.pid, None)
        self.c.worker_exited(identity, proc.pid)
        self._sweep_adopted()  # its orphans have just been re-parented to us
        self.inbox.put_nowait(ChildExited(identity, proc.pid, returncode))

    def kill_child(self, pid: int) -> None:
        proc = self.c.spawned.get(pid)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)  # through its pidfd: never a reused pid

    def _sweep_adopted(self, kill_all: bool = False) -> None:
        """Kill and reap (by pid, through pidfds the loop watches) the orphans re-parented to
        the daemon: what is left of a dead child's task tree."""
        for pid, pidfd in self.c.adopted.sweep(self.c.spawned.keys(), time.monotonic(), kill_all):
            self.loop.add_reader(pidfd, self._adopted_exited, pid, pidfd)

    def _adopted_exited(self, pid: int, pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        self.c.adopted.reaped(pid)
        self._sweep_adopted()  # its own children come to us now
        self.c.remove_empty()

    # ---- hooks ------------------------------------------------------------------------

    def run_hook(self, name: str, argv: list[str], data: bytes, timeout_s: float) -> None:
        if len(self._hooks) >= MAX_HOOKS:
            self.inbox.put_nowait(HookFinished(name, None, f"{MAX_HOOKS} hooks already running: not started"))
            return
        try:
            proc = procs.spawn_fed(argv, env=dict(os.environ), data=data)
        except OSError as e:
            self.inbox.put_nowait(HookFinished(name, None, f"cannot start {argv[0]}: {e.strerror or e}"))
            return
        assert proc.pidfd is not None
        timer = self.loop.call_later(timeout_s, self._hook_overdue, proc.pid, timeout_s)
        self._hooks[proc.pid] = (name, proc, timer)
        self.loop.add_reader(proc.pidfd, self._hook_exited, proc.pid, None)

    def _hook_overdue(self, pid: int, timeout_s: float) -> None:
        held = self._hooks.get(pid)
        if held is not None:
            procs.signal_group(pid, signal.SIGKILL)  # its own session, led by our unreaped child
            self._hook_exited(pid, f"killed after its timeout of {timeout_s:g} s")

    def _hook_exited(self, pid: int, problem: str | None) -> None:
        held = self._hooks.get(pid)
        if held is None:
            return
        name, proc, timer = held  # (a pidfd polls readable only once its process has exited)
        if proc.pidfd is not None:
            self.loop.remove_reader(proc.pidfd)
        returncode = proc.poll() if problem is None else None
        if problem is not None:
            proc.wait(1.0)  # SIGKILLed just now: reap it
        del self._hooks[pid]
        timer.cancel()
        proc.close_pidfd()
        if problem is None and returncode != 0:
            problem = f"exited with {returncode}"
        self.inbox.put_nowait(HookFinished(name, returncode, problem))

    # ---- trees of lost attempts --------------------------------------------------------

    def terminate_tree(self, task_id: str, epoch: int, pgid: int | None) -> None:
        if self.c.mode == "cgroup":
            self.c.terminate_task(task_id)  # every attempt group of the task: no scan
        else:
            self._pool.submit(self._terminate_tagged, task_id, pgid)
        self._sweep_adopted()

    @staticmethod
    def _terminate_tagged(task_id: str, pgid: int | None) -> None:
        # a group signal only while its leader is still the task's (pids wrap)
        procs.terminate_task(pgid if procs.leads_task_group(pgid, task_id) else None, procs.tagged(task_id))

    def check_trees(self, attempts: list[tuple[str, int]]) -> None:
        self._sweep_adopted()
        if self.c.mode == "cgroup":
            for task_id, _ in attempts:
                self.c.kill_task(task_id)  # one write to cgroup.kill per group, here on the loop
        self._pool.submit(self._check, list(attempts))

    def _check(self, attempts: list[tuple[str, int]]) -> None:
        """SIGKILL what is left of each attempt's tree, wait a moment, report survivors. No
        new attempt of these tasks runs meanwhile (the core holds them), so a task's tag or
        groups name only what its lost attempts left."""
        alive = set()
        for task_id, epoch in attempts:
            if self.c.mode == "cgroup":
                paths = cgroups.groups(self.c.base or "", task_id)
                deadline = time.monotonic() + KILL_WAIT_S
                while any(cgroups.populated(p) for p in paths) and time.monotonic() < deadline:
                    time.sleep(0.005)
                if any(cgroups.populated(p) for p in paths):
                    alive.add((task_id, epoch))
                continue
            found = procs.tagged(task_id)
            procs.kill_task(None, found)
            _, left = psutil.wait_procs(found, timeout=KILL_WAIT_S)
            if left:
                alive.add((task_id, epoch))
        event = TreesChecked(frozenset(attempts), frozenset(alive))
        self.loop.call_soon_threadsafe(self._checked, event)

    def _checked(self, event: TreesChecked) -> None:
        self.c.remove_empty()
        self.inbox.put_nowait(event)

    def leftovers(self, task_ids: list[str]) -> set[str]:
        """At start: which of these tasks still have processes. In cgroup mode a previous
        daemon's groups were killed when this spoke was made; their tasks wait for the look
        that confirms it."""
        wanted = set(task_ids)
        if self.c.mode == "cgroup":
            return {t for p in cgroups.groups(self.c.base or "") if (t := cgroups.marked_task(p)) in wanted}
        return {tid for tid in procs.tagged_by_task() if tid in wanted}

    # ---- the end -------------------------------------------------------------------------

    def close(self, abnormal: bool) -> None:
        """On an abnormal exit (the loop crashed, no drain): SIGTERM each child (it kills its
        task tree and exits), wait up to CLOSE_WAIT_S, then SIGKILL what is left, every task
        cgroup and every adopted orphan, and reap them. Blocking: the loop has stopped."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for pid, (_, proc, timer) in list(self._hooks.items()):
            timer.cancel()
            if proc.pidfd is not None:
                self.loop.remove_reader(proc.pidfd)
            procs.signal_group(pid, signal.SIGKILL)
            proc.wait(1.0)
            proc.close_pidfd()
        self._hooks.clear()
        c = self.c
        if abnormal:
            for proc in c.spawned.values():
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + CLOSE_WAIT_S
            while (waiting := [p for p in c.spawned.values() if p.poll() is None]) \
                    and (left := deadline - time.monotonic()) > 0:
                select.select([p.pidfd for p in waiting if p.pidfd is not None], [], [], left)
        for proc in c.spawned.values():
            if proc.pidfd is not None:
                self.loop.remove_reader(proc.pidfd)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(1.0)
            proc.close_pidfd()
        c.spawned.clear()
        c.kill_all()
        for pid, (pidfd, _) in list(c.adopted.watched.items()):
            self.loop.remove_reader(pidfd)
        c.adopted.sweep((), time.monotonic(), kill_all=True)
        deadline = time.monotonic() + CLOSE_WAIT_S
        while c.adopted.watched and (left := deadline - time.monotonic()) > 0:
            select.select([fd for fd, _ in c.adopted.watched.values()], [], [], left)
            for pid in list(c.adopted.watched):
                c.adopted.reaped(pid)
            c.adopted.sweep((), time.monotonic(), kill_all=True)
        c.adopted.close()
        c.remove_empty()
