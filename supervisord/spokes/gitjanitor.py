"""The daemon's git housekeeping, off the loop: one thread, one queue of jobs.

Owns the thread that runs `supervisord.spokes.git` jobs for the hub — removing the
worktrees and branches of pruned tasks, sweeping worktrees left by a stopped daemon —
so that the loop never waits on git. A job's outcome is one log line (stdlib logging,
which is thread-safe and goes to the daemon's log); a failing job is logged, never fatal.
Imports the stdlib and `supervisord.spokes.git` only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from supervisord.spokes.git import GitError

logger = logging.getLogger("supd.git")

#: how long `close` waits for the job in hand (the rest are dropped: the next start sweeps)
CLOSE_WAIT_S = 10.0


class Janitor:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[str, Callable[..., str], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name="supd-git", daemon=True)
        self._thread.start()

    def run(self, what: str, fn: Callable[..., str], *args: Any, **kwargs: Any) -> None:
        """Queue `fn(*args, **kwargs)`; returns at once."""
        self._jobs.put((what, fn, args, kwargs))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            what, fn, args, kwargs = job
            try:
                logger.info("event=git_job job=%r result=%r", what, fn(*args, **kwargs))
            except (GitError, OSError) as e:
                logger.warning("event=git_job_failed job=%r error=%r", what, str(e))
            except Exception:  # a bug costs one job, never the thread
                logger.exception("event=git_job_failed job=%r", what)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(CLOSE_WAIT_S)
