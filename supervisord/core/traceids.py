"""W3C trace context ids for batches and tasks. Pure: the clock and randomness are arguments.

A batch's trace id is 128 bits: the first 16 hex digits are `time_ns()` at the batch's
start, the last 16 random. A span id is 64 random bits. Imports the stdlib only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

#: version-trace_id-parent_id-flags, lowercase hex only; a future version may add "-..." fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True, slots=True)
class SpanRef:
    trace_id: str
    span_id: str
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def trace_id_at(time_ns: int, rand64: int) -> str:
    return f"{time_ns & (2**64 - 1):016x}{rand64 & (2**64 - 1):016x}"


def span_id(rand64: int) -> str:
    return f"{(rand64 or 1) & (2**64 - 1):016x}"


def flow_span_id(workflow_id: str, step: str | None = None) -> str:
    """The span of a workflow (`step` None) or of one of its steps: derived from the ids, so
    a daemon that carries on after a crash puts new attempts under the same spans."""
    digest = hashlib.sha256(f"{workflow_id}/{step if step is not None else ''}".encode()).digest()
    return span_id(int.from_bytes(digest[:8], "big"))


def parse_traceparent(value: str | None) -> SpanRef | None:
    """A valid `traceparent` header value, or None (invalid values are ignored, per W3C:
    uppercase hex, version ff, all-zero ids, or extra fields on version 00)."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if not m or m.group(1) == "ff" or (m.group(1) == "00" and m.group(5)):
        return None
    if set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    return SpanRef(m.group(2), m.group(3), int(m.group(4), 16) & 1 == 1)


def new_task_id(now_ns: int, rand: int) -> str:
    """Sortable and unique: milliseconds since the epoch in hex, then 40 bits that the caller
    makes unique within the daemon (a counter in the high bits, randomness below)."""
    return f"t{now_ns // 1_000_000:011x}{rand & 0xFF_FFFF_FFFF:010x}"


class Ids:
    """Every id the daemon makes — tasks, traces, spans — from one injected source of random
    bits (`random.getrandbits` in the daemon; a seeded `random.Random` in tests)."""

    def __init__(self, bits: Callable[[int], int]) -> None:
        self.bits = bits
        self._counter = bits(20)

    def task_id(self, now_ns: int) -> str:
        """A counter (24 bits) makes ids of one daemon unique even within one millisecond; 16
        random bits keep two daemons' ids (a restart within the same millisecond) apart."""
        self._counter += 1
        return new_task_id(now_ns, ((self._counter & 0xFF_FFFF) << 16) | self.bits(16))

    def uuid7(self, now_ns: int) -> str:
        """A UUIDv7 (RFC 9562) for a fleet, where hosts make ids without talking: 48 bits of
        milliseconds, then 12 bits of this daemon's counter (ids of one host stay ordered
        within a millisecond) and 62 random bits (two hosts never meet: ~2^-62 per pair)."""
        self._counter += 1
        ms = (now_ns // 1_000_000) & (2**48 - 1)
        value = (ms << 80) | (0x7 << 76) | ((self._counter & 0xFFF) << 64) | (0b10 << 62) | self.bits(62)
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    def workflow_id(self, now_ns: int) -> str:
        """Like a task id, with a `w`: sortable, unique within the daemon."""
        return "w" + self.task_id(now_ns)[1:]

    def trace_id(self, now_ns: int) -> str:
        return trace_id_at(now_ns, self.bits(64))

    def span_id(self) -> str:
        return span_id(self.bits(64))
