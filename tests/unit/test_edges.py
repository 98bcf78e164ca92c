"""Pure edges: supctl's argument parsing (durations, bounded numbers, UTF-8), the wire's
bounds as the decoder applies them, and the open-files budget."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import pytest

from proto import control as ctl
from proto import readable_error
from supervisord.core.fdbudget import fd_budget_problem, fds_needed, soft_limit_to_ask
from supervisord.ctl import supctl

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("30m", 1800.0), ("12h", 43_200.0), ("7d", 604_800.0), ("0s", 0.0), ("45", 45.0),
    ("1.5h", 5400.0), (" 2d ", 172_800.0), ("3650d", 315_360_000.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert supctl.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "message"), [
    ("", "not a duration: ''"), ("7w", "not a duration: '7w'"), ("-5m", "not a duration: '-5m'"),
    ("d", "not a duration: 'd'"), ("1e3s", "not a duration: '1e3s'"), ("5 m", "not a duration: '5 m'"),
    ("nan", "not a duration: 'nan'"), ("3651d", "3651d is too long: at most 3650d"),
])
def test_bad_durations_say_why(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}"):
        supctl.parse_duration(text)


def _parse(*argv: str) -> argparse.Namespace:
    return supctl.build_parser().parse_args(list(argv))


def test_prune_and_restart_slot_parse() -> None:
    a = _parse("prune", "--older-than", "12h")
    assert a.older_than == 43_200.0
    assert _parse("prune").older_than is None
    assert _parse("restart-slot", "w03").slot == "w03"


def test_new_commands_are_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--help")
    out = capsys.readouterr().out
    assert "prune" in out and "restart-slot" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["scale", "1025"], "argument N: 1025 is out of range: must be between 0 and 1024"),
    (["scale", "2e3"], "argument N: not an integer: '2e3'"),
    (["submit", "--retries", str(2**70), "x"], f"argument --retries: {2**70} is out of range"),
    (["submit", "--timeout", "nan", "x"], "argument --timeout: nan is out of range: must be > 0 and <= 2592000"),
    (["submit", "--timeout", "0", "x"], "argument --timeout: 0 is out of range"),
    (["wait", "--timeout", "inf", "t1"], "argument --timeout: inf is out of range: must be >= 0 and <= 31536000"),
    (["list", "--limit", "10001"], "argument --limit: 10001 is out of range: must be between 1 and 10000"),
    (["prune", "--older-than", "soon"], "argument --older-than: not a duration: 'soon'"),
])
def test_out_of_range_arguments_are_usage_errors(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _parse(*argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_wait_timeout_0_is_not_forever() -> None:
    assert _parse("wait", "--timeout", "0", "t1").timeout == 0.0
    assert _parse("wait", "t1").timeout is None


def test_undecodable_arguments() -> None:
    assert supctl.undecodable_argument(["ok", "café"]) is None
    assert supctl.undecodable_argument(["ok", b"caf\xe9".decode(errors="surrogateescape")]) == "caf\\xe9"


@pytest.mark.parametrize(("req", "message"), [
    (ctl.Submit(tasks=[supctl.TaskSpec(kind="exec", argv=["x"], retries=2**63)]), "tasks[0].retries: Expected `int` <= 100"),
    (ctl.Submit(tasks=[supctl.TaskSpec(kind="exec", argv=["x"], priority=2**80)]), "tasks[0].priority: "),
    (ctl.Wait(ids=["t"] * 10_001), "ids: Expected `array` of length <= 10000"),
    (ctl.Scale(children=-1), "children: Expected `int` >= 0"),
    (ctl.Submit(tasks=[], tracestate="x" * 513), "tracestate: Expected `str` of length <= 512"),
])
def test_check_request_refuses_what_the_daemon_would(req: ctl.Request, message: str) -> None:
    with pytest.raises(supctl.UsageError) as e:
        supctl.check_request(req)
    assert str(e.value).startswith(message), str(e.value)


def test_check_request_passes_good_requests() -> None:
    supctl.check_request(ctl.Submit(tasks=[supctl.TaskSpec(kind="exec", argv=["x"], retries=100, priority=-5)],
                                    traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    supctl.check_request(ctl.Wait(ids=["t"] * 10_000, timeout_s=0.0))


@pytest.mark.parametrize(("traceparent", "tracestate", "sent"), [
    ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "k=v", ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "k=v")),
    ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "k=" + "v" * 600, ("00-" + "a" * 32 + "-" + "b" * 16 + "-01", None)),
    ("garbage", "k=v", (None, None)),
    ("00-" + "A" * 32 + "-" + "b" * 16 + "-01", None, (None, None)),
])
def test_trace_context_from_the_environment_is_dropped_when_malformed(
        monkeypatch: pytest.MonkeyPatch, traceparent: str, tracestate: str | None, sent: tuple[Any, Any]) -> None:
    monkeypatch.setenv("TRACEPARENT", traceparent)
    if tracestate is None:
        monkeypatch.delenv("TRACESTATE", raising=False)
    else:
        monkeypatch.setenv("TRACESTATE", tracestate)
    assert supctl.trace_context() == sent


def test_readable_error_puts_the_field_first() -> None:
    assert readable_error("Expected `int` <= 100 - at `$.tasks[0].retries`") == "tasks[0].retries: Expected `int` <= 100"
    assert readable_error("Expected `object`, got `int`") == "Expected `object`, got `int`"
    assert readable_error("Object missing required field `ids` - at `$`") == "(message): Object missing required field `ids`"


def test_decoder_refuses_out_of_range_wire_values() -> None:
    dec = msgspec.msgpack.Decoder(ctl.Request)
    enc = msgspec.msgpack.Encoder()
    with pytest.raises(msgspec.ValidationError, match=r"<= 100 - at `\$.tasks\[0\].retries`"):
        dec.decode(enc.encode({"type": "Submit", "tasks": [{"kind": "exec", "argv": ["x"], "retries": 2**64 - 1}]}))
    assert dec.decode(enc.encode({"type": "Prune"})) == ctl.Prune(older_than_s=None)
    assert dec.decode(enc.encode({"type": "RestartSlot", "slot": "w01"})) == ctl.RestartSlot(slot="w01")


# ---- the open-files budget ------------------------------------------------------------

def test_fds_needed() -> None:
    assert fds_needed(0) == 112
    assert fds_needed(16) == 160
    assert fds_needed(1024) == 3184


@pytest.mark.parametrize(("children", "spares", "limit", "problem"), [
    (16, 0, 1024, None),
    (16, 0, 160, None),
    (16, 0, 159, "16 children need 160 open files but the limit is 159 (ulimit -n): raise it "
                 "(ulimit -n 160, or LimitNOFILE= in the unit) or use at most 15 children"),
    (16, 0, 64, "16 children need 160 open files but the limit is 64 (ulimit -n): raise it "
                "(ulimit -n 160, or LimitNOFILE= in the unit) or use at most 0 children"),
    (0, 0, 100, "0 children need 112 open files but the limit is 100 (ulimit -n): raise it "
                "(ulimit -n 112, or LimitNOFILE= in the unit) or use at most 0 children"),
    (16, 1, 163, None),
    (16, 1, 162, "16 children and 1 spare need 163 open files but the limit is 162 (ulimit -n): raise it "
                 "(ulimit -n 163, or LimitNOFILE= in the unit) or use at most 15 children"),
    (16, 2, 159, "16 children and 2 spares need 166 open files but the limit is 159 (ulimit -n): raise it "
                 "(ulimit -n 166, or LimitNOFILE= in the unit) or use at most 13 children"),
])
def test_fd_budget_problem(children: int, spares: int, limit: int, problem: str | None) -> None:
    assert fd_budget_problem(children, limit, spares) == problem


@pytest.mark.parametrize(("children", "soft", "hard", "target"), [
    (16, 1024, 4096, None),      # enough already: leave it
    (16, 64, 4096, 4096),        # raise, with room to scale
    (16, 64, 1024, 1024),        # never past the hard limit
    (16, 64, 100, 100),          # raise what we can; the problem is still reported
    (16, 64, 64, None),          # nothing to gain
    (1024, 1024, -1, 4096),      # no hard limit (RLIM_INFINITY)
    (2000, 1024, -1, 6112),
])
def test_soft_limit_to_ask(children: int, soft: int, hard: int, target: int | None) -> None:
    assert soft_limit_to_ask(children, soft, hard) == target
