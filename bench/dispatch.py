"""Dispatch overhead: 1000 `true` exec tasks through supd (8 children) vs the obvious
alternatives, measured in the same run; plus no-op control round trips vs raw pyzmq.

Baselines: `xargs -P 8 -n 1 true`, `multiprocessing.Pool(8)` running
`subprocess.run(["true"])`, an asyncio subprocess pool (8 in flight, default loop).
Writes bench/results/dispatch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import subprocess
import threading
import time

import zmq
from common import Daemon, pct, print_table, short_tmpdir, write_result

from proto import control as ctl
from proto.task import TaskSpec


def supd_run(d: Daemon, n: int) -> float:
    start = time.monotonic()
    reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"]) for _ in range(n)]))
    assert isinstance(reply, ctl.Accepted), reply
    pending = reply.ids
    while pending:
        r = d.request(ctl.Wait(ids=pending, timeout_s=30), timeout_s=60)
        assert isinstance(r, ctl.Tasks), r
        bad = [t for t in r.tasks if t.state != "succeeded"]
        assert not bad, bad[:3]
        pending = r.pending
    return time.monotonic() - start


def xargs_run(n: int) -> float:
    data = "".join(f"{i}\n" for i in range(n)).encode()
    start = time.monotonic()
    subprocess.run(["xargs", "-P", "8", "-n", "1", "true"], input=data, check=True)
    return time.monotonic() - start


def _run_true(_: int) -> int:
    return subprocess.run(["true"], check=False).returncode


def mp_run(n: int) -> float:
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_run_true, range(8))  # warm the workers
        start = time.monotonic()
        assert sum(pool.map(_run_true, range(n), chunksize=1)) == 0
        return time.monotonic() - start


def asyncio_run(n: int) -> float:
    async def go() -> float:
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem:
                p = await asyncio.create_subprocess_exec("true")
                await p.wait()

        start = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.monotonic() - start

    return asyncio.run(go())


def roundtrips(d: Daemon, req: ctl.Request, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        reply = d.request(req)
        out.append(time.perf_counter() - t)
        assert not isinstance(reply, ctl.Error), reply
    return out


def raw_zmq_roundtrips(n: int) -> list[float]:
    """DEALER -> ROUTER echo over ipc with a msgpack-sized payload: the transport's floor."""
    ctx = zmq.Context.instance()
    path = short_tmpdir("zmq-rt-") / "rt.sock"
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    stop = threading.Event()

    def echo() -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                router.send_multipart(router.recv_multipart())

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{path}")
    out = []
    payload = b"\x81\xa4type\xa3Get" + b"x" * 20
    for _ in range(n):
        t = time.perf_counter()
        dealer.send(payload)
        dealer.recv()
        out.append(time.perf_counter() - t)
    stop.set()
    th.join()
    dealer.close(0)
    router.close(0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--roundtrips", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=7,
                   help="rounds; each runs every runner once, interleaved, so drift hits all alike")
    a = p.parse_args(argv)
    n = a.tasks
    baselines = (("xargs -P 8", xargs_run), ("multiprocessing.Pool(8)", mp_run), ("asyncio subprocess x8", asyncio_run))
    walls: dict[str, list[float]] = {"supd": [], **{name: [] for name, _ in baselines}}
    with Daemon(children=8) as d:
        supd_run(d, 50)  # warm-up: journal, children's first spawn
        for _ in range(a.repeat):
            walls["supd"].append(supd_run(d, n))
            for name, fn in baselines:
                walls[name].append(fn(n))
        reply = d.request(ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"])]))
        assert isinstance(reply, ctl.Accepted)
        rt = {"supd_get": roundtrips(d, ctl.Get(id=reply.ids[0]), a.roundtrips),
              "supd_status": roundtrips(d, ctl.Status(), a.roundtrips)}
    rt["raw_pyzmq"] = raw_zmq_roundtrips(a.roundtrips)
    results = {name: {"tasks": n, "rounds": len(w), "wall_s": statistics.median(w),
                      "tasks_per_s": n / statistics.median(w), "wall_s_each": w} for name, w in walls.items()}
    paired = sorted(x / s for s, x in zip(walls["supd"], walls["xargs -P 8"]))  # supd rate / xargs rate, per round
    xargs_rate = results["xargs -P 8"]["tasks_per_s"]
    rows = [[k, v["tasks"], v["wall_s"], v["tasks_per_s"], v["tasks_per_s"] / xargs_rate] for k, v in results.items()]
    print_table(f"dispatch: {n} × true, 8 in parallel (median of {a.repeat} interleaved rounds)",
                ["runner", "tasks", "wall s", "tasks/s", "× xargs"], rows)
    print(f"supd / xargs per round: {', '.join(f'{r:.2f}' for r in paired)} (median {statistics.median(paired):.2f})")
    trips = {k: {"n": len(v), "per_s": len(v) / sum(v), "p50_us": pct(v, 50) * 1e6, "p99_us": pct(v, 99) * 1e6}
             for k, v in rt.items()}
    print_table("no-op round trips (one client, sequential)", ["request", "n", "per s", "p50 µs", "p99 µs"],
                [[k, v["n"], v["per_s"], v["p50_us"], v["p99_us"]] for k, v in trips.items()])
    ratio = statistics.median(paired)
    write_result("dispatch", {"runners": results, "roundtrips": trips, "supd_vs_xargs": ratio,
                              "supd_vs_xargs_each_round": paired,
                              "target": {"what": "dispatch >= 0.7 of xargs' throughput", "value": ratio,
                                         "limit": 0.7, "met": ratio >= 0.7}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
