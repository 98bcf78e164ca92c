"""Prometheus exposition of the daemon's numbers (`[metrics] prometheus_port` > 0).

Owns the HTTP server thread (prometheus_client's) and a Collector that renders the
latest snapshot the hub built on its own loop (once per heartbeat). The scrape thread
never touches the hub's live structures, and the hub never waits for a scrape.
Must not import other spokes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisord.config import MetricsConfig
from supervisord.core.metrics import BUCKETS_S
from supervisord.logs import log

BREAKER_STATES = ("closed", "open", "half_open")

#: What the hub hands over, built on its own loop once per heartbeat (plain data: this
#: thread never reads the hub's live structures): see `supervisord.hub.daemon.prom_snapshot`.
Snapshot = dict[str, Any]


class DaemonCollector(Collector):
    def __init__(self, latest: Callable[[], Snapshot]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        s = self.latest()
        received = CounterMetricFamily("supd_tasks_received", "Tasks accepted, by kind", labels=["kind"])
        for kind, n in s["received"].items():
            received.add_metric([kind], n)
        finished = CounterMetricFamily("supd_tasks_finished", "Tasks in a final state, by kind and state",
                                       labels=["kind", "state"])
        for (kind, state), n in s["finished"].items():
            finished.add_metric([kind, state], n)
        errors = CounterMetricFamily("supd_task_errors", "Failed tasks by kind and error class",
                                     labels=["kind", "error"])
        for (kind, error), n in s["errors"].items():
            errors.add_metric([kind, error], n)
        tokens = CounterMetricFamily("supd_claude_tokens", "Claude tokens used", labels=["direction"])
        tokens.add_metric(["input"], s["input_tokens"])
        tokens.add_metric(["output"], s["output_tokens"])
        yield from (received, finished, errors, tokens)
        for name, doc in (("retries", "Attempts that were retried"), ("child_restarts", "Unplanned child restarts"),
                          ("child_fatal", "Children given up on"),
                          ("journal_write_errors", "Store writes that failed (and were kept to retry)"),
                          ("dropped_child_frames", "Frames from children that could not be decoded"),
                          ("bad_requests", "Control requests refused as malformed")):
            yield CounterMetricFamily(f"supd_{name}", doc, value=s[name])
        yield CounterMetricFamily("supd_claude_cost_usd", "Claude cost reported by the CLI, USD", value=s["cost_usd"])
        cumulative, buckets = 0, []
        for bound, n in zip(BUCKETS_S, s["duration_counts"]):
            cumulative += n
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
        yield HistogramMetricFamily("supd_task_duration_seconds", "Run time of finished tasks",
                                    buckets=buckets, sum_value=s["duration_sum_s"])
        yield GaugeMetricFamily("supd_queue_depth", "Tasks waiting to run", value=s["queued"])
        yield GaugeMetricFamily("supd_active_tasks", "Tasks running now", value=s["running"])
        yield GaugeMetricFamily("supd_children_ready", "Children able to take work", value=s["ready"])
        yield GaugeMetricFamily("supd_children_total", "Configured pool size", value=s["pool_size"])
        yield GaugeMetricFamily("supd_spares_ready", "Spare children booted and ready to take over a slot",
                                value=s["spares_ready"])
        breaker = GaugeMetricFamily("supd_breaker_state", "Claude circuit breaker (1 = current state)",
                                    labels=["state"])
        for state in sorted({*BREAKER_STATES, s["breaker"]}):
            breaker.add_metric([state], 1 if state == s["breaker"] else 0)
        yield breaker
        if fleet := s.get("fleet"):  # a fleet: its totals beside this host's own numbers
            tasks = GaugeMetricFamily("supd_fleet_tasks", "Tasks of the whole fleet, by state", labels=["state"])
            for state, n in sorted(fleet["tasks"].items()):
                tasks.add_metric([state], n)
            yield tasks
            yield GaugeMetricFamily("supd_fleet_hosts", "Hosts of the fleet that beat in the last minute",
                                    value=fleet["hosts"])
            yield GaugeMetricFamily("supd_fleet_journal_up", "1 while this host reaches the shared journal",
                                    value=1 if fleet["journal"] == "ok" else 0)


class PromServer:
    """The scrape endpoint: `start()` binds host:port in a daemon thread, `stop()` closes it."""

    def __init__(self, latest: Callable[[], Snapshot], host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(latest))
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start(cfg: MetricsConfig, latest: Callable[[], Snapshot]) -> PromServer | None:
    """Serve `/metrics` when `[metrics] prometheus_port` > 0; None otherwise."""
    if cfg.prometheus_port <= 0:
        return None
    server = PromServer(latest, cfg.prometheus_host, cfg.prometheus_port)
    try:
        server.start()
    except OSError as e:  # a taken port costs the metrics endpoint, not the supervisor
        log("prometheus_failed", 40, host=cfg.prometheus_host, port=cfg.prometheus_port, error=e.strerror)
        return None
    log("prometheus_listening", host=cfg.prometheus_host, port=server.port)
    return server
