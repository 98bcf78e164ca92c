"""Idle cost: a daemon with 8 children doing nothing — CPU % of one core over 10 s (psutil
cpu_times of the daemon and of each child) and RSS — vs supervisord and circus with
8 `sleep 1000` programs each, same run; and supd with its web dashboard on (`[web] port`),
with no page open and with one live page (an SSE client reading /api/events: a snapshot
a second at most, one every 5 s when idle). Writes bench/results/idle.json.

Children of supervisord/circus are `sleep` (they cost nothing by construction); supd's
children are Python workers with a heartbeat, so their CPU is counted separately.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request

import baselines
import psutil
from common import Daemon, free_port, print_table, write_result


def live_page(state_dir: object, stop: threading.Event) -> threading.Thread:
    """One browser-like SSE client on the dashboard's stream, reading until `stop`."""
    web = json.loads((state_dir / "web.json").read_text())  # type: ignore[operator]
    req = urllib.request.Request(web["url"] + "api/events", headers={"Authorization": f"Bearer {web['token']}"})

    def read() -> None:
        with urllib.request.urlopen(req, timeout=30) as r:
            while not stop.is_set():
                r.readline()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def measure(daemon_pid: int, window_s: float) -> dict[str, float]:
    daemon = psutil.Process(daemon_pid)
    kids = daemon.children()
    before_d, before_k = cpu_s(daemon), {k.pid: cpu_s(k) for k in kids}
    t0 = time.monotonic()
    time.sleep(window_s)
    wall = time.monotonic() - t0
    d_cpu = cpu_s(daemon) - before_d
    k_cpu = sum(cpu_s(k) - before_k[k.pid] for k in kids if k.is_running())
    kid_rss = [k.memory_info().rss for k in kids if k.is_running()]
    return {
        "daemon_cpu_pct": 100 * d_cpu / wall,
        "children_cpu_pct": 100 * k_cpu / wall,
        "total_cpu_pct": 100 * (d_cpu + k_cpu) / wall,
        "daemon_rss_mib": daemon.memory_info().rss / 2**20,
        "child_rss_mib": (sum(kid_rss) / len(kid_rss) / 2**20) if kid_rss else 0.0,
        "children": len(kids),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--no-baselines", action="store_true")
    a = p.parse_args(argv)
    results = {}
    with Daemon(children=a.children) as d:
        time.sleep(2.0)  # let start-up settle
        assert d.proc is not None
        results["supd"] = measure(d.proc.pid, a.window)
    with Daemon(children=a.children, config=f"[web]\nport = {free_port()}\n") as d:
        time.sleep(2.0)
        assert d.proc is not None
        results["supd + web, no page open"] = measure(d.proc.pid, a.window)
        stop = threading.Event()
        live_page(d.state_dir, stop)
        time.sleep(1.0)
        results["supd + web, one live page"] = measure(d.proc.pid, a.window)
        stop.set()
    if not a.no_baselines:
        for cls in (baselines.Supervisord, baselines.Circus):
            b = cls(a.children)
            try:
                time.sleep(2.0)
                results[f"{cls.name} ({a.children} × sleep)"] = measure(b.proc.pid, a.window)
            finally:
                b.stop()
    print_table(f"idle, {a.children} children, {a.window:g} s window (CPU % of one core)",
                ["supervisor", "daemon CPU %", "children CPU %", "total CPU %", "daemon RSS MiB", "RSS/child MiB"],
                [[k, v["daemon_cpu_pct"], v["children_cpu_pct"], v["total_cpu_pct"], v["daemon_rss_mib"],
                  v["child_rss_mib"]] for k, v in results.items()])
    total = results["supd"]["total_cpu_pct"]
    web = results["supd + web, no page open"]["total_cpu_pct"]
    write_result("idle", {"window_s": a.window, "runners": results,
                          "target": {"what": "idle < 0.5 % of a core (daemon + 8 children)", "value": total,
                                     "limit": 0.5, "met": total < 0.5},
                          "web_target": {"what": "idle with the dashboard on (no page open) < 0.5 % of a core",
                                         "value": web, "limit": 0.5, "met": web < 0.5}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
