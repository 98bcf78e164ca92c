"""The daemon's git work, off the loop: one thread, one queue of jobs.

Owns the thread that runs `supervisord.spokes.git` jobs for the hub, so that the loop
never waits on git. Two kinds of job:

- housekeeping (`run`): removing the worktrees and branches of pruned tasks, sweeping
  worktrees left by a stopped daemon. Its outcome is one log line (stdlib logging, which
  is thread-safe and goes to the daemon's log); a failing job is logged, never fatal.
- questions (`ask`): a job whose answer the hub needs (the `Diff` verb's text). Its
  result, or the `GitError`'s words, comes back on the inbox as a `GitAnswered`, and its
  `then` runs on the loop — like the process spoke's `TreesChecked`. Every question is
  answered exactly once, also when it fails; questions still queued at `close` are not.

Imports the stdlib, `supervisord.events` and `supervisord.spokes.git` only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisord.events import Event, GitAnswered
from supervisord.spokes.git import GitError

logger = logging.getLogger("supd.git")

#: how long `close` waits for the job in hand (the rest are dropped: the next start sweeps)
CLOSE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Job:
    what: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: a question's answer goes here, on the loop; None: housekeeping, logged
    then: Callable[[Any, str | None], None] | None = None


class Janitor:
    def __init__(self, post: Callable[[Event], None] | None = None) -> None:
        """`post` puts an event on the hub's inbox from this thread (the daemon gives
        `loop.call_soon_threadsafe(inbox.put_nowait, …)`); without it `ask` is refused."""
        self._post = post
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="supd-git", daemon=True)
        self._thread.start()

    def run(self, what: str, fn: Callable[..., str], *args: Any, **kwargs: Any) -> None:
        """Queue `fn(*args, **kwargs)`; returns at once."""
        self._jobs.put(_Job(what, fn, args, kwargs))

    def ask(self, what: str, then: Callable[[Any, str | None], None], fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> None:
        """Queue `fn(*args, **kwargs)`; returns at once. Later, on the loop, `then(result, None)`
        — or `then(None, why)` when git failed."""
        if self._post is None:
            raise RuntimeError("this janitor has no inbox to answer through")
        self._jobs.put(_Job(what, fn, args, kwargs, then))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            result, error = None, None
            try:
                result = job.fn(*job.args, **job.kwargs)
                if job.then is None:
                    logger.info("event=git_job job=%r result=%r", job.what, result)
            except (GitError, OSError) as e:
                error = str(e)
                logger.warning("event=git_job_failed job=%r error=%r", job.what, error)
            except Exception as e:  # a bug costs one job, never the thread
                error = f"{job.what} failed inside supd: {e!r} (see its log)"
                logger.exception("event=git_job_failed job=%r", job.what)
            if job.then is not None and self._post is not None:
                try:
                    self._post(GitAnswered(job.then, result, error))
                except RuntimeError:  # the loop is closed: the daemon has stopped, nobody waits
                    logger.info("event=git_answer_dropped job=%r reason=loop_closed", job.what)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(CLOSE_WAIT_S)
