"""``/arvados/v1/users``: current, get, list; admins create, update, activate, unsetup.

Users live in the store's original ``users`` table, written through its
own methods (``create_user``/``update_user``); reading goes through the
generic object code so list filters work. Any change to a user evicts the
user's cached tokens and permission levels at once, so deactivating a user
locks them out of this node's API and keepproxy on the next request.
"""
from __future__ import annotations

from typing import Any

from arvnode import ids
from arvnode.api.permissions import PermissionDenied
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.http.resource import HTTPError
from arvnode.store.kinds import KINDS
from arvnode.store.query import parse_list_query

_ADMIN_FIELDS = frozenset({"email", "username", "first_name", "last_name", "is_admin",
                           "is_active", "prefs"})
# What users may change about themselves (Arvados: names and prefs).
_SELF_FIELDS = frozenset({"first_name", "last_name", "prefs"})
_READONLY = frozenset({"uuid", "owner_uuid", "created_at", "modified_at",
                       "modified_by_user_uuid", "full_name", "is_invited", "can_write",
                       "can_manage", "writable_by"})


class Users(ObjectResource):
    resource = "users"
    singular = "user"
    operations = frozenset({"list", "get", "create", "update"})
    collection_actions = {"current": ("GET",)}
    member_actions = {"activate": ("POST",), "unsetup": ("POST",)}

    def output(self, ctx: Ctx, record: dict[str, Any]) -> dict[str, Any]:
        out = dict(record)
        if "first_name" in out or "last_name" in out:
            out["full_name"] = " ".join(
                p for p in (out.get("first_name") or "", out.get("last_name") or "") if p)
        if "is_active" in out:
            out.setdefault("is_invited", bool(out["is_active"]))
        return out

    async def current(self, ctx: Ctx) -> dict[str, Any]:
        assert ctx.identity is not None
        record = await self.store.get_object(self.kind, ctx.identity.user_uuid)
        return self.present(ctx, record)

    def _values(self, attrs: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
        values = {k: v for k, v in attrs.items() if k not in _READONLY}
        unknown = sorted(set(values) - _ADMIN_FIELDS)
        if unknown:
            raise HTTPError(422, f"unknown or read-only user attribute(s): {', '.join(unknown)}")
        denied = sorted(set(values) - allowed)
        if denied:
            raise PermissionDenied(f"permission denied: only admins can change {', '.join(denied)}")
        for key in ("email", "first_name", "last_name"):
            if key in values and not isinstance(values[key], str):
                raise HTTPError(422, f"{key} must be a string")
        if "username" in values and values["username"] is not None and \
                not isinstance(values["username"], str):
            raise HTTPError(422, "username must be a string or null")
        for key in ("is_admin", "is_active"):
            if key in values and not isinstance(values[key], bool):
                raise HTTPError(422, f"{key} must be true or false")
        if "prefs" in values and not isinstance(values["prefs"], dict):
            raise HTTPError(422, "prefs must be a JSON object")
        return values

    async def create(self, ctx: Ctx) -> dict[str, Any]:
        self.require_admin(ctx, "create users")
        values = self._values(ctx.attributes(self.singular), _ADMIN_FIELDS)
        if "uuid" in ctx.attributes(self.singular):
            values["uuid"] = self.check_uuid(ctx.attributes(self.singular)["uuid"])
        user = await self.store.create_user(**values)
        record = await self.store.get_object(self.kind, user.uuid)
        return self.present(ctx, record)

    async def update(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        await self.fetch(ctx, uuid)
        if ctx.access.is_admin:
            allowed = _ADMIN_FIELDS
        elif uuid == ctx.user_uuid:
            allowed = _SELF_FIELDS
        else:
            raise PermissionDenied(f"permission denied: cannot modify user {uuid}")
        values = self._values(ctx.attributes(self.singular), allowed)
        return await self._apply(ctx, uuid, values)

    async def _apply(self, ctx: Ctx, uuid: str, values: dict[str, Any]) -> dict[str, Any]:
        if uuid == ids.system_user_uuid(self.deps.cluster_id) and (
                values.get("is_active") is False or values.get("is_admin") is False):
            raise HTTPError(422, "the system user must stay an active admin "
                                 "(it is the SystemRootToken's identity)")
        if values:
            try:
                await self.store.update_user(uuid, **values)
            finally:
                self.deps.authenticator.forget(user_uuid=uuid)
                self.deps.levels.invalidate()
        record = await self.store.get_object(self.kind, uuid)
        return self.present(ctx, record)

    async def activate(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        self.require_admin(ctx, "activate users")
        await self.fetch(ctx, uuid)
        return await self._apply(ctx, uuid, {"is_active": True})

    async def unsetup(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        """Deactivate and drop every permission link to or from the user (Arvados)."""
        self.require_admin(ctx, "unsetup users")
        await self.fetch(ctx, uuid)
        links = KINDS["links"]
        for side in ("tail_uuid", "head_uuid"):
            query = parse_list_query(links, {
                "filters": [[side, "=", uuid], ["link_class", "=", "permission"]],
                "limit": 1000, "count": "none"})
            rows, _ = await self.store.list_objects(links, query, readable=None)
            for row in rows:
                await self.store.delete_object(links, row["uuid"])
        return await self._apply(ctx, uuid, {"is_active": False})
