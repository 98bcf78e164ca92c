"""The child's command line, as a table: what the daemon writes is parsed; anything else
is a BootError naming the problem (the child then exits BOOT_FAILURE_EXIT)."""

from __future__ import annotations

import pytest

from children.__main__ import Args, BootError, parse_args

pytestmark = pytest.mark.timeout(10)

BASE = ["--endpoint", "ipc:///run/supd/children.sock", "--identity", "w00.1", "--daemon-pid", "42"]


@pytest.mark.parametrize(("argv", "expected"), [
    (BASE, Args("ipc:///run/supd/children.sock", "w00.1", 42)),
    (BASE + ["--heartbeat-s", "0.5", "--liveness", "3"], Args("ipc:///run/supd/children.sock", "w00.1", 42, 0.5, 3)),
    (["--endpoint=ipc:///x", "--identity=w01.2", "--daemon-pid=7"], Args("ipc:///x", "w01.2", 7)),
])
def test_good_command_lines(argv: list[str], expected: Args) -> None:
    assert parse_args(argv) == expected


@pytest.mark.parametrize(("argv", "words"), [
    ([], "missing --endpoint, --identity, --daemon-pid"),
    (BASE[:4], "missing --daemon-pid"),
    (BASE[:-1], "--daemon-pid needs a value"),
    (BASE[:-1] + ["forty-two"], "--daemon-pid needs a int, got 'forty-two'"),
    (BASE + ["--bogus", "1"], "unknown option '--bogus'"),
    (BASE + ["--heartbeat-s", "0"], "--heartbeat-s must be > 0"),
    (BASE + ["--liveness", "0"], "--liveness >= 1"),
])
def test_bad_command_lines_are_boot_errors(argv: list[str], words: str) -> None:
    with pytest.raises(BootError, match=words.replace("(", r"\(")):
        parse_args(argv)
