"""A fleet: two or three real supd daemons, each with its own state and runtime dirs, on one
real PostgreSQL (pgserver). Faults: kill -9 of a daemon mid-run, SIGSTOP past its lease then
SIGCONT, its database connection cut (a TCP proxy the test controls), the database restarted.
After each: every accepted task reaches exactly one final state, no attempt succeeds twice
(each exec task appends a line per run to its own file), and no process is left."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psutil
import pytest

from tests.conftest import Postgres, Supd, assert_no_leftovers, child_env, descendants_of, short_tmpdir
from proto import control as ctl
from proto.task import TaskSpec

pytestmark = pytest.mark.timeout(180)

#: short leases and heartbeats so faults play out in seconds
FLEET_TOML = """
[daemon]
heartbeat_s = 0.2
liveness = 5
drain_s = 5
[tasks]
kill_grace_s = 0.5
[journal]
lease_s = {lease_s}
host = "{host}"
"""


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.daemons: list[Supd] = []
        self.dirs: list[Path] = []

    def start(self, name: str, children: int = 2, lease_s: float = 3.0, url: str | None = None) -> Supd:
        d = short_tmpdir(f"supd-{name}-")
        self.dirs.append(d)
        env = child_env(SUPD_JOURNAL_URL=url or self.url)
        daemon = Supd(d, FLEET_TOML.format(lease_s=lease_s, host=name), children=children, env=env)
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def all_pids(self) -> list[int]:
        pids = []
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                pids += [d.proc.pid] + [p.pid for p in descendants_of(d.proc.pid)]
        return pids

    def stop(self) -> None:
        pids = self.all_pids()
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                try:
                    os.kill(d.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                d.stop()
        assert_no_leftovers(pids, self.ids())
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)

    def rows(self) -> dict[str, tuple[str, int, str | None]]:
        with psycopg.connect(self.url) as db:
            return {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT id, state, attempts, host FROM tasks")}

    def ids(self) -> set[str]:
        try:
            return set(self.rows())
        except psycopg.Error:
            return set()


@pytest.fixture
def fleet(pg_url: str) -> Iterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    f.stop()


def counting_task(runs: Path, name: str, sleep_s: float = 0.0) -> TaskSpec:
    """An exec task that appends one line to runs/name each time it starts, then sleeps."""
    code = (f"import time\nopen({str(runs / name)!r}, 'a').write('run\\n')\ntime.sleep({sleep_s})\nprint('ok')")
    return TaskSpec(kind="exec", argv=[sys.executable, "-c", code])


def wait_final(daemon: Supd, ids: list[str], timeout_s: float = 90.0) -> dict[str, ctl.TaskView]:
    return {v.id: v for v in daemon.wait(ids, timeout_s)}


def test_two_hosts_share_one_queue_and_any_host_answers(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a"), fleet.start("b")
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = a.submit(*[counting_task(runs, f"t{i}", 0.3) for i in range(12)])
    assert len(set(ids)) == 12 and all(len(i) == 36 for i in ids), "UUIDv7-style ids"
    done = wait_final(b, ids)  # waited for on the other host: woken by supd_finished
    assert {v.state for v in done.values()} == {"succeeded"}
    assert {v.host for v in done.values()} == {"a", "b"}, "both hosts ran some"
    assert all((runs / f"t{i}").read_text() == "run\n" for i in range(12)), "each ran exactly once"
    got = b.request(ctl.Get(id=ids[0]))
    assert isinstance(got, ctl.Tasks) and got.tasks[0].result == "ok\n"
    hosts = b.info(ctl.Hosts())
    assert hosts["host"] == "b" and [h["host"] for h in hosts["hosts"]] == ["a", "b"]
    status = a.info(ctl.Status())
    assert status["fleet"]["host"] == "a" and status["fleet"]["journal"] == "ok"
    listed = a.request(ctl.List(limit=100))
    assert isinstance(listed, ctl.Tasks) and {v.id for v in listed.tasks} == set(ids)
