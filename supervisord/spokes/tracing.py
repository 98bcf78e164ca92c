"""Tracing: OpenTelemetry spans for batches, task attempts and child lifecycle.

Owns the tracer provider and exporter. The hub calls the methods below at the
moments they name; ids come from the hub (they were handed to processes as
TRACEPARENT), so spans carry exactly those ids. With exporter "none" nothing is
recorded. Must not import other spokes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisord.config import TracingConfig

if TYPE_CHECKING:
    from proto.task import Outcome
    from supervisord.core.task import Task


class Tracer:
    """The tracing spoke's interface. This base records nothing (exporter "none")."""

    enabled = False

    def batch_accepted(self, trace_id: str, master_span_id: str, parent_span_id: str | None,
                       tracestate: str | None, tasks: list[Task], start_ns: int) -> None:
        """A batch was accepted: open its master span (it ends when its last task is final)."""

    def attempt_started(self, task: Task, child: str, start_ns: int) -> None:
        """An attempt was dispatched with span `task.span_id` under `task.parent_span_id`."""

    def attempt_finished(self, task: Task, state: str, outcome: Outcome, end_ns: int, pid: int | None) -> None:
        """An attempt ended (final or retried): close its span with the outcome as attributes."""

    def task_final(self, task: Task, end_ns: int) -> None:
        """A task reached its final state (closes the master span after the batch's last)."""

    def flow_span_started(self, name: str, trace_id: str, span_id: str, parent_span_id: str | None,
                          start_ns: int, attributes: dict[str, object]) -> None:
        """A workflow's span, or one of its steps' (under the workflow's): attempts whose
        `parent_span_id` is this span nest under it."""

    def flow_span_ended(self, span_id: str, state: str, end_ns: int, error: str | None = None) -> None:
        """Close a span opened by `flow_span_started` (unknown ids are ignored)."""

    def child_event(self, name: str, identity: str, pid: int | None, **attributes: object) -> None:
        """A child lifecycle event (spawn, exit, restart, fatal) as a short span."""

    def shutdown(self) -> None:
        """Flush and stop exporting."""

    def claude_env(self) -> dict[str, str]:
        """Extra environment for Claude tasks so the CLI exports its own spans into our trace."""
        return {}


def make_tracer(config: TracingConfig) -> Tracer:
    if config.exporter == "none":
        return Tracer()
    from supervisord.spokes.otel import OTelTracer

    return OTelTracer(config)
