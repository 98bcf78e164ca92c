"""children.claude as tables: stream-json lines (taken from Claude Code 2.1.330 runs against
bench/fakeapi.py, long lists trimmed) -> events, summaries, verdicts; specs -> argv."""

from __future__ import annotations

import pytest

from children import claude
from children.executors import ClaudeExecutor, ExecExecutor
from proto.task import TaskSpec, TaskState, Usage

SID = "0d102d40-c5b1-404f-b8af-d9c250d8e2a1"

INIT = (
    b'{"type":"system","subtype":"init","cwd":"/work/main","session_id":"' + SID.encode() + b'",'
    b'"tools":["Task","Bash","Edit","Read","WebFetch","Write"],"mcp_servers":[],"model":"claude-opus-5-5",'
    b'"permissionMode":"default","slash_commands":["debug","simplify"],"apiKeySource":"ANTHROPIC_API_KEY",'
    b'"claude_code_version":"2.1.330","output_style":"default","agents":["claude","Explore"],'
    b'"plugins":[{"name":"cc-plugin-privacy","path":"builtin","source":"cc-plugin-privacy@builtin"}],'
    b'"analytics_disabled":true,"uuid":"997367f5-ff45-49d9-a0bb-eabc364da498","memory_paths":{"auto":"/x/"},'
    b'"fast_mode_state":"off","view_mode":"default"}'
)
ASSISTANT_TEXT = (
    b'{"type":"assistant","message":{"id":"msg_fake_000001","type":"message","role":"assistant",'
    b'"model":"claude-opus-5-5","content":[{"type":"text","text":"ECHO: hello there"}],"stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":12502,"output_tokens":1,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0},"context_management":null},"parent_tool_use_id":null,"session_id":"'
    + SID.encode() + b'","uuid":"3a536d7f","timestamp":"2026-11-21T19:42:47.255Z","request_id":"req_fake_000002"}'
)
ASSISTANT_TOOL = (
    b'{"type":"assistant","message":{"id":"msg_fake_000005","type":"message","role":"assistant",'
    b'"model":"claude-opus-5-5","content":[{"type":"tool_use","id":"toolu_fake_000004","name":"Bash",'
    b'"input":{"command":"echo hi","description":"x"}}],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":12503,"output_tokens":1}},"parent_tool_use_id":null,"session_id":"' + SID.encode()
    + b'"}'
)
USER_TOOL_RESULT = (
    b'{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_fake_000004","type":"tool_result",'
    b'"content":"hi","is_error":false}]},"parent_tool_use_id":null,"session_id":"' + SID.encode() + b'",'
    b'"tool_use_result":{"stdout":"hi","stderr":"","interrupted":false,"isImage":false}}'
)
USER_TOOL_ERROR = (
    b'{"type":"user","message":{"role":"user","content":[{"type":"tool_result","content":"<tool_use_error>Blocked:'
    b' standalone sleep 45.</tool_use_error>","is_error":true,"tool_use_id":"toolu_fake_000001"}]}}'
)
API_RETRY = b'{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":600}'


def result_line(**fields: object) -> bytes:
    """A `result` line shaped like the CLI's (keys in its order, extra keys kept)."""
    import json

    base: dict[str, object] = {
        "duration_api_ms": 27, "stop_reason": "end_turn", "session_id": SID, "total_cost_usd": 0.050228,
        "usage": {"input_tokens": 12502, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 11, "output_tokens_details": {"thinking_tokens": 0}, "service_tier": "standard"},
        "modelUsage": {"claude-opus-5-5": {"inputTokens": 12502, "outputTokens": 11, "costUSD": 0.050228}},
        "permission_denials": [], "terminal_reason": "completed", "is_error": False, "num_turns": 1,
        "subtype": "success", "api_error_status": None, "result": "ECHO: hello there", "type": "result",
        "duration_ms": 135, "uuid": "a679f0ac-ef89-436b-a5b2-eb2d28d5333a",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


RESULT_OK = result_line()


def api_error(status: int | None, text: str, **extra: object) -> bytes:
    return result_line(total_cost_usd=0, stop_reason="stop_sequence", terminal_reason="api_error", is_error=True,
                       api_error_status=status, result=text, **extra)


RESULT_401 = api_error(401, "Failed to authenticate. API Error: 401 fakeapi: status 401 requested",
                       api_error_type="authentication_error")
RESULT_403 = api_error(403, "API Error: 403 forbidden")
RESULT_400 = api_error(400, "API Error: 400 fakeapi: status 400 requested")
RESULT_404 = api_error(404, "API Error: 404 model not found")
RESULT_413 = api_error(413, "API Error: 413 request too large")
RESULT_422 = api_error(422, "API Error: 422 unprocessable")
RESULT_429 = api_error(429, "API Error: Request rejected (429) · fakeapi: status 429 requested")
RESULT_529 = api_error(529, "API Error: 529 fakeapi: status 529 requested. This is a server-side issue, usually "
                            "temporary — try again in a moment.")
RESULT_500 = api_error(500, "API Error: 500 fakeapi: status 500 requested.")
RESULT_503 = api_error(503, "API Error: 503 upstream unavailable")
RESULT_418 = api_error(418, "API Error: 418 teapot")
RESULT_NETWORK = api_error(None, "API Error: Connection refused — a firewall or proxy may be blocking it "
                                 "(ECONNREFUSED)", api_error="connection_failed")
RESULT_NETWORK_OLD = api_error(None, "API Error: socket hang up")
RESULT_MAX_TURNS = result_line(subtype="error_max_turns", is_error=True, result=..., terminal_reason="max_turns",
                               errors=["Reached maximum number of turns (1)"], num_turns=2, stop_reason="tool_use")
RESULT_BUDGET = result_line(subtype="error_max_budget_usd", is_error=True, result=...,
                            terminal_reason="budget_exhausted", errors=["Reached maximum budget ($0.01)"])
RESULT_DURING = result_line(subtype="error_during_execution", is_error=True, result=..., terminal_reason="aborted",
                            errors=["something broke"])
RESULT_OTHER_ERROR = api_error(None, "Prompt is too long")


# ---- parse_line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "type_", "subtype"),
    [
        (INIT, "system", "init"),
        (API_RETRY, "system", "api_retry"),
        (ASSISTANT_TEXT, "assistant", None),
        (ASSISTANT_TOOL, "assistant", None),
        (USER_TOOL_RESULT, "user", None),
        (RESULT_OK, "result", "success"),
        (RESULT_MAX_TURNS, "result", "error_max_turns"),
        (b'{"type":"stream_event","event":{"type":"content_block_delta"}}', "stream_event", None),
        (b'{"type":"brand_new_thing","subtype":"x","whatever":[1,2]}', "brand_new_thing", "x"),
        # A known field with an unexpected shape: still identified, never a crash.
        (b'{"type":"system","subtype":"init","tools":"not a list","model":7}', "system", "init"),
        (b'{"type":"result","subtype":"success","usage":"weird","is_error":"no"}', "result", "success"),
        (b'  {"type":"user"}\r\n', "user", None),
    ],
)
def test_parse_line_known_and_unknown(line: bytes, type_: str, subtype: str | None) -> None:
    event = claude.parse_line(line)
    assert event is not None
    assert (event.type, event.subtype) == (type_, subtype)


@pytest.mark.parametrize(
    "line",
    [b"", b"\n", b"not json at all", b"{broken", b"[1,2,3]", b"42", b'"text"', b"{}", b'{"subtype":"init"}',
     b'{"type": 5}', b"\xff\xfe\x00garbage", b"Warning: something on stdout"],
)
def test_parse_line_ignores_non_events(line: bytes) -> None:
    assert claude.parse_line(line) is None


def test_parse_result_fields() -> None:
    event = claude.parse_line(RESULT_OK)
    assert event is not None
    assert event.is_error is False and event.result == "ECHO: hello there" and event.num_turns == 1
    assert event.total_cost_usd == pytest.approx(0.050228) and event.session_id == SID
    assert event.usage == Usage(input_tokens=12502, output_tokens=11)


# ---- summarize -------------------------------------------------------------------------


LONG_TEXT = b'{"type":"assistant","message":{"content":[{"type":"text","text":"' + b"word " * 40 + b'"}]}}'


@pytest.mark.parametrize(
    ("line", "event_name", "summary"),
    [
        (INIT, "system/init", "system/init model=claude-opus-5-5 tools=6"),
        (API_RETRY, "system/api_retry", "system/api_retry"),
        (ASSISTANT_TEXT, "assistant", 'assistant text: "ECHO: hello there"'),
        (ASSISTANT_TOOL, "assistant", "assistant tool_use Bash: echo hi"),
        (USER_TOOL_RESULT, "user", "user tool_result"),
        (USER_TOOL_ERROR, "user", "user tool_result error"),
        (RESULT_OK, "result/success", "result success cost=$0.0502 turns=1"),
        (RESULT_401, "result/success",
         "result success error status=401: Failed to authenticate. API Error: 401 fakeapi: status 401…"),
        (RESULT_MAX_TURNS, "result/error_max_turns",
         "result error_max_turns error: Reached maximum number of turns (1)"),
        (LONG_TEXT, "assistant", 'assistant text: "' + ("word " * 12)[:59].rstrip() + '…"'),
        ((b'{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"},'
          b'{"type":"text","text":"a"}]}}'), "assistant", "assistant thinking (+1 blocks)"),
        ((b'{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Read",'
          b'"input":{"file_path":"/etc/hosts"}}]}}'), "assistant", "assistant tool_use Read: /etc/hosts"),
        (b'{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Odd","input":{}}]}}',
         "assistant", "assistant tool_use Odd"),
        (b'{"type":"assistant","message":{"content":[]}}', "assistant", "assistant"),
        (b'{"type":"user","message":{"content":"plain\\nstring"}}', "user", 'user text: "plain string"'),
        (b'{"type":"brand_new_thing","subtype":"x"}', "brand_new_thing/x", "brand_new_thing/x"),
    ],
)
def test_summarize(line: bytes, event_name: str, summary: str) -> None:
    event = claude.parse_line(line)
    assert event is not None
    assert claude.event_name(event) == event_name
    assert claude.summarize(event) == summary
    assert "\n" not in claude.summarize(event)


# ---- classify --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "exit_code", "state", "kind"),
    [
        (RESULT_OK, 0, TaskState.SUCCEEDED, None),
        (RESULT_OK, 1, TaskState.SUCCEEDED, None),  # the result line decides, not the exit code
        (RESULT_OK, -9, TaskState.SUCCEEDED, None),  # killed after its result (result grace)
        (RESULT_401, 1, TaskState.FAILED, "auth"),
        (RESULT_403, 1, TaskState.FAILED, "auth"),
        (RESULT_400, 1, TaskState.FAILED, "invalid_request"),
        (RESULT_404, 1, TaskState.FAILED, "invalid_request"),
        (RESULT_413, 1, TaskState.FAILED, "invalid_request"),
        (RESULT_422, 1, TaskState.FAILED, "invalid_request"),
        (RESULT_429, 1, TaskState.FAILED, "rate_limited"),
        (RESULT_529, 1, TaskState.FAILED, "overloaded"),
        (RESULT_500, 1, TaskState.FAILED, "api_error"),
        (RESULT_503, 1, TaskState.FAILED, "api_error"),
        (RESULT_418, 1, TaskState.FAILED, "claude"),
        (RESULT_NETWORK, 1, TaskState.FAILED, "network"),
        (RESULT_NETWORK_OLD, 1, TaskState.FAILED, "network"),
        (api_error(None, "Not logged in · Please run /login"), 1, TaskState.FAILED, "auth"),  # no credentials at all
        (RESULT_MAX_TURNS, 1, TaskState.FAILED, "max_turns"),
        (RESULT_BUDGET, 1, TaskState.FAILED, "budget"),
        (RESULT_DURING, 1, TaskState.FAILED, "claude"),
        (RESULT_OTHER_ERROR, 1, TaskState.FAILED, "claude"),
        # API failures say subtype "success": is_error is what counts.
        (api_error(401, "x"), 0, TaskState.FAILED, "auth"),
    ],
)
def test_classify(line: bytes, exit_code: int, state: TaskState, kind: str | None) -> None:
    got_state, error = claude.classify(claude.parse_line(line), exit_code)
    assert got_state is state
    assert (error.kind if error else None) == kind
    if error is not None:
        assert error.message and "\n" not in error.message


def test_classify_messages() -> None:
    _, error = claude.classify(claude.parse_line(RESULT_401), 1)
    assert error is not None and error.message.startswith("API 401: Failed to authenticate.")
    _, error = claude.classify(claude.parse_line(RESULT_MAX_TURNS), 1)
    assert error is not None and error.message == "Reached maximum number of turns (1)"


@pytest.mark.parametrize(
    ("exit_code", "stderr", "message"),
    [
        (1, "boot\nError: Invalid API key\n", "claude exited with 1 without a result line: Error: Invalid API key"),
        (0, "", "claude exited with 0 without a result line"),
        (-9, "", "claude killed by SIGKILL without a result line"),
        (None, "", "claude did not exit without a result line"),
    ],
)
def test_classify_without_result_line(exit_code: int | None, stderr: str, message: str) -> None:
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    state, error = claude.classify(None, exit_code, tail)
    assert state is TaskState.FAILED
    assert error is not None and error.kind == "claude" and error.message == message


# ---- build_argv ------------------------------------------------------------------------

BASE = ["-p", "--output-format=stream-json", "--verbose"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (TaskSpec(prompt="hi"), [*BASE]),
        (TaskSpec(prompt="-starts with a dash"), [*BASE]),
        (TaskSpec(prompt="x", model="claude-sonnet-4-5", max_turns=3), [*BASE, "--model=claude-sonnet-4-5",
                                                                       "--max-turns=3"]),
        (TaskSpec(prompt="x", allowed_tools=["Bash(git *)", "Edit"], disallowed_tools=["WebFetch"]),
         [*BASE, "--allowedTools=Bash(git *),Edit", "--disallowedTools=WebFetch"]),
        (TaskSpec(prompt="x", append_system_prompt="be brief", permission_mode="acceptEdits", max_budget_usd=0.5),
         [*BASE, "--append-system-prompt=be brief", "--permission-mode=acceptEdits", "--max-budget-usd=0.5"]),
        (TaskSpec(prompt="x", max_budget_usd=2.0, allowed_tools=[]), [*BASE, "--max-budget-usd=2"]),
    ],
)
def test_build_argv(spec: TaskSpec, expected: list[str]) -> None:
    """The prompt is never in argv (128 KiB cap, /proc/PID/cmdline): it goes to stdin."""
    assert claude.build_argv(["/opt/claude"], spec) == ["/opt/claude", *expected]
    assert claude.prompt_input(spec) == (spec.prompt or "").encode()
    assert claude.build_argv(["node", "cli.js"], spec)[:2] == ["node", "cli.js"]


# ---- the executors' output handling ----------------------------------------------------


def test_claude_executor_splits_lines_across_chunks() -> None:
    ex = ClaudeExecutor(cap_bytes=1 << 20)
    stream = b"\n".join([INIT, ASSISTANT_TEXT, b"not json", RESULT_OK]) + b"\n"
    events: list[str] = []
    for i in range(0, len(stream), 7):  # chunk boundaries everywhere
        _, progress = ex.feed_stdout(stream[i: i + 7])
        events += [e for e, _ in progress]
    assert events == ["system/init", "assistant", "result/success"]
    state, outcome = ex.finish(0, None)
    assert state is TaskState.SUCCEEDED
    assert outcome.result == "ECHO: hello there" and outcome.session_id == SID and outcome.num_turns == 1
    assert outcome.exit_code == 0 and outcome.is_error is False and not outcome.truncated


def test_claude_executor_last_line_without_newline_and_activity() -> None:
    ex = ClaudeExecutor(cap_bytes=1 << 20)
    active, progress = ex.feed_stdout(RESULT_401[:50])
    assert not active and progress == []  # half a line is not a sign of life
    active, _ = ex.feed_stdout(RESULT_401[50:])
    assert not active
    state, outcome = ex.finish(1, None)
    assert state is TaskState.FAILED and outcome.error is not None and outcome.error.kind == "auth"
    assert outcome.api_error_status == 401


def test_claude_executor_drops_oversized_lines_but_keeps_going() -> None:
    ex = ClaudeExecutor(cap_bytes=10)
    ex.max_line = 1000
    huge = b'{"type":"assistant","message":{"content":[{"type":"text","text":"' + b"y" * 5000 + b'"}]}}'
    events: list[str] = []
    for chunk in (huge[:600], huge[600:3000], huge[3000:] + b"\n" + RESULT_OK + b"\n"):
        events += [e for e, _ in ex.feed_stdout(chunk)[1]]
    assert events == ["result/success"]
    state, outcome = ex.finish(0, None)
    assert state is TaskState.SUCCEEDED and outcome.truncated
    assert outcome.result == "ECHO: hell"  # capped at 10 bytes


def test_exec_executor_caps_and_describes_exit() -> None:
    ex = ExecExecutor(cap_bytes=4)
    ex.feed_stdout(b"abcdef")
    ex.feed_stderr(b"e")
    state, outcome = ex.finish(-9, None)
    assert state is TaskState.FAILED and outcome.truncated and outcome.result == "abcd"
    assert outcome.signal == 9 and outcome.exit_code is None
    assert outcome.error is not None and outcome.error.message == "killed by SIGKILL"
