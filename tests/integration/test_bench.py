"""`supctl bench` against a real daemon: the JSON report's shape and success counts (no timing)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(120)

KEYS = {"tasks", "wall_s", "tasks_per_s", "succeeded", "p50_s", "p95_s"}


def check_report(report: dict, tasks: int, kind: str) -> None:
    assert {"sequential", "parallel", "speedup", "efficiency", "parallelism", "kind"} <= report.keys()
    assert report["kind"] == kind
    for phase in ("sequential", "parallel"):
        assert KEYS <= report[phase].keys(), report[phase]
        assert report[phase]["tasks"] == tasks
        assert report[phase]["succeeded"] == tasks, report[phase]
        assert report[phase]["trace_problems"] == []
    assert report["speedup"] > 0
    assert report["efficiency"] > 0


def test_bench_exec_json(supd_factory):
    d = supd_factory(children=2).start()
    r = d.supctl("bench", "--json", "--kind", "exec", "--tasks", "6", "--parallel", "2", "--", "true")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    check_report(report, 6, "exec")
    assert report["parallelism"] == 2


def test_bench_exec_failures_exit_1(supd_factory):
    d = supd_factory(children=2).start()
    r = d.supctl("bench", "--json", "--kind", "exec", "--tasks", "2", "--", "false")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["sequential"]["succeeded"] == 0 and report["ok"] is False


def test_bench_sweep_restores_the_pool_size(supd_factory):
    d = supd_factory(children=2).start()
    r = d.supctl("bench", "--json", "--kind", "exec", "--tasks", "3", "--sweep", "1,3", "--", "true")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [p["parallelism"] for p in report["sweep"]] == [1, 3]
    assert all(p["succeeded"] == 3 for p in report["sweep"])
    assert d.wait_ready()["pool"]["size"] == 2


def test_bench_claude(supd_factory, fakeapi, claude_config):
    d = supd_factory(children=2, config=claude_config).start()
    r = d.supctl("bench", "--json", "--kind", "claude", "--tasks", "3", "--parallel", "2", "--model",
                 "claude-sonnet-4-5", "hello from the bench test", timeout_s=110)
    assert r.returncode == 0, r.stderr + d.log()[-2000:]
    report = json.loads(r.stdout)
    check_report(report, 3, "claude")
    assert report["sample_result"].startswith("ECHO: hello from the bench test")
    assert report["parallel"]["input_tokens"] > 0 and report["parallel"]["cost_usd"] > 0
