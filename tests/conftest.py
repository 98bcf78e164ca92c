"""Shared fixtures: a real supd process in a short temporary state dir, a client for it,
the project's stand-in Messages API, and a check that nothing is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import free_port, short_tmpdir, toml_table  # noqa: F401  (bench/common: one copy for both)

from proto import control as ctl
from proto.task import TaskSpec
from supervisord.ctl.client import Client


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Supd:
    """A real supd process and a client for its control socket."""

    def __init__(self, state_dir: Path, config: str | None = None, children: int = 2,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = state_dir / "supd.toml"
            self.config_path.write_text(config)
        self.children = children
        self.env = env or child_env()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "supd.log"

    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "supervisord.hub.main", "--state-dir", str(self.state_dir),
                "--children", str(self.children), *self.extra_args]
        if self.config_path:
            argv += ["--config", str(self.config_path)]
        return argv

    def start(self, wait_ready: bool = True) -> Supd:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     cwd=ROOT)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        sock = self.state_dir / "control.sock"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"supd exited {self.proc.returncode}:\n{self.log()}")
            if sock.exists():
                try:
                    status = self.info(ctl.Status())
                    if status["phase"] == "running":
                        return status
                except Exception:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"supd not ready in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(f"ipc://{self.state_dir / 'control.sock'}", timeout_s=timeout_s)

    def request(self, req: ctl.Request, timeout_s: float = 10.0) -> ctl.Reply:
        with self.client(timeout_s) as c:
            return c.request(req)

    def info(self, req: ctl.Request) -> dict[str, Any]:
        reply = self.request(req)
        assert isinstance(reply, ctl.Info), reply
        return reply.data

    def submit(self, *specs: TaskSpec, traceparent: str | None = None) -> list[str]:
        reply = self.request(ctl.Submit(tasks=list(specs), traceparent=traceparent))
        assert isinstance(reply, ctl.Accepted), reply
        return reply.ids

    def wait(self, ids: list[str], timeout_s: float = 60.0) -> list[ctl.TaskView]:
        deadline = time.monotonic() + timeout_s
        done: dict[str, ctl.TaskView] = {}
        pending = list(ids)
        with self.client() as c:
            while pending and time.monotonic() < deadline:
                reply = c.request(ctl.Wait(ids=pending, timeout_s=min(5.0, deadline - time.monotonic())),
                                  timeout_s=15)
                assert isinstance(reply, ctl.Tasks), reply
                done.update({t.id: t for t in reply.tasks})
                pending = reply.pending
        assert not pending, f"still pending after {timeout_s}s: {pending}\n{self.log()[-3000:]}"
        return [done[i] for i in ids]

    def children_pids(self) -> list[int]:
        return [c["pid"] for c in self.info(ctl.Status())["children"] if c["pid"]]

    def supctl(self, *args: str, input_text: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisord.ctl.supctl", "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, env=self.env, cwd=ROOT, input=input_text,
                              timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"supd did not stop in {timeout_s}s:\n{self.log()}")


def descendants_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tagged_processes(task_ids: set[str] | None = None) -> list[psutil.Process]:
    """Live processes carrying SUPD_TASK_ID (optionally one of `task_ids`)."""
    found = []
    for p in psutil.process_iter():
        try:
            tag = p.environ().get("SUPD_TASK_ID")
            if tag and (task_ids is None or tag in task_ids) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_no_leftovers(pids: list[int], task_ids: set[str] | None = None, timeout_s: float = 10.0) -> None:
    """Every pid is gone (not even a zombie), and no tagged task process remains."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)]
        tagged = tagged_processes(task_ids)
        if not alive and not tagged:
            return
        time.sleep(0.1)
    raise AssertionError(f"left behind: pids {alive}, tagged {[p.pid for p in tagged]}")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def supd_factory(state_dir: Path) -> Iterator[Any]:
    started: list[Supd] = []

    def make(**kwargs: Any) -> Supd:
        d = Supd(state_dir, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            pids = [d.proc.pid] + [p.pid for p in descendants_of(d.proc.pid)]
            d.stop()
            assert_no_leftovers(pids, journaled_ids(d.state_dir))


def journaled_ids(state_dir: Path) -> set[str]:
    """Every task id this daemon's journal knows: the tags its task processes carried."""
    import sqlite3

    db = state_dir / "tasks.db"
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}


@pytest.fixture(scope="session")
def fakeapi() -> Iterator[Any]:
    import fakeapi as fake_module

    api = fake_module.FakeAPI()
    api.start()
    yield api
    api.stop()


@pytest.fixture
def claude_config(fakeapi: Any) -> str:
    """A supd config whose Claude tasks talk to the stand-in API through the real CLI."""
    import fakeapi as fake_module

    home = short_tmpdir("supd-home-")
    env = fake_module.claude_env(fakeapi.url, str(home))
    return "[claude]\nenv = " + toml_table(env) + "\n"


def gate(path: Path) -> list[str]:
    """argv of an exec task that waits until `path` exists: the test decides when it ends."""
    return [sys.executable, "-c",
            f"import os, time\nwhile not os.path.exists({str(path)!r}): time.sleep(0.02)\nprint('go')"]


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec(**kw)


# ---- a real PostgreSQL for the fleet's tests ---------------------------------------------


class Postgres:
    """A PostgreSQL 16 server (the `pgserver` wheel) in a temporary directory, for the whole
    session; `database()` makes a fresh, empty database for one test."""

    def __init__(self) -> None:
        import pgserver

        self.dir = short_tmpdir("supd-pg-")
        self.server = pgserver.get_server(str(self.dir), cleanup_mode="stop")
        from urllib.parse import parse_qs, urlsplit

        self.socket_dir = parse_qs(urlsplit(self.server.get_uri()).query)["host"][0]
        self._n = 0

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    def database(self) -> str:
        import psycopg

        self._n += 1
        name = f"supd_t{os.getpid()}_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self) -> None:
        """Stop the server (fast: open connections are cut) and start it again."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        self.server.cleanup()
        try:  # after `restart` the postmaster is not the one pgserver started: stop it by its data dir
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)
        except Exception:  # noqa: BLE001 (already stopped)
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh database on the session's server."""
    return postgres.database()
