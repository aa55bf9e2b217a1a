"""``/login`` with OpenID Connect (``Login.OpenIDConnect`` or ``Login.Google``).

Why separate from ``login.py``: this is only the browser's round trip to
the provider; ``return_to`` checks, finding or creating the user, issuing
the token and salting it for ``remote`` are the test login's, reused
through its :class:`~arvnode.api.login.LoginHandler`.

1. ``GET /login?return_to=URL[&remote=ID]``: ``return_to`` checked as
   always, then 302 to the provider's ``authorization_endpoint`` with a
   signed ``state`` (binding return_to and remote, expiring) and a nonce.
   ``redirect_uri`` is ``<Services.Controller.ExternalURL>/login``: register
   exactly that with the provider.
2. ``GET /login?code=...&state=...``: the provider sends the browser back.
   State checked (bad or expired: 400), code exchanged (provider error:
   401 with its error text; unreachable: 502 naming the issuer), ID token
   verified (401), user found by email or created (the test login's rules:
   ``Users.NewUsersAreActive`` / ``AutoSetupNewUsers``), token issued,
   303 to ``return_to?api_token=...``.

The protocol itself is :mod:`arvnode.auth.oidc`.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from arvnode.auth.oidc import (
    IDTokenInvalid, ProviderRefused, ProviderUnreachable, StateInvalid,
    nonce_for, sign_state, state_key, verify_state,
)
from arvnode.http.resource import HTTPError

__all__ = ["OIDCLogin"]


class OIDCLogin:
    """The OpenID Connect login of one node; ``handler`` is its LoginHandler."""

    log = Logger()

    def __init__(self, handler: Any, provider: Any) -> None:
        self.handler = handler
        self.provider = provider
        self.key = state_key(handler.deps.config.system_root_token)

    def redirect_uri(self) -> str:
        return str(self.handler.deps.controller_url()).rstrip("/") + "/login"

    async def login(self, request: Any, method: str, params: dict[str, str]) -> Any:
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, f"method {method} is not allowed on /login with OpenID Connect",
                            {"Allow": "GET"})
        try:
            if "state" in params or "code" in params:
                return await self._callback(request, params)
            return await self._start(request, params)
        except ProviderUnreachable as e:
            self.log.warn("OpenID Connect login: {error}", error=str(e))
            raise HTTPError(502, str(e)) from None

    async def _start(self, request: Any, params: dict[str, str]) -> Any:
        h = self.handler
        return_to, remote = params.get("return_to", ""), params.get("remote", "")
        if not return_to:
            raise HTTPError(400, "missing return_to parameter: where should the token go?")
        h._check_return_to(return_to)
        state = sign_state(self.key, h.clock.seconds(), return_to, remote)
        target = await self.provider.authorization_url(
            self.redirect_uri(), state, nonce_for(self.key, state))
        return h._redirect(request, 302, target)

    async def _callback(self, request: Any, params: dict[str, str]) -> Any:
        h = self.handler
        state = params.get("state", "")
        try:
            return_to, remote = verify_state(self.key, state, h.clock.seconds())
        except StateInvalid as e:
            raise HTTPError(400, f"invalid state parameter: {e}") from None
        except (ValueError, KeyError, TypeError):
            raise HTTPError(400, "invalid state parameter") from None
        h._check_return_to(return_to)
        if params.get("error"):
            detail = ": ".join(params[k][:200] for k in ("error", "error_description") if params.get(k))
            raise HTTPError(401, f"the OpenID Connect provider did not log you in ({detail})")
        code = params.get("code", "")
        if not code:
            raise HTTPError(400, "missing code parameter (the provider's answer is incomplete)")
        try:
            raw = await self.provider.exchange(code, self.redirect_uri())
            claims = await self.provider.verify_id_token(raw, nonce_for(self.key, state))
            email, username, first, last = self.provider.identity(claims)
        except ProviderRefused as e:
            raise HTTPError(401, str(e)) from None
        except IDTokenInvalid as e:
            self.log.info("OpenID Connect login refused: {reason}", reason=str(e))
            raise HTTPError(401, f"login refused: {e}") from None
        user = await h._user_for(username, email, first_name=first, last_name=last)
        return await h.deliver(request, user, return_to, remote, how="OpenID Connect login")
