"""Prometheus exposition of the daemon's numbers (`[metrics] prometheus_port` > 0).

Owns the HTTP server thread (prometheus_client's) and a Collector that reads the
hub's `Metrics`, queue, pool and breaker at scrape time. The hub never waits for it:
a scrape reads plain Python objects under the GIL, and a read that races a change of
a counter dict is simply retried. Must not import other spokes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisord.core.metrics import BUCKETS_S
from supervisord.logs import log

if TYPE_CHECKING:
    from supervisord.hub.daemon import Daemon

BREAKER_STATES = ("closed", "open", "half_open")


class DaemonCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        for _ in range(5):
            try:
                metrics = self._read()
                break
            except RuntimeError:  # "dictionary changed size during iteration": the hub moved; read again
                continue
        else:
            return
        yield from metrics

    def _read(self) -> list[Metric]:
        d, m = self.d, self.d.metrics
        out: list[Metric] = []
        received = CounterMetricFamily("supd_tasks_received", "Tasks accepted, by kind", labels=["kind"])
        for kind, n in list(m.received.items()):
            received.add_metric([kind], n)
        finished = CounterMetricFamily("supd_tasks_finished", "Tasks in a final state, by kind and state",
                                       labels=["kind", "state"])
        for (kind, state), n in list(m.finished.items()):
            finished.add_metric([kind, state], n)
        errors = CounterMetricFamily("supd_task_errors", "Failed tasks by kind and error class",
                                     labels=["kind", "error"])
        for (kind, error), n in list(m.errors.items()):
            errors.add_metric([kind, error], n)
        tokens = CounterMetricFamily("supd_claude_tokens", "Claude tokens used", labels=["direction"])
        tokens.add_metric(["input"], m.input_tokens)
        tokens.add_metric(["output"], m.output_tokens)
        out += [received, finished, errors, tokens,
                CounterMetricFamily("supd_task_retries", "Attempts that were retried", value=m.retries),
                CounterMetricFamily("supd_child_restarts", "Unplanned child restarts", value=m.child_restarts),
                CounterMetricFamily("supd_child_fatal", "Children given up on", value=m.child_fatal),
                CounterMetricFamily("supd_claude_cost_usd", "Claude cost reported by the CLI, USD",
                                    value=m.cost_usd)]
        h = m.duration
        cumulative, buckets = 0, []
        for bound, n in zip(BUCKETS_S, list(h.counts)):
            cumulative += n
            buckets.append(("+Inf" if math.isinf(bound) else repr(bound), cumulative))
        out.append(HistogramMetricFamily("supd_task_duration_seconds", "Run time of finished tasks",
                                         buckets=buckets, sum_value=h.sum_s))
        counts = d.pool.counts()
        ready = counts.get("idle", 0) + counts.get("busy", 0)
        out += [
            GaugeMetricFamily("supd_queue_depth", "Tasks waiting to run", value=d.sched.queued),
            GaugeMetricFamily("supd_active_tasks", "Tasks running now", value=len(d.sched.running())),
            GaugeMetricFamily("supd_children_ready", "Children able to take work", value=ready),
            GaugeMetricFamily("supd_children_total", "Configured pool size", value=d.pool.size),
        ]
        breaker = GaugeMetricFamily("supd_breaker_state", "Claude circuit breaker (1 = current state)",
                                    labels=["state"])
        current = d.breaker.state.value
        for state in sorted({*BREAKER_STATES, current}):
            breaker.add_metric([state], 1 if state == current else 0)
        out.append(breaker)
        return out


class PromServer:
    """The scrape endpoint: `start()` binds host:port in a daemon thread, `stop()` closes it."""

    def __init__(self, daemon: Daemon, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(daemon))
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


def start(daemon: Daemon) -> PromServer | None:
    """Serve `/metrics` when `[metrics] prometheus_port` > 0; None otherwise."""
    cfg = daemon.config.metrics
    if cfg.prometheus_port <= 0:
        return None
    server = PromServer(daemon, cfg.prometheus_host, cfg.prometheus_port)
    try:
        server.start()
    except OSError as e:  # a taken port costs the metrics endpoint, not the supervisor
        log("prometheus_failed", 40, host=cfg.prometheus_host, port=cfg.prometheus_port, error=e.strerror)
        return None
    log("prometheus_listening", host=cfg.prometheus_host, port=server.port)
    return server
