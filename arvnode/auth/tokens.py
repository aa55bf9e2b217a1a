"""Finding the token in a request and turning it into an :class:`Identity`.

Every service (keepproxy, controller, management endpoints) asks the same
:class:`Authenticator`, so one cache and one revocation path serve them all.
Positive answers are cached briefly (``cache_ttl``) because a keepproxy
client sends the same token with every block; revocations and user changes
made through this node evict at once (:meth:`Authenticator.forget`), and the
short TTL bounds how long a change made by another node sharing the
database goes unseen. Failures are never cached, so a token created a
moment ago works at once.

Tokens are secrets: the cache is keyed by a SHA-256 of the token, secrets
are compared only with :func:`hmac.compare_digest` (in the store), and
nothing here logs a token.
"""
from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from arvnode import ids
from arvnode.auth.identity import Identity
from arvnode.store.errors import NotFound
from arvnode.store.records import TokenRecord, UserRecord

_SCHEMES = ("Bearer", "OAuth2")
_FORM = "application/x-www-form-urlencoded"


def token_from_authorization(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <t>`` or ``OAuth2 <t>`` header.

    The scheme is case-sensitive and separated from the token by the first
    space; the token is trimmed and must not be empty (spec 3.2).
    """
    if not header_value:
        return None
    scheme, sep, rest = header_value.partition(" ")
    if not sep or scheme not in _SCHEMES:
        return None
    token = rest.strip()
    return token or None


def _first_nonempty(values: list[bytes] | None) -> str | None:
    for value in values or ():
        text = value.decode("utf-8", "replace").strip()
        if text:
            return text
    return None


def token_from_request(request: Any) -> str | None:
    """The token a ``twisted.web`` request carries, in Arvados' controller order.

    The ``Authorization`` header, then ``api_token`` in the query string, then
    ``api_token`` in an ``application/x-www-form-urlencoded`` body (already
    parsed into ``request.args``). Stripping it from logs and forwarded
    requests is the caller's business.
    """
    for raw in request.requestHeaders.getRawHeaders(b"authorization") or ():
        token = token_from_authorization(raw.decode("latin-1"))
        if token:
            return token
    query = urlsplit(request.uri).query
    if query:
        found = _first_nonempty(parse_qs(query, keep_blank_values=True).get(b"api_token"))
        if found:
            return found
    content_type = request.requestHeaders.getRawHeaders(b"content-type") or [b""]
    if content_type[0].split(b";", 1)[0].strip().lower().decode("latin-1") == _FORM:
        return _first_nonempty((request.args or {}).get(b"api_token"))
    return None


class TokenStore(Protocol):
    """What :class:`Authenticator` needs of :class:`arvnode.store.Store`."""

    cluster_id: str

    async def find_token(self, token: str) -> tuple[TokenRecord, UserRecord] | None: ...

    async def get_token(self, uuid: str) -> TokenRecord: ...

    async def get_user(self, uuid: str) -> UserRecord: ...

    async def revoke_token(self, uuid: str) -> bool: ...

    async def update_user(self, uuid: str, **changes: Any) -> UserRecord: ...


@frozen
class _Entry:
    identity: Identity
    fetched_at: float


def _cache_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """Token → :class:`Identity`, with a small, short-lived positive cache."""


    def __init__(
        self,
        store: TokenStore,
        clock: IReactorTime,
        *,
        cache_ttl: float = 2.0,
        cache_size: int = 10000,
        remote: Any = None,
        access_tokens: Any = None,
    ) -> None:
        # ``remote``: an arvnode.auth.remote_tokens.RemoteTokens, which
        # answers for v2 tokens issued by other clusters (and, with a
        # LoginCluster, for non-v2 tokens unknown here). None: local only.
        self.remote = remote
        # ``access_tokens``: an arvnode.auth.access_tokens.AccessTokens when
        # Login.OpenIDConnect.AcceptAccessToken is on: a token unknown here
        # may be the provider's access token. None: not accepted.
        self.access_tokens = access_tokens
        self._store = store
        self._clock = clock
        self._ttl = cache_ttl
        self._size = max(0, cache_size)
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        # Bumped by every forget(): a lookup that was in flight across an
        # eviction must not put its (possibly stale) answer into the cache.
        self._generation = 0
        self._anonymous_user = ids.anonymous_user_uuid(store.cluster_id)

    async def authenticate(self, token: str | None, remote: str | None = None) -> Identity | None:
        """Who presents ``token``: None if unknown, revoked or expired.

        Store errors propagate (the caller answers 503): an unreachable
        database is not a reason to call a client unauthenticated; so do
        :class:`arvnode.remote.client.RemoteUnreachable` errors from
        validating another cluster's token (502/503, never a silent 401).

        With ``access_tokens`` (``Login.OpenIDConnect.AcceptAccessToken``),
        a token unknown here may be the OpenID Connect provider's access
        token: :mod:`arvnode.auth.access_tokens` asks the provider, and
        raises its ``ProviderDown`` (a RemoteUnreachable naming the issuer)
        when the provider cannot answer.

        ``remote``: the ``remote=<cluster id>`` query parameter that Arvados
        honours on ``users/current``, ``api_client_authorizations/current``
        and ``groups`` (GET only; the caller decides): a token of ours
        salted for that cluster is accepted too (spec 3.5).
        """
        if not token:
            return None
        if remote is not None:
            found = await self._salted_for(token, remote)
            if found is not None:
                return found
        if self.remote is not None and self.remote.issuer_of(token) is not None:
            return await self.remote.authenticate(token)  # type: ignore[no-any-return]
        identity = await self._local(token)
        if identity is None and self.access_tokens is not None and self.access_tokens.eligible(token):
            # Arvados' AcceptAccessToken: ask the OpenID Connect provider
            # (ProviderDown, a RemoteUnreachable, if it cannot answer).
            generation = self._generation
            identity = await self.access_tokens.authenticate(token)
            if identity is not None:
                self._remember(_cache_key(token), identity, generation)
            return identity  # type: ignore[no-any-return]
        if (
            identity is None
            and self.remote is not None
            and self.remote.login_cluster
            and not token.startswith("v2/")
        ):
            # Spec 8.1 step 2: a non-v2 token unknown here (an OIDC access
            # token) is the LoginCluster's to judge.
            return await self.remote.authenticate(  # type: ignore[no-any-return]
                token, issuer=self.remote.login_cluster
            )
        return identity

    async def _salted_for(self, token: str, remote: str) -> Identity | None:
        """A local v2 token whose secret is HMAC-SHA1(secret, ``remote``), or None."""
        if not ids.CLUSTER_ID_RE.match(remote) or not token.startswith("v2/"):
            return None
        parts = token.split("/")
        if len(parts) != 3 or not ids.UUID_RE.match(parts[1]) or len(parts[2]) != 40:
            return None
        if parts[1][:5] != self._store.cluster_id:
            return None
        try:
            record = await self._store.get_token(parts[1])
            user = await self._store.get_user(record.user_uuid)
        except NotFound:
            return None
        expected = ids.salted_secret(record.secret, remote)
        if not hmac.compare_digest(expected.encode("utf-8"), parts[2].encode("utf-8", "replace")):
            return None
        identity = self._identity(token, record, user)
        return None if _expired(identity, self._clock.seconds()) else identity

    def _identity(self, token: str, record: TokenRecord, user: UserRecord) -> Identity:
        return Identity(
            user_uuid=user.uuid,
            token=token,
            token_uuid=record.uuid,
            is_admin=user.is_admin,
            is_active=user.is_active,
            is_anonymous=user.uuid == self._anonymous_user,
            scopes=record.scopes,
            expires_at=record.expires_at,
        )

    async def _local(self, token: str) -> Identity | None:
        now = self._clock.seconds()
        key = _cache_key(token)
        entry = self._cache.get(key)
        if entry is not None:
            if now - entry.fetched_at < self._ttl and not _expired(entry.identity, now):
                self._cache.move_to_end(key)
                return entry.identity
            del self._cache[key]

        generation = self._generation
        found = await self._store.find_token(token)
        if found is None:
            return None
        record, user = found
        identity = Identity(
            user_uuid=user.uuid,
            token=token,
            token_uuid=record.uuid,
            is_admin=user.is_admin,
            is_active=user.is_active,
            is_anonymous=user.uuid == self._anonymous_user,
            scopes=record.scopes,
            expires_at=record.expires_at,
        )
        if _expired(identity, self._clock.seconds()):
            return None
        self._remember(key, identity, generation)
        return identity

    def _remember(self, key: bytes, identity: Identity, generation: int) -> None:
        """Cache a positive answer, unless a forget() happened while it was looked up."""
        if generation == self._generation and self._size:
            self._cache[key] = _Entry(identity, self._clock.seconds())
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)

    def forget(self, token_uuid: str | None = None, user_uuid: str | None = None) -> int:
        """Evict cached answers for a token, for all of a user's tokens, or (no arguments) all.

        Returns how many entries went.
        """
        self._generation += 1
        if self.remote is not None:
            self.remote.drop(token_uuid=token_uuid, user_uuid=user_uuid)
        if token_uuid is None and user_uuid is None:
            count = len(self._cache)
            self._cache.clear()
            return count
        doomed = [
            key
            for key, entry in self._cache.items()
            if entry.identity.token_uuid == token_uuid or entry.identity.user_uuid == user_uuid
        ]
        for key in doomed:
            del self._cache[key]
        return len(doomed)

    async def revoke(self, token_uuid: str) -> bool:
        """Delete a token and evict it, so its next use is refused; False if it did not exist."""
        try:
            return await self._store.revoke_token(token_uuid)
        finally:
            self.forget(token_uuid=token_uuid)

    async def set_user_active(self, user_uuid: str, active: bool) -> UserRecord:
        """Activate or deactivate a user and evict every cached token of theirs."""
        try:
            return await self._store.update_user(user_uuid, is_active=active)
        finally:
            self.forget(user_uuid=user_uuid)

    def __len__(self) -> int:
        return len(self._cache)


def _expired(identity: Identity, now: float) -> bool:
    return identity.expires_at is not None and identity.expires_at <= now
