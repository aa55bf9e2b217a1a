"""``/arvados/v1/api_client_authorizations``: tokens.

``api_token`` (the secret) is shown only to its owner, and only when it is
created or read back through ``current``; never in get or list. Deleting
a token revokes it through the shared :class:`Authenticator`, which evicts
it from the cache the keepproxy uses too, so the next API call or block
transfer with it fails (401 here, 403 at Keep).
"""
from __future__ import annotations

from typing import Any

from arvnode import ids
from arvnode.api.permissions import PermissionDenied
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.http.resource import HTTPError
from arvnode.store.errors import NotFound
from arvnode.store.kinds import from_api_time, to_api_time

_SECRET_KEYS = ("api_token", "secret")


class ApiClientAuthorizations(ObjectResource):
    resource = "api_client_authorizations"
    singular = "api_client_authorization"
    operations = frozenset({"list", "get", "create", "delete"})
    collection_actions = {"current": ("GET",)}

    def output(self, ctx: Ctx, record: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k not in _SECRET_KEYS}
        if "user_uuid" not in out and "owner_uuid" in out:
            out["user_uuid"] = out["owner_uuid"]
        return out

    def _with_secret(self, ctx: Ctx, record: dict[str, Any], secret: str) -> dict[str, Any]:
        body = self.present(ctx, record)
        body["api_token"] = secret
        return body

    async def current(self, ctx: Ctx) -> dict[str, Any]:
        assert ctx.identity is not None
        uuid = ctx.identity.token_uuid
        if uuid[:5] != self.deps.cluster_id:
            # Another cluster's token, validated through its issuer: there is
            # no row here; describe it from what the issuer told us (as
            # Arvados answers from its cached copy). Never with a secret.
            identity = ctx.identity
            return self.present(ctx, {
                "uuid": uuid,
                "owner_uuid": identity.user_uuid,
                "user_uuid": identity.user_uuid,
                "scopes": list(identity.scopes),
                "expires_at": to_api_time(identity.expires_at),
            })
        record = await self.store.get_object(self.kind, uuid)
        row = await self.store.get_token(uuid)
        presented = ctx.identity.token
        if presented in (row.secret, row.v2):
            return self._with_secret(ctx, record, row.secret)
        # A salted token (another cluster acting for the user) never learns
        # the real secret (spec arvados-wire 11.7).
        return self.present(ctx, record)

    async def create(self, ctx: Ctx) -> dict[str, Any]:
        values = ctx.attributes(self.singular)
        owner = values.pop("owner_uuid", None) or values.pop("user_uuid", None) or ctx.user_uuid
        values.pop("user_uuid", None)
        if not isinstance(owner, str) or not ids.UUID_RE.match(owner) or \
                owner[6:11] != ids.INFIX["users"]:
            raise HTTPError(422, f"owner_uuid must be a user UUID, not {owner!r}")
        if owner != ctx.user_uuid and not ctx.access.is_admin:
            raise PermissionDenied("permission denied: only admins can create tokens for "
                                   "other users")
        expires_at = values.pop("expires_at", None)
        expires = None
        if expires_at is not None:
            expires = from_api_time(expires_at)
        if ctx.identity is not None and ctx.identity.expires_at is not None and \
                not ctx.access.is_admin and (expires is None or expires > ctx.identity.expires_at):
            # A token cannot mint a longer-lived one (Arvados caps it the same way).
            expires = ctx.identity.expires_at
        scopes = values.pop("scopes", None)
        if scopes is None:
            scopes = ["all"]
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise HTTPError(422, "scopes must be a JSON array of strings")
        for key in ("api_token", "uuid", "api_client_id", "created_by_ip_address",
                    "last_used_at", "last_used_by_ip_address", "default_owner_uuid",
                    "refreshes_at"):
            values.pop(key, None)
        if values:
            raise HTTPError(422, "unknown or read-only token attribute(s): "
                                 + ", ".join(sorted(values)))
        try:
            row = await self.store.create_token(owner, expires_at=expires, scopes=scopes)
        except NotFound:
            raise HTTPError(422, f"owner_uuid {owner} is not a user of this cluster") from None
        record = await self.store.get_object(self.kind, row.uuid)
        return self._with_secret(ctx, record, row.secret)

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid)
        if record.get("owner_uuid") != ctx.user_uuid and not ctx.access.is_admin:
            raise NotFound(f"api_client_authorization {uuid} not found")
        c = self.deps.cluster_id
        if uuid in (ids.system_root_token_uuid(c), ids.anonymous_token_uuid(c)):
            raise HTTPError(422, f"{uuid} is configured (SystemRootToken / AnonymousUserToken): "
                                 "change the config file to replace it")
        await self.deps.authenticator.revoke(uuid)
        return self.present(ctx, record)
