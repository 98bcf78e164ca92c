"""The dashboard's pure parts: the last hour in minute buckets, and a browser's bounded
buffer (dropped with a reload hint rather than grown)."""

from __future__ import annotations

import pytest

from supervisord.core.series import BUCKETS, Series, quantile
from supervisord.spokes import webfeed
from supervisord.spokes.webfeed import RELOAD, Client

pytestmark = pytest.mark.timeout(10)

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None),
    ([3.0], 0.95, 3.0),
    ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
    ([4.0, 1.0, 3.0, 2.0], 0.95, 4.0),
    ([float(i) for i in range(1, 101)], 0.95, 95.0),
])
def test_quantile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert quantile(values, q) == expected


def test_a_minute_sums_its_tasks_and_empty_minutes_are_zeros() -> None:
    s = Series()
    s.record(T0 + 1, ok=True, duration_s=1.0, tokens=100, cost_usd=0.5)
    s.record(T0 + 59, ok=False, duration_s=3.0)
    s.record(T0 + 61, ok=True, duration_s=2.0, tokens=7)
    w = s.window(T0 + 90)
    assert len(w) == BUCKETS and w[0]["t"] == T0 - 58 * 60  # the 60 minutes up to the one of T0 + 90
    assert w[-2] == {"t": T0, "finished": 2, "failed": 1, "tokens": 100, "cost_usd": 0.5, "p50_s": 1.0, "p95_s": 3.0}
    assert w[-1] == {"t": T0 + 60, "finished": 1, "failed": 0, "tokens": 7, "cost_usd": 0.0, "p50_s": 2.0,
                     "p95_s": 2.0}
    assert w[0] == {"t": T0 + 60 - 60 * (BUCKETS - 1), "finished": 0, "failed": 0, "tokens": 0, "cost_usd": 0.0,
                    "p50_s": None, "p95_s": None}
    assert s.hour(T0 + 90) == {"finished": 3, "failed": 1, "tokens": 107, "cost_usd": 0.5, "p50_s": 2.0,
                               "p95_s": 3.0}


def test_an_hour_later_the_old_minutes_are_gone() -> None:
    s = Series()
    s.record(T0, ok=True, duration_s=1.0)
    assert s.hour(T0 + 60 * (BUCKETS - 1))["finished"] == 1  # still the 60th minute
    assert s.hour(T0 + 60 * BUCKETS)["finished"] == 0
    s.record(T0 + 60 * BUCKETS, ok=True)  # a new minute trims what fell out of the window
    assert sorted(s.buckets) == [int(T0 // 60) + BUCKETS]


def test_a_bucket_keeps_a_bounded_sample() -> None:
    s = Series()
    for i in range(10_000):
        s.record(T0 + 1, ok=True, duration_s=float(i % 100))
    b = s.buckets[int(T0 // 60)]
    assert b.finished == 10_000 and len(b.durations) == 512


@pytest.mark.parametrize(("task", "progress", "topic", "wanted"), [
    (None, False, "task/t1/queued", True),
    (None, False, "task/t1/progress", False),
    (None, True, "task/t1/progress", True),
    (None, False, "child/w00.1/ready", True),
    ("t1", False, "task/t1/progress", True),
    ("t1", False, "task/t12/finished", False),
    ("t1", False, "breaker/open", False),
])
def test_what_a_page_is_sent(task: str | None, progress: bool, topic: str, wanted: bool) -> None:
    assert Client(task=task, progress=progress).wants(topic) is wanted


def test_a_slow_page_is_dropped_with_a_reload_hint_not_grown() -> None:
    c = Client()
    for _ in range(webfeed.CLIENT_EVENTS):
        c.push(b"data: {}\n\n")
    assert not c.dropped and len(c.buffer) == webfeed.CLIENT_EVENTS
    c.push(b"data: {}\n\n")
    assert c.dropped and list(c.buffer) == [RELOAD]
    c.push(b"data: more\n\n")  # nothing more is kept
    assert c.take() == RELOAD and c.size == 0


def test_a_page_past_its_bytes_is_dropped_too() -> None:
    c = Client()
    c.push(b"x" * (webfeed.CLIENT_BYTES - 10))
    assert not c.dropped
    c.push(b"y" * 11)
    assert c.dropped and c.take() == RELOAD


def test_the_feed_keeps_transcripts_and_the_hour_from_bus_events() -> None:
    f = webfeed.Feed(ctx=None, events_endpoint="ipc://unused", wall=lambda: T0)  # type: ignore[arg-type]
    slow, fast = Client(), Client(task="t1")
    f.clients |= {slow, fast}
    f.hear("task/t1/progress", {"ts": T0, "event": "assistant", "summary": "assistant text: \"hi\""})
    f.hear("task/t1/finished", {"ts": T0 + 1, "state": "succeeded", "duration_s": 2.5, "tokens": 30,
                                "cost_usd": 0.01})
    assert [line["summary"] for line in f.transcripts["t1"]] == ['assistant text: "hi"']
    assert f.series.hour(T0 + 2) == {"finished": 1, "failed": 0, "tokens": 30, "cost_usd": 0.01, "p50_s": 2.5,
                                     "p95_s": 2.5}
    assert len(fast.buffer) == 2 and len(slow.buffer) == 1  # the overview does not get progress lines
    for i in range(webfeed.CLIENT_EVENTS):
        f.hear(f"task/t{i + 2}/queued", {"ts": T0})
    assert slow.dropped and slow not in f.clients and f.dropped == 1
    assert fast in f.clients and not fast.dropped


def test_the_dashboards_requests_go_through_the_inbox_and_their_answers_come_back(tmp_path) -> None:
    import asyncio

    from proto import control as ctl
    from supervisord.config import WebConfig
    from supervisord.events import RequestReceived
    from supervisord.hub.web import Replies
    from supervisord.spokes.web import WEB_MARK, WebServer

    class Control:
        bad_requests = 0

        def __init__(self) -> None:
            self.sent: list[tuple[tuple[bytes, ...], ctl.Reply]] = []

        def reply(self, envelope: tuple[bytes, ...], reply: ctl.Reply) -> None:
            self.sent.append((envelope, reply))

        def check_socket(self) -> bool:
            return True

    async def run() -> None:
        inbox: asyncio.Queue = asyncio.Queue()
        feed = webfeed.Feed(ctx=None, events_endpoint="ipc://unused")  # type: ignore[arg-type]
        web = WebServer(WebConfig(port=1), inbox, tmp_path, feed, wall=lambda: T0)
        control = Control()
        replies = Replies(control, web)
        asking = asyncio.ensure_future(web.ask(ctl.Cancel(id="t1")))
        event = await inbox.get()
        assert isinstance(event, RequestReceived) and event.request == ctl.Cancel(id="t1")
        assert event.envelope[0] == WEB_MARK
        replies.reply((b"\x00abcd",), ctl.Ok(message="for supctl"))  # a control client's answer
        replies.reply(event.envelope, ctl.Ok(message="cancelled t1"))
        assert await asking == ctl.Ok(message="cancelled t1")
        assert control.sent == [((b"\x00abcd",), ctl.Ok(message="for supctl"))]

    asyncio.run(run())
