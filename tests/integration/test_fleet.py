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
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
kill_grace_s = {kill_grace_s}
[journal]
lease_s = {lease_s}
host = "{host}"
"""


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.daemons: list[Supd] = []
        self.dirs: list[Path] = []

    def start(self, name: str, children: int = 2, lease_s: float = 3.0, url: str | None = None,
              extra: str = "") -> Supd:
        d = short_tmpdir(f"supd-{name}-")
        self.dirs.append(d)
        env = child_env(SUPD_JOURNAL_URL=url or self.url)
        daemon = Supd(d, FLEET_TOML.format(lease_s=lease_s, host=name, kill_grace_s=0.5) + extra, children=children, env=env)
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


def _exactly_once_or_rescued(fleet: Fleet, runs: Path, names: dict[str, str], done: dict[str, ctl.TaskView]) -> None:
    """Every task is final exactly once (one row, one final state) and succeeded with one
    recorded success; a task rescued from a dead host may have *started* more than once
    (at-least-once per attempt), never more often than its attempts."""
    rows = fleet.rows()
    for tid, name in names.items():
        state, attempts, _ = rows[tid]
        assert state == done[tid].state == "succeeded", (tid, state)
        starts = (runs / name).read_text().count("run")
        assert 1 <= starts <= attempts, (tid, starts, attempts)


def test_kill_9_of_a_daemon_mid_run_its_tasks_are_rescued_by_the_other(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", lease_s=2.0), fleet.start("b", lease_s=2.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    names = {}
    for i in range(6):
        (tid,) = a.submit(counting_task(runs, f"k{i}", 1.5))
        names[tid] = f"k{i}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r[0] == "running" and r[2] == "a" for r in fleet.rows().values()):
        time.sleep(0.05)
    victims = [tid for tid, r in fleet.rows().items() if r[0] == "running" and r[2] == "a"]
    assert victims, "a runs something"
    assert a.proc is not None
    a_tree = [a.proc.pid] + [p.pid for p in descendants_of(a.proc.pid)]
    a.proc.kill()
    a.proc.wait()
    done = wait_final(b, list(names))
    _exactly_once_or_rescued(fleet, runs, names, done)
    assert all(done[t].host == "b" for t in victims), "a's attempts were rescued and run by b"
    assert_no_leftovers(a_tree, set(names))


def test_sigstop_past_the_lease_then_sigcont_late_results_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1, lease_s=2.0), fleet.start("b", children=1, lease_s=2.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    b.request(ctl.Scale(children=0))  # only a can claim: it surely runs the task
    (tid,) = a.submit(counting_task(runs, "s", 1.0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fleet.rows()[tid][0] != "running":
        time.sleep(0.05)
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    b.request(ctl.Scale(children=1))
    # Past a's lease (2 s), b rescues the attempt and claims it again; a stays stopped until it
    # has (a fixed sleep here raced b's rescue on a loaded machine: a then finished it first).
    deadline = time.monotonic() + 60
    while fleet.rows()[tid][1:] != (2, "b") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.rows()[tid][1:] == (2, "b"), fleet.rows()[tid]
    os.kill(a.proc.pid, signal.SIGCONT)
    (done,) = wait_final(b, [tid]).values()
    assert done.state == "succeeded" and done.host == "b" and done.attempts == 2
    time.sleep(1.0)  # a's late writes, if any, arrive now: each is refused
    assert fleet.rows()[tid] == ("succeeded", 2, "b"), "the rescued attempt's end stands"
    assert a.info(ctl.Health())["fleet"]["journal"] == "ok", "a carries on"
    assert "attempt_fenced" in a.log() or "store_fenced" in a.log(), "a learnt the attempt is not its own"
    starts = (runs / "s").read_text().count("run")
    assert starts in (1, 2)


class Proxy:
    """A TCP proxy to the database's unix socket that the test can cut and restore."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self.conns: list[asyncio.StreamWriter] = []
        self.open = True
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(5)

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_r, up_w = await asyncio.open_unix_connection(self.socket_path)
        self.conns += [writer, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def cut(self) -> None:
        def do() -> None:
            self.open = False
            for w in self.conns:
                w.transport.abort()
            self.conns.clear()
        self.loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "open", True)

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_daemon_cut_from_the_database_stops_its_attempts_refuses_submits_and_comes_back(
        fleet: Fleet, postgres: Postgres, tmp_path: Path) -> None:
    proxy = Proxy(os.path.join(postgres.socket_dir, ".s.PGSQL.5432"))
    try:
        dbname = urlsplit(fleet.url).path.lstrip("/")
        a = fleet.start("a", children=1, lease_s=3.0, url=f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}")
        b = fleet.start("b", children=1, lease_s=3.0)
        runs = tmp_path / "runs"
        runs.mkdir()
        b.request(ctl.Scale(children=0))
        (tid,) = a.submit(counting_task(runs, "c", 6.0))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and fleet.rows()[tid][0] != "running":
            time.sleep(0.05)
        proxy.cut()
        time.sleep(0.5)
        refused = a.request(ctl.Submit(tasks=[counting_task(runs, "never")]))
        assert isinstance(refused, ctl.Error) and refused.kind == "journal", refused
        assert "unreachable" in refused.message
        health = a.info(ctl.Health())
        assert health["status"] == "failing" and "unreachable" in health["journal"]
        b.request(ctl.Scale(children=1))
        (done,) = wait_final(b, [tid]).values()  # a stopped its attempt; b rescued and ran it
        assert done.state == "succeeded" and done.host == "b"
        assert a.proc is not None and a.proc.poll() is None, "a never exits on a database blip"
        assert "no lease renewal" in a.log(), "a stopped its own attempt before its lease ended"
        assert a.proc is not None and not [p for p in descendants_of(a.proc.pid) if _runs_task(p, "'c'")], \
            "a killed its attempt's tree"
        proxy.restore()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and a.info(ctl.Health())["journal"] != "ok":
            time.sleep(0.2)
        assert a.info(ctl.Health())["journal"] == "ok", "reconnected"
        (again,) = a.submit(counting_task(runs, "after"))
        assert wait_final(a, [again])[again].state == "succeeded"
        assert fleet.rows()[tid] == ("succeeded", 2, "b")
    finally:
        proxy.close()


def _runs_task(p: psutil.Process, name: str) -> bool:
    try:
        return any(name in part for part in p.cmdline())
    except psutil.Error:
        return False


def test_the_database_restarted_daemons_carry_on(fleet: Fleet, postgres: Postgres, tmp_path: Path) -> None:
    a, b = fleet.start("a", lease_s=5.0), fleet.start("b", lease_s=5.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    first = a.submit(*[counting_task(runs, f"r{i}", 0.2) for i in range(4)])
    wait_final(b, first)
    postgres.restart()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(d.info(ctl.Health())["journal"] == "ok" for d in (a, b)):
        time.sleep(0.2)
    ids = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not ids:
        reply = b.request(ctl.Submit(tasks=[counting_task(runs, f"p{i}", 0.2) for i in range(4)]))
        ids = reply.ids if isinstance(reply, ctl.Accepted) else []
        time.sleep(0.2)
    done = wait_final(a, ids)
    assert {v.state for v in done.values()} == {"succeeded"}
    assert all((runs / f"p{i}").read_text() == "run\n" for i in range(4))
    assert a.proc is not None and a.proc.poll() is None and b.proc is not None and b.proc.poll() is None


def timed_task(log: Path, name: str, sleep_s: float, key: str) -> TaskSpec:
    """An exec task with an exclusive key that logs when it starts and ends (wall clock)."""
    code = (f"import time\nf = open({str(log)!r}, 'a')\nf.write(f'{{time.time()}} start {name}\\n'); f.flush()\n"
            f"time.sleep({sleep_s})\nf.write(f'{{time.time()}} end {name}\\n')\nprint('ok')")
    return TaskSpec(kind="exec", argv=[sys.executable, "-c", code], key=key)


def test_an_exclusive_key_holds_across_hosts_no_two_attempts_overlap(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a"), fleet.start("b")
    log = tmp_path / "key.log"
    ids = a.submit(*[timed_task(log, f"t{i}", 0.2, "repo") for i in range(8)])
    ids += b.submit(*[timed_task(log, f"u{i}", 0.2, "repo") for i in range(4)])
    # whichever host ran the first task is scaled to no children: the other must run the rest
    # (the host that just released the key is awake and would often claim every next one)
    deadline = time.monotonic() + 30
    while not (first := {row[2] for row in fleet.rows().values() if row[0] == "succeeded"}):
        assert time.monotonic() < deadline, "no task finished"
        time.sleep(0.05)
    (a if "a" in first else b).request(ctl.Scale(children=0))
    done = wait_final(a, ids)
    assert {v.state for v in done.values()} == {"succeeded"}
    assert {v.host for v in done.values()} == {"a", "b"}, "both hosts ran some"
    spans: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        at, _, name = line.split()
        spans.setdefault(name, []).append(float(at))
    ordered = sorted(spans.values())
    assert len(ordered) == 12 and all(len(s) == 2 for s in ordered), "each ran once"
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        assert start >= end, "key repo (limit 1): no two attempts overlap in time, on any host"
    deadline = time.monotonic() + 10  # the fleet's totals are refreshed every 2 s
    while (keys := a.info(ctl.Status())["fleet"]["keys"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keys == {}, "every key released"


def claude(prompt: str, **kw: Any) -> TaskSpec:
    return TaskSpec(kind="claude", prompt=prompt, model="claude-sonnet-4-5", **kw)


def test_a_429_on_one_host_closes_the_gate_on_every_host(fleet: Fleet, fakeapi: Any, claude_config: str) -> None:
    a, b = fleet.start("a", children=1, extra=claude_config), fleet.start("b", children=1, extra=claude_config)
    run = uuid.uuid4().hex[:8]
    (first,) = a.submit(claude(f"[[status:429]] [[retry_after:4]] [[once]] first {run}", retries=1))
    deadline = time.monotonic() + 30
    while not all(d.info(ctl.Status())["gate"]["state"] == "closed" for d in (a, b)):
        assert time.monotonic() < deadline, (a.log()[-2000:], b.log()[-2000:])
        time.sleep(0.05)
    assert all(d.info(ctl.Health())["gate"]["state"] == "closed" for d in (a, b)), "health shows it on every host"
    others = b.submit(*[claude(f"after the 429 {i} {run}") for i in range(3)])
    (shell,) = b.submit(TaskSpec(kind="exec", argv=["true"]))
    assert wait_final(b, [shell], 20)[shell].state == "succeeded", "exec tasks still run"
    done = wait_final(a, [first, *others])
    assert {v.state for v in done.values()} == {"succeeded"}, [v.error for v in done.values()]
    log = [e for e in fakeapi.stats()["log"] if run in e["prompt"]]
    later = [e["at"] - log[0]["at"] for e in log[1:]]
    assert len(later) == 4 and min(later) >= 3.5, later  # no host reached the API before the reset


def test_a_batch_budget_holds_across_hosts(fleet: Fleet, fakeapi: Any, claude_config: str) -> None:
    a, b = fleet.start("a", children=1, extra=claude_config), fleet.start("b", children=1, extra=claude_config)
    run = uuid.uuid4().hex[:8]
    reply = a.request(ctl.Submit(tasks=[claude(f"[[latency:0.3]] capped {i} {run}") for i in range(6)],
                                 label=f"cap-{run}", max_cost_usd=0.01))
    assert isinstance(reply, ctl.Accepted) and reply.batch
    done = wait_final(b, reply.ids)
    states = sorted((v.state, v.error.kind if v.error else None) for v in done.values())
    succeeded = [s for s in states if s[0] == "succeeded"]
    assert 1 <= len(succeeded) <= 2, states  # at most one per host was running when the cap was reached
    assert states.count(("cancelled", "budget")) == 6 - len(succeeded), states
    summary = b.info(ctl.Batch(id=reply.batch))["batch"]
    assert summary["budget_spent"] and summary["state"] == "done" and summary["label"] == f"cap-{run}"
    assert (summary["succeeded"], summary["cancelled"]) == (len(succeeded), 6 - len(succeeded))
    listed = a.request(ctl.List(label=f"cap-{run}"))
    assert isinstance(listed, ctl.Tasks) and sorted(v.id for v in listed.tasks) == sorted(reply.ids)
