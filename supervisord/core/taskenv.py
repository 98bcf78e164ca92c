"""What environment children and task processes get. Pure: takes mappings, returns dicts.

Owns the filter that keeps the daemon's own secrets and a parent Claude Code
session's leftovers (`CLAUDECODE`, `CLAUDE_CODE_*`) away from tasks, and the variables
supd adds per task (trace context, the Claude CLI's retry cap).
"""

from __future__ import annotations

from collections.abc import Mapping

from supervisord.core.traceids import SpanRef

#: Never passed on to children, whatever the daemon's own environment holds.
_DROP_PREFIXES = ("CLAUDE_CODE_", "SUPD_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "INVOCATION_ID",
                  "TRACEPARENT", "TRACESTATE", "BAGGAGE")
_DROP_NAMES = {"CLAUDECODE", "JOURNAL_STREAM", "MANAGERPID", "SYSTEMD_EXEC_PID"}


def child_environ(environ: Mapping[str, str], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """The daemon's environment minus what must not leak into tasks (`keep` overrides)."""
    return {
        k: v for k, v in environ.items()
        if k in keep or not (k in _DROP_NAMES or k.startswith(_DROP_PREFIXES))
    }


#: Makes the CLI's API client log each failed response's headers on stdout (non-JSON lines
#: between the stream-json ones): the only place a 429's `retry-after` shows.
RETRY_AFTER_LOG = {"ANTHROPIC_LOG": "debug"}


def task_env(span: SpanRef, tracestate: str | None, kind: str, claude_env: Mapping[str, str],
             claude_max_retries: int, read_retry_after: bool = False) -> dict[str, str]:
    """Variables supd adds for one attempt: W3C context naming the task's own span, and for
    Claude tasks the configured `[claude] env` plus a cap on the CLI's own retry loop (and,
    with `read_retry_after`, the debug log the child reads a 429's retry-after from)."""
    env = dict(claude_env) if kind == "claude" else {}
    if kind == "claude":
        if read_retry_after:
            env = {**RETRY_AFTER_LOG, **env}  # `[claude] env` may still say otherwise
        env["CLAUDE_CODE_MAX_RETRIES"] = str(claude_max_retries)
    env["TRACEPARENT"] = span.traceparent  # always the task's own span: config cannot override it
    if tracestate:
        env["TRACESTATE"] = tracestate
    return env
