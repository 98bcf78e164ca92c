"""Trace ids, task ids, the task environment and the metrics: pure functions as tables."""

from __future__ import annotations

import random
import re

import pytest

from supervisord.core.metrics import BUCKETS_S, Histogram, Metrics
from supervisord.core.taskenv import child_environ, task_env
from supervisord.core.traceids import SpanRef, parse_traceparent, span_id, trace_id_at
from supervisord.core.traceids import Ids, new_task_id

pytestmark = pytest.mark.timeout(10)

TID = "0af7651916cd43dd8448eb211c80319c"
SID = "b7ad6b7169203331"


# ---- trace ids --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("time_ns", "rand64", "expected"),
    [
        (0, 0, "0" * 32),
        (1_700_000_000_123_456_789, 0xDEADBEEF, "17979cfe3d85cd15" + "00000000deadbeef"),
        (2**64 - 1, 2**64 - 1, "f" * 32),
        (2**64 + 5, 2**64 + 6, "0000000000000005" + "0000000000000006"),  # masked to 64 bits each
    ],
)
def test_trace_id_at(time_ns: int, rand64: int, expected: str) -> None:
    assert trace_id_at(time_ns, rand64) == expected


def test_trace_id_starts_with_the_time() -> None:
    t = 1_754_000_000_000_000_000
    tid = trace_id_at(t, random.Random(1).getrandbits(64))
    assert re.fullmatch(r"[0-9a-f]{32}", tid)
    assert int(tid[:16], 16) == t
    assert trace_id_at(t, 1) < trace_id_at(t + 1, 0)  # sortable by start time


@pytest.mark.parametrize(("rand64", "expected"), [(0, "0000000000000001"), (1, "0000000000000001"),
                                                  (0xABC, "0000000000000abc"), (2**64 - 1, "f" * 16)])
def test_span_id_is_never_all_zero(rand64: int, expected: str) -> None:
    assert span_id(rand64) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TID}-{SID}-01", SpanRef(TID, SID, True)),
        (f"00-{TID}-{SID}-00", SpanRef(TID, SID, False)),
        (f"00-{TID}-{SID}-09", SpanRef(TID, SID, True)),  # sampled is bit 0, other flags ignored
        (f"00-{TID}-{SID}-08", SpanRef(TID, SID, False)),
        (f"00-{TID}-{SID}-ff", SpanRef(TID, SID, True)),
        (f" \t00-{TID}-{SID}-01 \t", SpanRef(TID, SID, True)),  # optional whitespace around
        # a future version: parse the fields we know, ignore what follows a dash
        (f"cc-{TID}-{SID}-01", SpanRef(TID, SID, True)),
        (f"cc-{TID}-{SID}-01-what-the-future-will-be-like", SpanRef(TID, SID, True)),
        (f"01-{TID}-{SID}-00-", SpanRef(TID, SID, False)),
    ],
)
def test_parse_traceparent_valid(value: str, expected: SpanRef) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"ff-{TID}-{SID}-01",  # version ff is invalid
        f"00-{TID}-{SID}-01-extra",  # version 00 has exactly four fields
        f"00-{TID}-{SID}-01.",
        f"cc-{TID}-{SID}-01.what-the-future-will-be-like",
        f".0-{TID}-{SID}-01",
        f"0-{TID}-{SID}-01",
        f"000-{TID}-{SID}-01",
        f"00-{'0' * 32}-{SID}-01",  # all-zero trace id
        f"00-{TID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TID[:-1]}-{SID}-01",
        f"00-{TID}0-{SID}-01",
        f"00-.{TID[1:]}-{SID}-01",
        f"00-{TID}-{SID[:-1]}-01",
        f"00-{TID}-{SID}0-01",
        f"00-{TID}-{SID}-1",
        f"00-{TID}-{SID}-001",
        f"00-{TID}-{SID}-.0",
        f"00-{TID.upper()}-{SID}-01",  # lowercase hex only: MUST be ignored
        f"00-{TID}-{SID.upper()}-01",
        f"00-{TID}-{SID}-0A",
        f"00_{TID}_{SID}_01",
        f"00-{TID}-{SID}-01\n",
    ],
)
def test_parse_traceparent_invalid(value: str | None) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize("sampled", [True, False])
def test_traceparent_round_trip(sampled: bool) -> None:
    ref = SpanRef(trace_id_at(1_754_000_000_000_000_000, 42), span_id(7), sampled)
    assert ref.traceparent == f"00-{ref.trace_id}-{ref.span_id}-{'01' if sampled else '00'}"
    assert parse_traceparent(ref.traceparent) == ref


# ---- task ids ---------------------------------------------------------------------------

def test_task_id_format() -> None:
    tid = new_task_id(1_754_000_000_123_456_789, 0xABCDEF)
    assert tid == f"t{1_754_000_000_123:011x}0000abcdef"
    assert re.fullmatch(r"t[0-9a-f]{21}", tid)


def test_task_ids_of_one_big_batch_are_unique() -> None:
    import random

    next_task_id = Ids(random.getrandbits).task_id

    ids = [next_task_id(1_754_000_000_123_456_789) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("rand", "tail"), [(0, "0000000000"), (1, "0000000001"), (0xFF_FFFF_FFFF, "ffffffffff"),
                                            (0x100_0000_0000, "0000000000"), (-1, "ffffffffff")])
def test_task_id_keeps_40_low_bits(rand: int, tail: str) -> None:
    assert new_task_id(0, rand).endswith(tail)


def test_task_ids_sort_by_time_across_milliseconds() -> None:
    rng = random.Random(3)
    times = [1_754_000_000_000_000_000 + k * 1_000_000 for k in range(200)]
    ids = [new_task_id(t, rng.getrandbits(24)) for t in times]
    assert ids == sorted(ids)
    assert len({len(i) for i in ids}) == 1  # fixed width, so string order is time order


def test_task_ids_within_one_millisecond_differ_by_their_random_part() -> None:
    t = 1_754_000_000_000_000_000
    ids = {new_task_id(t + k, k) for k in range(1000)}  # same ms, distinct draws
    assert len(ids) == 1000


# ---- the task environment ---------------------------------------------------------------

DAEMON_ENV = {
    "PATH": "/usr/bin", "HOME": "/home/x", "LANG": "C.UTF-8", "ANTHROPIC_API_KEY": "sk-ant",
    "CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli", "CLAUDE_CODE_SSE_PORT": "1234",
    "CLAUDE_CONFIG_DIR": "/cfg",
    "SUPD_STATE_DIR": "/var/lib/supd", "SUPD_TASK_ID": "t123",
    "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1",
    "LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x", "INVOCATION_ID": "abc",
    "JOURNAL_STREAM": "8:1", "MANAGERPID": "1", "SYSTEMD_EXEC_PID": "1",
    "TRACEPARENT": f"00-{TID}-{SID}-01", "TRACESTATE": "a=b", "BAGGAGE": "k=v",
}
KEPT = {"PATH", "HOME", "LANG", "ANTHROPIC_API_KEY", "CLAUDE_CONFIG_DIR"}


@pytest.mark.parametrize("name", sorted(DAEMON_ENV))
def test_child_environ_filter(name: str) -> None:
    env = child_environ(DAEMON_ENV)
    assert (name in env) is (name in KEPT)
    if name in env:
        assert env[name] == DAEMON_ENV[name]


@pytest.mark.parametrize(
    ("keep", "passed"),
    [
        (frozenset(), set()),
        (frozenset({"CLAUDE_CODE_SSE_PORT"}), {"CLAUDE_CODE_SSE_PORT"}),
        (frozenset({"CLAUDE_CODE_USE_BEDROCK", "NOT_SET"}), set()),  # keep only lets through what is there
        (frozenset({"CLAUDECODE", "TRACEPARENT"}), {"CLAUDECODE", "TRACEPARENT"}),
    ],
)
def test_child_environ_keep_overrides(keep: frozenset[str], passed: set[str]) -> None:
    env = child_environ(DAEMON_ENV, keep)
    assert set(env) == KEPT | passed


def test_child_environ_does_not_touch_its_input() -> None:
    before = dict(DAEMON_ENV)
    child_environ(DAEMON_ENV)
    assert DAEMON_ENV == before


def test_task_env_for_claude_names_the_task_span_and_caps_cli_retries() -> None:
    span = SpanRef(TID, SID)
    env = task_env(span, "congo=t61rcWkgMzE", "claude", {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8080"}, 0)
    assert env == {
        "TRACEPARENT": f"00-{TID}-{SID}-01",
        "TRACESTATE": "congo=t61rcWkgMzE",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080",
    }
    parsed = parse_traceparent(env["TRACEPARENT"])
    assert parsed is not None and (parsed.trace_id, parsed.span_id) == (TID, SID)


@pytest.mark.parametrize(
    ("kind", "tracestate", "claude_env", "max_retries", "expected"),
    [
        ("exec", None, {"X": "1"}, 3, {"TRACEPARENT": f"00-{TID}-{SID}-01"}),  # [claude] env is not for exec
        ("exec", "a=b", {}, 3, {"TRACEPARENT": f"00-{TID}-{SID}-01", "TRACESTATE": "a=b"}),
        ("claude", "", {}, 2, {"TRACEPARENT": f"00-{TID}-{SID}-01", "CLAUDE_CODE_MAX_RETRIES": "2"}),
        ("claude", None, {"CLAUDE_CODE_MAX_RETRIES": "5", "TRACEPARENT": "x"}, 0,  # supd's own values win
         {"TRACEPARENT": f"00-{TID}-{SID}-01", "CLAUDE_CODE_MAX_RETRIES": "0"}),
    ],
)
def test_task_env_table(kind: str, tracestate: str | None, claude_env: dict[str, str], max_retries: int,
                        expected: dict[str, str]) -> None:
    assert task_env(SpanRef(TID, SID), tracestate, kind, claude_env, max_retries) == expected


# ---- metrics ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value_s", "bucket"),
    [(0.0, 0), (0.005, 0), (0.0051, 1), (1.0, 7), (1.01, 8), (3600.0, len(BUCKETS_S) - 2),
     (3600.1, len(BUCKETS_S) - 1), (1e9, len(BUCKETS_S) - 1)],
)
def test_histogram_buckets_are_upper_bounds(value_s: float, bucket: int) -> None:
    h = Histogram()
    h.observe(value_s)
    assert h.counts[bucket] == 1 and sum(h.counts) == 1
    assert (h.total, h.sum_s) == (1, value_s)


def test_histogram_quantile_empty() -> None:
    assert Histogram().quantile(0.5) is None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 0.0, 3.0),
        ([3.0], 0.5, 3.0),
        ([3.0], 1.0, 3.0),
        ([float(i) for i in range(1, 101)], 0.0, 1.0),
        ([float(i) for i in range(1, 101)], 0.5, 50.0),  # nearest rank: ordered[ceil(q * n) - 1]
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([1.0, 10.0], 0.5, 1.0),
        ([float(i) for i in range(1, 101)], 1.0, 100.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 0.5, 3.0),  # order of arrival does not matter
    ],
)
def test_histogram_quantiles(values: list[float], q: float, expected: float) -> None:
    h = Histogram()
    for v in values:
        h.observe(v)
    assert h.quantile(q) == expected


def test_histogram_quantiles_follow_the_recent_window() -> None:
    h = Histogram(recent_cap=10)
    for _ in range(10):
        h.observe(100.0)
    for _ in range(6):
        h.observe(1.0)  # the 11th observation halves the window
    assert h.total == 16 and len(h.recent) <= 10
    assert h.quantile(0.5) == 1.0
    assert h.counts[BUCKETS_S.index(1.0)] == 6  # the buckets keep everything


def test_metrics_snapshot() -> None:
    m = Metrics()
    m.received["claude"] += 3
    m.received["exec"] += 2
    m.finish("claude", "succeeded", None, 2.0, input_tokens=10, output_tokens=20, cost_usd=0.0123456789)
    m.finish("claude", "failed", "overloaded", 1.0)
    m.finish("exec", "succeeded", None, 0.5)
    m.finish("exec", "cancelled", "cancelled", None)  # never started: no duration
    m.retries, m.child_restarts, m.child_fatal = 4, 2, 1
    snap = m.snapshot()
    expected = {
        "tasks_received": {"claude": 3, "exec": 2},
        "tasks_finished": {"claude/failed": 1, "claude/succeeded": 1,
                           "exec/cancelled": 1, "exec/succeeded": 1},
        "tasks_succeeded": 2,
        "tasks_failed": 2,
        "errors": {"claude/overloaded": 1, "exec/cancelled": 1},
        "retries": 4,
        "child_restarts": 2,
        "child_fatal": 1,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": 0.012346,
        "duration_s": {"count": 3, "sum": 3.5, "p50": 1.0, "p95": 2.0, "p99": 2.0},
        "success_rate": 0.5,
    }
    assert {k: snap[k] for k in expected} == expected


def test_metrics_snapshot_when_nothing_happened() -> None:
    snap = Metrics().snapshot()
    assert snap["success_rate"] is None
    assert snap["duration_s"] == {"count": 0, "sum": 0.0, "p50": None, "p95": None, "p99": None}
    assert snap["tasks_finished"] == {} and snap["tasks_succeeded"] == 0
