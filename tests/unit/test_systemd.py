"""The sd_notify spoke against real datagram sockets, and the unit file against systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisord.spokes.systemd import Notifier, format_status

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "supd.service"
SYSUSERS = REPO / "systemd" / "supd.sysusers.conf"


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as sock:
        yield path, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"supd-test-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        yield "@" + name, sock


# --- (a) what reaches the socket ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path_socket", "abstract_socket"])
def test_every_message_arrives_with_its_exact_payload(kind: str, request: pytest.FixtureRequest) -> None:
    address, receiver = request.getfixturevalue(kind)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    notifier.ready()
    notifier.ready("children 4/4 ready")
    notifier.status("draining: 3 running")
    notifier.watchdog()
    notifier.stopping()
    notifier.stopping("draining")
    notifier.extend_timeout(12.5)
    notifier.extend_timeout(-1)
    notifier.status("two\nlines")

    assert [receiver.recv(4096) for _ in range(9)] == [
        b"READY=1",
        b"READY=1\nSTATUS=children 4/4 ready",
        b"STATUS=draining: 3 running",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining",
        b"EXTEND_TIMEOUT_USEC=12500000",
        b"EXTEND_TIMEOUT_USEC=0",
        b"STATUS=two lines",
    ]
    assert notifier.failures == 0
    notifier.close()


def test_reloading_carries_the_monotonic_clock(path_socket: tuple[str, socket.socket]) -> None:
    address, receiver = path_socket
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", receiver.recv(4096))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_socket_is_opened_once_non_blocking_and_close_on_exec(path_socket: tuple[str, socket.socket]) -> None:
    address, _ = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    sock = notifier._sock
    assert sock is not None
    assert sock.getblocking() is False
    assert os.get_inheritable(sock.fileno()) is False
    notifier.watchdog()
    notifier.watchdog()
    assert notifier._sock is sock
    notifier.close()
    notifier.close()  # idempotent
    notifier.watchdog()  # a no-op once closed
    assert not notifier.enabled


def test_full_receiver_queue_neither_blocks_nor_raises(path_socket: tuple[str, socket.socket]) -> None:
    address, _ = path_socket  # nobody reads: the kernel queue fills, then sendto says EAGAIN
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
        for _ in range(5000):
            notifier.watchdog()
            if notifier.failures:
                break
        assert notifier.failures > 0


# --- (b) watchdog interval --------------------------------------------------------------------

ME = str(os.getpid())


@pytest.mark.parametrize(
    ("env", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ME}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": ME}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": ME}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], interval_s: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@supd-test-unused", **env})
    assert notifier.watchdog_interval_s == interval_s
    notifier.close()


def test_no_watchdog_interval_without_a_notify_socket() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ME}).watchdog_interval_s is None


# --- (c) disabled and dead ----------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_disabled_notifier_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier.from_env(env)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping("x")
    notifier.extend_timeout(1)
    notifier.reloading()
    notifier.close()
    assert notifier.failures == 0


def test_dead_socket_does_not_raise(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on any more: ECONNREFUSED
    _receiver(str(stale)).close()
    for address in (str(tmp_path / "missing.sock"), str(stale), "@supd-test-nobody-" + uuid.uuid4().hex):
        with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
            assert notifier.enabled
            notifier.ready("x")
            notifier.watchdog()
            notifier.reloading()
            assert notifier.failures == 3


def test_format_status() -> None:
    assert format_status(3, 4, queued=5, running=2, failed=1) == (
        "children 3/4 ready; tasks 2 running, 5 queued, 1 failed"
    )


# --- (d) the unit file ------------------------------------------------------------------------


def _settings(text: str) -> dict[str, list[str]]:
    """``section.Key`` → values, in order (units repeat keys such as Environment=)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_unit_keeps_the_choices_the_daemon_relies_on() -> None:
    unit = _settings(UNIT.read_text())
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.NotifyAccess"] == ["main"]
    assert unit["Service.KillMode"] == ["mixed"]
    assert int(unit["Service.TimeoutStopSec"][0]) > 60  # above the default drain limit
    assert unit["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    exec_start = unit["Service.ExecStart"][0].split()
    assert exec_start[0] == "/opt/supd/.venv/bin/supd"
    assert exec_start[exec_start.index("--state-dir") + 1] == "/var/lib/supd"
    assert exec_start[exec_start.index("--runtime-dir") + 1] == "/run/supd"
    assert unit["Service.RuntimeDirectory"] == ["supd"]
    assert "Service.MemoryDenyWriteExecute" not in unit  # the Claude CLI (Bun) JITs


def _verify(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` finds wrong with ``unit``, after removing what is environmental.

    systemd-analyze reports most syntax errors ("Unknown key", "Failed to parse …, ignoring") as
    warnings and still exits 0, so every stderr line about this unit counts. Lines about other units
    (the host's own, pulled in as dependencies) are the machine's business, not ours.
    """
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "cat"}
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=25,
        check=False,
    )
    problems = [line for line in proc.stderr.splitlines() if str(unit) in line or unit.name in line]
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return problems


def _installable_copy(tmp_path: Path, extra: str = "", replace: tuple[str, str] = ("", "")) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    true = shutil.which("true")
    assert true is not None
    text = UNIT.read_text().replace("/opt/supd/.venv/bin/supd", true)
    text = text.replace(*replace).replace("[Install]", extra + "\n[Install]")
    copy = tmp_path / "supd.service"
    copy.write_text(text)
    return copy


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package `systemd`: apt-get install -y systemd)",
)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(_installable_copy(tmp_path)) == []


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("extra", "replace"),
    [
        ("NoSuchDirective=yes", ("", "")),
        ("", ("Type=notify", "Type=notifyish")),
        ("", ("ProtectSystem=strict", "ProtectSystem=strictest")),
        ("", ("ExecReload=/bin/kill", "ExecReload=bin/kill")),
    ],
    ids=["unknown-directive", "bad-type", "bad-protect-system", "relative-exec"],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, extra: str, replace: tuple[str, str]) -> None:
    assert _verify(_installable_copy(tmp_path, extra, replace)) != []


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_conf_creates_the_supd_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^supd:x:\d+:\d+:[^:]*:/var/lib/supd:/usr/sbin/nologin$", passwd, re.MULTILINE), passwd
    assert re.search(r"^supd:x:\d+:", (tmp_path / "etc" / "group").read_text(), re.MULTILINE)
