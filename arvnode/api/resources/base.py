"""The generic Arvados object resource: list, get, create, update, delete.

Each resource module subclasses :class:`ObjectResource` and overrides the
hooks it needs (``prepare_create``, ``prepare_update``, ``output``,
``after_write``); permission checks, ``select``, uuid checks and the
rendering are the same for every kind, written once here.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, ClassVar, Mapping

import attrs
from attrs import define
from twisted.internet.interfaces import IReactorTime

from arvnode import ids
from arvnode.api import params as P
from arvnode.api.permissions import READ, WRITE, Access, LevelsCache, PermissionDenied
from arvnode.api.render import render, render_list
from arvnode.auth.identity import Identity
from arvnode.http.resource import HTTPError
from arvnode.store.errors import NotFound
from arvnode.store.kinds import KINDS, Kind
from arvnode.store.query import parse_list_query

# Keys clients round-trip from records they read; never attributes to write.
_IGNORED_ATTRS = frozenset({"kind", "etag", "href", "self_link"})

Operation = Callable[..., Awaitable[Any]]


@define
class Deps:
    """What every resource needs, built once per node by the service."""

    store: Any
    authenticator: Any
    config: Any
    clock: IReactorTime
    levels: LevelsCache
    keepproxy_url: Callable[[], str]
    controller_url: Callable[[], str]
    # resource name -> ObjectResource, filled by the service (groups/contents renders other kinds).
    resources: dict[str, Any] = attrs.Factory(dict)

    @property
    def cluster_id(self) -> str:
        return str(self.config.cluster_id)

    @property
    def signing_key(self) -> str:
        return str(self.config.collections.blob_signing_key)

    @property
    def signing_ttl(self) -> float:
        return float(self.config.collections.blob_signing_ttl)

    @property
    def blob_signing(self) -> bool:
        return bool(self.config.collections.blob_signing)


@define
class Ctx:
    """One API call: who, with which parameters."""

    request: Any
    identity: Identity | None
    params: dict[str, Any]
    body: dict[str, Any] | None
    access: Access
    deps: Deps

    @property
    def now(self) -> float:
        return float(self.deps.clock.seconds())

    @property
    def user_uuid(self) -> str | None:
        return self.identity.user_uuid if self.identity else None

    @property
    def token(self) -> str:
        return self.identity.token if self.identity else ""

    def attributes(self, singular: str) -> dict[str, Any]:
        values = P.attributes(self.params, self.body, singular)
        return {k: v for k, v in values.items() if k not in _IGNORED_ATTRS}

    def flag(self, name: str, default: bool = False) -> bool:
        return P.boolean(self.params, name, default)


class ObjectResource:
    """CRUD over one store kind with Arvados permission semantics."""

    resource: ClassVar[str]
    singular: ClassVar[str]
    # HTTP-level operations this resource supports (router consults this).
    operations: ClassVar[frozenset[str]] = frozenset({"list", "get", "create", "update", "delete"})
    # name -> allowed HTTP methods; /<res>/<name> and /<res>/<uuid>/<name>
    collection_actions: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    member_actions: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Routes that work without a token (keep_services/accessible).
    public_actions: ClassVar[frozenset[str]] = frozenset()
    # Extra uuid infixes accepted in /<res>/<uuid> (groups/contents of a user).
    extra_member_infixes: ClassVar[frozenset[str]] = frozenset()
    # Every caller may read every record (keep_services, as in Arvados).
    public_read: ClassVar[bool] = False
    # Names become directory names (arv-mount, WebDAV, S3): no "/", ".", "..".
    filesystem_names: ClassVar[bool] = False

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @property
    def kind(self) -> Kind:
        return KINDS[self.resource]

    @property
    def store(self) -> Any:
        return self.deps.store

    # -- helpers ------------------------------------------------------------

    def check_uuid(self, text: str, action: str | None = None) -> str:
        """422 unless ``text`` is a uuid of this resource's type."""
        if not ids.UUID_RE.match(text):
            raise HTTPError(422, f"{text!r} is not a valid {self.singular} UUID "
                                 f"(expected <cluster>-{self.kind.infix}-<15 characters>)")
        infix = text[6:11]
        if infix != self.kind.infix and not (action and infix in self.extra_member_infixes):
            other = ids.RESOURCE_BY_INFIX.get(infix, "unknown type")
            raise HTTPError(422, f"{text} is not a {self.singular} UUID: its type infix "
                                 f"{infix!r} is for {other}, {self.resource} use {self.kind.infix!r}")
        return text

    def present(self, ctx: Ctx, record: dict[str, Any],
                select: list[str] | None = None) -> dict[str, Any]:
        return render(self.kind.kind, self.resource, self.output(ctx, record), select)

    def output(self, ctx: Ctx, record: dict[str, Any]) -> dict[str, Any]:
        """Hook: adjust a record before rendering (collections sign manifests)."""
        return record

    async def readable(self, ctx: Ctx) -> frozenset[str] | None:
        return None if self.public_read else await ctx.access.readable()

    async def fetch(self, ctx: Ctx, uuid: str, level: int = READ,
                    include_trash: bool = False) -> dict[str, Any]:
        """The record if the caller may act on it at ``level``; 404 if unreadable."""
        record = await self.store.get_object(self.kind, uuid)
        if record.get("is_trashed") and not include_trash:
            raise NotFound(f"{self.singular} {uuid} is in the trash (pass include_trash=true)")
        if not (self.public_read and level == READ):
            await ctx.access.require(record, self.resource, level)
        return record

    def require_admin(self, ctx: Ctx, what: str) -> None:
        if not ctx.access.is_admin:
            raise PermissionDenied(f"permission denied: only admins can {what}")

    async def check_owner(self, ctx: Ctx, owner_uuid: Any) -> None:
        """The caller must be able to write into ``owner_uuid``."""
        if not isinstance(owner_uuid, str) or not ids.UUID_RE.match(owner_uuid):
            raise HTTPError(422, f"owner_uuid {owner_uuid!r} is not a valid UUID")
        if ctx.access.is_admin:
            return
        if await ctx.access.level_of([owner_uuid]) < WRITE:
            raise PermissionDenied(
                f"permission denied: cannot write to owner_uuid {owner_uuid} "
                "(it does not exist or you have no write permission on it)")

    def check_name(self, values: Mapping[str, Any]) -> None:
        """422 for a name that would be a path, not a file name (Arvados' rule)."""
        name = values.get("name")
        if not self.filesystem_names or not isinstance(name, str):
            return
        if "/" in name or name in (".", ".."):
            raise HTTPError(422, f"invalid name {name[:100]!r}: a {self.singular} name cannot "
                                 "contain '/' or be '.' or '..'")

    # -- hooks ----------------------------------------------------------------

    async def prepare_create(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        return values

    async def prepare_update(self, ctx: Ctx, record: dict[str, Any],
                             changes: dict[str, Any]) -> dict[str, Any]:
        return changes

    async def after_write(self, ctx: Ctx, record: dict[str, Any]) -> None:
        return None

    def list_query(self, ctx: Ctx, query: Any) -> Any:
        return query

    # -- operations -----------------------------------------------------------

    async def list(self, ctx: Ctx) -> dict[str, Any]:
        query = parse_list_query(self.kind, ctx.params,
                                 max_limit=self.deps.config.api.max_items_per_response)
        wanted = list(query.select) if query.select is not None else None
        query = self.list_query(ctx, query)
        items, available = await self.store.list_objects(
            self.kind, query, readable=await self.readable(ctx))
        return render_list(self.kind.kind, [self.present(ctx, r, wanted) for r in items],
                           available, offset=query.offset, limit=query.limit)

    async def get(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, READ, include_trash=ctx.flag("include_trash"))
        return self.present(ctx, record, P.select_list(ctx.params))

    async def create(self, ctx: Ctx) -> dict[str, Any]:
        values = ctx.attributes(self.singular)
        if "uuid" in values and not ctx.access.is_admin:
            raise PermissionDenied("permission denied: only admins can choose a new record's uuid")
        if "uuid" in values:
            self.check_uuid(values["uuid"])
        self.check_name(values)
        values = await self.prepare_create(ctx, values)
        if values.get("owner_uuid") is None:
            values["owner_uuid"] = ctx.user_uuid
        await self.check_owner(ctx, values["owner_uuid"])
        record = await self.store.create_object(
            self.kind, values, ensure_unique_name=ctx.flag("ensure_unique_name"),
            actor_uuid=ctx.user_uuid)
        await self.after_write(ctx, record)
        return self.present(ctx, record, P.select_list(ctx.params))

    async def update(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, WRITE, include_trash=ctx.flag("include_trash"))
        changes = ctx.attributes(self.singular)
        if "uuid" in changes:
            if changes["uuid"] != uuid:
                raise HTTPError(422, "uuid cannot be changed")
            del changes["uuid"]
        if "owner_uuid" in changes and changes["owner_uuid"] != record.get("owner_uuid"):
            await self.check_owner(ctx, changes["owner_uuid"])
        self.check_name(changes)
        changes = await self.prepare_update(ctx, record, changes)
        if changes:
            record = await self.store.update_object(self.kind, uuid, changes,
                                                    actor_uuid=ctx.user_uuid)
            await self.after_write(ctx, record)
        return self.present(ctx, record, P.select_list(ctx.params))

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        await self.fetch(ctx, uuid, WRITE, include_trash=True)
        gone = await self.store.delete_object(self.kind, uuid)
        await self.after_write(ctx, gone)
        return self.present(ctx, gone)


def with_select(query: Any, *extra: str) -> Any:
    """``query`` whose select (if any) also fetches ``extra`` attributes."""
    if query.select is None:
        return query
    missing = tuple(a for a in extra if a not in query.select)
    return attrs.evolve(query, select=tuple(query.select) + missing) if missing else query
