"""Prometheus metrics for one node.

Every node owns its own :class:`prometheus_client.CollectorRegistry` (never
the library's global default one) so that several nodes in one test process
do not share counters.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import arvnode


class NodeMetrics:
    """The node's metric families; services update them, ``/metrics`` renders them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.version = Gauge(
            "arvnode_version_running", "Version of arvnode running.", ["version"], registry=r
        )
        self.version.labels(version=arvnode.__version__).set(1)
        self.requests = Counter(
            "arvnode_requests",
            "HTTP requests answered, by service, method and status.",
            ["service", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "arvnode_request_duration_seconds",
            "Time from request received to response finished.",
            ["service", "method", "code"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
        )
        self.inflight = Gauge(
            "arvnode_inflight_requests", "Requests being served now.", ["service"], registry=r
        )
        self.bytes = Counter(
            "arvnode_keep_bytes",
            "Block bytes moved by the keepproxy.",
            ["direction"],
            registry=r,
        )
        self.corrupt_blocks = Counter(
            "arvnode_keep_corrupt_replicas",
            "Stored replicas found not to match their hash.",
            ["volume"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
