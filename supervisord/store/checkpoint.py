"""The SQLite journal's checkpoint thread: copies the WAL into the database off the event loop.

With SQLite's auto-checkpoint the commit that crosses the threshold copies the whole WAL and
fsyncs it inside the hub's loop; `supervisord.store.sqlite` turns that off and wakes this
thread instead (its own connection; `wal_checkpoint(PASSIVE)` never blocks a writer).
Imports the stdlib only.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

#: the checkpointer copies the WAL into the database once it is this big
CHECKPOINT_ABOVE_BYTES = 4 << 20


class Checkpointer(threading.Thread):
    """Copies the WAL into the database off the event loop (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="store-checkpoint", daemon=True)
        self.path = path
        self.wal = Path(f"{path}-wal")
        #: set by a write that may have grown the WAL, and by `stop`
        self.wake = threading.Event()
        self._stopping = False
        self._error: str | None = None

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._stopping:
                    return
                self._step(db)
        finally:
            db.close()

    def _step(self, db: sqlite3.Connection) -> None:
        try:
            size = self.wal.stat().st_size
        except OSError:
            return
        if size < CHECKPOINT_ABOVE_BYTES:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            self._error = str(e)

    def take_error(self) -> str | None:
        """The last checkpoint failure, once (the hub's thread logs it)."""
        error, self._error = self._error, None
        return error

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self.join()
