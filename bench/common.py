"""What every bench script needs: a real supd in a temp state dir, results files, tables.

Owns starting and stopping daemons for the benchmarks (as subprocesses, exactly as a user
would: `python -m supervisord.hub.main`), and the `bench/results/<name>.json` format
(`{"name", "machine", "started_at", "noisy", "results": {...}}`). Imports the project's
client and protocol only; never the daemon's internals.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from proto import control as ctl
from supervisord.ctl.client import Client


def short_tmpdir(prefix: str = "supd-") -> Path:
    """ipc socket paths must stay under ~107 bytes: keep state dirs short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def toml_table(mapping: dict[str, str]) -> str:
    """An inline TOML table (JSON strings are valid TOML basic strings)."""
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in mapping.items()) + " }"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Daemon:
    """A real supd subprocess. `with Daemon(children=8) as d: d.client …`."""

    def __init__(self, children: int = 4, config: str = "", prefix: str = "supd-bench-") -> None:
        self.state_dir = short_tmpdir(prefix)
        self.children = children
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "supd.log"

    @property
    def events_endpoint(self) -> str:
        return f"ipc://{self.state_dir / 'events.sock'}"

    def start(self, ready_timeout_s: float = 120.0) -> Daemon:
        argv = [sys.executable, "-m", "supervisord.hub.main", "--state-dir", str(self.state_dir),
                "--children", str(self.children)]
        if self.config:
            path = self.state_dir / "supd.toml"
            path.write_text(self.config)
            argv += ["--config", str(path)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=clean_env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     cwd=ROOT)
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until the daemon runs and every child is idle."""
        deadline = time.monotonic() + timeout_s
        sock = self.state_dir / "control.sock"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"supd exited {self.proc.returncode}:\n{self.tail()}")
            if sock.exists():
                if self.client is None:
                    self.client = Client(f"ipc://{sock}", timeout_s=30.0)
                try:
                    data = self.status()
                except Exception:
                    data = None
                if data and data["phase"] == "running" and data["pool"]["idle"] == self.children:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"supd not ready in {timeout_s}s:\n{self.tail()}")

    def request(self, req: ctl.Request, timeout_s: float | None = None) -> ctl.Reply:
        assert self.client is not None
        return self.client.request(req, timeout_s)

    def status(self) -> dict[str, Any]:
        reply = self.request(ctl.Status())
        assert isinstance(reply, ctl.Info), reply
        return reply.data

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """`Shutdown` (drain), wait for the exit; SIGTERM, then SIGKILL only if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.request(ctl.Shutdown(), timeout_s=5)
            except Exception:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.client is not None:
            self.client.close()
            self.client = None
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def write_result(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"name": name, "machine": machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "noisy": (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0) > 0.5 * (os.cpu_count() or 1),
           "results": results}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[fmt(x) for x in row])
    Console(width=160).print(t)


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.4f}"
    return str(x)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]
