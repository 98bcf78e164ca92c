"""The fleet's event payloads: each under PostgreSQL's 8000-byte NOTIFY limit, every event in
exactly one, in order, and read back as sent."""

from __future__ import annotations

import pytest

from supervisord.store import pgevents


# an event is 64 bytes here (36-byte id, "finished", "succeeded", brackets, commas); the
# envelope ~100: (7800 - 100) // 64 = 120 events a payload
@pytest.mark.parametrize("n, payloads", [(0, 0), (1, 1), (120, 1), (121, 2), (1000, 9), (2000, 17)])
def test_events_are_packed_under_the_limit(n: int, payloads: int) -> None:
    events = [(f"01a233c1-fb52-7012-bcc7-{i:012d}", "finished", "succeeded") for i in range(n)]
    out = pgevents.payloads("build-01:/var/lib/supd", "build-01:/var/lib/supd", True, events)
    assert len(out) == payloads
    assert all(len(p.encode()) < 8000 for p in out)
    back = [pgevents.decode(p) for p in out]
    assert [tuple(e) for p in back if p is not None for e in p.e] == events
    assert all(p is not None and (p.by, p.hub) == ("build-01:/var/lib/supd", True) for p in back)


def test_a_payload_that_is_not_ours_is_ignored() -> None:
    assert pgevents.decode("12") is None
    assert pgevents.decode('{"by": "a"}') is None
