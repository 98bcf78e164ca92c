"""Task kinds: how a `Dispatch` becomes a command line, and how its output becomes an outcome.

One executor per kind (`exec`, `claude`). An executor is fed the bytes the process
writes and, at the end, its return code plus the verdict of any timeout or cancel; it
answers with progress events along the way and a final (state, `Outcome`). Pure: no
I/O, no processes, no clock (the running task in `children.running` owns those).
Imports the stdlib, `proto` and `children.claude` only; must not import zmq or procs.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from children import claude
from proto.children import Dispatch
from proto.task import ErrorKind, Line, Outcome, TaskError, TaskState

__all__ = ["CappedBuffer", "Executor", "Launch", "Transcriber", "Verdict", "make_executor", "plan_launch"]

TASK_ENV = "SUPD_TASK_ID"
#: Room above the output cap for one stream-json line: the `result` line carries the
#: whole answer plus JSON overhead, and must still parse when the answer is at the cap.
LINE_SLACK_BYTES = 1 << 20

Verdict = tuple[TaskState, TaskError]
ProgressItem = tuple[str, str]  # (event, summary)


class Launch(NamedTuple):
    """Everything needed to start the task's process."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdin: bytes | None


def plan_launch(dispatch: Dispatch, base_env: dict[str, str], cwd: str | None = None) -> Launch:
    """argv by kind; env = the child's env + dispatch.env + spec.env + SUPD_TASK_ID; stdin
    is the spec's input for exec, the prompt for claude."""
    spec = dispatch.spec
    stdin: bytes | None
    if spec.kind == "claude":
        argv = claude.build_argv(list(dispatch.claude_command), spec)
        stdin = claude.prompt_input(spec)  # always a pipe, written and closed
    else:
        argv = list(spec.argv or [])
        stdin = spec.input.encode() if spec.input is not None else None
    env = {**base_env, **dispatch.env, **spec.env, TASK_ENV: dispatch.task_id}
    return Launch(argv=argv, env=env, cwd=cwd or spec.cwd, stdin=stdin)


class CappedBuffer:
    """The first `cap` bytes of a stream; the rest is counted and dropped, so the writer
    never blocks on a full pipe and the child's memory stays bounded."""

    __slots__ = ("cap", "data", "dropped")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def last_line(self) -> str:
        lines = self.text().strip().splitlines()
        return lines[-1] if lines else ""


class Transcriber:
    """The task's output as transcript lines: stdout and stderr split into lines, each
    stamped, at most `cap` bytes of text per attempt; the rest is counted and, at the end,
    noted in one `supd` line. `take()` hands over what is pending (sent as `Output`).
    With `json_stdout` (Claude tasks) only stdout lines that are JSON objects are kept: the
    CLI's debug log (`ANTHROPIC_LOG=debug`, which the rate-limit gate reads) shares stdout
    with the stream-json lines and is no part of the transcript."""

    def __init__(self, cap: int, attempt: int, json_stdout: bool = False) -> None:
        self.cap, self.attempt, self.json_stdout = cap, attempt, json_stdout
        self.used = 0
        self.pending: list[Line] = []
        self.pending_bytes = 0
        self.dropped_lines = self.dropped_bytes = 0
        self.partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        #: streams inside a line that was dropped: the rest of it, up to its newline, goes too
        self.skipping: set[str] = set()

    def feed(self, stream: str, chunk: bytes, at: float) -> None:
        if self.cap <= 0:
            return
        buf = self.partial[stream]
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if stream in self.skipping:
                self.skipping.discard(stream)
                self.dropped_bytes += nl - start
            else:
                buf += chunk[start:nl]
                self._add(stream, bytes(buf), at)
                buf.clear()
            start = nl + 1
        rest = chunk[start:]
        if stream in self.skipping:
            self.dropped_bytes += len(rest)
        elif len(buf) + len(rest) > self.cap - self.used:  # a line longer than the room left: dropped
            self.dropped_bytes += len(buf) + len(rest)
            self.dropped_lines += 1
            self.skipping.add(stream)
            buf.clear()
        else:
            buf += rest

    def _add(self, stream: str, raw: bytes, at: float) -> None:
        if self.json_stdout and stream == "stdout" and not raw.lstrip().startswith(b"{"):
            return
        if self.used + len(raw) > self.cap:
            self.dropped_lines += 1
            self.dropped_bytes += len(raw)
            return
        self.used += len(raw)
        self.pending.append(Line(at, stream, self.attempt, raw.decode("utf-8", errors="replace").rstrip("\r")))
        self.pending_bytes += len(raw)

    def note(self, text: str, at: float) -> None:
        """A line of supd's own (not counted against the cap)."""
        self.pending.append(Line(at, "supd", self.attempt, text))

    def take(self, at: float, final: bool = False) -> list[Line]:
        if final:
            self.skipping.clear()
            for stream, buf in self.partial.items():
                if buf:
                    self._add(stream, bytes(buf), at)
                    buf.clear()
            if self.dropped_lines or self.dropped_bytes:
                self.note(f"transcript cap of {self.cap} bytes reached: {self.dropped_lines} lines "
                          f"({self.dropped_bytes} bytes) left out", at)
        lines, self.pending, self.pending_bytes = self.pending, [], 0
        return lines


def _exit_fields(returncode: int | None) -> tuple[int | None, int | None]:
    if returncode is not None and returncode < 0:
        return None, -returncode
    return returncode, None


class Executor(Protocol):
    """What the running task needs from a kind."""

    @property
    def result_seen(self) -> bool: ...

    def feed_stdout(self, chunk: bytes) -> tuple[bool, list[ProgressItem]]:
        """Returns (activity: resets the stall deadline, progress events to send)."""
        ...

    def feed_stderr(self, chunk: bytes) -> bool: ...

    def finish(self, returncode: int | None, verdict: Verdict | None) -> tuple[TaskState, Outcome]: ...


class ExecExecutor:
    """Any command: stdout is the result, exit 0 is success. No per-line progress (too costly)."""

    def __init__(self, cap_bytes: int) -> None:
        self.stdout = CappedBuffer(cap_bytes)
        self.stderr = CappedBuffer(cap_bytes)

    @property
    def result_seen(self) -> bool:
        return False

    def feed_stdout(self, chunk: bytes) -> tuple[bool, list[ProgressItem]]:
        self.stdout.add(chunk)
        return True, []

    def feed_stderr(self, chunk: bytes) -> bool:
        self.stderr.add(chunk)
        return True

    def finish(self, returncode: int | None, verdict: Verdict | None) -> tuple[TaskState, Outcome]:
        exit_code, sig = _exit_fields(returncode)
        error: TaskError | None
        if verdict is not None:
            state, error = verdict
        elif returncode == 0:
            state, error = TaskState.SUCCEEDED, None
        else:
            state, error = TaskState.FAILED, TaskError(kind=ErrorKind.EXIT, message=claude.describe_exit(returncode))
        outcome = Outcome(
            exit_code=exit_code,
            signal=sig,
            result=self.stdout.text(),
            stderr=self.stderr.text(),
            truncated=self.stdout.truncated or self.stderr.truncated,
            error=error,
        )
        return state, outcome


class ClaudeExecutor:
    """The Claude CLI: stdout is stream-json, one progress event per line; the outcome
    comes from the `result` line."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.max_line = 2 * cap_bytes + LINE_SLACK_BYTES
        self.partial = bytearray()
        self.skipping = False  # inside an over-long line: drop bytes up to its newline
        self.lines_dropped = 0
        self.result: claude.StreamEvent | None = None
        self.stderr = CappedBuffer(cap_bytes)
        #: what the API said about coming back: a 429's retry-after (seconds, from the CLI's
        #: debug log) and a reset time (epoch seconds: a rate_limit_event, a unified header)
        self.retry_after_s: float | None = None
        self.resets_at: float | None = None

    @property
    def result_seen(self) -> bool:
        return self.result is not None

    def feed_stdout(self, chunk: bytes) -> tuple[bool, list[ProgressItem]]:
        progress: list[ProgressItem] = []
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:nl]
            start = nl + 1
            if self.skipping:
                self.skipping = False
            elif (line := self._complete(piece)) is not None:
                progress += self._on_line(line)
        self._keep_partial(chunk[start:])
        # Activity means a whole line: a process dribbling a never-ending line is stalled.
        return start > 0, progress

    def _complete(self, piece: bytes) -> bytes | None:
        if len(self.partial) + len(piece) > self.max_line:
            self.partial.clear()
            self.lines_dropped += 1
            return None
        line = bytes(self.partial + piece) if self.partial else piece
        self.partial.clear()
        return line

    def _keep_partial(self, rest: bytes) -> None:
        if self.skipping or not rest:
            return
        if len(self.partial) + len(rest) > self.max_line:
            self.partial.clear()
            self.skipping = True
            self.lines_dropped += 1
            return
        self.partial += rest

    def _on_line(self, line: bytes) -> list[ProgressItem]:
        event = claude.parse_line(line)
        if event is None:
            if (found := claude.retry_after_line(line)) is not None:
                if found[0] == "retry_after":
                    self.retry_after_s = found[1]
                else:
                    self.resets_at = found[1]
            return []
        if event.type == "rate_limit_event" and event.rate_limit_info is not None:
            info = event.rate_limit_info
            if info.status == "rejected" and info.resetsAt:
                self.resets_at = info.resetsAt
        if event.type == "result" and self.result is None:
            self.result = event
        return [(claude.event_name(event), claude.summarize(event))]

    def feed_stderr(self, chunk: bytes) -> bool:
        self.stderr.add(chunk)
        return False  # the CLI's stderr is noise; only stream-json lines show it is alive

    def finish(self, returncode: int | None, verdict: Verdict | None) -> tuple[TaskState, Outcome]:
        if self.result is None and self.partial:
            self._on_line(bytes(self.partial))  # a last line without its newline
        exit_code, sig = _exit_fields(returncode)
        error: TaskError | None
        if verdict is not None:
            state, error = verdict
        else:
            state, error = claude.classify(self.result, returncode, self.stderr.last_line())
        outcome = Outcome(exit_code=exit_code, signal=sig, stderr=self.stderr.text(), error=error)
        outcome.truncated = self.stderr.truncated or self.lines_dropped > 0
        if self.result is not None:
            self._fill_from_result(outcome, self.result)
        if error is not None and error.kind == ErrorKind.RATE_LIMITED:
            outcome.retry_after_s, outcome.resets_at = self.retry_after_s, self.resets_at
        return state, outcome

    def _fill_from_result(self, outcome: Outcome, r: claude.StreamEvent) -> None:
        text = r.result
        if text is not None and len(text.encode()) > self.cap_bytes:
            text = text.encode()[: self.cap_bytes].decode("utf-8", errors="ignore")
            outcome.truncated = True
        outcome.result = text
        outcome.usage = r.usage
        outcome.cost_usd = r.total_cost_usd
        outcome.session_id = r.session_id
        outcome.num_turns = r.num_turns
        outcome.is_error = r.is_error
        outcome.api_error_status = r.api_error_status
        outcome.structured_output = r.structured_output


def make_executor(dispatch: Dispatch) -> ExecExecutor | ClaudeExecutor:
    cap = dispatch.limits.output_cap_bytes
    return ClaudeExecutor(cap) if dispatch.spec.kind == "claude" else ExecExecutor(cap)
