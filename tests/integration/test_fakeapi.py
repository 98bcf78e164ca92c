"""Tests of bench/fakeapi.py: the HTTP stand-in alone, and the real Claude CLI against it."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import fakeapi


def _find_claude() -> str | None:
    found = shutil.which("claude")
    if found:
        return found
    try:
        import claude_agent_sdk
    except ImportError:
        return None
    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(bundled) if bundled.is_file() and os.access(bundled, os.X_OK) else None


CLAUDE = _find_claude()
needs_claude = pytest.mark.skipif(CLAUDE is None, reason="no Claude CLI (claude on PATH or claude-agent-sdk)")


@pytest.fixture
def api() -> Iterator[fakeapi.FakeAPI]:
    with fakeapi.FakeAPI() as server:
        yield server


# --------------------------------------------------------------------------- HTTP helpers


def _request(
    api: fakeapi.FakeAPI,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(api.host, api.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _messages_body(text: Any, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def _sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# --------------------------------------------------------------------------- HTTP tests


@pytest.mark.timeout(30)
def test_non_streaming_reply(api: fakeapi.FakeAPI) -> None:
    content = [
        {"type": "text", "text": "<system-reminder>\nignore me\n</system-reminder>"},
        {"type": "text", "text": "hi there"},
    ]
    status, raw = _request(api, "POST", "/v1/messages?beta=true", _messages_body(content))
    assert status == 200
    msg = json.loads(raw)
    assert msg["type"] == "message" and msg["role"] == "assistant"
    assert msg["model"] == "claude-sonnet-4-5"
    assert msg["content"] == [{"type": "text", "text": "ECHO: hi there"}]
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0
    assert msg["usage"]["cache_read_input_tokens"] == 0


@pytest.mark.timeout(30)
def test_streaming_reply_event_sequence(api: fakeapi.FakeAPI) -> None:
    status, raw = _request(api, "POST", "/v1/messages", _messages_body("a fairly long prompt text", stream=True))
    assert status == 200
    events = _sse_events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") >= 3
    assert all(name == data["type"] for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "ECHO: a fairly long prompt text"
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["usage"]["input_tokens"] > 0
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0


@pytest.mark.timeout(30)
def test_stats_and_reset(api: fakeapi.FakeAPI) -> None:
    for text in ("one", "two", "two", "x [[status:529]]"):
        _request(api, "POST", "/v1/messages", _messages_body(text))
    _request(api, "POST", "/v1/messages", _messages_body("y"), headers={"x-fake-behaviour": "status:401"})
    _request(api, "POST", "/v1/messages/count_tokens", _messages_body("z"))  # not counted
    status, raw = _request(api, "GET", "/_stats")
    assert status == 200
    stats = json.loads(raw)
    assert stats == api.stats()
    assert stats["requests"] == 5
    assert stats["by_prompt"] == {"one": 1, "two": 2, "x [[status:529]]": 1, "y": 1}
    assert stats["behaviours"] == {"ok": 3, "status": 2}
    assert stats["other"] == {"POST /v1/messages/count_tokens": 1}

    status, _ = _request(api, "POST", "/_reset")
    assert status == 200
    assert api.stats() == {"requests": 0, "by_prompt": {}, "behaviours": {}, "other": {}, "log": []}


@pytest.mark.parametrize(
    ("code", "etype"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (429, "rate_limit_error"),
     (500, "api_error"), (529, "overloaded_error")],
)
@pytest.mark.timeout(30)
def test_status_directive(api: fakeapi.FakeAPI, code: int, etype: str) -> None:
    status, raw = _request(api, "POST", "/v1/messages", _messages_body(f"x [[status:{code}]]", stream=True))
    assert status == code
    body = json.loads(raw)
    assert body["type"] == "error" and body["error"]["type"] == etype and body["error"]["message"]


@pytest.mark.timeout(30)
def test_other_requests_answered(api: fakeapi.FakeAPI) -> None:
    assert _request(api, "GET", "/v1/models")[0] == 200
    assert _request(api, "POST", "/api/whatever", {"a": 1})[0] == 200
    assert _request(api, "HEAD", "/api/hello")[0] == 200
    assert api.stats()["requests"] == 0
    assert api.stats()["other"] == {"GET /v1/models": 1, "POST /api/whatever": 1, "HEAD /api/hello": 1}


@pytest.mark.timeout(30)
def test_latency(api: fakeapi.FakeAPI) -> None:
    t0 = time.monotonic()
    _request(api, "POST", "/v1/messages", _messages_body("slow [[latency:0.5]]"))
    assert time.monotonic() - t0 >= 0.5
    with fakeapi.FakeAPI(latency_s=0.3) as slow:
        t0 = time.monotonic()
        status, _ = _request(slow, "POST", "/v1/messages", _messages_body("x"), headers={"x-fake-behaviour": "latency:0.2"})
        assert status == 200 and time.monotonic() - t0 >= 0.5


@pytest.mark.timeout(30)
def test_bash_two_turns(api: fakeapi.FakeAPI) -> None:
    body = _messages_body("go [[bash:echo hi]]")
    status, raw = _request(api, "POST", "/v1/messages", body)
    first = json.loads(raw)
    assert first["stop_reason"] == "tool_use"
    (tool,) = first["content"]
    assert tool["type"] == "tool_use" and tool["name"] == "Bash"
    assert tool["input"] == {"command": "echo hi", "description": "x"}
    body["messages"] += [
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"], "content": "hi\n"}]},
    ]
    status, raw = _request(api, "POST", "/v1/messages", {**body, "stream": True})
    text = "".join(d["delta"]["text"] for n, d in _sse_events(raw) if n == "content_block_delta")
    assert text == "DONE: hi"
    assert api.stats()["behaviours"] == {"bash": 1, "bash_done": 1}


@pytest.mark.timeout(30)
def test_stop_is_prompt_with_hung_and_stalled_requests() -> None:
    api = fakeapi.FakeAPI()
    api.start()
    hung = http.client.HTTPConnection(api.host, api.port, timeout=20)
    hung.request("POST", "/v1/messages", json.dumps(_messages_body("h [[hang]]", stream=True)))
    stalled = http.client.HTTPConnection(api.host, api.port, timeout=20)
    stalled.request("POST", "/v1/messages", json.dumps(_messages_body("s", stream=True)), {"x-fake-behaviour": "stall"})
    resp = stalled.getresponse()
    assert resp.status == 200
    assert b"message_start" in resp.fp.readline() + resp.fp.readline() + resp.fp.readline()
    # Other requests are still served while those two are held.
    assert _request(api, "POST", "/v1/messages", _messages_body("fine"))[0] == 200
    deadline = time.monotonic() + 5
    while api.stats()["requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.stats()["behaviours"] == {"hang": 1, "stall": 1, "ok": 1}

    t0 = time.monotonic()
    api.stop()
    assert time.monotonic() - t0 < 10, "stop() returned although requests hang forever"
    with pytest.raises((http.client.HTTPException, OSError)):
        hung.getresponse().read()
    hung.close()
    stalled.close()


@pytest.mark.timeout(30)
def test_command_line_server() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "fakeapi.py"), "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("FAKEAPI_URL=http://127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/_stats")
        assert json.loads(conn.getresponse().read())["requests"] == 0
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- real CLI tests


def _claude_cmd(prompt: str, *extra: str) -> list[str]:
    assert CLAUDE is not None
    return [
        CLAUDE, "-p", prompt, "--output-format", "stream-json", "--verbose",
        "--model", "claude-sonnet-4-5", "--no-session-persistence", *extra,
    ]  # fmt: skip


def _claude_env(api: fakeapi.FakeAPI, tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    return {**base, **fakeapi.claude_env(api.url, str(tmp_path / "home")), **extra}


def _run_claude(
    api: fakeapi.FakeAPI, tmp_path: Path, prompt: str, *extra: str, timeout: float = 30, **env: str
) -> tuple[int, list[dict[str, Any]], float]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        _claude_cmd(prompt, *extra),
        env=_claude_env(api, tmp_path, **env),
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.monotonic() - t0
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, elapsed


def _result(lines: list[dict[str, Any]]) -> dict[str, Any]:
    results = [line for line in lines if line.get("type") == "result"]
    assert len(results) == 1, lines
    return results[0]


@needs_claude
@pytest.mark.timeout(60)
def test_cli_ok_stream(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    rc, lines, _ = _run_claude(api, tmp_path, "hello")
    res = _result(lines)
    assert rc == 0
    assert res["is_error"] is False and res["subtype"] == "success"
    assert res["result"] == "ECHO: hello"
    assert res["total_cost_usd"] > 0
    assert res["usage"]["input_tokens"] > 0 and res["usage"]["output_tokens"] > 0
    assert res["session_id"]
    assert res["api_error_status"] is None
    stats = api.stats()
    assert stats["requests"] == 1 and stats["by_prompt"] == {"hello": 1}
    assert stats["other"] == {}


@needs_claude
@pytest.mark.timeout(60)
def test_cli_401_fails_fast(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    rc, lines, elapsed = _run_claude(api, tmp_path, "hi [[status:401]]", timeout=20)
    res = _result(lines)
    assert elapsed < 10
    assert rc == 1
    assert res["is_error"] is True
    assert res["api_error_status"] == 401
    assert api.stats()["requests"] == 1


@needs_claude
@pytest.mark.timeout(60)
def test_cli_behaviour_from_header(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    rc, lines, _ = _run_claude(
        api, tmp_path, "plain", timeout=20, ANTHROPIC_CUSTOM_HEADERS="x-fake-behaviour: status:529"
    )
    res = _result(lines)
    assert res["is_error"] is True and res["api_error_status"] == 529
    assert api.stats()["behaviours"] == {"status": 1}


@needs_claude
@pytest.mark.timeout(60)
def test_cli_broken_stream_falls_back_to_non_streaming(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    rc, lines, _ = _run_claude(api, tmp_path, "d [[drop]]")
    res = _result(lines)
    assert rc == 0 and res["is_error"] is False and res["result"] == "ECHO: d [[drop]]"
    assert res["total_cost_usd"] > 0
    assert api.stats()["requests"] == 2


@needs_claude
@pytest.mark.timeout(60)
def test_cli_runs_bash_tool(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    marker = tmp_path / "work" / "marker"
    rc, lines, _ = _run_claude(api, tmp_path, f"go [[bash:touch {marker} && echo made]]", "--allowedTools", "Bash")
    res = _result(lines)
    assert res["is_error"] is False and res["result"] == "DONE: made"
    assert res["num_turns"] == 2
    assert marker.exists()
    assert api.stats()["behaviours"] == {"bash": 1, "bash_done": 1}


@needs_claude
@pytest.mark.timeout(60)
def test_cli_stall_is_silent(api: fakeapi.FakeAPI, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        _claude_cmd("s [[stall]]"),
        env=_claude_env(api, tmp_path),
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        out = b""
        deadline = time.monotonic() + 3
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                chunk = proc.stdout.read()
                if chunk is None:  # spurious wake-up
                    continue
                if not chunk:
                    break
                out += chunk
        sel.close()
        assert b'"type":"result"' not in out
        assert proc.poll() is None, "the CLI exited during a stall"
        assert api.stats()["behaviours"] == {"stall": 1}
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_a_429_can_say_when_to_come_back_and_fail_only_once(api: fakeapi.FakeAPI) -> None:
    text = "limited [[status:429]] [[retry_after:3]] [[once]]"
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps(_messages_body(text)).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 429
        assert resp.getheader("retry-after") == "3"
        assert resp.getheader("anthropic-ratelimit-unified-status") == "rejected"
        reset = int(resp.getheader("anthropic-ratelimit-unified-reset") or 0)
        assert time.time() + 2 < reset <= time.time() + 4.5
    finally:
        conn.close()
    status, _ = _request(api, "POST", "/v1/messages", _messages_body(text))
    assert status == 200  # [[once]]: the same prompt again is answered
    log = api.stats()["log"]
    assert [e["prompt"] for e in log[-2:]] == [text, text] and log[-2]["at"] <= log[-1]["at"]
