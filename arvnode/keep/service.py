"""Build the keepproxy's Site: one function the node wiring calls.

Why a separate module: the wiring (``arvnode/node.py``) should only pass
collaborators in; what the keepproxy is made of (the streaming site, the
proxy logic, the resource) stays behind this one call, so tests build exactly
what production runs.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.python.threadpool import ThreadPool

from arvnode.keep.handler import HandlerSite
from arvnode.keep.proxy import Authenticate, KeepPermission, KeepProxy
from arvnode.keep.volume import IVolume
from arvnode.web.metrics import NodeMetrics

__all__ = ["KeepproxySite", "build_keepproxy_site"]


class KeepproxySite(HandlerSite):
    """The keepproxy's site (errors carry CORS and ``Via``)."""

    proxy: KeepProxy


async def _ping() -> None:
    """``/_health/ping``: the keepproxy answers, so it is alive."""


def build_keepproxy_site(
    *,
    reactor: IReactorFromThreads,
    clock: IReactorTime,
    rng: random.Random,
    authenticate: Authenticate,
    volumes: Sequence[IVolume],
    signing_key: str,
    signing_ttl: float,
    blob_signing: bool = True,
    default_replication: int,
    permission: KeepPermission,
    system_root_token: str,
    management_token: str,
    metrics: NodeMetrics,
    hash_pool: ThreadPool,
    upload_window: int,
    max_inflight_bytes: int,
    idle_timeout: float,
    health_checks: dict[str, Any] | None = None,
    default_classes: Sequence[str] = (),
) -> KeepproxySite:
    """The keepproxy as a :class:`~arvnode.http.site.NodeSite` (``service="keepproxy"``).

    ``reactor`` runs thread-pool callbacks (``callFromThread``); ``clock``
    drives every timeout (idle clients, stalled readers) and signature
    expiry. ``authenticate(token)`` gives an :class:`~arvnode.auth.identity.Identity`
    or None, and may raise (answered 503). ``hash_pool`` is started and
    stopped by the caller. ``upload_window`` bounds the body bytes one upload
    holds (two batches of half of it); ``max_inflight_bytes`` caps the declared
    bytes of all uploads at once (503 + ``Retry-After`` beyond it);
    ``idle_timeout`` drops a client that sends nothing (before or inside a
    body) or reads nothing for that long. ``health_checks`` defaults to
    ``{"ping": <always healthy>}``.
    """
    proxy = KeepProxy(
        reactor=reactor,
        clock=clock,
        authenticate=authenticate,
        volumes=volumes,
        signing_key=signing_key,
        signing_ttl=signing_ttl,
        blob_signing=blob_signing,
        default_replication=default_replication,
        permission=permission,
        system_root_token=system_root_token,
        metrics=metrics,
        hash_pool=hash_pool,
        upload_window=upload_window,
        max_inflight_bytes=max_inflight_bytes,
        idle_timeout=idle_timeout,
        default_classes=default_classes,
    )
    checks = dict(health_checks) if health_checks else {"ping": _ping}
    site = KeepproxySite(
        proxy.resource,
        header_hook=proxy.header_hook,
        service="keepproxy",
        clock=clock,
        rng=rng,
        metrics=metrics,
        management_token=management_token,
        health_checks=checks,
        idle_timeout=idle_timeout,
    )
    site.handler = site.proxy = proxy
    return site
