"""fakeapi: supd's only stand-in for the Anthropic Messages API (stdlib only).

Owns: a threaded HTTP server that speaks enough of the Messages API for the real Claude Code
CLI to run offline (used by the tests and the demo), per-request failure behaviours, request
bookkeeping, and `claude_env()`, the environment the CLI needs to talk to it.

Endpoints
    POST /v1/messages[?beta=true]  SSE stream when `"stream": true` (message_start, ping,
        content_block_start/delta/stop, message_delta, message_stop; chunked), else one JSON
        message. Reply text is "ECHO: <last user text>" ("<system-reminder>" blocks skipped).
        Usage: input_tokens ~ request JSON chars / 4 (the CLI's tools+system make a trivial
        prompt ~21.8k tokens), output_tokens ~ reply JSON chars / 4, cache fields 0.
    POST /v1/messages/count_tokens  {"input_tokens": N}.
    GET /_stats, POST /_reset     bookkeeping of /v1/messages requests only (plus "other":
        every other request by "METHOD path"; the CLI sends none when configured by claude_env),
        and "log": each request's arrival time (time.time()), prompt and behaviours, in order.
    anything else                  200 {} and a log line.

Behaviours, per request: a directive in the last user text, or the `x-fake-behaviour` header
(comma-separated, brackets optional; the CLI forwards
`ANTHROPIC_CUSTOM_HEADERS="x-fake-behaviour: stall"`):
    (none) ok | [[status:N]] HTTP N + Anthropic error JSON | [[hang]] never answer |
    [[stall]] message_start + one text delta, then silence | [[drop]] message_start + one
    delta, then close the connection (the CLI then retries non-streaming, which is answered
    normally: 2 requests) | [[latency:S]] S extra seconds before the first byte (adds to the
    server-wide latency) | [[bash:CMD]] answer with a `Bash` tool_use {"command": CMD,
    "description": "x"}; the request carrying its tool_result is answered "DONE: <output>"
    (CMD must not contain "]]"; in the header it must not contain ","). With a status:
    [[retry_after:S]] sends `retry-after: S` and `anthropic-ratelimit-unified-status: rejected`
    with `-reset` S seconds from now (epoch seconds, rounded up) | [[once]] only the first
    request with this prompt gets the status, later ones are answered (a retry succeeds).
    [[ratelimit:STATUS:S]] adds the unified headers with that status to any reply.
Hung and stalled requests are held until stop(), which returns at once (~0.05 s).

Structured output (`claude --json-schema`): when the request offers the CLI's
`StructuredOutput` tool, the answer is a call of it whose input is built from the tool's
schema (strings are "ECHO: <prompt>", numbers 1, booleans true, an enum's first value,
arrays one item when required); the request carrying its result is answered "DONE".
Sessions (`claude --resume`): each request's conversation is recorded (`conversations()`,
`GET /_conversations`: per request the [role, text] of every message, tool calls and results
as `tool_use NAME` / `tool_result TEXT`), so a test sees the earlier turns a resumed session
sends; and a reply to a conversation with earlier user turns says so: "ECHO: <prompt>
(turn N, first: <first prompt>)".

Measured with Claude Code 2.1.330 (bundled in claude-agent-sdk 0.2.187), 2 cores, as root:
- Env: see claude_env(). Without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC the CLI also sends
  `HEAD /api/hello` here (and tries other hosts); with it, exactly one POST /v1/messages per
  turn. stdin must be /dev/null.
- `claude -p hello --output-format stream-json --verbose --model claude-sonnet-4-5
  --no-session-persistence`: 0.5-0.9 s wall end to end, result duration_ms 120-250.
  OK result line (abridged): {"type":"result","subtype":"success","is_error":false,
  "num_turns":1,"result":"ECHO: hello","total_cost_usd":0.065589,"usage":{"input_tokens":21813,
  "output_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,...},
  "modelUsage":{"claude-sonnet-4-5":{...,"costUSD":0.065589}},"session_id":"0341...",
  "api_error_status":null,"terminal_reason":"completed","stop_reason":"end_turn",...}
- Cost is non-zero for every model name tried: claude-sonnet-4-5 $0.0656, claude-haiku-4-5
  $0.0219, claude-opus-4-5 $0.109, claude-sonnet-4-6, claude-3-5-haiku-20241022, and even
  "fake-model-x" ($0.049). Aliases sonnet/haiku/opus (and claude-opus-4-1, and no --model)
  are rewritten to claude-{sonnet,haiku,opus}-5-5 and send a shorter request (~12k tokens).
- [[status:401]] with CLAUDE_CODE_MAX_RETRIES=0: rc 1 after ~0.6 s, one request:
  {"type":"result","subtype":"success","is_error":true,"api_error_status":401,
  "api_error_type":"authentication_error","result":"Failed to authenticate. API Error: 401
  fakeapi: status 401 requested","total_cost_usd":0,"terminal_reason":"api_error",
  "num_turns":1,"modelUsage":{},...}. 429/500/529 likewise (one request each).
  Surprise: a 400 is re-sent 6 times even with MAX_RETRIES=0 (the CLI drops beta headers
  and tool features one by one), ~0.9 s.
- [[stall]] and [[hang]]: the CLI prints its `system/init` line, then nothing (without
  --include-partial-messages the delta is not shown); SIGTERM ends it, rc 143.
- Rate limits (CLI 2.1.332 in claude-agent-sdk): a 429 shows in stream-json only as an
  `assistant` "API Error: Request rejected (429)" and a result with api_error_status 429;
  its retry-after is nowhere in it, and no `rate_limit_event` line appears for an API key,
  not even with the unified headers on a 429 or a 200. With ANTHROPIC_LOG=debug the CLI's
  API client prints each request and each failed response's headers on stdout, between the
  JSON lines (`    "retry-after": "3",`; ~8 KB for a trivial run): supd's child reads it there.
- [[bash:CMD]]: with no permission flag, read-only commands (echo, id) run but a command
  that writes files is denied (the tool_result is the denial text, `permission_denials` is
  filled, is_error stays false). `--allowedTools Bash` runs anything. `--permission-mode
  bypassPermissions` / `--dangerously-skip-permissions` are refused as root ("cannot be used
  with root/sudo privileges", rc 1, no request) unless IS_SANDBOX=1 is set. The tool result
  the CLI sends back carries a trailing <system-reminder> (token budget), stripped here.

Run: `python bench/fakeapi.py [--host H] [--port P] [--latency S] [-v]`; prints
`FAKEAPI_URL=http://127.0.0.1:PORT` first and serves until SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FakeAPI", "claude_env", "main"]

log = logging.getLogger("fakeapi")

BEHAVIOUR_HEADER = "x-fake-behaviour"
TOOL_ID_PREFIX = "toolu_fake_"
STRUCTURED_TOOL = "StructuredOutput"
_DIRECTIVE_RE = re.compile(r"\[\[(status|hang|stall|drop|latency|bash|retry_after|ratelimit|once)(?::(.*?))?\]\]",
                           re.DOTALL)
_REMINDER_RE = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

JSON = dict[str, Any]


# --------------------------------------------------------------------------- request parsing


@dataclass
class Behaviour:
    """What to do with one /v1/messages request."""

    name: str = "ok"  # ok | status | hang | stall | drop | bash | bash_done
    status: int = 200
    latency_s: float = 0.0
    command: str = ""  # for bash
    tool_output: str = ""  # for bash_done
    tags: list[str] = field(default_factory=list)  # every directive seen, for the stats
    #: seconds for the `retry-after` header of a status reply (and its unified reset time)
    retry_after_s: float | None = None
    #: `anthropic-ratelimit-unified-*` headers on the reply: (status, seconds until reset)
    ratelimit: tuple[str, float] | None = None
    #: the status behaviour applies to the first request with this prompt only; later ones are ok
    once: bool = False


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, dict):
        if block.get("type") == "text":
            return str(block.get("text", ""))
        if block.get("type") == "tool_result":
            return _content_text(block.get("content", ""))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(t for t in (_block_text(b) for b in content) if t)
    return _block_text(content)


def last_user_text(body: JSON) -> str:
    """Text of the last user message that carries text written by the user.

    The CLI may add `<system-reminder>` text blocks to a user message; those are skipped, and
    so are messages holding only tool results. If nothing is left, "" is returned.
    """
    for msg in reversed(body.get("messages") or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content", "")
        blocks = content if isinstance(content, list) else [content]
        texts = [
            t
            for b in blocks
            if not (isinstance(b, dict) and b.get("type") == "tool_result")
            for t in [_block_text(b).strip()]
            if t and not t.startswith("<system-reminder>")
        ]
        if texts:
            return texts[-1]
    return ""


def _pending_tool_result(body: JSON) -> str | None:
    """The text of our Bash tool's result, if the last message answers a tool_use of ours."""
    msgs = body.get("messages") or []
    if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
        return None
    content = msgs[-1].get("content")
    if not isinstance(content, list):
        return None
    for block in content:
        if (
            isinstance(block, dict)
            and block.get("type") == "tool_result"
            and str(block.get("tool_use_id", "")).startswith(TOOL_ID_PREFIX)
        ):
            return _REMINDER_RE.sub("", _content_text(block.get("content", ""))).strip()
    return None


def user_texts(body: JSON) -> list[str]:
    """The user-written text of each user message that has some, in order."""
    return [t for msg in body.get("messages") or []
            if isinstance(msg, dict) and msg.get("role") == "user" and (t := last_user_text({"messages": [msg]}))]


def conversation(body: JSON) -> list[list[str]]:
    """[role, text] of every message of a request: texts (system reminders left out), and
    tool calls and results as `tool_use NAME` / `tool_result TEXT`."""
    out: list[list[str]] = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role = str(msg.get("role"))
        content = msg.get("content", "")
        for block in content if isinstance(content, list) else [content]:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                out.append([role, f"tool_use {block.get('name')}"])
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                text = _REMINDER_RE.sub("", _content_text(block.get("content", ""))).strip()
                out.append([role, f"tool_result {text}"])
            else:
                text = _block_text(block).strip()
                if text and not text.startswith("<system-reminder>"):
                    out.append([role, text])
    return out


def _example(schema: Any, text: str) -> Any:
    """A value that fits `schema` (the common keywords only)."""
    if not isinstance(schema, dict):
        return text
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {k: _example(v, text) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema.get("items"), text) for _ in range(max(1, int(schema.get("minItems", 1))))]
    return {"string": text, "integer": 1, "number": 1, "boolean": True, "null": None}.get(str(kind), text)


def structured_tool(body: JSON) -> JSON | None:
    """The CLI's StructuredOutput tool, when the request offers it."""
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name") == STRUCTURED_TOOL:
            return tool
    return None


def parse_behaviour(text: str, header: str | None, default_latency_s: float) -> Behaviour:
    """Directives come from the prompt text (`[[stall]]`) or the header (`stall`, `status:401`)."""
    b = Behaviour(latency_s=default_latency_s)
    found: list[tuple[str, str | None]] = [(m.group(1), m.group(2)) for m in _DIRECTIVE_RE.finditer(text)]
    if header:
        for part in header.split(","):
            part = part.strip().strip("[]")
            if part:
                name, _, arg = part.partition(":")
                found.append((name.strip().lower(), arg.strip() if arg else None))
    for name, arg in found:
        try:
            if name == "latency":
                b.latency_s += float(arg or 0)
            elif name == "status":
                code = int(arg or 500)
                if not 400 <= code <= 599:
                    raise ValueError(code)
                b.name, b.status = "status", code
            elif name in ("hang", "stall", "drop"):
                b.name = name
            elif name == "bash":
                b.name, b.command = "bash", arg or "true"
            elif name == "retry_after":
                b.retry_after_s = float(arg or 0)
                if not 0 <= b.retry_after_s <= 86_400:
                    raise ValueError(arg)
            elif name == "ratelimit":
                status, _, secs = (arg or "rejected:60").partition(":")
                b.ratelimit = (status.strip() or "rejected", float(secs or 60))
            elif name == "once":
                b.once = True
            else:
                log.warning("unknown behaviour %r", name)
                continue
        except ValueError:
            log.warning("bad argument %r for behaviour %r", arg, name)
            continue
        b.tags.append(name)
    return b


def _estimate_tokens(obj: Any) -> int:
    """About four characters per token over the whole request (system, tools, messages)."""
    return max(1, len(json.dumps(obj, ensure_ascii=False)) // 4)


# --------------------------------------------------------------------------- HTTP layer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], api: FakeAPI) -> None:
        self.api = api
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or self.api._stopping.is_set():  # client went away, or we did
            log.debug("connection from %s ended: %r", client_address, exc)
        else:
            log.exception("error while serving %s", client_address)

    def drop_connections(self) -> None:
        """Unblock every handler thread: shut down each open client socket."""
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "fakeapi/1"
    sys_version = ""

    # ----------------------------------------------------------------- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send_json(self, status: int, obj: JSON, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_fake_{next(self.server.api._ids):06d}")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse(self, event: str, data: JSON) -> None:
        self._chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    def _hold(self) -> None:
        """Keep the connection open, silent, until the server stops."""
        self.server.api._stopping.wait()
        self.close_connection = True

    # ----------------------------------------------------------------- routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_stats":
            self._send_json(200, self.server.api.stats())
            return
        if path == "/_conversations":
            self._send_json(200, {"conversations": self.server.api.conversations()})
            return
        self._other(b"")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if path == "/v1/messages":
            self._messages(body)
        elif path == "/_reset":
            self.server.api.reset()
            self._send_json(200, {"ok": True})
        elif path == "/v1/messages/count_tokens":
            self.server.api._note_other(f"POST {path}")
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                req = {}
            self._send_json(200, {"input_tokens": _estimate_tokens(req)})
        else:
            self._other(body)

    def do_HEAD(self) -> None:
        self.server.api._note_other(f"HEAD {urlsplit(self.path).path}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self._other(self._read_body())

    do_PATCH = do_DELETE = do_PUT

    def _other(self, body: bytes) -> None:
        key = f"{self.command} {urlsplit(self.path).path}"
        log.warning("unexpected request %s (%d body bytes)", key, len(body))
        self.server.api._note_other(key)
        self._send_json(200, {})

    # ----------------------------------------------------------------- /v1/messages

    def _messages(self, raw: bytes) -> None:
        api = self.server.api
        try:
            body: JSON = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as e:
            api._note_request("", ["invalid_json"])
            self._send_json(400, _error_body(400, f"invalid JSON body: {e}"))
            return

        prompt = last_user_text(body)
        tool_output = _pending_tool_result(body)
        b = parse_behaviour(prompt, self.headers.get(BEHAVIOUR_HEADER), api.latency_s)
        if tool_output is not None and b.name == "bash":
            b.name, b.tool_output = "bash_done", tool_output
            b.tags = [t for t in b.tags if t != "bash"] + ["bash_done"]
        api._note_request(prompt, b.tags or ["ok"], conversation(body))
        log.info("POST /v1/messages stream=%s behaviour=%s prompt=%r", body.get("stream"), b.tags, prompt[:80])

        if b.latency_s > 0 and api._stopping.wait(b.latency_s):
            self.close_connection = True
            return
        if b.name == "hang":
            self._hold()
            return
        if b.name == "status" and b.once and api._seen_before(prompt):
            b.name = "ok"  # [[once]]: only the first request of this prompt fails
        if b.name == "status":
            extra = {"retry-after": "0"} if b.status in (429, 529) or b.status >= 500 else {}
            if b.retry_after_s is not None:
                extra["retry-after"] = _num(b.retry_after_s)
                extra.update(_unified("rejected", b.retry_after_s))
            if b.ratelimit is not None:
                extra.update(_unified(*b.ratelimit))
            self._send_json(b.status, _error_body(b.status, f"fakeapi: status {b.status} requested"), extra)
            return

        model = str(body.get("model") or "claude-sonnet-4-5")
        usage_in = _estimate_tokens({k: body.get(k) for k in ("system", "tools", "messages")})
        schema_tool = structured_tool(body)
        if b.name == "ok" and schema_tool is not None:
            b.name = "structured_done" if tool_output is not None else "structured"
        turns = user_texts(body)
        if b.name == "structured":
            content: list[JSON] = [{
                "type": "tool_use", "id": f"{TOOL_ID_PREFIX}{next(api._ids):06d}", "name": STRUCTURED_TOOL,
                "input": _example((schema_tool or {}).get("input_schema"), f"ECHO: {prompt}"),
            }]
            stop_reason = "tool_use"
        elif b.name == "structured_done":
            content = [{"type": "text", "text": "DONE"}]
            stop_reason = "end_turn"
        elif b.name == "bash":
            content = [
                {
                    "type": "tool_use",
                    "id": f"{TOOL_ID_PREFIX}{next(api._ids):06d}",
                    "name": "Bash",
                    "input": {"command": b.command, "description": "x"},
                }
            ]
            stop_reason = "tool_use"
        else:
            text = f"DONE: {b.tool_output}" if b.name == "bash_done" else f"ECHO: {prompt}"
            if b.name != "bash_done" and len(turns) > 1:
                text += f" (turn {len(turns)}, first: {turns[0]})"
            content = [{"type": "text", "text": text}]
            stop_reason = "end_turn"
        usage_out = max(1, _estimate_tokens(content))
        msg_id = f"msg_fake_{next(api._ids):06d}"

        if body.get("stream"):
            self._stream(msg_id, model, content, stop_reason, usage_in, usage_out, cut=b.name,
                         headers=_unified(*b.ratelimit) if b.ratelimit else {})
        else:
            if b.name == "stall":  # no stream to stall: behave like a hang
                self._hold()
                return
            self._send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": _usage(usage_in, usage_out),
                },
            )

    def _stream(
        self,
        msg_id: str,
        model: str,
        content: list[JSON],
        stop_reason: str,
        usage_in: int,
        usage_out: int,
        *,
        cut: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(200)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_fake_{next(self.server.api._ids):06d}")
        self.end_headers()
        self._sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _usage(usage_in, 1),
                },
            },
        )
        self._sse("ping", {"type": "ping"})
        for index, block in enumerate(content):
            if block["type"] == "text":
                self._sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
                text: str = block["text"]
                pieces = [text[i : i + 8] for i in range(0, len(text), 8)] or [""]
                for n, piece in enumerate(pieces):
                    self._sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}},
                    )
                    if n == 0 and cut == "stall":
                        self._hold()
                        return
                    if n == 0 and cut == "drop":
                        self.close_connection = True  # no terminating chunk: a broken stream
                        return
            else:  # tool_use: input arrives as partial JSON
                start = dict(block, input={})
                self._sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
                partial = json.dumps(block["input"])
                for i in range(0, len(partial), 16):
                    self._sse(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": partial[i : i + 16]},
                        },
                    )
            self._sse("content_block_stop", {"type": "content_block_stop", "index": index})
        self._sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage_out},
            },
        )
        self._sse("message_stop", {"type": "message_stop"})
        self._chunk(b"")  # end of the chunked body


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _unified(status: str, reset_in_s: float) -> dict[str, str]:
    """The `anthropic-ratelimit-unified-*` headers the real API sends (the CLI's source for
    its `rate_limit_event` lines), with a reset `reset_in_s` from now (epoch seconds)."""
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": str(int(time.time() + reset_in_s + 0.999)),
        "anthropic-ratelimit-unified-5h-status": status,
        "anthropic-ratelimit-unified-5h-reset": str(int(time.time() + reset_in_s + 0.999)),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
    }


def _usage(input_tokens: int, output_tokens: int) -> JSON:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _error_body(status: int, message: str) -> JSON:
    etype = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


# --------------------------------------------------------------------------- public API


class FakeAPI:
    """An in-process, threaded stand-in server. `with FakeAPI() as api: ... api.url ...`."""

    def __init__(self, latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.latency_s = latency_s
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests = 0
        self._by_prompt: dict[str, int] = {}
        self._behaviours: dict[str, int] = {}
        self._other: dict[str, int] = {}
        self._conversations: list[list[list[str]]] = []
        #: (time.time(), prompt, behaviours) of every /v1/messages request, in arrival order
        self._log: list[tuple[float, str, list[str]]] = []

    # -- lifecycle

    def start(self) -> str:
        if self._server is not None:
            return self.url
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakeapi", daemon=True
        )
        self._thread.start()
        log.info("listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving; returns promptly even with hung or stalled requests open."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # releases hang/stall/latency waits
        server.shutdown()  # stops the accept loop
        server.server_close()  # listening socket (daemon handler threads are not joined)
        server.drop_connections()  # unblocks handlers idling on keep-alive connections
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAPI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- bookkeeping

    def stats(self) -> JSON:
        """`{"requests": N, "by_prompt": {...}, "behaviours": {...}, "other": {...}}`.

        Only /v1/messages requests are counted in the first three; `other` counts any other
        request by "METHOD path" (the CLI should send none).
        """
        with self._lock:
            return {
                "requests": self._requests,
                "by_prompt": dict(self._by_prompt),
                "behaviours": dict(self._behaviours),
                "other": dict(self._other),
                "log": [{"at": at, "prompt": p, "behaviours": tags} for at, p, tags in self._log],
            }

    def conversations(self) -> list[list[list[str]]]:
        """Per /v1/messages request, in arrival order: [role, text] of each of its messages."""
        with self._lock:
            return [list(c) for c in self._conversations]

    def reset(self) -> None:
        with self._lock:
            self._conversations.clear()
            self._requests = 0
            self._by_prompt.clear()
            self._behaviours.clear()
            self._other.clear()
            self._log.clear()

    def _note_request(self, prompt: str, tags: list[str], messages: list[list[str]] | None = None) -> None:
        with self._lock:
            self._conversations.append(messages or [])
            self._requests += 1
            self._log.append((time.time(), prompt, list(tags)))
            self._by_prompt[prompt] = self._by_prompt.get(prompt, 0) + 1
            for tag in tags:
                self._behaviours[tag] = self._behaviours.get(tag, 0) + 1

    def _seen_before(self, prompt: str) -> bool:
        """Whether an earlier request (before the one just noted) carried `prompt`."""
        with self._lock:
            return self._by_prompt.get(prompt, 0) > 1

    def _note_other(self, key: str) -> None:
        with self._lock:
            self._other[key] = self._other.get(key, 0) + 1


def claude_env(base_url: str, home: str) -> dict[str, str]:
    """Environment for running the Claude CLI offline against the stand-in at `base_url`.

    Overlay it on a clean environment (keep PATH, LANG...). Creates `home`/.claude and
    `home`/tmp. Do not inherit ANTHROPIC_AUTH_TOKEN / CLAUDE_CODE_OAUTH_TOKEN from the caller:
    they take precedence over ANTHROPIC_API_KEY.
    """
    config = Path(home) / ".claude"
    tmp = Path(home) / "tmp"
    config.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-fakeapi-0000",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(config),
        "TMPDIR": str(tmp),
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in for the Anthropic Messages API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="extra seconds before every reply")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s fakeapi %(levelname)s %(message)s",
    )

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    api = FakeAPI(latency_s=args.latency, host=args.host, port=args.port)
    url = api.start()
    print(f"FAKEAPI_URL={url}", flush=True)
    while not done.wait(1.0):
        pass
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
