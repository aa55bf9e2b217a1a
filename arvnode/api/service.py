"""The controller's HTTP tree: the Arvados REST API of this node.

For now this answers every API path with an Arvados-shaped 404; the
resources (discovery, users, collections, ...) hang under ``ApiRoot``.
"""
from __future__ import annotations

import random
from typing import Any, Awaitable, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from arvnode.http.resource import AsyncResource, HTTPError, Limits
from arvnode.http.site import NodeSite
from arvnode.web.metrics import NodeMetrics


class ApiRoot(AsyncResource):
    async def handle(self, request: Request) -> Any:
        raise HTTPError(404, f"Path not found: {request.path.decode('utf-8', 'replace')}")


def build_controller_site(
    *,
    clock: IReactorTime,
    rng: random.Random,
    metrics: NodeMetrics,
    management_token: str,
    health_checks: Mapping[str, Callable[[], Awaitable[None]]],
    max_concurrent: int,
    max_queued: int,
    request_timeout: float,
    idle_timeout: float = 300.0,
) -> NodeSite:
    limits = Limits(clock, max_concurrent=max_concurrent, max_queued=max_queued, timeout=request_timeout)
    root = ApiRoot(clock=clock, rng=rng, limits=limits)
    return NodeSite(
        root, service="controller", clock=clock, rng=rng, metrics=metrics,
        management_token=management_token, health_checks=health_checks, idle_timeout=idle_timeout,
    )
