"""``POST /_arvnode/cache/drop``: forget cached token answers at once (admins).

Why: a token revoked at its home cluster, or a user deactivated there,
stops working here within ``Login.RemoteTokenRefresh``. An admin who cannot
wait (a leaked token) drops it from this node's caches, and its next use is
revalidated with the issuer on the spot. The same call evicts local tokens
from the short positive cache.

Request: ``token_uuid=<uuid>`` or ``user_uuid=<uuid>`` (query, form or JSON
body), with an admin token (the SystemRootToken or an admin user's) in
``Authorization``. Answer: ``{"dropped": <cached entries removed>, ...}``.
The path is arvnode's own (not an Arvados API); ``arvnode cache drop``
calls it. Each node has its own cache: behind a load balancer, call every
node (``arvnode cache drop --url`` once per node).
"""
from __future__ import annotations

from typing import Any

from arvnode import ids
from arvnode.api import params as P
from arvnode.auth.tokens import token_from_request
from arvnode.http.resource import HTTPError
from arvnode.remote.client import RemoteError, RemoteTimeout

__all__ = ["CACHE_DROP_PATH", "drop_cache"]

CACHE_DROP_PATH = ["_arvnode", "cache", "drop"]


async def drop_cache(request: Any, method: str, deps: Any) -> dict[str, Any]:
    if method != "POST":
        raise HTTPError(405, f"method {method} is not allowed on /_arvnode/cache/drop",
                        {"Allow": "POST"})
    token = token_from_request(request)
    if not token:
        raise HTTPError(401, "Not logged in: an admin token is required (Authorization: Bearer ...)")
    try:
        identity = await deps.authenticator.authenticate(token)
    except RemoteTimeout as e:
        raise HTTPError(504, e.message) from e
    except RemoteError as e:
        raise HTTPError(502, e.message) from e
    if identity is None:
        raise HTTPError(401, "Not logged in: the API token is invalid, expired or revoked")
    if not identity.is_admin:
        raise HTTPError(403, "permission denied: only admins can drop cached tokens")
    params, _ = P.read_params(request, max_size=deps.config.api.max_request_size)
    token_uuid = params.get("token_uuid") or None
    user_uuid = params.get("user_uuid") or None
    if token_uuid is None and user_uuid is None:
        raise HTTPError(400, "give token_uuid=<api_client_authorization uuid> or user_uuid=<user uuid>")
    for name, value, infix in (("token_uuid", token_uuid, ids.INFIX["api_client_authorizations"]),
                               ("user_uuid", user_uuid, ids.INFIX["users"])):
        if value is not None and (not isinstance(value, str) or not ids.UUID_RE.match(value)
                                  or value[6:11] != infix):
            raise HTTPError(422, f"{name} {str(value)[:60]!r} is not a UUID of the form "
                                 f"<cluster>-{infix}-<15 characters>")
    remote = getattr(deps.authenticator, "remote", None)
    dropped_remote = remote.drop(token_uuid=token_uuid, user_uuid=user_uuid) if remote else 0
    dropped_local = deps.authenticator.forget(token_uuid=token_uuid, user_uuid=user_uuid)
    deps.levels.invalidate()
    return {"dropped": dropped_remote + dropped_local, "remote_tokens_dropped": dropped_remote,
            "token_uuid": token_uuid, "user_uuid": user_uuid}
