"""The Claude CLI as a task: its command line, its stream-json lines, and their verdict.

Pure: no I/O, no clock, no processes. Owns `build_argv` (spec -> argv), `parse_line`
(one stream-json line -> `StreamEvent`), `summarize` (event -> one human line) and
`classify` (the `result` line + exit code -> final state and `TaskError`).
Imports msgspec, the stdlib and `proto` only; must not import zmq, psutil or procs.

Facts it relies on (shared/CLAUDE_CLI.md): API failures arrive as `subtype: "success"`
with `is_error: true`, so success is *a result line with is_error == false*, never the
subtype or the exit code alone; unknown line types appear and are skipped.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import msgspec

from proto.task import ErrorKind, TaskError, TaskSpec, TaskState, Usage

__all__ = ["StreamEvent", "build_argv", "classify", "describe_exit", "event_name", "parse_line", "prompt_input", "retry_after_line", "summarize"]

SUMMARY_TEXT_CHARS = 60
MESSAGE_CHARS = 300

_AUTH = frozenset({401, 403})
_INVALID = frozenset({400, 404, 413, 422})
# How the CLI words a failure that never reached an HTTP status (it also sets
# `api_error: "connection_failed"` in recent versions).
_NETWORK_RE = re.compile(
    r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|"
    r"connection (refused|reset|error|failed|timed out)|socket hang up|fetch failed|network",
    re.IGNORECASE,
)
# How the CLI says it has no usable credentials before any request is made (no HTTP status).
_AUTH_RE = re.compile(r"not logged in|please run /login|invalid api key|no api key", re.IGNORECASE)


#: A header line of the CLI's debug log (ANTHROPIC_LOG=debug) for a failed response:
#: `    "retry-after": "3",` (seconds) — the only place a 429's retry-after shows.
_RETRY_AFTER_RE = re.compile(rb'^\s*"?retry-after"?\s*:\s*"?([0-9]+(?:\.[0-9]+)?)"?,?\s*$', re.IGNORECASE)
#: The same log's `anthropic-ratelimit-unified-reset` (epoch seconds), when the API sends it.
_UNIFIED_RESET_RE = re.compile(rb'^\s*"?anthropic-ratelimit-unified-reset"?\s*:\s*"?([0-9]+(?:\.[0-9]+)?)"?,?\s*$',
                               re.IGNORECASE)
#: The longest wait a header may ask for that is believed (a day).
MAX_RETRY_AFTER_S = 86_400.0


def retry_after_line(line: bytes) -> tuple[str, float] | None:
    """A debug-log line carrying a rate-limit header: ("retry_after", seconds) or
    ("reset", epoch seconds); None for any other line (stream-json lines included)."""
    if line.lstrip().startswith(b"{") or b"-" not in line:
        return None
    if (m := _RETRY_AFTER_RE.match(line)) is not None:
        value = float(m.group(1))
        return ("retry_after", value) if value <= MAX_RETRY_AFTER_S else None
    if (m := _UNIFIED_RESET_RE.match(line)) is not None:
        return "reset", float(m.group(1))
    return None


class RateLimitInfo(msgspec.Struct, kw_only=True):
    """A `rate_limit_event` line's `rate_limit_info` (only what the gate needs)."""

    status: str | None = None
    resetsAt: float | None = None


class ContentBlock(msgspec.Struct, kw_only=True):
    """One block of an assistant/user message (text, tool_use, tool_result, thinking...)."""

    type: str = ""
    text: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    is_error: bool | None = None


class Message(msgspec.Struct, kw_only=True):
    content: list[ContentBlock] | str = []


class StreamEvent(msgspec.Struct, kw_only=True):
    """One stream-json line, loosely typed: unknown fields are ignored, and a line whose
    known fields have unexpected shapes still yields its `type`/`subtype`."""

    type: str
    subtype: str | None = None
    # system/init
    model: str | None = None
    tools: list[str] | None = None
    # assistant / user
    message: Message | None = None
    # result
    is_error: bool | None = None
    result: str | None = None
    num_turns: int | None = None
    total_cost_usd: float | None = None
    usage: Usage | None = None
    session_id: str | None = None
    api_error_status: int | None = None
    api_error: str | None = None
    terminal_reason: str | None = None
    errors: list[str] | None = None
    structured_output: Any = None
    # rate_limit_event
    rate_limit_info: RateLimitInfo | None = None


class _Head(msgspec.Struct):
    type: str
    subtype: str | None = None


_decode_full = msgspec.json.Decoder(StreamEvent).decode
_decode_head = msgspec.json.Decoder(_Head).decode


def parse_line(line: bytes) -> StreamEvent | None:
    """One stdout line -> event; None for blank lines, non-JSON and JSON without a `type`."""
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        return _decode_full(line)
    except msgspec.DecodeError:
        pass  # a known field had an unexpected shape: keep what identifies the line
    try:
        head = _decode_head(line)
    except msgspec.DecodeError:
        return None
    return StreamEvent(type=head.type, subtype=head.subtype)


def event_name(event: StreamEvent) -> str:
    """`type` or `type/subtype` (the `Progress.event` field)."""
    return f"{event.type}/{event.subtype}" if event.subtype else event.type


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _tool_arg(block: ContentBlock) -> str:
    args = block.input or {}
    for key in ("command", "file_path", "path", "pattern", "url", "query", "description", "prompt"):
        value = args.get(key)
        if isinstance(value, str) and value:
            return _clip(value, SUMMARY_TEXT_CHARS)
    return ""


def _summarize_block(role: str, block: ContentBlock) -> str:
    if block.type == "text":
        return f'{role} text: "{_clip(block.text or "", SUMMARY_TEXT_CHARS)}"'
    if block.type == "tool_use":
        arg = _tool_arg(block)
        return f"{role} tool_use {block.name}: {arg}" if arg else f"{role} tool_use {block.name}"
    if block.type == "tool_result":
        return f"{role} tool_result error" if block.is_error else f"{role} tool_result"
    return f"{role} {block.type}"


def _summarize_message(event: StreamEvent) -> str:
    content = event.message.content if event.message else []
    if isinstance(content, str):
        return f'{event.type} text: "{_clip(content, SUMMARY_TEXT_CHARS)}"'
    if not content:
        return event.type
    first = _summarize_block(event.type, content[0])
    return first if len(content) == 1 else f"{first} (+{len(content) - 1} blocks)"


def _summarize_result(event: StreamEvent) -> str:
    head = f"result {event.subtype or '?'}"
    if event.is_error is False:
        cost = f" cost=${event.total_cost_usd:.4f}" if event.total_cost_usd is not None else ""
        return f"{head}{cost} turns={event.num_turns}"
    status = f" status={event.api_error_status}" if event.api_error_status else ""
    return f"{head} error{status}: {_clip(_error_text(event), SUMMARY_TEXT_CHARS)}"


def summarize(event: StreamEvent) -> str:
    """One short human line for a `Progress` event."""
    if event.type == "system" and event.subtype == "init":
        return f"system/init model={event.model} tools={len(event.tools or [])}"
    if event.type in ("assistant", "user"):
        return _summarize_message(event)
    if event.type == "result":
        return _summarize_result(event)
    return event_name(event)


def _error_text(event: StreamEvent) -> str:
    if event.result:
        return event.result
    if event.errors:
        return "; ".join(event.errors)
    return event.terminal_reason or event.subtype or "error"


def _api_kind(status: int) -> str | None:
    if status in _AUTH:
        return ErrorKind.AUTH
    if status in _INVALID:
        return ErrorKind.INVALID_REQUEST
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 529:
        return ErrorKind.OVERLOADED
    if status >= 500:
        return ErrorKind.API_ERROR
    return None


def _error_kind(event: StreamEvent) -> str:
    if event.subtype == "error_max_turns" or event.terminal_reason == "max_turns":
        return ErrorKind.MAX_TURNS
    if (event.subtype or "").startswith("error_max_budget") or event.terminal_reason == "budget_exhausted":
        return ErrorKind.BUDGET
    if event.api_error_status is not None:
        return _api_kind(event.api_error_status) or ErrorKind.CLAUDE
    if event.api_error == "connection_failed" or _NETWORK_RE.search(_error_text(event)):
        return ErrorKind.NETWORK
    if _AUTH_RE.search(_error_text(event)):
        return ErrorKind.AUTH
    return ErrorKind.CLAUDE


def describe_exit(returncode: int | None) -> str:
    """'exited with 1', 'killed by SIGKILL', or 'did not exit' (for a Popen-style code)."""
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


def classify(
    result: StreamEvent | None, exit_code: int | None, stderr_tail: str = ""
) -> tuple[TaskState, TaskError | None]:
    """Final state of a Claude task from its `result` line (None if it never printed one),
    its Popen-style return code (negative: killed by that signal), and the last line of
    its stderr (used only when there is no result line)."""
    if result is None:
        tail = f": {_clip(stderr_tail, MESSAGE_CHARS)}" if stderr_tail.strip() else ""
        message = f"claude {describe_exit(exit_code)} without a result line{tail}"
        return TaskState.FAILED, TaskError(kind=ErrorKind.CLAUDE, message=message)
    if result.is_error is False:
        return TaskState.SUCCEEDED, None
    kind = _error_kind(result)
    status = f"API {result.api_error_status}: " if result.api_error_status is not None else ""
    message = f"{status}{_clip(_error_text(result), MESSAGE_CHARS)}"
    return TaskState.FAILED, TaskError(kind=kind, message=message)


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def build_argv(command_prefix: list[str], spec: TaskSpec) -> list[str]:
    """The CLI's argv for `spec`: print mode, stream-json and the spec's options. No prompt:
    it goes to the CLI's stdin (`prompt_input`), whatever its size — an argv string is
    capped at 128 KiB (E2BIG) and readable by anyone in /proc/PID/cmdline.

    Options use the `--flag=value` form, because the tool lists are variadic options
    (`<tools...>`) that would swallow a following word. Tool lists are comma-joined, as
    the CLI accepts.
    """
    argv = [*command_prefix, "-p", "--output-format=stream-json", "--verbose"]
    if spec.model:
        argv.append(f"--model={spec.model}")
    if spec.max_turns is not None:
        argv.append(f"--max-turns={spec.max_turns}")
    if spec.allowed_tools:
        argv.append(f"--allowedTools={','.join(spec.allowed_tools)}")
    if spec.disallowed_tools:
        argv.append(f"--disallowedTools={','.join(spec.disallowed_tools)}")
    if spec.append_system_prompt:
        argv.append(f"--append-system-prompt={spec.append_system_prompt}")
    if spec.permission_mode:
        argv.append(f"--permission-mode={spec.permission_mode}")
    if spec.max_budget_usd is not None:
        argv.append(f"--max-budget-usd={_fmt_number(spec.max_budget_usd)}")
    if spec.json_schema is not None:
        argv.append(f"--json-schema={msgspec.json.encode(spec.json_schema).decode()}")
    if spec.resume_session:
        argv.append(f"--resume={spec.resume_session}")
    return argv


def prompt_input(spec: TaskSpec) -> bytes:
    """What the CLI reads on stdin in `-p` mode: the prompt, and after it the task's `input`
    (as `cat input | claude -p PROMPT` would give it). The child writes it all and closes
    the pipe (an open, idle stdin costs the CLI a 3 s wait)."""
    text = spec.prompt or ""
    if spec.input:
        text = f"{text}\n\n{spec.input}"
    return text.encode()
