"""Configuration: the TOML file decoded with msgspec into typed, frozen structs.

Owns defaults and validation. An unknown key or a wrong type is a `ConfigError` that
names the key (msgspec's path, e.g. `$.tasks.timeout_s`). No I/O beyond reading the
file; imports msgspec and the stdlib only. `config/supd.toml` documents every key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

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
    max_starting: int = 8
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


class JournalConfig(_Section, frozen=True):
    max_mb: float = 0.0
    synchronous: str = "normal"


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


_POSITIVE: dict[str, Callable[[Config], bool]] = {
    "daemon.children": lambda c: c.daemon.children >= 0,
    "daemon.drain_s": lambda c: c.daemon.drain_s >= 0,
    "daemon.heartbeat_s": lambda c: c.daemon.heartbeat_s > 0,
    "daemon.liveness": lambda c: c.daemon.liveness >= 1,
    "daemon.max_queued": lambda c: c.daemon.max_queued >= 1,
    "daemon.max_starting": lambda c: c.daemon.max_starting >= 1,
    "tasks.timeout_s": lambda c: c.tasks.timeout_s > 0,
    "tasks.stall_timeout_s": lambda c: c.tasks.stall_timeout_s > 0,
    "tasks.kill_grace_s": lambda c: c.tasks.kill_grace_s >= 0,
    "tasks.retries": lambda c: c.tasks.retries >= 0,
    "tasks.output_cap_bytes": lambda c: c.tasks.output_cap_bytes > 0,
    "restart.intensity": lambda c: c.restart.intensity >= 1,
    "breaker.threshold": lambda c: c.breaker.threshold >= 1,
}
_EXPORTERS = ("none", "console", "otlp-http", "otlp-grpc")


def validate(config: Config) -> Config:
    """Range checks msgspec's types cannot express; raises `ConfigError` naming the key."""
    for key, ok in _POSITIVE.items():
        if not ok(config):
            raise ConfigError(f"{key}: out of range")
    if config.journal.synchronous.lower() not in ("off", "normal", "full", "extra"):
        raise ConfigError("journal.synchronous: must be one of off, normal, full, extra")
    if config.journal.max_mb < 0:
        raise ConfigError("journal.max_mb: out of range")
    if config.tracing.exporter not in _EXPORTERS:
        raise ConfigError(f"tracing.exporter: must be one of {', '.join(_EXPORTERS)}")
    return config


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
