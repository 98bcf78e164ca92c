"""Restart latency: SIGKILL an idle child, time until its successor is ready, vs
supervisord and circus (default settings) supervising `sleep 1000`, same run.

supd: the time from the kill to the `child/<id>/ready` event on events.sock for the killed
child's slot (a successor that is idle and can take a task). Each slot is killed at most once
per `restart.stable_after_s` (10 s), so every sample is an isolated crash (a crash loop backs
off on purpose), and only once the pool is at rest (its spares ready). Two rows: the default
config (`daemon.spares = 1`: the slot takes over the ready spare's process) and
`daemon.spares = 0` (a new child's CPython boot is the whole cost). The target is the default's.
supervisord / circus: kill the pid, poll their control interface every 5 ms until a new
pid is RUNNING. Writes bench/results/restart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import baselines
import zmq
from common import Daemon, pct, print_table, write_result

POLL_S = 0.005
SAMPLE_TIMEOUT_S = 15.0


def supd_samples(n: int, children: int, spares: int, stable_s: float = 10.5) -> list[float]:
    out: list[float] = []
    with Daemon(children=children, config=f"[daemon]\nspares = {spares}\n") as d:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"child/")
        sub.connect(d.events_endpoint)
        time.sleep(0.3)  # let the subscription reach the publisher
        last_kill: dict[str, float] = {}
        i = 0
        while len(out) < n:
            status = d.status()
            if any(c["state"] != "idle" for c in status["spares"]):
                time.sleep(POLL_S)  # the pool is not at rest yet: a spare boots
                continue
            slots = [c for c in status["children"] if c["state"] == "idle" and c["pid"]]
            slot = slots[i % len(slots)]
            wait_s = last_kill.get(slot["slot"], -1e9) + stable_s - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
                continue  # look at the pool again after the wait
            i += 1
            while sub.poll(0):
                sub.recv_multipart()
            pid = slot["pid"]
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            last_kill[slot["slot"]] = time.monotonic()
            while True:
                if not sub.poll(10_000):
                    raise RuntimeError(f"no ready event 10 s after killing {pid}\n{d.tail()}")
                topic, body = sub.recv_multipart()
                event = json.loads(body)
                if topic.endswith(b"/ready") and event.get("pid") != pid and _slot_of(d, event) == slot["slot"]:
                    out.append(time.perf_counter() - t0)
                    break
        sub.close(0)
    return out


def _slot_of(d: Daemon, event: dict[str, object]) -> str | None:
    """The slot a ready child serves: named in the event when it took over a spare, else its id's prefix."""
    if "slot" in event:
        return str(event["slot"])
    child = str(event.get("child", ""))
    return None if child.startswith("spare") else child.split(".")[0]


def supervisord_samples(n: int) -> list[float]:
    s = baselines.Supervisord(4)
    out = []
    try:
        for i in range(n):
            name = f"s_{i % 4:02d}"
            pid = s.running_pid(name)
            while pid is None:
                time.sleep(POLL_S)
                pid = s.running_pid(name)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                new = s.running_pid(name)
                if new is not None and new != pid:
                    out.append(time.perf_counter() - t0)
                    break
                time.sleep(POLL_S)
    finally:
        s.stop()
    return out


def circus_samples(n: int, timeouts: list[float]) -> list[float]:
    """Samples in which circus replaced the process within SAMPLE_TIMEOUT_S (others go to `timeouts`)."""
    c = baselines.Circus(4)
    out: list[float] = []
    try:
        for _ in range(n):
            before = c.pids()
            waited = time.perf_counter()
            while len(before) < 4 and time.perf_counter() - waited < SAMPLE_TIMEOUT_S:
                time.sleep(POLL_S)
                before = c.pids()
            pid = before[0]
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                now = c.pids()
                if pid not in now and len(now) == 4:
                    out.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > SAMPLE_TIMEOUT_S:
                    timeouts.append(SAMPLE_TIMEOUT_S)
                    break
                time.sleep(POLL_S)
    finally:
        c.stop()
    return out


def summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan")}
    return {"n": len(samples), "p50_ms": pct(samples, 50) * 1000, "p95_ms": pct(samples, 95) * 1000,
            "max_ms": max(samples) * 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--no-baselines", action="store_true")
    a = p.parse_args(argv)
    results = {"supd": summary(supd_samples(a.samples, a.children, spares=1)),
               "supd, daemon.spares = 0": summary(supd_samples(a.samples, a.children, spares=0))}
    if not a.no_baselines:
        results["supervisord 4.3 (defaults)"] = summary(supervisord_samples(a.samples))
        timeouts: list[float] = []
        circus = circus_samples(a.samples, timeouts)
        results["circus (defaults)"] = {**summary(circus), "not_replaced_in_15s": len(timeouts)}
    print_table(f"restart: SIGKILL an idle child → successor ready ({a.samples} samples)",
                ["supervisor", "n", "p50 ms", "p95 ms", "max ms"],
                [[k, v["n"], v["p50_ms"], v["p95_ms"], v["max_ms"]] for k, v in results.items()])
    p50 = results["supd"]["p50_ms"]
    write_result("restart", {"runners": results, "target": {"what": "restart p50 < 100 ms", "value": p50,
                                                             "limit": 100.0, "met": p50 < 100.0}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
