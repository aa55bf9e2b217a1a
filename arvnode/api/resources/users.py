"""``/arvados/v1/users``: current, get, list; admins create, update, activate, unsetup.

Users live in the store's original ``users`` table, written through its
own methods (``create_user``/``update_user``); reading goes through the
generic object code so list filters work. Any change to a user evicts the
user's cached tokens and permission levels at once, so deactivating a user
locks them out of this node's API and keepproxy on the next request.

On a satellite of a LoginCluster X, X is the authority on users: get,
list, create, update, activate and unsetup are sent to X (the caller's
token salted for X; a token issued here is refused with 401 rather than
sent) and every X user in the answer is mirrored into the local table, so
a status change seen through the API takes effect here at once.
``users/current`` stays local (the token check keeps that copy fresh);
``bypass_federation=true`` reads the local copies.
"""
from __future__ import annotations

import json
from typing import Any

from arvnode import ids
from arvnode.api.permissions import READ, PermissionDenied
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.http.resource import HTTPError
from twisted.web.http_headers import Headers

from arvnode.remote.client import RemoteError, RemoteHTTPError, RemoteTimeout, RemoteUnreachable
from arvnode.remote.forward import outgoing_token
from arvnode.store.errors import NotFound
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
    # The node's RemoteClient, set by the controller; with a LoginCluster,
    # user records live there: get, list, create, update, activate and
    # unsetup are answered by it and mirrored here (spec 8.4).
    remote_client: Any = None

    def _login_cluster(self, ctx: Ctx) -> str:
        """The LoginCluster to ask, or "" to answer locally."""
        x = self.deps.config.login.login_cluster
        if not x or x == self.deps.cluster_id or self.remote_client is None:
            return ""
        if not self.remote_client.known(x) or ctx.flag("bypass_federation"):
            return ""
        return str(x)

    async def list(self, ctx: Ctx) -> dict[str, Any]:
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(ctx, x, "/arvados/v1/users")
        return await super().list(ctx)

    async def get(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(ctx, x, f"/arvados/v1/users/{uuid}")
        return await super().get(ctx, uuid)

    async def _from_login_cluster(self, ctx: Ctx, x: str, path: str, method: str = "GET",
                                  body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the LoginCluster (the authority on users) and mirror what it says.

        The caller's token goes salted for X; a token of ours (not the
        anonymous one) is refused with 401 rather than sent (spec 3.4).
        """
        c = self.deps.cluster_id
        token = ctx.token
        v2_form = None
        if ctx.identity is not None and not token.startswith("v2/") and \
                ctx.identity.token_uuid[:5] == c:
            v2_form = f"v2/{ctx.identity.token_uuid}/{token}"
        send = outgoing_token(token, x, local_cluster=c, login_cluster=x,
                              anonymous_token_uuid=ids.anonymous_token_uuid(c), v2_form=v2_form)
        try:
            if method == "GET":
                query = {k: (v if isinstance(v, str) else json.dumps(v))
                         for k, v in ctx.params.items() if k != "bypass_federation"}
                answer = await self.remote_client.get_json(
                    x, path, token=send, query=query, headers={"Via": "HTTP/1.1 arvados-controller"})
            else:
                answer = await self._send(x, method, path, send, body)
        except RemoteHTTPError as e:
            if e.status >= 500:
                raise HTTPError(502, e.message) from e
            raise HTTPError(e.status, "; ".join(e.errors) or e.message) from e
        except RemoteTimeout as e:
            raise HTTPError(504, e.message) from e
        except RemoteError as e:
            raise HTTPError(502, e.message) from e
        if not isinstance(answer, dict):
            raise HTTPError(502, f"login cluster {x} answered {path} with something not an object")
        items = answer.get("items") if "items" in answer else [answer]
        remote_tokens = getattr(self.deps.authenticator, "remote", None)
        for item in items if isinstance(items, list) else ():
            uuid = item.get("uuid") if isinstance(item, dict) else None
            if remote_tokens is None or not isinstance(uuid, str) or \
                    not ids.UUID_RE.match(uuid) or uuid[:5] != x:
                continue
            before = await self._local_copy(uuid)
            after = await remote_tokens.upsert_user(item)
            if before is None or (before.is_active, before.is_admin) != (after.is_active, after.is_admin):
                self.deps.authenticator.forget(user_uuid=uuid)
                self.deps.levels.invalidate()
        return answer

    async def _send(self, x: str, method: str, path: str, token: str,
                    body: dict[str, Any] | None) -> Any:
        headers = Headers({b"Authorization": [b"Bearer " + token.encode("utf-8")],
                           b"Accept": [b"application/json"],
                           b"Content-Type": [b"application/json"],
                           b"Via": [b"HTTP/1.1 arvados-controller"]})
        data = json.dumps(body if body is not None else {}).encode()
        response = await self.remote_client.request(x, method, path, headers=headers, body=data)
        raw = await self.remote_client.read_body(x, response)
        if not 200 <= response.code < 300:
            raise RemoteHTTPError(response.code, raw, cluster=x, headers=response.headers)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise RemoteUnreachable(x, f"answer to {method} {path} is not JSON") from e

    async def readable(self, ctx: Ctx) -> frozenset[str] | None:
        """Which users the caller may see (None: all, for admins).

        As in Arvados: yourself, what permission links give you, and the
        other members of the groups you belong to. Every active user of
        this cluster counts as a member of "All users" (the permission
        seeding does the same); a user copied from another cluster joins
        it only through an explicit ``can_read`` link to "All users"
        (peer federation), so a stranger who merely used a token here stays
        invisible to local users. Reads every user row: fine for the user
        counts of a gateway, and never cached, so a new link shows at once.
        """
        base = await ctx.access.readable()
        identity = ctx.identity
        if base is None or identity is None or identity.is_anonymous or not identity.is_active:
            return base
        visible = set(base)
        groups = sorted(u for u in base if u[6:11] == ids.INFIX["groups"])
        if groups:
            links = KINDS["links"]
            offset = 0
            while True:
                query = parse_list_query(links, {
                    "filters": [["link_class", "=", "permission"], ["head_uuid", "in", groups],
                                ["tail_uuid", "is_a", "arvados#user"]],
                    "select": ["tail_uuid"], "limit": 1000, "offset": offset, "count": "none",
                })
                rows, _ = await self.store.list_objects(links, query, readable=None)
                visible.update(r["tail_uuid"] for r in rows)
                if len(rows) < 1000:
                    break
                offset += len(rows)
        if ids.all_users_group_uuid(self.deps.cluster_id) in base:
            local = self.deps.cluster_id + "-"
            visible.update(u.uuid for u in await self.store.list_users()
                           if u.is_active and u.uuid.startswith(local))
        return frozenset(visible)

    async def fetch(self, ctx: Ctx, uuid: str, level: int = READ,
                    include_trash: bool = False) -> dict[str, Any]:
        if level <= READ and not ctx.access.is_admin:
            visible = await self.readable(ctx)
            if visible is not None and uuid not in visible:
                raise NotFound(f"user {uuid} not found")
            return await self.store.get_object(self.kind, uuid)
        return await super().fetch(ctx, uuid, level, include_trash)

    async def _local_copy(self, uuid: str) -> Any:
        try:
            return await self.store.get_user(uuid)
        except NotFound:
            return None

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
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(
                ctx, x, "/arvados/v1/users", "POST", {"user": ctx.attributes(self.singular)})
        self.require_admin(ctx, "create users")
        values = self._values(ctx.attributes(self.singular), _ADMIN_FIELDS)
        if "uuid" in ctx.attributes(self.singular):
            values["uuid"] = self.check_uuid(ctx.attributes(self.singular)["uuid"])
        user = await self.store.create_user(**values)
        record = await self.store.get_object(self.kind, user.uuid)
        return self.present(ctx, record)

    async def update(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(
                ctx, x, f"/arvados/v1/users/{uuid}", "PUT", {"user": ctx.attributes(self.singular)})
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
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(ctx, x, f"/arvados/v1/users/{uuid}/activate", "POST")
        self.require_admin(ctx, "activate users")
        await self.fetch(ctx, uuid)
        return await self._apply(ctx, uuid, {"is_active": True})

    async def unsetup(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        """Deactivate and drop every permission link to or from the user (Arvados)."""
        x = self._login_cluster(ctx)
        if x:
            return await self._from_login_cluster(ctx, x, f"/arvados/v1/users/{uuid}/unsetup", "POST")
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
