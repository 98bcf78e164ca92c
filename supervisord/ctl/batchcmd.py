"""`supctl batch ID`: one batch's summary line and its tasks.

A batch is one submit; its id is its trace id (`submit --json` prints it as `batch`).
Registered by `supctl` like `watch` and `bench`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from proto import control as ctl
from supervisord.ctl.client import Client, expect

EXIT_OK, EXIT_FAILED = 0, 1


def summary_line(b: dict[str, Any]) -> str:
    label = f" [{b['label']}]" if b.get("label") else ""
    cap = f" of ${b['max_cost_usd']:g}" if b.get("max_cost_usd") else ""
    spent = " (budget spent)" if b.get("budget_spent") else ""
    return (f"batch {b['id']}{label} {b['state']}: {b['tasks']} tasks, {b['succeeded']} succeeded, "
            f"{b['failed']} failed, {b['cancelled']} cancelled, {b['running']} running, {b['queued']} queued; "
            f"wall {b['wall_s']:.1f}s, tokens {b['input_tokens']} in / {b['output_tokens']} out, "
            f"cost ${b['cost_usd']:.4f}{cap}{spent}")


def cmd_batch(c: Client, a: argparse.Namespace) -> int:
    data = expect(c.request(ctl.Batch(id=a.id, limit=a.limit)), ctl.Info).data
    b = data["batch"]
    if a.json:
        print(json.dumps(data))
    else:
        print(summary_line(b))
        for t in data["tasks"]:
            error = f" ({t['error']})" if t["error"] else ""
            cost = f" ${t['cost_usd']:.4f}" if t["cost_usd"] else ""
            key = f" key={t['key']}" if t["key"] else ""
            print(f"  {t['id']}  {t['kind']:6} {t['state']}{error}{cost}{key}  {t['prompt']}")
    done_ok = b["state"] == "done" and b["failed"] == 0 and b["cancelled"] == 0
    return EXIT_OK if b["state"] != "done" or done_ok else EXIT_FAILED


def register(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    p = cmd("batch", "a batch's summary (succeeded / failed / running, wall time, tokens, cost) and its tasks",
            cmd_batch)
    p.add_argument("id", metavar="ID", help="the batch id (its trace id: submit --json prints it)")
    from supervisord.ctl.supctl import bounded_int

    p.add_argument("--limit", type=bounded_int(1, ctl.MAX_LIST), default=1000, metavar="N",
                   help="tasks shown, 1..10000")
