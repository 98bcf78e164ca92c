"""A fleet's retention and its watch, on real daemons and a real PostgreSQL: the periodic prune
runs once per period for the whole fleet, `supctl prune` on any host prunes the fleet's
journal and says how many tasks, and `supctl watch` on one host shows the tasks another runs."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import zmq

from proto import control as ctl
from proto.task import TaskSpec
from supervisord.ctl.watch import events_endpoint, format_event
from tests.integration.test_fleet import Fleet, counting_task, wait_final

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fleet(pg_url: str) -> Iterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    f.stop()


def test_the_periodic_prune_runs_once_per_period_for_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    every = "retain_s = 1.0\nprune_every_s = 1.0\n"  # into [journal]
    a, b = fleet.start("a", extra=every), fleet.start("b", extra=every)
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = a.submit(*[counting_task(runs, f"p{i}") for i in range(6)])
    wait_final(b, ids)
    deadline = time.monotonic() + 20
    while fleet.rows():
        assert time.monotonic() < deadline, "finished tasks past retain_s are pruned"
        time.sleep(0.2)
    time.sleep(4.0)  # both hosts look every second meanwhile
    a.stop(), b.stop()  # no pass between reading the logs and the table
    passes = [line for d in (a, b) for line in d.log().splitlines()
              if "event=journal_pruned" in line and "reason=retain_s" in line]
    assert passes and sum(int(re.search(r" tasks=(\d+)", p)[1]) for p in passes) == 6, passes  # type: ignore[index]
    gaps = [float(m[1]) for p in passes if (m := re.search(r" since_last_s=([\d.]+)", p))]
    assert len(gaps) == len(passes) - 1, "every pass but the fleet's first knows the one before"
    assert all(g >= 1.0 for g in gaps), ("no two passes of the fleet within one period", passes)
    with psycopg.connect(fleet.url) as db:
        row = db.execute("SELECT passes, tasks FROM prunes").fetchone()
    assert row == (len(passes), 6)


def test_supctl_prune_on_any_host_prunes_the_fleet_and_says_how_many(fleet: Fleet, tmp_path: Path) -> None:
    keep = "retain_s = 0\n"  # no periodic prune
    a, b = fleet.start("a", extra=keep), fleet.start("b", extra=keep)
    runs = tmp_path / "runs"
    runs.mkdir()
    ids = a.submit(*[counting_task(runs, f"q{i}") for i in range(5)])
    wait_final(a, ids)
    (alive,) = a.submit(TaskSpec(kind="exec", argv=[sys.executable, "-c", "import time; time.sleep(30)"]))
    time.sleep(0.2)
    reply = b.request(ctl.Prune(older_than_s=0.001))
    assert isinstance(reply, ctl.Ok) and reply.message.startswith("pruned 5 finished tasks"), reply
    assert "fleet" in reply.message
    assert set(fleet.rows()) == {alive}, "the fleet's finished tasks are gone, the running one stays"
    again = a.request(ctl.Prune(older_than_s=0.001))
    assert isinstance(again, ctl.Ok) and again.message.startswith("pruned 0 "), again
    assert isinstance(a.request(ctl.Cancel(id=alive)), ctl.Ok)


def test_watch_on_one_host_sees_a_task_run_and_finish_on_another(fleet: Fleet, tmp_path: Path) -> None:
    a, b = fleet.start("a", children=1), fleet.start("b", children=1)
    b.request(ctl.Scale(children=0))  # only a runs tasks
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"task/")
    sub.connect(events_endpoint(f"ipc://{b.state_dir / 'control.sock'}"))
    try:
        time.sleep(1.0)  # the subscription reaches b, and b asks its journal to relay the fleet's events
        runs = tmp_path / "runs"
        runs.mkdir()
        (tid,) = a.submit(counting_task(runs, "w", 0.3))
        seen: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 30
        while "finished" not in seen:
            assert time.monotonic() < deadline, seen
            if sub.poll(200):
                topic, body = sub.recv_multipart()
                _, task_id, what = topic.decode().split("/")
                if task_id == tid:
                    seen[what] = json.loads(body)
    finally:
        sub.close(linger=0)
        ctx.term()
    assert list(seen) == ["queued", "started", "finished"], seen
    assert {e["host"] for e in seen.values()} == {"a"}, "each says the host that accepted or ran it"
    assert seen["finished"]["state"] == "succeeded"
    line = format_event(seen["finished"])
    assert f"task {tid} finished" in line and "host=a" in line and "state=succeeded" in line, line
