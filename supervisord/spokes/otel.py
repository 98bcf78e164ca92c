"""The OpenTelemetry implementation of the tracing spoke (`Tracer` in `tracing`).

Owns the SDK's TracerProvider, its BatchSpanProcessor and the exporter chosen by
`[tracing] exporter` (console, otlp-http, otlp-grpc). Spans carry the hub's ids
exactly: the hub already handed them to task processes as TRACEPARENT, so the SDK
must not invent its own. `_HubIds` is the IdGenerator that returns the id the hub
chose for the span about to start (and random ids otherwise). Imports the SDK lazily
through `tracing.make_tracer`, so a daemon with tracing off never loads it. Must not
import other spokes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from supervisord.config import TracingConfig
from supervisord.spokes.tracing import Tracer

if TYPE_CHECKING:
    from proto.task import Outcome
    from supervisord.core.task import Task

_log = logging.getLogger("supd.otel")

#: OTLP defaults when `[tracing] endpoint` is not set.
_DEFAULT_HTTP = "http://127.0.0.1:4318"
_DEFAULT_GRPC = "http://127.0.0.1:4317"


class _HubIds(IdGenerator):
    """Hands the SDK the ids the hub picked; random ones when none is pending.

    The hub is single-threaded and sets the pending ids right before `start_span`,
    which asks for them synchronously, so one slot each is enough.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.next_trace_id: int | None = None
        self.next_span_id: int | None = None

    def generate_span_id(self) -> int:
        value, self.next_span_id = self.next_span_id, None
        return value if value else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        value, self.next_trace_id = self.next_trace_id, None
        return value if value else self._random.generate_trace_id()


def _remote(trace_id: str, span_id: str, tracestate: str | None) -> Context:
    """A context whose parent is a span we only know by id (the caller's, or a master
    span opened by a previous daemon before a restart)."""
    state = TraceState.from_header([tracestate]) if tracestate else TraceState()
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def http_traces_url(endpoint: str | None) -> str:
    """The OTLP/HTTP traces URL: a base endpoint gets `/v1/traces` appended (as the spec says
    for OTEL_EXPORTER_OTLP_ENDPOINT); an endpoint with a path is used as given."""
    endpoint = endpoint or _DEFAULT_HTTP
    path = urlsplit(endpoint).path
    return endpoint if path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def make_exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        return ConsoleSpanExporter(service_name=config.service_name)
    if config.exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=http_traces_url(config.endpoint))
    if config.exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        endpoint = config.endpoint or _DEFAULT_GRPC
        return GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    raise ValueError(f"tracing.exporter: unknown exporter {config.exporter!r}")


class OTelTracer(Tracer):
    """Master span per batch, one span per attempt, short spans for child lifecycle."""

    enabled = True

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.config = config
        self.ids = _HubIds()
        self.provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}),
                                       id_generator=self.ids)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or make_exporter(config)))
        self.tracer = self.provider.get_tracer("supd")
        self.masters: dict[str, trace.Span] = {}  # master span id -> open span
        self.open_tasks: dict[str, int] = {}  # master span id -> tasks not final yet
        self.attempts: dict[str, trace.Span] = {}  # task id -> open attempt span

    def _start(self, name: str, trace_id: str | None, span_id: str | None, context: Context | None,
               start_ns: int | None, kind: SpanKind = SpanKind.INTERNAL,
               attributes: dict[str, object] | None = None) -> trace.Span:
        self.ids.next_trace_id = int(trace_id, 16) if trace_id else None
        self.ids.next_span_id = int(span_id, 16) if span_id else None
        try:
            return self.tracer.start_span(name, context=context or Context(), kind=kind,
                                          attributes=attributes, start_time=start_ns)  # type: ignore[arg-type]
        finally:
            self.ids.next_trace_id = self.ids.next_span_id = None

    # ---- the Tracer interface ----------------------------------------------------------

    def batch_accepted(self, trace_id: str, master_span_id: str, parent_span_id: str | None,
                       tracestate: str | None, tasks: list[Task], start_ns: int) -> None:
        parent = _remote(trace_id, parent_span_id, tracestate) if parent_span_id else None
        kinds = sorted({t.spec.kind for t in tasks})
        span = self._start("supd.batch", trace_id, master_span_id, parent, start_ns, SpanKind.SERVER, {
            "supd.batch.tasks": len(tasks), "supd.batch.kinds": kinds,
            "supd.task_ids": [t.id for t in tasks][:64],
        })
        self.masters[master_span_id] = span
        self.open_tasks[master_span_id] = len(tasks)

    def attempt_started(self, task: Task, child: str, start_ns: int) -> None:
        if not task.trace_id or not task.span_id:
            return
        master = self.masters.get(task.parent_span_id or "")
        if master is not None:
            parent: Context | None = trace.set_span_in_context(master)
        elif task.parent_span_id:  # recovered after a restart: the master lives in the old daemon
            parent = _remote(task.trace_id, task.parent_span_id, task.tracestate)
        else:
            parent = None
        self.attempts[task.id] = self._start(f"supd.task {task.spec.kind}", task.trace_id, task.span_id, parent,
                                             start_ns, attributes={
            "supd.task.id": task.id, "supd.task.kind": task.spec.kind, "supd.task.attempt": task.attempts,
            "supd.child": child,
        })

    def attempt_finished(self, task: Task, state: str, outcome: Outcome, end_ns: int, pid: int | None) -> None:
        span = self.attempts.pop(task.id, None)
        if span is None:
            return
        attrs: dict[str, object] = {"supd.task.state": state}
        if pid is not None:
            attrs["supd.task.pid"] = pid
        if outcome.exit_code is not None:
            attrs["supd.task.exit_code"] = outcome.exit_code
        if outcome.error is not None:
            attrs["supd.error.kind"] = outcome.error.kind
            attrs["error.type"] = outcome.error.kind
        if outcome.usage is not None:
            attrs["supd.usage.input_tokens"] = outcome.usage.input_tokens
            attrs["supd.usage.output_tokens"] = outcome.usage.output_tokens
        if outcome.cost_usd is not None:
            attrs["supd.cost_usd"] = outcome.cost_usd
        if outcome.session_id:
            attrs["supd.claude.session_id"] = outcome.session_id
        span.set_attributes(attrs)  # type: ignore[arg-type]
        if state == "succeeded":
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, outcome.error.message if outcome.error else state))
        span.end(end_time=end_ns)

    def task_final(self, task: Task, end_ns: int) -> None:
        master_id = task.parent_span_id or ""
        left = self.open_tasks.get(master_id)
        if left is None:
            return
        if left > 1:
            self.open_tasks[master_id] = left - 1
            return
        del self.open_tasks[master_id]
        self.masters.pop(master_id).end(end_time=end_ns)

    def flow_span_started(self, name: str, trace_id: str, span_id: str, parent_span_id: str | None,
                          start_ns: int, attributes: dict[str, object]) -> None:
        if span_id in self.masters:
            return
        parent_span = self.masters.get(parent_span_id or "")
        if parent_span is not None:
            parent: Context | None = trace.set_span_in_context(parent_span)
        else:
            parent = _remote(trace_id, parent_span_id, None) if parent_span_id else None
        self.masters[span_id] = self._start(name, trace_id, span_id, parent, start_ns, attributes=attributes)

    def flow_span_ended(self, span_id: str, state: str, end_ns: int, error: str | None = None) -> None:
        span = self.masters.pop(span_id, None)
        if span is None:
            return
        span.set_attribute("supd.state", state)
        if error is None:
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def child_event(self, name: str, identity: str, pid: int | None, **attributes: object) -> None:
        attrs = {"supd.child": identity, **{f"supd.child.{k}": v for k, v in attributes.items() if v is not None}}
        if pid is not None:
            attrs["supd.child.pid"] = pid
        span = self._start(f"supd.child {name}", None, None, None, None, attributes=attrs)
        span.end()

    def shutdown(self) -> None:
        for span in self.attempts.values():  # still running at exit: record what we know
            span.set_attribute("supd.task.state", "running")
            span.end()
        for span in self.masters.values():
            span.end()
        self.attempts.clear()
        self.masters.clear()
        self.open_tasks.clear()
        try:
            self.provider.shutdown()  # BatchSpanProcessor flushes here
        except Exception as e:  # noqa: BLE001 (an unreachable collector must not stop the daemon's exit)
            _log.warning("trace export failed at shutdown: %r", e)

    def claude_env(self) -> dict[str, str]:
        """What makes the Claude CLI export its own spans (`claude_code.interaction` ...) to
        our collector, as children of the TRACEPARENT span it gets (measured with 2.1.330:
        both telemetry switches are required; stdout carries stream-json, so console is not
        an option for the CLI)."""
        if self.config.exporter not in ("otlp-http", "otlp-grpc"):
            return {}
        env = {
            "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
            "CLAUDE_CODE_ENHANCED_TELEMETRY_BETA": "1",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
        if self.config.exporter == "otlp-grpc":
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.config.endpoint or _DEFAULT_GRPC
        else:
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
            endpoint = self.config.endpoint or _DEFAULT_HTTP
            if urlsplit(endpoint).path in ("", "/"):
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint.rstrip("/")
            else:
                env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
        return env
