"""Who may see and change what: the permission levels of one caller.

The store computes, for a user, the level (1 read, 2 write, 3 manage) of
every uuid the user reaches through ownership and permission links
(contract: ``permission_levels``). An object is readable when its uuid or
its owner is reached at level >= 1, writable at >= 2; admins reach
everything. Objects a caller cannot read are reported as *not found*
(404), never as forbidden, so a uuid's existence does not leak.

Levels are cached per user for a short time (the token cache's TTL) and
dropped at once by any permission-relevant write made through this node
(links, groups, users), so a grant or a revocation here is seen by the
next request; other nodes sharing the database see it within the TTL.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from twisted.internet.interfaces import IReactorTime

from arvnode import ids
from arvnode.auth.identity import Identity
from arvnode.store.errors import NotFound

READ, WRITE, MANAGE = 1, 2, 3
LEVEL_BY_NAME = {"can_read": READ, "can_write": WRITE, "can_manage": MANAGE}


class LevelsCache:
    """user uuid → (levels, fetched_at), bounded and short-lived."""

    def __init__(self, clock: IReactorTime, ttl: float, size: int = 2000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._entries: dict[str, tuple[dict[str, int], float]] = {}
        self._generation = 0

    def get(self, user_uuid: str) -> dict[str, int] | None:
        entry = self._entries.get(user_uuid)
        if entry is None:
            return None
        if self._clock.seconds() - entry[1] >= self._ttl:
            del self._entries[user_uuid]
            return None
        return entry[0]

    @property
    def generation(self) -> int:
        return self._generation

    def put(self, user_uuid: str, levels: dict[str, int], generation: int) -> None:
        if generation != self._generation or self._ttl <= 0:
            return  # computed across an invalidation: may be stale
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[user_uuid] = (levels, self._clock.seconds())

    def invalidate(self) -> None:
        """Forget everything (a link, group or user changed)."""
        self._generation += 1
        self._entries.clear()


def seed_principals(identity: Identity, cluster_id: str) -> dict[str, int]:
    """Groups every caller of this kind reaches without a link.

    Active users: "All users" and the anonymous group (Arvados gives All
    users read access to what is shared with anonymous); the anonymous
    token: the anonymous group; inactive users: nothing but themselves.
    """
    anonymous_group = ids.anonymous_group_uuid(cluster_id)
    if identity.is_anonymous:
        return {anonymous_group: READ}
    if not identity.is_active:
        return {}
    return {ids.all_users_group_uuid(cluster_id): READ, anonymous_group: READ}


class Access:
    """The permissions of one request's caller (levels fetched lazily, once)."""

    def __init__(self, store: Any, identity: Identity | None, cluster_id: str,
                 cache: LevelsCache) -> None:
        self._store = store
        self.identity = identity
        self._cluster_id = cluster_id
        self._cache = cache
        self._levels: dict[str, int] | None = None

    @property
    def is_admin(self) -> bool:
        return bool(self.identity and self.identity.is_admin and self.identity.is_active)

    @property
    def user_uuid(self) -> str | None:
        return self.identity.user_uuid if self.identity else None

    async def levels(self) -> dict[str, int]:
        if self._levels is not None:
            return self._levels
        if self.identity is None:
            self._levels = {}
            return self._levels
        uuid = self.identity.user_uuid
        cached = self._cache.get(uuid)
        if cached is None or not self.identity.is_active:
            generation = self._cache.generation
            also = seed_principals(self.identity, self._cluster_id)
            cached = dict(await self._store.permission_levels(uuid, also=also))
            if self.identity.is_active:
                self._cache.put(uuid, cached, generation)
        self._levels = cached
        return cached

    async def readable(self) -> frozenset[str] | None:
        """The set to pass as ``readable`` to list queries; None for admins."""
        if self.is_admin:
            return None
        levels = await self.levels()
        return frozenset(k for k, v in levels.items() if v >= READ)

    async def level_of(self, uuids: Iterable[str | None]) -> int:
        """The caller's highest level on any of ``uuids`` (admins: manage)."""
        if self.is_admin:
            return MANAGE
        levels = await self.levels()
        return max((levels.get(u, 0) for u in uuids if u), default=0)

    async def record_level(self, record: Mapping[str, Any], resource: str) -> int:
        """The caller's level on a record: on its uuid or its owner.

        Links are also visible (read only) to their tail, so a grantee sees
        its grants without being able to upgrade them; whoever manages a
        permission link's head manages the link.
        """
        level = await self.level_of([record.get("uuid"), record.get("owner_uuid")])
        if resource == "links" and level < MANAGE:
            if record.get("link_class") == "permission" and \
                    await self.level_of([record.get("head_uuid")]) >= MANAGE:
                return MANAGE
            if level < READ and await self.level_of([record.get("tail_uuid")]) >= READ:
                return READ
        return level

    async def require(self, record: Mapping[str, Any], resource: str, level: int) -> None:
        """NotFound unless readable; PermissionDenied unless at ``level``."""
        have = await self.record_level(record, resource)
        if have < READ:
            raise NotFound(f"{resource} {record.get('uuid')} not found")
        if have < level:
            verb = {WRITE: "modify", MANAGE: "manage"}.get(level, "read")
            raise PermissionDenied(
                f"permission denied: {self.user_uuid} cannot {verb} {record.get('uuid')}")


class PermissionDenied(Exception):
    """The caller can see the object but not do this to it (403)."""
