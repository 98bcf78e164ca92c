"""The fleet's task events: small `NOTIFY supd_events` payloads, sent in the transactions that
already write the states, so `supctl watch` on any host can show every host's tasks.

- What: a task submitted (`queued`), started (`started`, state `running`) and final
  (`finished`, with its state); and, written by the journal rather than a hub, the rescue of
  an attempt (`queued` again, or `finished`), a remote cancel and a spent budget (`finished`).
- Payload: JSON `{"by": sender, "host": the host the events are about, "hub": true when the
  sender's hub publishes these itself, "e": [[task id, what, state], ...]}`, at most
  `MAX_PAYLOAD_BYTES` (PostgreSQL refuses a payload of 8000 bytes or more): a transaction
  with many events sends one notification per ~140 of them, not one per task.
- Delivered at commit, once, to every listening host; nothing is stored (a host that is not
  listening misses them, like a watch that starts late).

Imports the stdlib, psycopg and msgspec only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

CHANNEL = "supd_events"
#: below PostgreSQL's 8000-byte limit on a NOTIFY payload, with room for the envelope
MAX_PAYLOAD_BYTES = 7800

#: (task id, what: queued | started | finished, state)
Event = tuple[str, str, str]

_enc = msgspec.json.Encoder()


class Payload(msgspec.Struct, frozen=True):
    by: str
    host: str | None
    hub: bool
    e: list[tuple[str, str, str]]


_dec = msgspec.json.Decoder(Payload)


def payloads(by: str, host: str | None, hub: bool, events: Sequence[Event]) -> list[str]:
    """The notifications that carry `events`, each under `MAX_PAYLOAD_BYTES`."""
    head = len(_enc.encode(Payload(by, host, hub, [])))
    out: list[str] = []
    chunk: list[tuple[str, str, str]] = []
    size = head
    for ev in events:
        cost = len(_enc.encode(ev)) + 1
        if chunk and size + cost > MAX_PAYLOAD_BYTES:
            out.append(_enc.encode(Payload(by, host, hub, chunk)).decode())
            chunk, size = [], head
        chunk.append(ev)
        size += cost
    if chunk:
        out.append(_enc.encode(Payload(by, host, hub, chunk)).decode())
    return out


def send(cur: Any, by: str, host: str | None, hub: bool, events: Sequence[Event]) -> None:
    """NOTIFY `events` in the transaction of `cur` (delivered at its commit)."""
    for p in payloads(by, host, hub, events):
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))


def decode(payload: str) -> Payload | None:
    """A payload as sent, or None for one that is not ours (say, from a newer supd)."""
    try:
        return _dec.decode(payload)
    except msgspec.DecodeError:
        return None
