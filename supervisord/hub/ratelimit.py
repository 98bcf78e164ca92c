"""The rate-limit gate's verbs: a Claude attempt's end may close it, time opens it again.

Functions of a `Hub` (the gate itself is `h.gate`, `supervisord.core.gate`). While it is
closed the ready-pump starts no Claude task (`tasks.pump` asks `claude_allowed`); this
module logs each change, publishes it for `supctl watch` and says what `status` and
`health` show.
"""

from __future__ import annotations

from proto.task import Outcome
from supervisord.core.gate import GateState
from supervisord.core.task import Task
from supervisord.hub.state import Hub
from supervisord.logs import log


def attempt_ended(h: Hub, task: Task) -> None:
    outcome = task.outcome or Outcome()
    if h.gate.ended(task.id, outcome, h.clock.now(), h.clock.wall()) is GateState.CLOSED:
        wait_s = round(h.gate.until - h.clock.now(), 3)
        log("gate", state="closed", task=task.id, resets_at=round(h.gate.until_wall, 3), wait_s=wait_s,
            queued=h.sched.queued)
        h.spokes.events.publish("gate/closed", state="closed", task=task.id, resets_at=h.gate.until_wall,
                                wait_s=wait_s)


def tick(h: Hub, now: float) -> None:
    if h.gate.tick(now) is GateState.OPEN:
        log("gate", state="open", task=h.gate.task_id, queued=h.sched.queued)
        h.spokes.events.publish("gate/open", state="open", queued=h.sched.queued)


def data(h: Hub) -> dict[str, object]:
    g = h.gate
    closed = g.state is GateState.CLOSED
    return {"state": g.state.value, "resets_at": round(g.until_wall, 3) if closed else None,
            "wait_s": round(max(0.0, g.until - h.clock.now()), 3) if closed else None,
            "task": g.task_id if closed else None}
