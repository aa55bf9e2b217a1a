"""``/arvados/v1/keep_services``: where clients send blocks.

``accessible`` answers this node's own keepproxy as one ``proxy`` service
(spec client-surface 5.4): its host, integer port and TLS flag come from
the keepproxy's advertised URL, and its uuid is derived from that URL so
it is stable across restarts and the same on every node that advertises
the same proxy. Records in the table are what an operator registered
(``arv keep_service create``, admins only); every caller may read them,
as in Arvados, and the node's own entry can be fetched by its uuid.
"""
from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from arvnode import ids
from arvnode.api.render import render_list
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.store.kinds import to_api_time

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def own_proxy_record(cluster_id: str, url: str) -> dict[str, Any]:
    """The keep_services record for the keepproxy reachable at ``url``."""
    parts = urlsplit(url)
    ssl = parts.scheme == "https"
    port = parts.port or (443 if ssl else 80)
    n = int.from_bytes(hashlib.md5(f"{parts.hostname}:{port}".encode()).digest(), "big")
    tail = ""
    for _ in range(15):
        n, r = divmod(n, 36)
        tail += _BASE36[r]
    epoch = to_api_time(0.0)
    return {
        "uuid": f"{cluster_id}-{ids.INFIX['keep_services']}-{tail}",
        "owner_uuid": ids.system_user_uuid(cluster_id),
        "created_at": epoch,
        "modified_at": epoch,
        "modified_by_user_uuid": ids.system_user_uuid(cluster_id),
        "service_host": parts.hostname or "",
        "service_port": int(port),
        "service_ssl_flag": ssl,
        "service_type": "proxy",
        "read_only": False,
    }


class KeepServices(ObjectResource):
    resource = "keep_services"
    singular = "keep_service"
    collection_actions = {"accessible": ("GET",)}
    public_actions = frozenset({"accessible"})
    public_read = True

    def _own(self) -> dict[str, Any]:
        return own_proxy_record(self.deps.cluster_id, self.deps.keepproxy_url())

    async def accessible(self, ctx: Ctx) -> dict[str, Any]:
        own = self._own()
        return render_list(self.kind.kind, [self.present(ctx, own)], 1, offset=0, limit=1)

    async def get(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        own = self._own()
        if uuid == own["uuid"]:
            return self.present(ctx, own)
        return await super().get(ctx, uuid)

    async def create(self, ctx: Ctx) -> dict[str, Any]:
        self.require_admin(ctx, "register keep services")
        return await super().create(ctx)

    async def update(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        self.require_admin(ctx, "change keep services")
        return await super().update(ctx, uuid)

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        self.require_admin(ctx, "delete keep services")
        return await super().delete(ctx, uuid)
