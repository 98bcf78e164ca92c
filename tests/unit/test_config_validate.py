"""Config decoding and range checks, and the submit checks: every message names its key or field."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from proto.task import TaskSpec
from supervisord import config as cfg
from supervisord.config import Config, ConfigError, LimitsConfig, decode, load, validate
from supervisord.core.validate import batch_problem, task_problem

pytestmark = pytest.mark.timeout(10)

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "config" / "supd.toml"


# ---- the shipped file ---------------------------------------------------------------------

def test_shipped_config_is_exactly_the_defaults() -> None:
    assert load(DEFAULT_TOML) == Config()
    assert decode(DEFAULT_TOML.read_text()) == Config()


def test_no_file_means_the_defaults() -> None:
    assert load(None) == Config()
    assert decode("") == Config()


def _sections() -> list[tuple[str, type[msgspec.Struct]]]:
    # `[keys]` is a table of names the operator chooses, not a struct: tests of its own below
    return [(f.name, f.type) for f in msgspec.structs.fields(Config) if f.name != "keys"]  # type: ignore[misc]


@pytest.mark.parametrize(("section", "struct"), _sections(), ids=[s for s, _ in _sections()])
def test_shipped_config_documents_every_key(section: str, struct: type[msgspec.Struct]) -> None:
    """Each key appears in its section, set or as a commented-out example."""
    text = DEFAULT_TOML.read_text()
    m = re.search(rf"^\[{section}\][^\n]*\n(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"no [{section}] section"
    body = m.group(1)
    for field in msgspec.structs.fields(struct):
        assert re.search(rf"^#? ?{field.name} = ", body, re.MULTILINE), f"{section}.{field.name} is not documented"


def test_defaults_pass_validation() -> None:
    assert validate(Config()) == Config()


# ---- errors name the key --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\nbogus = 1", "daemon.bogus: unknown key"),
        ("bogus = 1", "bogus: unknown key"),
        ("[bogus]\nx = 1", "bogus: unknown key"),
        ("[claude]\nmodle = 'x'", "claude.modle: unknown key"),
        ('[tasks]\ntimeout_s = "x"', "tasks.timeout_s: Expected `float`, got `str`"),
        ("[daemon]\nchildren = true", "daemon.children: Expected `int`, got `bool`"),
        ("[daemon]\nchildren = 1.5", "daemon.children: Expected `int`, got `float`"),
        ("[limits]\nmax_batch = 'many'", "limits.max_batch: Expected `int`, got `str`"),
        ("daemon = 3", "daemon: Expected `object`, got `int`"),
        ("[claude]\ncommand = 'claude'", "claude.command: Expected `array`, got `str`"),
        ("[claude]\ncommand = [1]", "claude.command[0]: Expected `str`, got `int`"),
        ("[claude]\nenv = { A = 1 }", "claude.env[...]: Expected `str`, got `int`"),
        ("[tasks]\ntimeout_s = 0", "tasks.timeout_s = 0: must be between 0.01 and 2592000"),
        ("a = = 1", "not valid TOML"),
    ],
)
def test_error_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode(text, "/etc/supd.toml")
    assert str(e.value).startswith("/etc/supd.toml: ")
    assert message in str(e.value)


RANGES = [
    # key, a bad value, the message (written by hand), the edge value that is good
    ("daemon.children", "-1", "daemon.children = -1: must be between 0 and 1024", "0"),
    ("daemon.children", "1025", "daemon.children = 1025: must be between 0 and 1024", "1024"),
    ("daemon.drain_s", "-0.5", "daemon.drain_s = -0.5: must be between 0 and 86400", "0.0"),
    ("daemon.heartbeat_s", "inf", "daemon.heartbeat_s = inf: must be between 0.05 and 60", "60.0"),
    ("daemon.heartbeat_s", "1e-6", "daemon.heartbeat_s = 1e-06: must be between 0.05 and 60", "0.05"),
    ("daemon.heartbeat_s", "nan", "daemon.heartbeat_s = nan: must be between 0.05 and 60", "2.0"),
    ("daemon.liveness", "0", "daemon.liveness = 0: must be between 1 and 100", "1"),
    ("daemon.max_queued", "0", "daemon.max_queued = 0: must be between 1 and 10000000", "1"),
    ("daemon.max_starting", "0", "daemon.max_starting = 0: must be between 1 and 1024", "1"),
    ("daemon.spares", "65", "daemon.spares = 65: must be between 0 and 64", "64"),
    ("daemon.spares", "-1", "daemon.spares = -1: must be between 0 and 64", "0"),
    ("tasks.timeout_s", "0.0", "tasks.timeout_s = 0: must be between 0.01 and 2592000", "0.01"),
    ("tasks.timeout_s", "-1.0", "tasks.timeout_s = -1: must be between 0.01 and 2592000", "2592000"),
    ("tasks.stall_timeout_s", "0.0", "tasks.stall_timeout_s = 0: must be between 0.01 and 2592000", "0.01"),
    ("tasks.result_grace_s", "601", "tasks.result_grace_s = 601: must be between 0 and 600", "600"),
    ("tasks.kill_grace_s", "-1.0", "tasks.kill_grace_s = -1: must be between 0 and 600", "0.0"),
    ("tasks.retries", "-1", "tasks.retries = -1: must be between 0 and 100", "0"),
    ("tasks.retries", "9223372036854775807", "tasks.retries = 9223372036854775807: must be between 0 and 100", "100"),
    ("tasks.retry_base_s", "3601", "tasks.retry_base_s = 3601: must be between 0 and 3600", "0"),
    ("tasks.retry_max_s", "1e9", "tasks.retry_max_s = 1000000000: must be between 0 and 86400", "86400"),
    ("tasks.output_cap_bytes", "0", "tasks.output_cap_bytes = 0: must be between 1 and 1073741824", "1"),
    ("restart.backoff_base_s", "-0.1", "restart.backoff_base_s = -0.1: must be between 0 and 3600", "0"),
    ("restart.backoff_max_s", "1e6", "restart.backoff_max_s = 1000000: must be between 0 and 86400", "86400"),
    ("restart.stable_after_s", "-1", "restart.stable_after_s = -1: must be between 0 and 86400", "0"),
    ("restart.intensity", "0", "restart.intensity = 0: must be between 1 and 10000", "1"),
    ("restart.period_s", "0", "restart.period_s = 0: must be between 0.01 and 86400", "0.01"),
    ("recycle.max_tasks", "-1", "recycle.max_tasks = -1: must be between 0 and 1000000000", "0"),
    ("recycle.max_age_s", "-inf", "recycle.max_age_s = -inf: must be between 0 and 31536000", "0"),
    ("recycle.max_age_jitter_s", "-1", "recycle.max_age_jitter_s = -1: must be between 0 and 31536000", "0"),
    ("recycle.max_rss_mb", "-1", "recycle.max_rss_mb = -1: must be between 0 and 1048576", "0"),
    ("claude.max_retries", "101", "claude.max_retries = 101: must be between 0 and 100", "100"),
    ("breaker.threshold", "0", "breaker.threshold = 0: must be between 1 and 10000", "1"),
    ("breaker.open_s", "0", "breaker.open_s = 0: must be between 0.1 and 86400", "0.1"),
    ("limits.max_message_bytes", "0", "limits.max_message_bytes = 0: must be between 65536 and 1073741824", "65536"),
    ("limits.max_prompt_bytes", "0", "limits.max_prompt_bytes = 0: must be between 1 and 1073741824", "1"),
    ("limits.max_argv_bytes", "0", "limits.max_argv_bytes = 0: must be between 1 and 16777216", "1"),
    ("limits.max_env_bytes", "0", "limits.max_env_bytes = 0: must be between 1 and 16777216", "1"),
    ("limits.max_batch", "0", "limits.max_batch = 0: must be between 1 and 100000", "100000"),
    ("metrics.prometheus_port", "99999", "metrics.prometheus_port = 99999: must be between 0 and 65535", "65535"),
    ("journal.max_mb", "-1", "journal.max_mb = -1: must be between 0 and 1048576", "0"),
    ("journal.retain_s", "-1", "journal.retain_s = -1: must be between 0 and 315360000", "0"),
    ("daemon.log_level", "'loud'", "daemon.log_level = 'loud': must be one of debug, info, warning, error", "'debug'"),
    ("tracing.exporter", "'jaeger'",
     "tracing.exporter = 'jaeger': must be one of none, console, otlp-http, otlp-grpc", "'console'"),
    ("journal.synchronous", "'sometimes'",
     "journal.synchronous = 'sometimes': must be one of off, normal, full, extra", "'FULL'"),
    ("claude.model", "'" + "m" * 257 + "'", "claude.model: a value of 257 characters, at most 256", "'" + "m" * 256 + "'"),
    ("security.pass_env", "[" + "'A'," * 1025 + "]", "security.pass_env: 1025 entries, at most 1024", "['A']"),
    ("metrics.prometheus_host", '"h\\u0000"', "metrics.prometheus_host: contains a NUL character", "'::1'"),
]


def _toml(key: str, value: str) -> str:
    section, name = key.split(".")
    return f"[{section}]\n{name} = {value}\n"


@pytest.mark.parametrize(("key", "bad", "message", "good"), RANGES, ids=[f"{k}={b[:20]}" for k, b, _, _ in RANGES])
def test_range_checks_name_the_key_the_value_and_the_range(key: str, bad: str, message: str, good: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode(_toml(key, bad), "x.toml")
    assert str(e.value) == f"x.toml: {message}"
    decode(_toml(key, good), "x.toml")  # the edge of the range is inside it


def test_every_key_has_a_range() -> None:
    ranged = set(cfg.RANGES) | set(cfg.CHOICES) | set(cfg.TEXT)
    assert set(cfg.keys()) == ranged
    assert "journal.retain_s" in cfg.keys() and Config().journal.retain_s == 7 * 86_400


@pytest.mark.parametrize(("text", "message"), [
    ("[tasks]\nretry_base_s = 10\nretry_max_s = 5", "tasks.retry_max_s = 5: must be >= tasks.retry_base_s = 10"),
    ("[restart]\nbackoff_base_s = 2\nbackoff_max_s = 1",
     "restart.backoff_max_s = 1: must be >= restart.backoff_base_s = 2"),
])
def test_pairs_of_keys_are_ordered(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^x.toml: {re.escape(message)}$"):
        decode(text, "x.toml")


@pytest.mark.parametrize(("change", "required"), [
    ("", []),
    ("[daemon]\nchildren = 9\nheartbeat_s = 1.0", []),
    ("[tasks]\ntimeout_s = 5\n[limits]\nmax_batch = 5\n[journal]\nretain_s = 0", []),
    ("[security]\npass_env = ['A']", []),
    ("[limits]\nmax_message_bytes = 65536", ["limits.max_message_bytes"]),
    ("[daemon]\nlog_level = 'debug'\nruntime_dir = '/run/x'", ["daemon.runtime_dir", "daemon.log_level"]),
    ("[metrics]\nprometheus_port = 9100\n[tracing]\nexporter = 'console'",
     ["tracing.exporter", "metrics.prometheus_port"]),
    ("[journal]\nsynchronous = 'full'\nmax_mb = 5", ["journal.max_mb", "journal.synchronous"]),
    ("[security]\ncontrol_endpoint = 'tcp://127.0.0.1:1'", ["security.control_endpoint"]),
])
def test_restart_required_names_what_a_reload_cannot_apply(change: str, required: list[str]) -> None:
    assert cfg.restart_required(Config(), decode(change)) == required
    assert cfg.restart_required(decode(change), decode(change)) == []


def test_values_are_decoded_into_typed_frozen_structs() -> None:
    config = decode("""
[daemon]
children = 16
runtime_dir = "/run/supd"
[tasks]
timeout_s = 60      # an int where a float is expected is fine
[claude]
command = ["/opt/claude", "--verbose"]
env = { ANTHROPIC_BASE_URL = "http://127.0.0.1:8080" }
model = "claude-sonnet-4-5"
""")
    assert config.daemon.children == 16 and config.daemon.runtime_dir == "/run/supd"
    assert config.tasks.timeout_s == 60.0 and isinstance(config.tasks.timeout_s, float)
    assert config.claude.command == ["/opt/claude", "--verbose"]
    assert config.claude.env == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8080"}
    assert config.claude.model == "claude-sonnet-4-5"
    assert config.restart == Config().restart  # untouched sections keep their defaults
    with pytest.raises(AttributeError):
        config.daemon.children = 1  # type: ignore[misc]


def test_load_reads_the_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "supd.toml"
    path.write_text("[daemon]\nchildren = 2\n")
    assert load(path).daemon.children == 2
    path.write_text("[daemon]\nchilden = 2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: daemon.childen: unknown key$"):
        load(path)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = rf"^{re.escape(str(path))}: cannot read: No such file or directory$"
    with pytest.raises(ConfigError, match=message):
        load(path)


# ---- submit checks ------------------------------------------------------------------------

LIMITS = LimitsConfig(max_prompt_bytes=10, max_argv_bytes=16, max_env_bytes=16, max_batch=3)


def claude(**kw: object) -> TaskSpec:
    return TaskSpec(**{"kind": "claude", "prompt": "hi", **kw})  # type: ignore[arg-type]


def exec_(**kw: object) -> TaskSpec:
    return TaskSpec(**{"kind": "exec", "argv": ["true"], **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (claude(), None),
        (exec_(), None),
        (claude(prompt="x" * 10), None),  # at the limit
        (claude(prompt=None), "claude task: prompt is missing or empty"),
        (claude(prompt=""), "claude task: prompt is missing or empty"),
        (claude(prompt=" \n\t"), "claude task: prompt is missing or empty"),
        (claude(prompt="x" * 11), "prompt: 11 bytes exceeds limits.max_prompt_bytes=10"),
        (claude(prompt="é" * 6), "prompt: 12 bytes exceeds limits.max_prompt_bytes=10"),  # bytes, not chars
        (claude(argv=["ls"]), "claude task: argv is only for exec tasks"),
        (exec_(argv=None), "exec task: argv is missing or empty"),
        (exec_(argv=[]), "exec task: argv is missing or empty"),
        (exec_(argv=[""]), "exec task: argv is missing or empty"),
        (exec_(argv=["echo", "x" * 10]), None),  # 5 + 11 = 16 bytes with NULs: at the limit
        (exec_(argv=["echo", "x" * 11]), "argv: 17 bytes exceeds limits.max_argv_bytes=16"),
        (exec_(argv=["echo", "a\0b"]), "argv: contains a NUL byte"),
        (claude(timeout_s=0.0), "timeout_s: must be > 0 and <= 2592000, got 0.0"),
        (exec_(timeout_s=-1.0), "timeout_s: must be > 0 and <= 2592000, got -1.0"),
        (exec_(timeout_s=float("nan")), "timeout_s: must be > 0 and <= 2592000, got nan"),
        (claude(stall_timeout_s=0.0), "stall_timeout_s: must be > 0 and <= 2592000, got 0.0"),
        (claude(max_budget_usd=0.0), "max_budget_usd: must be > 0 and <= 1000000, got 0.0"),
        (claude(timeout_s=0.5, stall_timeout_s=0.1, max_budget_usd=0.01), None),
        (claude(retries=-1), "retries: must be between 0 and 100, got -1"),
        (claude(retries=0), None),
        (claude(max_turns=0), "max_turns: must be between 1 and 10000, got 0"),
        (claude(max_turns=1), None),
        (claude(retries=2**63), "retries: must be between 0 and 100, got 9223372036854775808"),
        (claude(retries=100), None),
        (claude(priority=2**63), "priority: must be between -2147483648 and 2147483647, got 9223372036854775808"),
        (claude(priority=-(2**31)), None),
        (claude(priority=2**31), "priority: must be between -2147483648 and 2147483647, got 2147483648"),
        (claude(timeout_s=float("inf")), "timeout_s: must be > 0 and <= 2592000, got inf"),
        (claude(timeout_s=30 * 86400.0), None),
        (claude(max_turns=10_001), "max_turns: must be between 1 and 10000, got 10001"),
        (claude(max_budget_usd=1e300), "max_budget_usd: must be > 0 and <= 1000000, got 1e+300"),
        (exec_(cwd="/" + "d" * 4096), "cwd: must be a path of at most 4096 bytes without NUL"),
        (exec_(cwd="/tmp\0x"), "cwd: must be a path of at most 4096 bytes without NUL"),
        (claude(model="m" * 257), "model: longer than 256 characters"),
        (claude(allowed_tools=["Bash"] * 1025), "allowed_tools: at most 1024 names of at most 256 characters"),
        (claude(append_system_prompt="x" * 11), "append_system_prompt: exceeds limits.max_prompt_bytes=10"),
        (claude(permission_mode="yolo"), "permission_mode: unknown mode 'yolo'"),
        (claude(permission_mode="acceptEdits"), None),
        (claude(permission_mode="bypassPermissions"), None),
        (exec_(env={"A": "x" * 12}), None),  # 1 + 12 + 2 = 15
        (exec_(env={"A": "x" * 14}), "env: 17 bytes exceeds limits.max_env_bytes=16"),
        (exec_(env={"": "x"}), "env: names must be non-empty without '=' or NUL"),
        (exec_(env={"A=B": "x"}), "env: names must be non-empty without '=' or NUL"),
        (exec_(env={"A": "x\0"}), "env: names must be non-empty without '=' or NUL"),
        (exec_(input="x" * 10), None),
        (exec_(input="x" * 11), "input: exceeds limits.max_prompt_bytes=10"),
    ],
)
def test_task_problem_table(spec: TaskSpec, problem: str | None) -> None:
    assert task_problem(spec, LIMITS) == problem


def test_task_problem_reports_the_first_problem_only() -> None:
    spec = claude(prompt="", timeout_s=-1.0, retries=-1)
    assert task_problem(spec, LIMITS) == "claude task: prompt is missing or empty"


@pytest.mark.parametrize(
    ("specs", "problem"),
    [
        ([], "submit: no tasks"),
        ([claude()], None),
        ([claude(), exec_(), claude()], None),
        ([claude()] * 4, "submit: 4 tasks exceeds limits.max_batch=3"),
        ([claude(prompt="")], "claude task: prompt is missing or empty"),  # one task: no prefix
        ([claude(), exec_(argv=[])], "task 2: exec task: argv is missing or empty"),
        ([claude(retries=-2), exec_(argv=[])], "task 1: retries: must be between 0 and 100, got -2"),
    ],
)
def test_batch_problem_table(specs: list[TaskSpec], problem: str | None) -> None:
    assert batch_problem(specs, LIMITS) == problem


def test_default_limits_accept_a_large_but_sane_task() -> None:
    limits = Config().limits
    assert task_problem(claude(prompt="x" * (1 << 20)), limits) is None
    assert task_problem(claude(prompt="x" * ((1 << 20) + 1)), limits) is not None


@pytest.mark.parametrize(("toml", "message"), [
    ("[keys]\ndeploy = 0\n", "x.toml: keys.deploy = 0: must be between 1 and 10000"),
    ("[keys]\ndeploy = 10001\n", "x.toml: keys.deploy = 10001: must be between 1 and 10000"),
    ('[keys]\n"a b" = 1\n', "x.toml: keys.a b: a key name is 1-128 letters, digits or _.:/@+-"),
    ('[keys]\ndeploy = "one"\n', "x.toml: keys[...]: Expected `int`, got `str`"),
    ('[hooks]\non_batch_done = [""]\n', "x.toml: hooks.on_batch_done: the command (its first item) is empty"),
    ('[gate]\nretry_after = "headers"\n', "x.toml: gate.retry_after = 'headers': must be one of log, off"),
])
def test_keys_hooks_and_gate_refuse_bad_values_naming_them(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode(toml, "x.toml")
    assert str(e.value) == message


def test_keys_take_a_limit_per_name() -> None:
    assert decode("[keys]\ndeploy = 1\ngpu = 2\n").keys == {"deploy": 1, "gpu": 2}
