"""The classic supervisors, for same-run comparison: supervisord and circus, each
supervising N `sleep 1000` programs with their default restart settings.

Owns installing them into a THROWAWAY venv (`/tmp/bench-baselines`, never the project's
deps) and talking to them: supervisord over its XML-RPC (what `supervisorctl status`
uses), circus over its ZeroMQ JSON protocol (what `circusctl list` uses).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from pathlib import Path

import zmq
from common import free_port, short_tmpdir

VENV = Path(os.environ.get("SUPD_BENCH_BASELINES", "/tmp/bench-baselines"))


def ensure_venv() -> Path:
    if not (VENV / "bin" / "supervisord").exists() or not (VENV / "bin" / "circusd").exists():
        print(f"installing supervisor and circus into the throwaway venv {VENV} …", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "supervisor", "circus"], check=True)
    return VENV


class Supervisord:
    name = "supervisord"

    def __init__(self, n: int) -> None:
        ensure_venv()
        self.n = n
        self.dir = short_tmpdir("svd-")
        self.port = free_port()
        conf = self.dir / "supervisord.conf"
        conf.write_text(f"""[supervisord]
logfile={self.dir}/supervisord.log
pidfile={self.dir}/supervisord.pid
childlogdir={self.dir}
nodaemon=true

[inet_http_server]
port=127.0.0.1:{self.port}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:s]
command=sleep 1000
process_name=%(program_name)s_%(process_num)02d
numprocs={n}
autorestart=true
""")
        self.proc = subprocess.Popen([str(VENV / "bin" / "supervisord"), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if len(self.running()) == n:
                    return
            except (OSError, xmlrpc.client.Fault):
                pass
            time.sleep(0.05)
        raise RuntimeError("supervisord did not start its programs")

    def running(self) -> dict[str, int]:
        """name -> pid of every RUNNING program."""
        return {p["name"]: p["pid"] for p in self.rpc.supervisor.getAllProcessInfo() if p["statename"] == "RUNNING"}

    def running_pid(self, name: str) -> int | None:
        info = self.rpc.supervisor.getProcessInfo(f"s:{name}")
        return info["pid"] if info["statename"] == "RUNNING" else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Circus:
    name = "circus"

    def __init__(self, n: int) -> None:
        ensure_venv()
        self.n = n
        self.dir = short_tmpdir("circus-")
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        conf = self.dir / "circus.ini"
        conf.write_text(f"""[circus]
endpoint = {self.endpoint}
pubsub_endpoint = tcp://127.0.0.1:{free_port()}
statsd = False

[watcher:s]
cmd = sleep 1000
numprocesses = {n}
""")
        self.proc = subprocess.Popen([str(VENV / "bin" / "circusd"), str(conf)], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if len(self.pids()) == n:
                    return
            except TimeoutError:
                pass
            time.sleep(0.05)
        raise RuntimeError("circusd did not start its watcher")

    def call(self, command: str, **props: object) -> dict[str, object]:
        call_id = uuid.uuid4().hex
        self.sock.send(json.dumps({"id": call_id, "command": command, "properties": props}).encode())
        while True:
            if not self.sock.poll(5000):
                raise TimeoutError(f"circusd did not answer {command}")
            reply = json.loads(self.sock.recv())
            if reply.get("id") == call_id:
                return reply

    def pids(self) -> list[int]:
        return [int(p) for p in self.call("list", name="s").get("pids", [])]  # type: ignore[union-attr]

    def stop(self) -> None:
        self.sock.close(0)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
