"""Prometheus metrics. One registry per app, so several apps in one process never clash.

With several workers, counters are per worker process (a scrape sees the worker that
answered it); the instances-by-status gauge is read from the database at every scrape
and is the same whichever worker answers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from comfyhub.models import ServiceStatus


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.instances = Gauge("comfyhub_instances", "Instances by status", ["status"], registry=self.registry)
        self.start_seconds = Histogram(
            "comfyhub_start_duration_seconds",
            "From spawn to first healthy answer",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 240),
            registry=self.registry,
        )
        self.start_failures = Counter(
            "comfyhub_start_failures_total",
            "Starts that ended failed, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.health_failures = Counter(
            "comfyhub_health_check_failures_total",
            "Heartbeat checks that found an instance unhealthy",
            registry=self.registry,
        )
        self.proxy_bytes = Counter(
            "comfyhub_proxy_bytes_total", "Body bytes relayed by the proxy", ["direction"], registry=self.registry
        )
        self.proxy_relays = Gauge(
            "comfyhub_proxy_relays_active",
            "Large downloads being relayed by a thread, off the event loop",
            registry=self.registry,
        )
        self.proxy_relays_total = Counter(
            "comfyhub_proxy_relays_total",
            "Large downloads relayed by a thread, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.websockets = Gauge("comfyhub_proxy_websockets_open", "Open proxied WebSockets", registry=self.registry)
        self.culls = Counter("comfyhub_culls_total", "Instances stopped for being idle", registry=self.registry)
        self.restarts = Counter("comfyhub_auto_restarts_total", "Automatic restarts attempted", registry=self.registry)

    def set_instances(self, counts: dict[str, int]) -> None:
        for status in ServiceStatus:
            self.instances.labels(status).set(counts.get(status, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
