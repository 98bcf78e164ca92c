"""Security with real processes: tcp control only with CurveZMQ (listed client keys only),
the size limits of `[limits]` through the real socket, and the environment filter."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import msgspec
import psutil
import pytest
import zmq
import zmq.auth

from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import ROOT, child_env, short_tmpdir

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def supctl(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisord.supctl", *args], capture_output=True, text=True,
                          env=child_env(), cwd=ROOT, timeout=timeout_s)


# ---- tcp control: CurveZMQ or nothing ----------------------------------------------


@pytest.fixture
def keys() -> Iterator[dict[str, Path]]:
    """Key files as `zmq.auth.create_certificates` writes them; only `client` is listed."""
    base = short_tmpdir("supd-keys-")
    allowed = base / "clients"
    allowed.mkdir()
    out: dict[str, Path] = {"base": base, "clients": allowed}
    for name in ("server", "client", "intruder"):
        public, secret = zmq.auth.create_certificates(str(base), name)
        out[name], out[f"{name}_secret"] = Path(public), Path(secret)
    shutil.copy(out["client"], allowed / "client.key")
    yield out
    shutil.rmtree(base, ignore_errors=True)


def client_config(keys: dict[str, Path], who: str, server: str = "server") -> Path:
    path = keys["base"] / f"{who}-via-{server}.toml"
    path.write_text(f'[security]\nclient_secret_key = "{keys[who + "_secret"]}"\n'
                    f'server_public_key = "{keys[server]}"\n')
    return path


def test_tcp_control_without_curve_keys_is_refused_at_start(supd_factory):
    port = free_port()
    d = supd_factory(children=1, config=f'[security]\ncontrol_endpoint = "tcp://127.0.0.1:{port}"\n')
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == 2
    log = d.log()
    assert "refusing to start" in log and "server_secret_key" in log and "client_public_keys_dir" in log, log
    assert not listening(port)
    assert not (d.state_dir / "control.sock").exists()


def test_tcp_control_with_unreadable_keys_is_refused_at_start(supd_factory, keys):
    port = free_port()
    d = supd_factory(children=1, config=(
        f'[security]\ncontrol_endpoint = "tcp://127.0.0.1:{port}"\n'
        f'server_secret_key = "{keys["base"] / "missing.key_secret"}"\nclient_public_keys_dir = "{keys["clients"]}"\n'))
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == 2
    assert "security.server_secret_key" in d.log()
    assert not listening(port)


def test_tcp_control_with_curve_lets_in_only_listed_clients(supd_factory, keys):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    d = supd_factory(children=1, config=(
        f'[security]\ncontrol_endpoint = "{endpoint}"\nserver_secret_key = "{keys["server_secret"]}"\n'
        f'client_public_keys_dir = "{keys["clients"]}"\n')).start()
    assert "event=control_tcp" in d.log() and "client_keys=1" in d.log()

    listed = client_config(keys, "client")
    out = supctl("--config", str(listed), "--endpoint", endpoint, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["phase"] == "running"
    out = supctl("--config", str(listed), "--endpoint", endpoint, "submit", "--kind", "exec", "--wait", "--json",
                 "--", "echo", "over tcp")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"] == "over tcp\n"

    # An unlisted key completes no handshake: no answer, exit 4.
    out = supctl("--reply-timeout", "2", "--config", str(client_config(keys, "intruder")), "--endpoint", endpoint,
                 "status")
    assert out.returncode == 4 and "did not answer" in out.stderr, (out.returncode, out.stderr)
    # A listed client that trusts the wrong server key gets nowhere either.
    out = supctl("--reply-timeout", "2", "--config", str(client_config(keys, "client", server="intruder")),
                 "--endpoint", endpoint, "status")
    assert out.returncode == 4 and "did not answer" in out.stderr
    # No keys at all: supctl refuses to try (usage), and a raw plaintext client gets no answer.
    out = supctl("--endpoint", endpoint, "status")
    assert out.returncode == 2 and "--config" in out.stderr
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    raw.send(msgspec.msgpack.encode(ctl.Status()))
    assert not raw.poll(1500), "a plaintext client was answered over tcp"
    raw.close()

    # Garbage from a listed client is answered over tcp (the reply finds the tcp socket).
    c = zmq.Context.instance().socket(zmq.DEALER)
    c.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.auth.load_certificate(str(keys["client_secret"]))
    server_public, _ = zmq.auth.load_certificate(str(keys["server"]))
    c.curve_publickey, c.curve_secretkey, c.curve_serverkey = public, secret, server_public
    c.connect(endpoint)
    c.send(b"\xc1garbage")
    assert c.poll(10_000)
    reply = msgspec.msgpack.decode(c.recv(), type=ctl.Reply)
    assert isinstance(reply, ctl.Error) and reply.kind == "bad_request"
    c.close()
    # The ipc socket serves as before.
    assert d.info(ctl.Status())["phase"] == "running"


def test_non_tcp_control_endpoint_is_refused(supd_factory):
    d = supd_factory(children=1, config='[security]\ncontrol_endpoint = "ipc:///tmp/elsewhere.sock"\n')
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == 2
    assert "security.control_endpoint" in d.log()


# ---- limits ----------------------------------------------------------------------

LIMITS = """[limits]
max_message_bytes = 65536
max_prompt_bytes = 100
max_argv_bytes = 100
max_env_bytes = 100
max_batch = 3
"""


@pytest.mark.parametrize("specs, limit", [
    ([TaskSpec(kind="claude", prompt="p" * 101)], "limits.max_prompt_bytes"),
    ([TaskSpec(kind="exec", argv=["echo", "a" * 100])], "limits.max_argv_bytes"),
    ([TaskSpec(kind="exec", argv=["true"], env={"K": "v" * 100})], "limits.max_env_bytes"),
    ([TaskSpec(kind="exec", argv=["cat"], input="i" * 101)], "limits.max_prompt_bytes"),
    ([TaskSpec(kind="exec", argv=["true"])] * 4, "limits.max_batch"),
])
def test_each_limit_refusal_names_its_limit(supd_factory, specs, limit):
    d = supd_factory(children=1, config=LIMITS).start()
    reply = d.request(ctl.Submit(tasks=specs))
    assert isinstance(reply, ctl.Error) and reply.kind == "bad_request", reply
    assert limit in reply.message, reply.message
    assert d.request(ctl.List()).tasks == [], "a refused batch must leave nothing behind"
    # The limits are limits, not bans: just under each is accepted.
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["echo", "a" * 90], env={"K": "v" * 90},
                                       input="i" * 100)))
    assert task.state == "succeeded"


def test_oversize_frame_drops_that_connection_and_the_daemon_keeps_serving(supd_factory):
    d = supd_factory(children=1, config=LIMITS).start()
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(f"ipc://{d.state_dir / 'control.sock'}")
    payload = msgspec.msgpack.encode(ctl.Submit(tasks=[TaskSpec(kind="claude", prompt="x" * 70_000)]))
    assert len(payload) > 65536
    for _ in range(3):
        big.send(payload)
    assert not big.poll(1500), "an oversize frame must not be answered"
    big.close()
    assert d.proc is not None and d.proc.poll() is None
    assert d.info(ctl.Status())["phase"] == "running"
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])))
    assert task.state == "succeeded"
    assert d.request(ctl.List()).tasks[0].id == task.id, "nothing of the oversize submit was accepted"


# ---- environment filter ----------------------------------------------------------


def test_task_env_excludes_the_daemons_own_and_claude_session_variables(supd_factory):
    notify_dir = short_tmpdir("supd-n-")
    leaky = {
        "CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli", "CLAUDE_CODE_SSE_PORT": "4242",
        "NOTIFY_SOCKET": str(notify_dir / "nobody-listens"), "SUPD_SECRET": "hush", "SUPD_KEEP": "kept",
        "CLAUDE_CODE_USE_BEDROCK": "1", "PLAIN_VAR": "plain",
    }
    try:
        d = supd_factory(children=1, env=child_env(**leaky),
                         config='[security]\npass_env = ["SUPD_KEEP", "CLAUDE_CODE_USE_BEDROCK"]\n').start()
        (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["env", "-0"])))
        assert task.state == "succeeded"
        env = dict(item.split("=", 1) for item in (task.result or "").split("\0") if "=" in item)
        for name in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT", "NOTIFY_SOCKET", "SUPD_SECRET"):
            assert name not in env, f"{name} leaked into the task"
        assert env["SUPD_KEEP"] == "kept" and env["CLAUDE_CODE_USE_BEDROCK"] == "1", "pass_env must let these in"
        assert env["PLAIN_VAR"] == "plain"
        assert env.get("SUPD_TASK_ID") == task.id and env.get("TRACEPARENT", "").startswith("00-")
        for pid in d.children_pids():  # the children themselves never held them either
            child = psutil.Process(pid).environ()
            assert "SUPD_SECRET" not in child and "CLAUDECODE" not in child and "NOTIFY_SOCKET" not in child
    finally:
        shutil.rmtree(notify_dir, ignore_errors=True)
