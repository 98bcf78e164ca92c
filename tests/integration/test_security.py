"""Security with real processes: tcp control only with CurveZMQ (listed client keys only),
the size limits of `[limits]` through the real socket, and the environment filter."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest
import zmq
import zmq.auth

from proto import DECODE_ERRORS
from proto import control as ctl
from proto.task import TaskSpec
from tests.conftest import ROOT, child_env, free_port, short_tmpdir

pytestmark = pytest.mark.timeout(120)


def supctl(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisord.ctl.supctl", *args], capture_output=True, text=True,
                          check=False, env=child_env(), cwd=ROOT, timeout=timeout_s)


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
    assert "event=daemon_started" not in log, "refused before binding or spawning anything"


def test_tcp_control_with_unreadable_keys_is_refused_at_start(supd_factory, keys):
    port = free_port()
    d = supd_factory(children=1, config=(
        f'[security]\ncontrol_endpoint = "tcp://127.0.0.1:{port}"\n'
        f'server_secret_key = "{keys["base"] / "missing.key_secret"}"\nclient_public_keys_dir = "{keys["clients"]}"\n'))
    d.start(wait_ready=False)
    assert d.proc is not None and d.proc.wait(30) == 2
    assert "security.server_secret_key" in d.log() and "event=daemon_started" not in d.log()


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
    assert [t.id for t in d.request(ctl.List()).tasks] == [task.id], "nothing of the oversize submit was accepted"


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


# ---- hostile frames at a live daemon ---------------------------------------------


def hostile_frames(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, truncated and bit-flipped valid requests, valid msgpack of the wrong
    shape, and the two inputs msgspec answers with non-DecodeErrors: none decodes."""
    valid = [msgspec.msgpack.encode(m) for m in (
        ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"])]), ctl.Wait(ids=["t1"]), ctl.Get(id="t1"),
        ctl.List(limit=2), ctl.Status(), ctl.Health())]
    tags = ["Submit", "Wait", "Get", "Status", "Scale", "Shutdown", "Dispatch", "Result", "", "x"]

    def junk(depth: int = 0) -> object:
        keys = ["type", "tasks", "ids", "id", "kind", "argv", "limit", "children", "timeout_s", "q"]
        options = [
            lambda: None, lambda: rng.random() < 0.5, lambda: rng.randrange(-(2**63), 2**64),
            lambda: rng.random() * 1e6 - 5e5,
            lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12))),
            lambda: [junk(depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(keys): junk(depth + 1) for _ in range(rng.randrange(4))},
            lambda: {"type": rng.choice(tags), **{rng.choice(keys): junk(depth + 1) for _ in range(rng.randrange(3))}},
        ]
        return rng.choice(options if depth < 3 else options[:5])()

    frames = [b"", b"\x81\xa4type\xa2\xff\xfe", b"\x82\xa4type\xa6Status\xa1a" + b"\x91" * 5000 + b"\xc0"]
    while len(frames) < n:
        kind = rng.randrange(4)
        if kind == 0:
            frames.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 1:
            frame = rng.choice(valid)
            frames.append(frame[:rng.randrange(len(frame))])
        elif kind == 2:
            frame = bytearray(rng.choice(valid))
            frame[rng.randrange(len(frame))] ^= rng.randrange(1, 256)
            frames.append(bytes(frame))
        else:
            frames.append(msgspec.msgpack.encode(junk()))
    decoder = msgspec.msgpack.Decoder(ctl.Request)
    hostile = []
    for frame in frames:
        try:
            decoder.decode(frame)
        except DECODE_ERRORS:
            hostile.append(frame)  # only what the daemon must refuse (a random valid Shutdown would be obeyed)
    return hostile


def test_hostile_frames_get_errors_and_the_daemon_keeps_serving(supd_factory):
    d = supd_factory(children=2).start()
    pids = d.children_pids()
    ctx = zmq.Context.instance()
    rng = random.Random(20250601)
    frames = hostile_frames(rng, 300)
    assert len(frames) >= 250

    ctl_sock = ctx.socket(zmq.DEALER)
    ctl_sock.setsockopt(zmq.LINGER, 0)
    ctl_sock.connect(f"ipc://{d.state_dir / 'control.sock'}")
    for i, frame in enumerate(frames):
        if i % 10 == 0:  # an extra envelope frame must come back with the reply
            ctl_sock.send_multipart([b"hop%d" % i, frame])
        else:
            ctl_sock.send(frame)
    replies = []
    while len(replies) < len(frames) and ctl_sock.poll(10_000):
        replies.append(ctl_sock.recv_multipart())
    ctl_sock.close()
    assert len(replies) == len(frames), f"{len(frames) - len(replies)} frames got no answer"
    decoded = [msgspec.msgpack.decode(r[-1], type=ctl.Reply) for r in replies]
    assert all(isinstance(r, ctl.Error) and r.kind == "bad_request" for r in decoded)
    assert sorted(r[0] for r in replies if len(r) == 2) == sorted(b"hop%d" % i for i in range(0, len(frames), 10))

    # The children socket: a stranger DEALER with a made-up identity.
    child_sock = ctx.socket(zmq.DEALER)
    child_sock.setsockopt(zmq.LINGER, 0)
    child_sock.setsockopt(zmq.IDENTITY, b"w97.1")
    child_sock.connect(f"ipc://{d.state_dir / 'children.sock'}")
    from proto import children as cp
    strangers = [msgspec.msgpack.encode(m) for m in (
        cp.Hello(protocol=1, slot="w97", pid=1), cp.Heartbeat(),
        cp.Result(task_id="t-none", attempt=1, state="succeeded", outcome=cp.Outcome(), started_at=0, finished_at=0))]
    for frame in hostile_frames(rng, 80) + strangers:
        child_sock.send(frame)
    child_sock.send_multipart([b"a", b"b"])  # three frames at the ROUTER
    deadline = time.monotonic() + 20
    while "event=stranger_child" not in d.log():
        assert time.monotonic() < deadline, d.log()[-2000:]
        time.sleep(0.05)
    child_sock.close()

    assert d.proc is not None and d.proc.poll() is None
    status = d.info(ctl.Status())
    assert status["phase"] == "running" and [c["state"] for c in status["children"]] == ["idle", "idle"]
    assert d.children_pids() == pids, "hostile frames must not disturb the pool"
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["echo", "still here"])))
    assert task.state == "succeeded" and task.result == "still here\n"
    assert "event=child_frame_dropped" in d.log()


@pytest.mark.parametrize("request_", [
    ctl.Wait(ids=["nope"], timeout_s=float("nan")), ctl.Wait(ids=[], timeout_s=float("inf")),
    ctl.Wait(ids=[], timeout_s=-1e308), ctl.List(limit=2**63 - 1), ctl.List(state="", limit=-5),
    ctl.Get(id=""), ctl.Cancel(id="\x00" * 1000), ctl.Scale(children=-(2**63)),
    ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], timeout_s=float("inf"))]),
    ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], timeout_s=float("nan"))]),
    ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], priority=2**63 - 1, retries=2**62)]),
    ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], stall_timeout_s=1e-300)]),
    ctl.Submit(tasks=[]), ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["true"], cwd="/nonexistent\x01")]),
], ids=lambda r: msgspec.json.encode(r).decode()[:60])
def test_well_formed_requests_with_extreme_values_never_kill_the_daemon(supd_factory, request_):
    d = supd_factory(children=1).start()
    reply = d.request(request_, timeout_s=15)
    assert isinstance(reply, (ctl.Error, ctl.Tasks, ctl.Accepted, ctl.Ok)), reply
    assert d.proc is not None and d.proc.poll() is None, d.log()[-3000:]
    assert d.info(ctl.Status())["phase"] == "running"
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["true"])), timeout_s=30)
    assert task.state == "succeeded"
