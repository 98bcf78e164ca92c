"""The shared journal of a fleet, off the event loop: a `PgStore` on its own thread.

Database I/O never runs on the hub's loop. Why a worker thread and not psycopg's async
connection on the loop: the hub's verbs are plain functions of one batch of events (they
never await; tests/hub drives them without a loop), and a thread keeps them so — every
database call becomes a job whose answer comes back through the inbox like any other
event. A thread also keeps the blocking parts of libpq (connect, a cut TCP connection that
only `tcp_user_timeout` ends) away from the loop by construction.

- `Journal` (this module) owns the thread, the `PgStore` on it, and a second thread that
  `LISTEN`s (`supd_submit`, `supd_finished`, `supd_cancel`, `supd_gate`, `supd_flow_finished`,
  `supd_flow_cancel`; and `supd_events`, handed on only while `relay_events`). Jobs run in order (FIFO), so the hub's group commit, claims and reads
  happen in the order it asked for them.
- Periodic duties on the thread: renew this host's leases (`LeasesRenewed`), beat in the
  `hosts` table, rescue expired leases of any host, renew this host's workflow engines'
  leases and take over workflows whose engine's lease ended (`FlowLeases`), refresh the
  fleet's totals.
- A lost connection is `JournalChanged(problem)`; the thread reconnects with exponential
  backoff (capped) and says `JournalChanged(None)` when it is back. Noted writes are kept
  by the `PgStore` across the outage and committed after it.
- `FleetStore` is the hub's `Store` in fleet mode: it notes writes (a copy of the task:
  the hub keeps changing its own) and passes them to the thread; `commit()` never waits.

Imports the stdlib, psycopg, `supervisord.core`, `supervisord.events` and the store only.
"""

from __future__ import annotations

import builtins
import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from proto.task import Line, TaskView
from supervisord.core import lease
from supervisord.core.task import Task
from supervisord.events import (
    FleetNews,
    FlowLeases,
    JournalAnswered,
    JournalChanged,
    JournalNotified,
    LeasesRenewed,
    WritesFenced,
)
from supervisord.logs import log
from supervisord.store import pgevents, pgflows
from supervisord.store.base import StoreError
from supervisord.store.postgres import PgStore, connect

#: reconnect backoff: first wait, cap (seconds)
BACKOFF_S = (0.1, 5.0)
#: the fleet's totals and the hosts table are refreshed this often (seconds)
TOTALS_EVERY_S = 2.0
#: how many expired leases one rescue pass takes
RESCUE_BATCH = 200

Post = Callable[[object], None]


class Journal:
    """The thread that owns the fleet's `PgStore` (see the module docstring)."""

    def __init__(self, url: str, host: str, lease_s: float, *, pid: int, started_at: float) -> None:
        self.url, self.host, self.lease_s = url, host, lease_s
        self.post: Post = lambda event: None
        self.pid, self.started_at = pid, started_at
        self.jobs: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.store: PgStore | None = None
        #: what is wrong with the connection (None while it works); read by the hub
        self.problem: str | None = "connecting"
        #: the latest fleet totals (a dict replaced whole: safe to read from the hub)
        self.totals: dict[str, object] = {}
        #: the host's numbers for its heartbeat row, set by the hub each turn
        self.children, self.running, self.phase = 0, 0, "starting"
        self.write_errors = 0
        #: hand the fleet's task events (`supd_events`) to the hub: someone watches them there
        self.relay_events = False
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="journal", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="journal-listen", daemon=True)

    # ---- the hub's side (the loop thread) -------------------------------------------------

    def open(self) -> None:
        """Connect, migrate and check the schema now (at start: a bad URL, a refused password
        or a newer schema stops supd with one line, `StoreError`)."""
        self.store = PgStore(self.url, host=self.host)
        self.store.lease_s = self.lease_s
        self.problem = None

    def start(self, post: Post) -> None:
        """Run the threads; they hand their events to `post` (thread-safe)."""
        self.post = post
        self._worker.start()
        self._listener.start()

    def ask(self, job: Callable[[PgStore], Any], then: Callable[[Any, str | None], None]) -> None:
        """Run `job(store)` on the thread; `then(result, error)` runs on the hub afterwards."""
        self.jobs.put(("ask", (job, then)))

    def note(self, op: str, arg: Any) -> None:
        """A write for the next group commit: ("claim" | "record", task copy), ("cancel", id)."""
        self.jobs.put((op, arg))

    def close(self, timeout_s: float = 10.0) -> None:
        if not self._worker.is_alive():
            if self.store is not None:
                self._final_commit(self.store)
            return
        self.jobs.put(("close", None))
        self._worker.join(timeout_s)
        self._stop.set()
        self._listener.join(timeout_s)

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        assert self.store is not None
        store = self.store
        next_renew = next_totals = 0.0
        backoff = BACKOFF_S[0]
        while True:
            now = time.monotonic()
            if self.problem is not None:  # reconnect, then carry on (noted writes were kept)
                if not self._reconnect(store):
                    self._sleep(backoff)
                    backoff = min(BACKOFF_S[1], backoff * 2)
                    if self._closing():
                        return
                    continue
                backoff = BACKOFF_S[0]
            try:
                if now >= next_renew:
                    next_renew = now + lease.renew_every_s(self.lease_s)
                    self._periodic(store, now)
                if now >= next_totals:
                    next_totals = now + TOTALS_EVERY_S
                    self.totals = {**store.fleet_counts(), "hosts_list": store.hosts(), "keys": store.key_holders()}
                try:
                    op, arg = self.jobs.get(timeout=max(0.0, min(next_renew, next_totals) - time.monotonic()))
                except queue.Empty:
                    continue
                if op == "close":
                    self._final_commit(store)
                    return
                self._do(store, op, arg)
            except (psycopg.OperationalError, psycopg.InterfaceError, StoreError) as e:
                self._lost(store, e)
            except Exception as e:  # noqa: BLE001 (a bug costs one job, never the thread)
                log("journal_job_failed", logging.ERROR, error=repr(e))

    def _do(self, store: PgStore, op: str, arg: Any) -> None:
        match op:
            case "claim":
                store.claim(arg)
            case "record":
                store.record(arg)
            case "cancel":
                store.request_cancel(arg)
            case "flow":
                store.save_noted(*arg)
            case "output":
                store.append_output(*arg)
            case "release":
                store.release_key(*arg)
            case "commit":
                self._commit(store)
            case "ask":
                job, then = arg
                try:
                    result = job(store)
                except StoreError as e:
                    self.post(JournalAnswered(then, None, str(e)))
                    if store.db.broken or store.db.closed:
                        raise  # the connection is gone: reconnect (`_lost`)
                    return
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    self.post(JournalAnswered(then, None, f"the journal at {store.where} is unreachable: {e}"))
                    raise
                except psycopg.Error as e:
                    self.post(JournalAnswered(then, None, f"{store.where}: {str(e).strip()}"))
                    return
                self.post(JournalAnswered(then, result, None))

    def _commit(self, store: PgStore) -> None:
        refused = store.commit()
        self.write_errors = store.write_errors
        if store.pending and (store.db.broken or store.db.closed):
            raise StoreError(f"the journal at {store.where} is unreachable")
        if refused:
            self.post(WritesFenced(refused))
        spent, done = store.take_batch_news()
        if spent or done:
            self.post(FleetNews(spent, done, None, False))

    def _periodic(self, store: PgStore, now: float) -> None:
        held = store.renew(self.host, self.lease_s)
        self.post(LeasesRenewed(now, held))
        store.heartbeat(self.host, self.pid, self.started_at, self.children, self.running, self.phase)
        store.rescue(RESCUE_BATCH)
        flows_held, flows_lost = store.renew_workflows(self.host, self.lease_s)
        taken = store.take_workflows(self.host, self.lease_s)
        if flows_held or flows_lost or taken:
            self.post(FlowLeases(flows_held, taken, flows_lost))
        store.stop_spent()  # retries written back by any host into a batch that has spent its cap
        if store.pending:
            self._commit(store)
        spent, done = store.take_batch_news()
        self.post(FleetNews(spent, done, store.gate(), True))

    def _final_commit(self, store: PgStore) -> None:
        try:
            if self.problem is None:
                store.heartbeat(self.host, self.pid, self.started_at, 0, 0, "stopped")
            store.close()
        except (psycopg.Error, StoreError) as e:
            log("journal_close_failed", logging.ERROR, error=str(e), pending=store.pending)

    def _lost(self, store: PgStore, e: BaseException) -> None:
        first = self.problem is None
        self.problem = (f"the journal at {store.where} is unreachable ({str(e).strip().splitlines()[0] if str(e) else e!r}):"
                        " submits are refused, running attempts go on until their leases would end; reconnecting")
        if first:
            log("journal_lost", logging.ERROR, url=store.where, error=str(e).strip()[:200], pending=store.pending)
            self.post(JournalChanged(self.problem))
        try:
            store.db.close()
        except psycopg.Error:
            pass

    def _reconnect(self, store: PgStore) -> bool:
        try:
            store.db = connect(self.url)
        except StoreError:
            return False
        log("journal_back", url=store.where, pending=store.pending)
        self.problem = None
        self.post(JournalChanged(None))
        return True

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake for a `close` (kept for the loop to see)."""
        try:
            op, arg = self.jobs.get(timeout=seconds)
        except queue.Empty:
            return
        if op == "close":
            self.jobs.put((op, arg))
        elif self.store is not None:
            if op == "ask":
                self.post(JournalAnswered(arg[1], None, self.problem or "the journal is unreachable"))
            elif op != "commit":
                self._do(self.store, op, arg)  # a noted write: kept in memory for the commit

    def _closing(self) -> bool:
        try:
            op, arg = self.jobs.get_nowait()
        except queue.Empty:
            return False
        if op == "close":
            assert self.store is not None
            log("journal_closed_unreachable", logging.ERROR, pending=self.store.pending)
            return True
        self.jobs.put((op, arg))  # not ours to take now (order matters less than loss here)
        return False

    def _listen(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                db = connect(self.url, application="supd-listen")
            except StoreError:
                self._stop.wait(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
                continue
            backoff = BACKOFF_S[0]
            try:
                for channel in ("supd_submit", "supd_finished", "supd_cancel", "supd_gate", "supd_flow_finished",
                                "supd_flow_cancel", pgevents.CHANNEL):
                    db.execute(f"LISTEN {channel}")
                self.post(JournalNotified("supd_submit", "listening"))  # claim what came meanwhile
                while not self._stop.is_set():
                    for n in db.notifies(timeout=0.5):
                        if n.channel != pgevents.CHANNEL or self.relay_events:  # the fleet's watch: if watched
                            self.post(JournalNotified(n.channel, n.payload))
            except psycopg.Error:
                pass
            finally:
                try:
                    db.close()
                except psycopg.Error:
                    pass


class FleetStore:
    """The hub's `Store` in fleet mode: writes go to the journal thread, reads are its jobs
    (`Journal.ask`) and never happen here. See the module docstring."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._noted = 0

    @property
    def write_errors(self) -> int:
        return self.journal.write_errors

    @property
    def pending(self) -> int:
        return self._noted

    def accept(self, tasks: Sequence[Task], batch: Any = None) -> None:
        raise StoreError("in a fleet a batch is accepted by the journal thread (hub.fleet.submit)")

    def claim(self, task: Task) -> None:
        self._noted += 1
        self.journal.note("claim", copy.copy(task))

    def record(self, task: Task) -> None:
        self._noted += 1
        self.journal.note("record", copy.copy(task))

    def request_cancel(self, task_id: str) -> None:
        self._noted += 1
        self.journal.note("cancel", task_id)

    def release_key(self, task_id: str, epoch: int) -> None:
        """The fleet-wide key of this attempt is free (written with the next group commit)."""
        self._noted += 1
        self.journal.note("release", (task_id, epoch))

    def commit(self) -> list[tuple[str, int]]:
        if self._noted:
            self._noted = 0
            self.journal.note("commit", None)
        return []  # refusals come back as `WritesFenced`

    def unfinished(self) -> list[Task]:
        return []  # a fleet recovers through `PgStore.attempts_of` (hub.fleetrestart)

    def get(self, task_id: str) -> TaskView | None:
        raise StoreError("in a fleet reads are journal jobs (hub.fleet)")

    def list(self, state: str | None, limit: int, budget_bytes: int,
             batches: Sequence[str] | None = None) -> list[TaskView]:
        raise StoreError("in a fleet reads are journal jobs (hub.fleet)")

    def known(self, ids: Sequence[str]) -> set[str]:
        raise StoreError("in a fleet reads are journal jobs (hub.fleet)")

    # ---- batches are tallied in the database (pgrules); workflows' reads are journal jobs ----

    def record_batch(self, batch: Any) -> None:
        pass  # a fleet's batch is stored with its tasks and tallied by the commit that ends each

    def get_batch(self, batch_id: str) -> None:
        return None  # a fleet reads it as a journal job (hub.fleet.batch)

    def open_batches(self) -> builtins.list[Any]:
        return []

    def batch_ids(self, label: str, limit: int = 10_000) -> builtins.list[str]:
        return []

    def accept_workflow(self, wf: Any, tasks: Sequence[Task]) -> None:
        raise StoreError("in a fleet a workflow is accepted by the journal thread (hub.fleetflows.run)")

    def save_workflow(self, wf: Any, tasks: Sequence[Task] = ()) -> None:
        """The record as it is now (encoded here: the hub goes on changing it) and its new
        tasks, for the next group commit (fenced on this host's epoch of the workflow)."""
        self._noted += 1
        self.journal.note("flow", (pgflows.note(wf), [copy.copy(t) for t in tasks]))

    def workflow(self, wf_id: str) -> None:
        return None

    def workflows(self, state: str | None, limit: int) -> builtins.list[Any]:
        return []

    def unfinished_workflows(self) -> builtins.list[Any]:
        return []

    def workflow_tasks(self, wf_id: str) -> dict[str, Task]:
        return {}

    # ---- agent work: transcripts in the journal (read as journal jobs: hub.fleet.logs) ----

    def append_output(self, task_id: str, first: int, lines: builtins.list[Line], raw_bytes: int) -> None:
        """Transcript lines for the next group commit (numbered on from the extent the claim read)."""
        self._noted += 1
        self.journal.note("output", (task_id, first, list(lines), raw_bytes))

    def transcript(self, task_id: str, after: int, budget_bytes: int) -> tuple[builtins.list[Line], int]:
        raise StoreError("in a fleet reads are journal jobs (hub.fleet.logs)")

    def transcript_extent(self, task_id: str) -> tuple[int, int]:
        return 0, 0  # a first attempt's; a claimed retry's extent comes with its claim (hub.fleet)

    def task(self, task_id: str) -> Task | None:
        raise StoreError("in a fleet reads are journal jobs (hub.fleet.retry)")

    def worktree_tasks(self) -> dict[str, tuple[str, str]]:
        return {}

    def take_pruned_worktrees(self) -> builtins.list[tuple[str, str, str, str | None]]:
        return []

    def prune(self, finished_before: float, limit: int = 500) -> int:
        self.journal.ask(lambda s: s.prune(finished_before, limit), lambda r, e: None)
        return 0

    def check(self) -> str | None:
        return self.journal.problem

    def counts(self) -> dict[str, int]:
        tasks = self.journal.totals.get("tasks", {})
        return dict(tasks) if isinstance(tasks, dict) else {}

    def close(self) -> None:
        self.commit()
        self.journal.close()
