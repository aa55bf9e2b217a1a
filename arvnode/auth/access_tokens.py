"""OpenID Connect access tokens used as API tokens (``Login.OpenIDConnect.AcceptAccessToken``).

Why: a script that got an access token from the provider by the provider's
own flows (Keycloak's client credentials or device flow, say) can use it
with Arvados clients directly, without a browser login. Arvados does this in
its controller (lib/controller/localdb/login_oidc.go, ``registerToken``);
this module does the same, behind the :class:`~arvnode.auth.tokens.Authenticator`
that the API and keepproxy share, so both accept such tokens.

Decisions (Arvados' unless said):

* Only tokens that are not ours: not ``v2/...`` tokens, not the
  SystemRootToken, and only after the local lookup found nothing.
* The provider is the judge: ``GET <userinfo_endpoint>`` with the token
  (through the provider's :class:`~arvnode.auth.oidc.OIDCProvider`, i.e. the
  node's Twisted HTTP client with its deadlines, never blocking the
  reactor). Its claims must carry a verified email, exactly as at login;
  the user is found by that email or created by the login's rules
  (:func:`~arvnode.auth.local_users.find_or_create_user`).
* ``AcceptAccessTokenScope``: the token must be a JWT whose ``scope`` claim
  (space-separated) contains that scope, else it is refused before the
  provider is asked. The JWT is decoded *without* checking its signature,
  only to read ``scope`` and ``exp``, as Arvados does: what it says can
  only make us refuse a token or keep it for a shorter time, never accept
  one (that is the userinfo call's job), so a forged claim gains nothing.
  With a scope configured, a token that is not a JWT is refused.
* The answer is stored as a token row whose secret is
  HMAC-SHA256(key ``SystemRootToken``, access token) in hex (Arvados'
  derivation), so the access token itself is never stored or logged. The
  row expires :data:`CHECK_TTL` + :data:`RACE_WINDOW` seconds after the
  check (Arvados: 10 + 1 minutes) and never after the JWT's ``exp``. A use
  within the last :data:`RACE_WINDOW` seconds asks the provider again and
  extends the row (unless ``exp`` forbids a longer life), so a token the
  provider revoked stops working within about ten minutes. The row is in
  the database, so every node sharing it benefits; nodes do not need the
  same cache. (The Authenticator's own short cache sits in front.)
* Concurrent first uses of one token make one userinfo call
  (:class:`~arvnode.auth.singleflight.SingleFlight`).
* The provider refusing the token (400/401/403), a wrong scope or an
  expired JWT: refused (the API answers 401, keepproxy 403) and remembered
  for :data:`NEGATIVE_TTL` seconds in memory (Arvados: 5 minutes), so a
  client retrying a bad token does not hammer the provider. An unverified
  email is refused but not remembered (the user may verify it). The
  reason goes to the log at info level, with a short fingerprint of the
  HMAC, never the token.
* The provider unreachable, too slow, answering 5xx or nonsense:
  :class:`ProviderDown` (a :class:`RemoteUnreachable` naming the issuer),
  which the API and keepproxy answer with 502: an outage is not a reason
  to call a client unauthenticated.
"""
from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Any

import attrs
import jwt
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from arvnode.auth.identity import Identity
from arvnode.auth.local_users import find_or_create_user
from arvnode.auth.oidc import IDTokenInvalid, ProviderRefused, ProviderUnreachable
from arvnode.auth.singleflight import SingleFlight
from arvnode.remote.client import RemoteError, RemoteUnreachable
from arvnode.store.errors import Conflict, NotFound, StoreUnavailable
from arvnode.store.kinds import KINDS
from arvnode.store.records import TokenRecord, UserRecord

__all__ = ["AccessTokens", "ProviderDown", "access_token_secret"]

#: Seconds a userinfo answer is trusted (Arvados: tokenCacheTTL, 10 minutes).
CHECK_TTL = 600.0
#: The row lives this much longer; a use this close to its end asks again
#: (Arvados: tokenCacheRaceWindow, 1 minute).
RACE_WINDOW = 60.0
#: Seconds a refused token is refused without asking (Arvados: tokenCacheNegativeTTL).
NEGATIVE_TTL = 300.0
#: Longest token considered (a JWT with many claims is a few KiB).
MAX_TOKEN_LENGTH = 16384


class ProviderDown(RemoteUnreachable):
    """The provider could not say whether an access token is valid (→ 502)."""

    def __init__(self, issuer: str, message: str) -> None:
        RemoteError.__init__(self, issuer, message)
        self.reason = message


def access_token_secret(system_root_token: str, token: str) -> str:
    """The stored secret standing for an access token: HMAC-SHA256 hex (Arvados' derivation)."""
    return hmac.new(system_root_token.encode("utf-8"), token.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


def _unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, signature NOT checked (see the module docstring); None if not a JWT."""
    if token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


class AccessTokens:
    """Access tokens of one provider, for the Authenticator.

    ``provider`` is the node's :class:`~arvnode.auth.oidc.OIDCProvider`;
    ``scope`` is ``AcceptAccessTokenScope`` ("": any); ``users_config``
    is ``Config.users``.
    """

    log = Logger()

    def __init__(self, *, provider: Any, store: Any, clock: IReactorTime, system_root_token: str,
                 users_config: Any, scope: str = "", negative_cache_size: int = 1000) -> None:
        self._provider = provider
        self._store = store
        self._clock = clock
        self._key = system_root_token
        self._users = users_config
        self.scope = scope
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._negative_size = max(1, negative_cache_size)
        self._flight: SingleFlight[Identity | None] = SingleFlight()
        self.checks = 0  # userinfo calls made (tests, metrics)

    def eligible(self, token: str) -> bool:
        """Whether ``token`` may be an access token (the local lookup already failed)."""
        return (bool(token) and not token.startswith("v2/") and len(token) <= MAX_TOKEN_LENGTH
                and not hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                                            self._key.encode("utf-8")))

    async def authenticate(self, token: str) -> Identity | None:
        """Who the provider says holds ``token``; None if refused.

        Raises :class:`ProviderDown` when the provider cannot be asked and
        the stored answer is missing or due for a check.
        """
        secret = access_token_secret(self._key, token)
        now = self._clock.seconds()
        until = self._refused.get(secret)
        if until is not None:
            if until > now:
                return None
            del self._refused[secret]
        claims = _unverified_claims(token)
        problem = self._scope_problem(claims)
        exp = claims.get("exp") if claims is not None else None
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            exp = None
        if problem is None and exp is not None and exp <= now:
            problem = "the access token has expired (its exp claim)"
        if problem is not None:
            self._refuse(secret, problem)
            return None
        found = await self._store.find_token(secret)
        if found is not None:
            record, user = found
            if self._still_good(record, exp, now):
                return self._identity(token, record, user)
        return await self._flight.run(secret, lambda: self._check(token, secret, exp))

    def _scope_problem(self, claims: dict[str, Any] | None) -> str | None:
        if not self.scope:
            return None
        if claims is None:
            return (f"the access token is not a JWT, so it cannot carry the scope {self.scope!r} "
                    "(Login.OpenIDConnect.AcceptAccessTokenScope)")
        scope = claims.get("scope")
        have = scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else []
        if self.scope not in have:
            return (f"unacceptable access token scope: it lacks {self.scope!r} "
                    "(Login.OpenIDConnect.AcceptAccessTokenScope)")
        return None

    @staticmethod
    def _still_good(record: TokenRecord, exp: float | None, now: float) -> bool:
        """A stored answer serves until RACE_WINDOW before its end, or to its end
        when asking again could not extend it (it already ends at the JWT's exp)."""
        if record.expires_at is None:
            return True  # not a row of ours (a v1 secret that happens to match): leave it be
        if now >= record.expires_at:
            return False
        return now < record.expires_at - RACE_WINDOW or (exp is not None and exp <= record.expires_at)

    def _refuse(self, secret: str, reason: str) -> None:
        self.log.info("OpenID Connect access token {fingerprint} refused: {reason}",
                      fingerprint=secret[:10], reason=reason)
        self._refused[secret] = self._clock.seconds() + NEGATIVE_TTL
        self._refused.move_to_end(secret)
        while len(self._refused) > self._negative_size:
            self._refused.popitem(last=False)

    async def _check(self, token: str, secret: str, exp: float | None) -> Identity | None:
        """Ask the provider, then store (or extend) the token row."""
        found = await self._store.find_token(secret)
        if found is not None and self._still_good(found[0], exp, self._clock.seconds()):
            # A check that finished while this caller was reading the row.
            return self._identity(token, *found)
        self.checks += 1
        provider = self._provider
        try:
            claims = await provider.userinfo(token)
            email, username, first, last = provider.identity(claims)
        except ProviderUnreachable as e:
            self.log.warn("OpenID Connect access token check failed: {error}", error=str(e))
            raise ProviderDown(provider.issuer, str(e)) from None
        except ProviderRefused as e:
            self._refuse(secret, str(e))
            return None
        except IDTokenInvalid as e:
            self.log.info("OpenID Connect access token {fingerprint} refused: {reason}",
                          fingerprint=secret[:10], reason=str(e))
            return None
        now = self._clock.seconds()
        expires = now + CHECK_TTL + RACE_WINDOW
        if exp is not None:
            expires = min(expires, float(exp))
        for _attempt in range(3):
            found = await self._store.find_token(secret)
            if found is not None:
                record, user = found
                if record.expires_at is not None and record.expires_at < expires:
                    try:
                        await self._store.update_object(KINDS["api_client_authorizations"],
                                                        record.uuid, {"expires_at": expires})
                    except NotFound:
                        continue  # revoked meanwhile: store it again
                    record = attrs.evolve(record, expires_at=expires)
                return self._identity(token, record, user)
            user = await find_or_create_user(self._store, self._users, username, email, first,
                                             last, how="OpenID Connect access token")
            try:
                record = await self._store.create_token(user.uuid, secret=secret,
                                                        expires_at=expires, scopes=["all"])
            except (Conflict, NotFound):
                continue  # another node stored it first (or the user went): look again
            self.log.info("OpenID Connect access token {fingerprint} accepted for {email} "
                          "as token {uuid}", fingerprint=secret[:10], email=email, uuid=record.uuid)
            return self._identity(token, record, user)
        raise StoreUnavailable("could not store the access token's record; try again")

    def _identity(self, token: str, record: TokenRecord, user: UserRecord) -> Identity:
        # ``token`` as presented: Keep signs locators over it (Identity's docstring).
        return Identity(user_uuid=user.uuid, token=token, token_uuid=record.uuid,
                        is_admin=user.is_admin, is_active=user.is_active,
                        scopes=record.scopes, expires_at=record.expires_at)
