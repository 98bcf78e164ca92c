"""The hub's process spoke: children spawned and watched, lost attempts' trees ended.

Owns the pidfds of the children it spawned (an exit becomes a `ChildExited` on the
inbox, after the children socket has been drained, so a child's last messages reach
the hub before its exit does) and a worker thread for what must not run on the loop:
scans of the process table for the trees of lost attempts (`TreesChecked`). Syscalls
themselves are `procs`'s.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil

from supervisord.events import ChildExited, Event, TreesChecked
from supervisord.spokes import procs

#: After a SIGKILL, how long the worker thread waits for a tree's processes to be gone.
KILL_WAIT_S = 0.5
#: On an abnormal exit: how long children get to kill their trees after SIGTERM.
EMERGENCY_GRACE_S = 1.5


class ProcessSpoke:
    def __init__(self, inbox: asyncio.Queue[Event], drain_first: Callable[[], None]) -> None:
        self.inbox = inbox
        self.drain_first = drain_first
        self.loop = asyncio.get_running_loop()
        self._pidfds: dict[int, int] = {}  # pid -> pidfd
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supd-procs")

    # ---- children ------------------------------------------------------------------

    def spawn_child(self, identity: str, argv: list[str], env: dict[str, str]) -> int:
        proc = procs.spawn(argv, env=env, cwd=None, stdin_data=False, new_session=True, capture=False)
        pidfd = procs.pidfd_open(proc.pid)
        self._pidfds[proc.pid] = pidfd
        self.loop.add_reader(pidfd, self._exited, identity, proc.pid, pidfd)
        return proc.pid

    def _exited(self, identity: str, pid: int, pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        self.drain_first()  # what the child said before it died is ahead of its exit
        returncode = procs.reap(pid)
        os.close(self._pidfds.pop(pid, pidfd))
        self.inbox.put_nowait(ChildExited(identity, pid, returncode))

    def kill_child(self, pid: int) -> None:
        pidfd = self._pidfds.get(pid)
        if pidfd is not None:
            procs.signal_pidfd(pidfd, signal.SIGKILL)

    # ---- trees of lost attempts --------------------------------------------------------

    def terminate_tree(self, task_id: str, epoch: int, pgid: int | None) -> None:
        self._pool.submit(self._terminate, task_id, pgid)

    @staticmethod
    def _terminate(task_id: str, pgid: int | None) -> None:
        procs.terminate_task(pgid, procs.tagged(task_id))

    def check_trees(self, attempts: list[tuple[str, int]]) -> None:
        self._pool.submit(self._check, list(attempts))

    def _check(self, attempts: list[tuple[str, int]]) -> None:
        alive = set()
        for task_id, epoch in attempts:
            found = procs.tagged(task_id)
            procs.kill_task(None, found)
            _, left = psutil.wait_procs(found, timeout=KILL_WAIT_S)
            if left:
                alive.add((task_id, epoch))
        event = TreesChecked(frozenset(attempts), frozenset(alive))
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, event)

    def leftovers(self, task_ids: list[str]) -> set[str]:
        wanted = set(task_ids)
        return {tid for tid in procs.tagged_by_task() if tid in wanted}

    # ---- the end -------------------------------------------------------------------------

    def emergency_stop(self, pids: list[int]) -> None:
        """An abnormal exit: SIGTERM each child (it kills its task tree on the way out), give
        them a moment, then SIGKILL what is left."""
        children = []
        for pid in pids:
            pidfd = self._pidfds.get(pid)
            if pidfd is not None and procs.signal_pidfd(pidfd, signal.SIGTERM):
                try:
                    children.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    continue
        _, left = psutil.wait_procs(children, timeout=EMERGENCY_GRACE_S)
        for proc in left:
            procs.signal_pidfd(self._pidfds[proc.pid], signal.SIGKILL)

    def close(self) -> None:
        for pid, pidfd in list(self._pidfds.items()):
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
        self._pidfds.clear()
        self._pool.shutdown(wait=True, cancel_futures=False)
