"""Configuration: the TOML file decoded with msgspec into typed, frozen structs.

Owns defaults and validation. An unknown key or a wrong type is a `ConfigError` that
names the key (msgspec's path, e.g. `$.tasks.timeout_s`). No I/O beyond reading the
file; imports msgspec and the stdlib only. `config/supd.toml` documents every key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import msgspec


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


class _Section(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class DaemonConfig(_Section, frozen=True):
    children: int = 4
    drain_s: float = 60.0
    heartbeat_s: float = 2.0
    liveness: int = 5
    max_queued: int = 100_000
    #: the queue's text (prompts, argv, input, env) in bytes; 0: no byte limit
    max_queued_bytes: int = 1 << 30
    max_starting: int = 8
    #: children booted ahead and kept ready: a slot whose child exits takes one over at once
    spares: int = 1
    runtime_dir: str | None = None
    log_level: str = "info"


class TaskDefaults(_Section, frozen=True):
    timeout_s: float = 3600.0
    stall_timeout_s: float = 300.0
    result_grace_s: float = 2.0
    kill_grace_s: float = 5.0
    retries: int = 0
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    output_cap_bytes: int = 1 << 20
    transcript_cap_bytes: int = 4 << 20


class RestartConfig(_Section, frozen=True):
    backoff_base_s: float = 0.1
    backoff_max_s: float = 30.0
    stable_after_s: float = 10.0
    intensity: int = 5
    period_s: float = 60.0


class RecycleConfig(_Section, frozen=True):
    max_tasks: int = 0
    max_age_s: float = 0.0
    max_age_jitter_s: float = 0.0
    max_rss_mb: float = 0.0


class ClaudeConfig(_Section, frozen=True):
    command: list[str] = []
    env: dict[str, str] = {}
    model: str | None = None
    max_retries: int = 0


class BreakerConfig(_Section, frozen=True):
    threshold: int = 3
    open_s: float = 30.0


class LimitsConfig(_Section, frozen=True):
    max_message_bytes: int = 16 << 20
    max_prompt_bytes: int = 1 << 20
    max_argv_bytes: int = 256 << 10
    max_env_bytes: int = 64 << 10
    max_batch: int = 10_000


class TracingConfig(_Section, frozen=True):
    exporter: str = "none"
    endpoint: str | None = None
    service_name: str = "supd"


class MetricsConfig(_Section, frozen=True):
    prometheus_port: int = 0
    prometheus_host: str = "127.0.0.1"


class SecurityConfig(_Section, frozen=True):
    # CurveZMQ for tcp:// endpoints (ipc needs none): key files as written by zmq.auth.
    server_secret_key: str | None = None
    client_public_keys_dir: str | None = None
    client_secret_key: str | None = None
    server_public_key: str | None = None
    control_endpoint: str | None = None
    pass_env: list[str] = []


class WebConfig(_Section, frozen=True):
    port: int = 0
    host: str = "127.0.0.1"


class JournalConfig(_Section, frozen=True):
    max_mb: float = 0.0
    synchronous: str = "normal"
    retain_s: float = 604_800.0
    #: how often finished tasks older than `retain_s` are pruned (on a fleet: once per period for all hosts)
    prune_every_s: float = 3600.0
    #: a PostgreSQL database shared by a fleet (or $SUPD_JOURNAL_URL); None: SQLite in the state dir
    url: str | None = None
    #: this daemon's name in the fleet; None: `hostname:state_dir`
    host: str | None = None
    #: how long a claimed attempt is this host's without a renewal (fleet only)
    lease_s: float = 30.0


class WorktreesConfig(_Section, frozen=True):
    keep: str = "branch"
class HooksConfig(_Section, frozen=True):
    #: argv run with the batch summary as JSON on stdin when a batch ends ([] = none)
    on_batch_done: list[str] = []
    timeout_s: float = 30.0


class GateConfig(_Section, frozen=True):
    #: how a 429's `retry-after` is learnt: "log" reads it from the CLI's debug log
    #: (ANTHROPIC_LOG=debug; the only place it shows), "off" only uses `rate_limit_event` lines
    retry_after: str = "log"
    #: the longest the gate stays closed for one reset time
    max_s: float = 3600.0


class Config(_Section, frozen=True):
    daemon: DaemonConfig = DaemonConfig()
    tasks: TaskDefaults = TaskDefaults()
    restart: RestartConfig = RestartConfig()
    recycle: RecycleConfig = RecycleConfig()
    claude: ClaudeConfig = ClaudeConfig()
    breaker: BreakerConfig = BreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    journal: JournalConfig = JournalConfig()
    security: SecurityConfig = SecurityConfig()
    worktrees: WorktreesConfig = WorktreesConfig()
    web: WebConfig = WebConfig()
    hooks: HooksConfig = HooksConfig()
    gate: GateConfig = GateConfig()
    #: exclusive keys: NAME = how many tasks with `--key NAME` may run at once (default 1)
    keys: dict[str, int] = {}


#: the most exclusive keys `[keys]` may name, and each one's range
MAX_KEYS, KEY_LIMIT_RANGE = 10_000, (1, 10_000)
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,128}$")

DAY_S = 86_400.0

#: The range of every number, `(low, high)` inclusive. NaN is outside every range.
RANGES: dict[str, tuple[float, float]] = {
    "daemon.children": (0, 1024),
    "daemon.drain_s": (0, DAY_S),
    "daemon.heartbeat_s": (0.05, 60),
    "daemon.liveness": (1, 100),
    "daemon.max_queued": (1, 10_000_000),
    "daemon.max_queued_bytes": (0, 1 << 40),
    "daemon.max_starting": (1, 1024),
    "daemon.spares": (0, 64),
    "tasks.timeout_s": (0.01, 30 * DAY_S),
    "tasks.stall_timeout_s": (0.01, 30 * DAY_S),
    "tasks.result_grace_s": (0, 600),
    "tasks.kill_grace_s": (0, 600),
    "tasks.retries": (0, 100),
    "tasks.retry_base_s": (0, 3600),
    "tasks.retry_max_s": (0, DAY_S),
    "tasks.output_cap_bytes": (1, 1 << 30),
    "tasks.transcript_cap_bytes": (0, 1 << 30),
    "restart.backoff_base_s": (0, 3600),
    "restart.backoff_max_s": (0, DAY_S),
    "restart.stable_after_s": (0, DAY_S),
    "restart.intensity": (1, 10_000),
    "restart.period_s": (0.01, DAY_S),
    "recycle.max_tasks": (0, 1_000_000_000),
    "recycle.max_age_s": (0, 365 * DAY_S),
    "recycle.max_age_jitter_s": (0, 365 * DAY_S),
    "recycle.max_rss_mb": (0, 1 << 20),
    "claude.max_retries": (0, 100),
    "breaker.threshold": (1, 10_000),
    "breaker.open_s": (0.1, DAY_S),
    "limits.max_message_bytes": (64 << 10, 1 << 30),
    "limits.max_prompt_bytes": (1, 1 << 30),
    "limits.max_argv_bytes": (1, 16 << 20),
    "limits.max_env_bytes": (1, 16 << 20),
    "limits.max_batch": (1, 100_000),
    "metrics.prometheus_port": (0, 65_535),
    "web.port": (0, 65_535),
    "journal.max_mb": (0, 1 << 20),
    "journal.retain_s": (0, 3650 * DAY_S),
    "journal.prune_every_s": (1, DAY_S),
    "journal.lease_s": (1, 3600),
    "hooks.timeout_s": (0.1, 3600),
    "gate.max_s": (1, DAY_S),
}
#: Keys that take one of a few words.
CHOICES: dict[str, tuple[str, ...]] = {
    "daemon.log_level": ("debug", "info", "warning", "error"),
    "tracing.exporter": ("none", "console", "otlp-http", "otlp-grpc"),
    "journal.synchronous": ("off", "normal", "full", "extra"),
    "worktrees.keep": ("branch", "worktree", "none"),
    "gate.retry_after": ("log", "off"),
}
#: Text keys (and lists or tables of text): the most characters one value (or item) may
#: have, and the most items a list or table may have.
TEXT: dict[str, tuple[int, int]] = {
    "daemon.runtime_dir": (4096, 1),
    "claude.command": (4096, 256),
    "claude.env": (1 << 16, 1024),
    "claude.model": (256, 1),
    "tracing.endpoint": (2048, 1),
    "tracing.service_name": (256, 1),
    "metrics.prometheus_host": (255, 1),
    "security.server_secret_key": (4096, 1),
    "security.client_public_keys_dir": (4096, 1),
    "security.client_secret_key": (4096, 1),
    "security.server_public_key": (4096, 1),
    "security.control_endpoint": (1024, 1),
    "security.pass_env": (1024, 1024),
    "journal.url": (4096, 1),
    "journal.host": (255, 1),
    "web.host": (255, 1),
    "hooks.on_batch_done": (4096, 256),
}

#: Keys a reload cannot apply to a running daemon (sockets, the open journal, exporters,
#: the Prometheus listener, the log setup): changing one needs a restart. A prefix ending
#: in "." stands for its whole section. `security.pass_env` is applied live.
RESTART_REQUIRED: tuple[str, ...] = (
    "daemon.runtime_dir", "daemon.log_level", "limits.max_message_bytes", "journal.max_mb",
    "journal.synchronous", "journal.url", "journal.host", "journal.lease_s", "tracing.", "metrics.", "web.", "security.server_secret_key",
    "security.client_public_keys_dir", "security.control_endpoint",
)


def _get(config: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _num(x: float) -> str:
    """1e-06 -> 1e-06, 60.0 -> 60, 604800.0 -> 604800, inf -> inf."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def keys() -> list[str]:
    """Every dotted key of the config, in file order."""
    return [f"{s.name}.{f.name}" for s in msgspec.structs.fields(Config) if s.name != "keys"
            for f in msgspec.structs.fields(s.type)]


def key_problem(config: Config, key: str) -> str | None:
    """What is wrong with one key's value, as `key = value: must be ...`, or None."""
    value = _get(config, key)
    if key in RANGES:
        low, high = RANGES[key]
        assert isinstance(value, int | float)
        if not low <= value <= high:  # also NaN
            return f"{key} = {_num(value)}: must be between {_num(low)} and {_num(high)}"
    elif key in CHOICES:
        assert isinstance(value, str)
        if value.lower() not in CHOICES[key]:
            return f"{key} = {value!r}: must be one of {', '.join(CHOICES[key])}"
    elif key in TEXT:
        chars, items = TEXT[key]
        texts: list[str] = ([] if value is None else [value] if isinstance(value, str)
                            else [*value, *value.values()] if isinstance(value, dict) else list(value))  # type: ignore[call-overload]
        count = len(value) if isinstance(value, dict | list) else len(texts)
        if count > items:
            return f"{key}: {count} entries, at most {items}"
        for text in texts:
            if len(text) > chars:
                return f"{key}: a value of {len(text)} characters, at most {chars}"
            if "\0" in text:
                return f"{key}: contains a NUL character"
    else:  # pragma: no cover (tests/unit/test_config_validate.py checks that every key has a range)
        raise AssertionError(f"{key} has no range")
    return None


def validate(config: Config) -> Config:
    """Every key in its range; raises `ConfigError` naming the key, its value and the range."""
    for key in keys():
        problem = key_problem(config, key)
        if problem:
            raise ConfigError(problem)
    if len(config.keys) > MAX_KEYS:
        raise ConfigError(f"keys: {len(config.keys)} entries, at most {MAX_KEYS}")
    low, high = KEY_LIMIT_RANGE
    for name, limit in config.keys.items():
        if not _KEY_NAME_RE.match(name):
            raise ConfigError(f"keys.{name}: a key name is 1-128 letters, digits or _.:/@+-")
        if not low <= limit <= high:
            raise ConfigError(f"keys.{name} = {limit}: must be between {low} and {high}")
    if config.hooks.on_batch_done and not config.hooks.on_batch_done[0]:
        raise ConfigError("hooks.on_batch_done: the command (its first item) is empty")
    if config.tasks.retry_max_s < config.tasks.retry_base_s:
        raise ConfigError(f"tasks.retry_max_s = {_num(config.tasks.retry_max_s)}: must be >= tasks.retry_base_s "
                          f"= {_num(config.tasks.retry_base_s)}")
    if config.journal.url is not None and (problem := journal_url_problem(config.journal.url)):
        raise ConfigError(problem)
    if config.restart.backoff_max_s < config.restart.backoff_base_s:
        raise ConfigError(f"restart.backoff_max_s = {_num(config.restart.backoff_max_s)}: must be >= "
                          f"restart.backoff_base_s = {_num(config.restart.backoff_base_s)}")
    return config


def journal_url_problem(url: str, key: str = "journal.url") -> str | None:
    """What is wrong with a PostgreSQL URL (`[journal] url` or `SUPD_JOURNAL_URL`), or None;
    the message never shows the password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as e:
        return f"{key}: not a URL ({e})"
    shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url
    if parts.scheme not in ("postgresql", "postgres"):
        return f"{key} = {shown!r}: must start with postgresql:// (a PostgreSQL database shared by the fleet)"
    return None


def with_env(config: Config, environ: dict[str, str] | os._Environ[str]) -> Config:
    """`SUPD_JOURNAL_URL` (when set and not empty) wins over `[journal] url`."""
    url = environ.get("SUPD_JOURNAL_URL")
    if not url:
        return config
    if problem := journal_url_problem(url, "SUPD_JOURNAL_URL"):
        raise ConfigError(problem)
    if len(url) > TEXT["journal.url"][0]:
        raise ConfigError(f"SUPD_JOURNAL_URL: {len(url)} characters, at most {TEXT['journal.url'][0]}")
    return msgspec.structs.replace(config, journal=msgspec.structs.replace(config.journal, url=url))


def restart_required(old: Config, new: Config) -> list[str]:
    """The dotted keys that differ between `old` and `new` and that a reload cannot apply:
    a reload that changes one of them should be refused, naming them."""
    return [key for key in keys()
            if key.startswith(RESTART_REQUIRED) and _get(old, key) != _get(new, key)]


def decode(text: str | bytes, source: str = "<config>") -> Config:
    try:
        config = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_readable(str(e))}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        return validate(config)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load(path: str | os.PathLike[str] | None) -> Config:
    """The config at `path`, or the defaults when `path` is None."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return decode(text, str(path))


def _readable(message: str) -> str:
    """msgspec says `... - at `$.tasks.timeout_s``; say `tasks.timeout_s: ...` instead."""
    head, sep, where = message.rpartition(" - at `$")
    if not sep:
        head, where = message, ""
    key = where.rstrip("`").lstrip(".")
    unknown = re.search(r"unknown field `([^`]+)`", head)
    if unknown:
        return f"{'.'.join(filter(None, [key, unknown.group(1)]))}: unknown key"
    return f"{key or '(top level)'}: {head}"
