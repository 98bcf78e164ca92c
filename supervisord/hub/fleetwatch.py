"""A fleet's watch: the task state changes of every host, on this host's event stream.

The journal sends small `supd_events` notifications in the transactions that write a task's
states (`supervisord.store.pgevents`); the journal's listener hands them to this hub only
while someone subscribes to `task/…` events here (`tick` keeps `Journal.relay_events`
current), and this module republishes them as `task/<id>/queued|started|finished` with the
`host` that ran (or accepted) the task. Events this hub published itself are not repeated.
Output chunks (`progress`) and child events stay local to their host.

Functions of a `Hub` in fleet mode.
"""

from __future__ import annotations

from typing import Any

from supervisord.events import JournalNotified
from supervisord.hub.state import Hub
from supervisord.store import pgevents

_TASK = b"task/"


def tick(h: Hub) -> None:
    """Relay the fleet's events only while a subscriber here may want them."""
    f = h.fleet
    assert f is not None
    wanted = getattr(h.spokes.events, "wanted", None)
    f.journal.relay_events = wanted is None or any(_TASK.startswith(p) or p.startswith(_TASK) for p in wanted)


def on_event(h: Hub, event: Any) -> None:
    f = h.fleet
    if f is None or not isinstance(event, JournalNotified) or event.channel != pgevents.CHANNEL:
        return
    got = pgevents.decode(event.payload)
    if got is None or (got.hub and got.by == f.host):
        return  # not ours to read, or already published here by this hub
    by = got.by if got.by != got.host else None
    for task_id, what, state in got.e:
        h.spokes.events.publish(f"task/{task_id}/{what}", task=task_id, state=state, host=got.host, by=by)
