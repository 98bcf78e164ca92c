"""Trace context through real processes: every task process gets its own span in the
batch's trace, and with an OTLP exporter the daemon's spans and the Claude CLI's own
spans arrive at one collector, in one trace, nested under the task's span."""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
import time
import uuid
import zlib
from typing import Any

import pytest

from proto.task import TaskSpec

pytestmark = pytest.mark.timeout(180)

PRINT_TRACEPARENT = ["python3", "-c", "import os; print(os.environ['TRACEPARENT'])"]


def _traceparent(line: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = line.strip().split("-")
    assert version == "00" and flags == "01" and len(trace_id) == 32 and len(span_id) == 16, line
    return trace_id, span_id


def test_each_process_of_a_batch_gets_its_own_span_in_the_batch_trace(supd_factory):
    d = supd_factory(children=2).start()
    before = time.time_ns()
    ids = d.submit(*[TaskSpec(kind="exec", argv=PRINT_TRACEPARENT) for _ in range(5)])
    after = time.time_ns()
    tasks = d.wait(ids, timeout_s=60)
    assert all(t.state == "succeeded" for t in tasks), [(t.state, t.error, t.stderr) for t in tasks]
    trace_ids = {t.trace_id for t in tasks}
    assert len(trace_ids) == 1
    (trace_id,) = trace_ids
    assert before <= int(trace_id[:16], 16) <= after, "the trace id starts with time_ns() at the batch start"
    printed = [_traceparent(t.result or "") for t in tasks]
    for task, (p_trace, p_span) in zip(tasks, printed):
        assert p_trace == trace_id
        assert p_span == task.span_id, "the process's span is the task's span"
    assert len({span for _, span in printed}) == 5, "a span per task"
    masters = {t.parent_span_id for t in tasks}
    assert len(masters) == 1 and None not in masters
    assert masters.isdisjoint({span for _, span in printed})


def test_a_batch_joins_the_callers_trace(supd_factory, tmp_path):
    d = supd_factory(children=1).start()
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    ids = d.submit(TaskSpec(kind="exec", argv=PRINT_TRACEPARENT),
                   traceparent=f"00-{caller_trace}-{caller_span}-01")
    (task,) = d.wait(ids)
    assert task.trace_id == caller_trace
    assert _traceparent(task.result or "")[0] == caller_trace
    assert re.fullmatch(r"[0-9a-f]{16}", task.parent_span_id or "") and task.parent_span_id != caller_span, \
        "the batch has a master span of its own, a child of the caller's span"

    # the same through supctl, which forwards TRACEPARENT from its own environment
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps({"kind": "exec", "argv": PRINT_TRACEPARENT}) for _ in range(2)) + "\n")
    other_trace = uuid.uuid4().hex
    d.env = {**d.env, "TRACEPARENT": f"00-{other_trace}-{uuid.uuid4().hex[:16]}-01"}
    r = d.supctl("submit", "--file", str(batch), "--wait", "--json")
    assert r.returncode == 0, r.stderr
    tasks = json.loads(r.stdout)["tasks"]
    assert [t["trace_id"] for t in tasks] == [other_trace] * 2
    assert [_traceparent(t["result"]) for t in tasks] == [(other_trace, t["span_id"]) for t in tasks]


# ---- OTLP end to end -------------------------------------------------------------------


class OTLPReceiver:
    """A minimal OTLP/HTTP traces receiver: POST /v1/traces, protobuf or JSON, maybe gzipped."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                ctype = self.headers.get("Content-Type") or ""
                if self.path.rstrip("/") == "/v1/traces":
                    receiver.add("json" in ctype, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if "json" in ctype else "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, is_json: bool, body: bytes) -> None:
        found = self._from_json(body) if is_json else self._from_protobuf(body)
        with self.lock:
            self.spans.extend(found)

    @staticmethod
    def _from_protobuf(body: bytes) -> list[dict[str, Any]]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        out = []
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex() or None, "service": service,
                                "attributes": {a.key: _any_value(a.value) for a in s.attributes}})
        return out

    @staticmethod
    def _from_json(body: bytes) -> list[dict[str, Any]]:
        out = []
        for rs in json.loads(body).get("resourceSpans", []):
            attrs = rs.get("resource", {}).get("attributes", [])
            service = next((a["value"].get("stringValue", "") for a in attrs if a["key"] == "service.name"), "")
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    out.append({"name": s["name"], "trace_id": s["traceId"].lower(), "span_id": s["spanId"].lower(),
                                "parent": (s.get("parentSpanId") or "").lower() or None, "service": service,
                                "attributes": {a["key"]: next(iter(a["value"].values()), None)
                                               for a in s.get("attributes", [])}})
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind and kind not in ("array_value", "kvlist_value") else None


@pytest.fixture
def otlp() -> Any:
    receiver = OTLPReceiver()
    yield receiver
    receiver.close()


def _poll(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_daemon_and_claude_cli_spans_arrive_in_one_trace(supd_factory, fakeapi, claude_config, otlp):
    config = claude_config + (f'[tracing]\nexporter = "otlp-http"\nendpoint = "{otlp.url}"\n'
                              'service_name = "supd-test"\n')
    d = supd_factory(children=2, config=config).start()
    run = uuid.uuid4().hex[:8]
    ids = d.submit(*[TaskSpec(kind="claude", prompt=f"trace me {i} {run}") for i in range(2)],
                   TaskSpec(kind="exec", argv=["false"], retries=1, retry_on_exit=True))
    tasks = d.wait(ids, timeout_s=120)
    claude_tasks, exec_task = tasks[:2], tasks[2]
    assert all(t.state == "succeeded" for t in claude_tasks), [(t.error, t.stderr) for t in claude_tasks]
    assert exec_task.state == "failed" and exec_task.attempts == 2
    trace_id, master = tasks[0].trace_id, tasks[0].parent_span_id
    assert d.stop() == 0  # the BatchSpanProcessor flushes on shutdown

    def complete() -> bool:
        spans = otlp.snapshot()
        names = {s["name"] for s in spans}
        cli_roots = [s for s in spans if s["name"] == "claude_code.interaction"]
        return "supd.batch" in names and len(cli_roots) >= 2 and sum(
            s["name"].startswith("supd.task") for s in spans) >= 4

    assert _poll(complete, 30), [(s["name"], s["service"]) for s in otlp.snapshot()]
    spans = [s for s in otlp.snapshot() if s["trace_id"] == trace_id]
    by_id = {s["span_id"]: s for s in spans}

    (batch,) = [s for s in spans if s["name"] == "supd.batch"]
    assert batch["span_id"] == master and batch["parent"] is None and batch["service"] == "supd-test"
    for task in tasks:
        attempt = by_id[task.span_id]  # the span the process got in TRACEPARENT, exactly
        assert attempt["name"].startswith("supd.task") and attempt["parent"] == master
        assert attempt["attributes"]["supd.task.id"] == task.id
        assert attempt["attributes"]["supd.task.state"] == task.state
        assert attempt["attributes"]["supd.child"] == task.child
        assert attempt["attributes"]["supd.task.attempt"] == task.attempts
        assert "supd.task.pid" in attempt["attributes"]
    assert by_id[exec_task.span_id]["attributes"]["supd.error.kind"] == "exit"
    retried = [s for s in spans if s["attributes"].get("supd.task.id") == exec_task.id]
    assert sorted(s["attributes"]["supd.task.attempt"] for s in retried) == [1, 2], "a span per attempt"
    assert len({s["span_id"] for s in retried}) == 2 and {s["parent"] for s in retried} == {master}
    for task in claude_tasks:
        attrs = by_id[task.span_id]["attributes"]
        assert attrs["supd.usage.input_tokens"] > 0 and attrs["supd.cost_usd"] > 0
        (root,) = [s for s in spans if s["name"] == "claude_code.interaction" and s["parent"] == task.span_id]
        assert root["service"] != "supd-test", "the CLI exported this span itself"
        assert any(s["parent"] == root["span_id"] for s in spans), "the CLI's own child spans (llm_request)"
    # everything the CLI exported belongs to our trace
    cli = [s for s in otlp.snapshot() if s["name"].startswith("claude_code.")]
    assert cli and {s["trace_id"] for s in cli} == {trace_id}


def test_console_exporter_writes_spans_to_the_daemon_log(supd_factory):
    """exporter = "console": spans go to the daemon's stdout (its log here)."""
    d = supd_factory(children=1, config='[tracing]\nexporter = "console"\n').start()
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["env"])))
    assert task.state == "succeeded"
    assert d.stop() == 0
    log = d.log()
    assert '"name": "supd.batch"' in log and task.span_id in log


def test_tracing_off_still_hands_out_trace_context(supd_factory):
    d = supd_factory(children=1).start()
    (task,) = d.wait(d.submit(TaskSpec(kind="exec", argv=["env"])))
    assert "TRACEPARENT=00-" in (task.result or "")
    assert "OTEL_TRACES_EXPORTER" not in (task.result or "")


class GrpcOTLPReceiver:
    """A test-local OTLP/gRPC collector (the TraceService of opentelemetry-proto)."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.add(request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def add(self, body: bytes) -> None:
        found = OTLPReceiver._from_protobuf(body)
        with self.lock:
            self.spans.extend(found)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.stop(grace=None)


def test_otlp_grpc_exporter_sends_the_batch_and_attempt_spans(supd_factory):
    receiver = GrpcOTLPReceiver()
    try:
        config = f'[tracing]\nexporter = "otlp-grpc"\nendpoint = "{receiver.url}"\n'
        d = supd_factory(children=2, config=config).start()
        ids = d.submit(*[TaskSpec(kind="exec", argv=["true"]) for _ in range(3)])
        tasks = d.wait(ids)
        assert d.stop() == 0  # the BatchSpanProcessor flushes on shutdown
        wanted = {t.span_id for t in tasks} | {tasks[0].parent_span_id}
        assert _poll(lambda: wanted <= {s["span_id"] for s in receiver.snapshot()}, 30), receiver.snapshot()
        spans = {s["span_id"]: s for s in receiver.snapshot()}
        assert spans[tasks[0].parent_span_id]["name"] == "supd.batch"
        assert all(spans[t.span_id]["trace_id"] == t.trace_id and spans[t.span_id]["parent"] == t.parent_span_id
                   for t in tasks)
    finally:
        receiver.close()
