"""Numbers and events from a real daemon: `supctl stats`, `supctl health`, `supctl watch`
over the event stream, and the Prometheus scrape endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from proto.task import TaskSpec
from tests.conftest import ROOT, Supd, free_port, gate

pytestmark = pytest.mark.timeout(180)


def start_watch(d: Supd, *args: str) -> subprocess.Popen[str]:
    """`supctl watch ARGS` in the background; returns once it has subscribed (its stderr says so)."""
    proc = subprocess.Popen([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(d.state_dir), "watch", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env, cwd=ROOT)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until watch has joined the stream (or died)
    assert "watching" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_stats_health_and_prometheus_after_a_few_tasks(supd_factory, claude_config):
    port = free_port()
    config = claude_config + f"[metrics]\nprometheus_port = {port}\n"
    d = supd_factory(children=2, config=config).start()
    ids = d.submit(TaskSpec(kind="exec", argv=["true"]), TaskSpec(kind="exec", argv=["echo", "hi"]),
                   TaskSpec(kind="exec", argv=["false"]), TaskSpec(kind="claude", prompt="count my tokens"))
    tasks = d.wait(ids, timeout_s=90)
    assert [t.state for t in tasks] == ["succeeded", "succeeded", "failed", "succeeded"], [t.error for t in tasks]

    r = d.supctl("stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["tasks_received"] == {"exec": 3, "claude": 1}
    assert stats["tasks_succeeded"] == 3 and stats["tasks_failed"] == 1
    assert stats["errors"] == {"exec/exit": 1}
    assert stats["by_kind"]["exec"] == {"received": 3, "succeeded": 2, "failed": 1, "errors": {"exit": 1}}
    assert stats["by_kind"]["claude"]["succeeded"] == 1
    duration = stats["duration_s"]
    assert duration["count"] == 4
    assert 0 < duration["p50"] <= duration["p95"] <= duration["p99"]
    assert stats["queue_depth"] == 0 and stats["active_tasks"] == 0
    assert stats["child_restarts"] == 0 and stats["retries"] == 0
    assert stats["breaker"]["state"] == "closed"
    assert stats["input_tokens"] > 0 and stats["output_tokens"] > 0 and stats["cost_usd"] > 0

    r = d.supctl("stats")
    assert r.returncode == 0 and "p95" in r.stdout

    r = d.supctl("health", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    health = json.loads(r.stdout)
    assert health["status"] == "ok"
    assert health["children"]["ready"] == 2 and health["children"]["total"] == 2
    assert health["spares"] == {"ready": 1, "total": 1, "fatal": 0}  # booted with the pool, long ready
    assert health["breaker"]["state"] == "closed"
    assert health["queue"]["queued"] == 0 and health["queue"]["running"] == 0
    assert health["success_rate"] == pytest.approx(0.75)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    lines = set(text.splitlines())
    assert 'supd_tasks_received_total{kind="exec"} 3.0' in lines
    assert 'supd_tasks_finished_total{kind="exec",state="failed"} 1.0' in lines
    assert 'supd_task_errors_total{error="exit",kind="exec"} 1.0' in lines
    assert "supd_task_duration_seconds_count 4.0" in lines
    assert 'supd_task_duration_seconds_bucket{le="+Inf"} 4.0' in lines
    assert "supd_queue_depth 0.0" in lines and "supd_active_tasks 0.0" in lines
    assert "supd_children_ready 2.0" in lines and "supd_children_total 2.0" in lines
    assert "supd_spares_ready 1.0" in lines
    assert 'supd_breaker_state{state="closed"} 1.0' in lines
    assert any(line.startswith('supd_claude_tokens_total{direction="input"}') for line in lines)
    assert d.stop() == 0
    with pytest.raises(OSError):  # the endpoint goes away with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_watch_a_task_until_it_finishes(supd_factory, tmp_path):
    d = supd_factory(children=1).start()
    go = tmp_path / "go"
    ok_id, bad_id = d.submit(TaskSpec(kind="exec", argv=gate(go)),
                             TaskSpec(kind="exec", argv=["sh", "-c", "echo working; exit 3"]))
    ok_watch = start_watch(d, "--task", ok_id, "--json")
    bad_watch = start_watch(d, "--task", bad_id)  # human lines
    go.touch()
    rc, events, err = finish(ok_watch)
    assert rc == 0, (events, err)
    topics = [e["topic"] for e in events]
    assert all(t.startswith(f"task/{ok_id}/") for t in topics)
    assert topics[-1] == f"task/{ok_id}/finished" and events[-1]["state"] == "succeeded"

    out, err = bad_watch.communicate(timeout=60)
    assert bad_watch.returncode == 1, (out, err)
    lines = out.splitlines()
    assert any(f"task {bad_id} started" in line for line in lines), out
    assert f"task {bad_id} finished" in lines[-1] and "state=failed" in lines[-1]

    # a task that finished before watch started: answered from its record, no hang
    rc, events, err = finish(start_watch(d, "--task", ok_id, "--json"))
    assert rc == 0 and [e["topic"] for e in events] == [f"task/{ok_id}/finished"]
    r = d.supctl("watch", "--task", "t-no-such-task")
    assert r.returncode == 1 and "not_found" in r.stderr


def test_watch_count_sees_child_and_task_events(supd_factory):
    d = supd_factory(children=1).start()
    watch = start_watch(d, "--count", "5", "--json")
    assert d.supctl("scale", "2").returncode == 0  # child/<id>/spawned, then ready
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))  # queued, started, …, finished
    rc, events, err = finish(watch)
    assert rc == 0, err
    assert len(events) == 5
    kinds = {e["topic"].split("/")[0] for e in events}
    assert kinds == {"child", "task"}, events
    assert all(e["ts"] > 0 for e in events)


def test_watch_timeout_exits_3(supd_factory):
    d = supd_factory(children=1).start()
    r = d.supctl("watch", "--timeout", "0.5")
    assert r.returncode == 3, r.stderr


def test_health_reports_degraded_without_children(supd_factory):
    d = supd_factory(children=0).start()
    r = d.supctl("health", "--json")
    health = json.loads(r.stdout)
    assert health["children"] == {"ready": 0, "total": 0, "fatal": 0}
    assert health["status"] != "ok" and r.returncode == 1
