"""The wire decoders under hostile input: whatever bytes arrive, decoding a control
`Request` or a `ChildMessage` either yields one of the union's structs or raises one of
`proto.DECODE_ERRORS` — nothing else, since the control and children spokes catch
exactly those and anything else would end their reader task (a deaf daemon).

Some msgspec versions raise more than `msgspec.DecodeError` (`UnicodeDecodeError` for
invalid UTF-8, `RecursionError` for deep nesting); the frames hypothesis found are pinned
below, asserting only that the spokes' `DECODE_ERRORS` catches them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import DECODE_ERRORS
from proto import children as cp
from proto import control as ctl
from proto.task import Outcome, TaskSpec, Usage

pytestmark = pytest.mark.timeout(300)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DECODERS = {
    "control": (msgspec.msgpack.Decoder(ctl.Request), ctl.Request),
    "children": (msgspec.msgpack.Decoder(cp.ChildMessage), cp.ChildMessage),
}

VALID: dict[str, list[Any]] = {
    "control": [
        ctl.Submit(tasks=[TaskSpec(kind="exec", argv=["echo", "hi"], env={"A": "b"}, timeout_s=3.0)],
                   traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
        ctl.Submit(tasks=[TaskSpec(prompt="say hi", model="m", allowed_tools=["Bash"], max_turns=2)]),
        ctl.Wait(ids=["t1", "t2"], timeout_s=1.5), ctl.Get(id="t1"), ctl.List(state="failed", limit=3),
        ctl.Cancel(id="t1"), ctl.Status(), ctl.Stats(), ctl.Health(), ctl.Scale(children=3), ctl.Reload(),
        ctl.Shutdown(),
    ],
    "children": [
        cp.Hello(protocol=1, slot="w00", pid=123), cp.Heartbeat(task_id="t1", rss_bytes=10),
        cp.Started(task_id="t1", attempt=1, pid=5, pgid=5),
        cp.Progress(task_id="t1", attempt=1, event="assistant", summary="thinking"),
        cp.Result(task_id="t1", attempt=1, state="succeeded", started_at=1.0, finished_at=2.0,
                  outcome=Outcome(exit_code=0, result="ok", usage=Usage(input_tokens=3), cost_usd=0.1)),
    ],
}
TAGS = sorted({type(m).__name__ for ms in VALID.values() for m in ms}
              | {"Dispatch", "Cancel", "Stop", "Accepted", "Error", "Info", ""})
FIELDS = sorted({f for ms in VALID.values() for m in ms for f in m.__struct_fields__}
                | {"type", "kind", "argv", "prompt", "outcome", "tasks", "usage", "error"})

# msgpack-encodable values of every shape (ints within msgpack's 64-bit range).
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.binary(max_size=20) | st.sampled_from(TAGS))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                                inner, max_size=5),
    max_leaves=20,
)


def tagged(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict that looks like one of ours: a tag, then plausible and implausible fields."""
    return st.builds(
        lambda tag, fields: {"type": tag, **fields},
        st.sampled_from(TAGS) | st.text(max_size=10) | st.integers(-(2**63), 2**64 - 1) | st.none(),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6),
    )


def check(which: str, payload: bytes) -> None:
    decoder, union = DECODERS[which]
    try:
        decoded = decoder.decode(payload)
    except DECODE_ERRORS:
        return
    assert isinstance(decoded, union.__args__)  # type: ignore[attr-defined]
    encoded = msgspec.msgpack.encode(decoded)
    assert msgspec.msgpack.encode(decoder.decode(encoded)) == encoded  # what decodes, round-trips (NaN too)


@pytest.mark.parametrize("which", DECODERS)
@SETTINGS
@given(payload=st.binary(max_size=512))
def test_random_bytes(which: str, payload: bytes) -> None:
    check(which, payload)


@pytest.mark.parametrize("which", DECODERS)
@SETTINGS
@given(data=st.data())
def test_truncated_and_bit_flipped_valid_frames(which: str, data: st.DataObject) -> None:
    msg = data.draw(st.sampled_from(VALID[which]))
    frame = msgspec.msgpack.encode(msg)
    cut = data.draw(st.integers(0, len(frame)))
    check(which, frame[:cut])
    flipped = bytearray(frame)
    at = data.draw(st.integers(0, len(frame) - 1))
    flipped[at] ^= data.draw(st.integers(1, 255))
    check(which, bytes(flipped))
    check(which, frame + data.draw(st.binary(min_size=1, max_size=8)))  # trailing garbage


@pytest.mark.parametrize("which", DECODERS)
@SETTINGS
@given(value=values | tagged(values))
def test_wrong_schema_msgpack(which: str, value: Any) -> None:
    check(which, msgspec.msgpack.encode(value))


@pytest.mark.parametrize("which", DECODERS)
@SETTINGS
@given(data=st.data())
def test_valid_messages_with_one_field_replaced(which: str, data: st.DataObject) -> None:
    msg = data.draw(st.sampled_from(VALID[which]))
    raw = msgspec.to_builtins(msg)
    assert isinstance(raw, dict)
    key = data.draw(st.sampled_from(sorted(raw)))
    raw[key] = data.draw(values)
    check(which, msgspec.msgpack.encode(raw))


@pytest.mark.parametrize("which", DECODERS)
def test_every_valid_sample_decodes(which: str) -> None:
    decoder, _ = DECODERS[which]
    for msg in VALID[which]:
        assert decoder.decode(msgspec.msgpack.encode(msg)) == msg


@pytest.mark.parametrize("payload", [
    b"\x81\xa4type\xa2\xff\xfe",  # {"type": <invalid UTF-8>}
    b"\x82\xa4type\xa6Status\xa1a" + b"\x91" * 5000 + b"\xc0",  # unknown field, deeply nested
    b"\x91" * 100_000 + b"\xc0",  # nesting past any limit
    b"\xc1",  # a byte msgpack never uses
])
def test_hostile_frames_are_refused_with_a_decode_error(payload: bytes) -> None:
    """Frames hypothesis once found to escape the decoders: whatever class msgspec raises for
    them in a given version, the spokes' `except DECODE_ERRORS` catches it (and nothing decodes)."""
    for decoder, _ in DECODERS.values():
        with pytest.raises(DECODE_ERRORS):
            decoder.decode(payload)
