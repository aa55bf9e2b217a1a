"""Tokens issued by other clusters (spec arvados-wire.md §8.1-8.3).

Why this exists: a client of cluster A may present A's token here, usually
salted by A's controller when it forwarded a request.  We cannot check the
secret ourselves, so we ask the issuer, exactly as Arvados does:
``GET api_client_authorizations/current?remote=<us>`` and then
``GET users/current?remote=<us>``, with the token as presented.  The answer
is cached with the time of the check; it is good for ``Login.RemoteTokenRefresh``
after that (and never past the token's own ``expires_at``).  After that
deadline a use revalidates inline, and :mod:`arvnode.auth.refresh` does the
same proactively, so a token revoked at home stops working here within one
interval even when the timer lags (DESIGN.md §3a).

Decisions:

* Issuer says 4xx → the token is not valid (the caller answers 401/403).
  Issuer unreachable, too slow, or 5xx → :class:`RemoteUnreachable`
  ("remote cluster X unreachable ..."); an outage is not a revocation, and a
  stale answer is never served past its deadline either.
* Validations are single-flight per token: a hundred concurrent first uses
  cause one round trip, one local user copy and one cache entry.
* The remote user gets a local copy with the same UUID (§8.2): activated
  when ``RemoteClusters.<id>.ActivateUsers`` (or the user comes from the
  LoginCluster, or ``Users.NewUsersAreActive``), otherwise inactive until an
  admin activates it; the remote anonymous user maps onto ours; a username
  already taken here gets the first free ``name2``, ``name3``... unless the
  user comes from the LoginCluster, which wins the name (the local holder
  is renamed with random digits appended).
* Cache entries live in memory only (keyed by a SHA-256 of the token; the
  token itself is kept, unlogged, because the refresh must re-present it).
  Nodes sharing a database each validate on their own; the user copies are
  shared and written idempotently.
"""
from __future__ import annotations

import datetime
import hashlib
import random
import re
from collections import OrderedDict
from typing import Any, Mapping

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from arvnode import ids
from arvnode.auth.identity import Identity
from arvnode.auth.singleflight import SingleFlight
from arvnode.remote.client import RemoteClient, RemoteHTTPError, RemoteUnreachable
from arvnode.store.errors import Conflict, NotFound
from arvnode.store.records import UserRecord

__all__ = ["RemoteTokens", "RemoteUnreachable", "activation_decision"]

TOKEN_PATH = "/arvados/v1/api_client_authorizations/current"
USER_PATH = "/arvados/v1/users/current"
_USERNAME_STRIP = re.compile(r"[^A-Za-z0-9]")
_USER_FIELDS = ("email", "first_name", "last_name", "prefs")


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_time(value: Any) -> float | None:
    """Arvados timestamps (``2030-01-01T00:00:00.000000000Z``) → epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python < 3.11-safe: trim fractional digits beyond microseconds.
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if m:
        frac = (m.group(2) or "")[:7]
        text = m.group(1) + frac + m.group(3)
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def activation_decision(
    remote_user: Mapping[str, Any], *, should_activate: bool
) -> bool | None:
    """What the remote's ``is_invited``/``is_active`` mean for the local copy
    (spec 8.2 table): True activate, False deactivate, None leave as is."""
    invited = remote_user.get("is_invited")
    active = remote_user.get("is_active")
    if invited is False:
        return False
    if invited is None and active is None:
        return None
    if active is False and invited is None:
        return False
    if active is True:
        return True if should_activate else None
    return None


def _base_username(requested: Any) -> str | None:
    if not isinstance(requested, str):
        return None
    base = _USERNAME_STRIP.sub("", requested)
    base = base.lstrip("0123456789")
    return base or None


@define
class CachedToken:
    """One validated remote token."""

    token: str = field(repr=False)
    issuer: str
    identity: Identity
    checked_at: float  # when the last successful check started
    last_used: float = 0.0  # last time a request presented it


class RemoteTokens:
    """Validation, caching and local user copies for tokens of other clusters.

    ``remotes`` is ``Config.remote_clusters``; ``users`` is ``Config.users``
    (``auto_setup_new_users``, ``new_users_are_active``); ``refresh_interval``
    is ``Login.RemoteTokenRefresh``.
    """

    log = Logger()

    def __init__(
        self,
        *,
        store: Any,
        client: RemoteClient,
        clock: IReactorTime,
        rng: random.Random,
        cluster_id: str,
        remotes: Mapping[str, Any],
        users: Any,
        login_cluster: str = "",
        refresh_interval: float = 300.0,
        cache_size: int = 10000,
        timeout: float | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._rng = rng
        self.cluster_id = cluster_id
        self._remotes = dict(remotes)
        self._users = users
        self.login_cluster = login_cluster if login_cluster != cluster_id else ""
        self.refresh_interval = refresh_interval
        self._size = max(1, cache_size)
        self._timeout = timeout
        self._cache: OrderedDict[bytes, CachedToken] = OrderedDict()
        self._flight: SingleFlight[Identity | None] = SingleFlight()
        # Bumped by drop(): a validation in flight across a drop must not
        # put its answer back (the admin asked for a fresh check).
        self._generation = 0
        self.validations = 0  # round trips to issuers (tests, metrics)

    # -- which tokens are ours to handle ----------------------------------------

    def issuer_of(self, token: str) -> str | None:
        """The issuing cluster of a v2 token from another cluster, else None."""
        if not token.startswith("v2/"):
            return None
        parts = token.split("/")
        if len(parts) < 3 or not ids.UUID_RE.match(parts[1]) or not parts[2]:
            return None
        issuer = parts[1][:5]
        return None if issuer == self.cluster_id else issuer

    # -- the answers ---------------------------------------------------------------

    def fresh(self, entry: CachedToken, now: float) -> bool:
        if now >= entry.checked_at + self.refresh_interval:
            return False
        expires = entry.identity.expires_at
        return expires is None or expires > now

    async def authenticate(self, token: str, issuer: str | None = None) -> Identity | None:
        """Identity for a remote token; None if the issuer says it is not valid.

        ``issuer`` defaults to the token's UUID prefix (pass the LoginCluster
        for a non-v2 token). Raises :class:`RemoteUnreachable` (or its
        subclass :class:`RemoteTimeout`) when the issuer cannot answer and
        there is no fresh cached answer.
        """
        issuer = issuer or self.issuer_of(token)
        if issuer is None:
            return None
        key = token_key(token)
        entry = self._cache.get(key)
        now = self._clock.seconds()
        if entry is not None and self.fresh(entry, now):
            entry.last_used = now
            self._cache.move_to_end(key)
            return entry.identity
        identity = await self._shared(key, token, issuer)
        entry = self._cache.get(key)
        if entry is not None:
            entry.last_used = self._clock.seconds()
        return identity

    def _shared(self, key: bytes, token: str, issuer: str) -> Deferred[Identity | None]:
        """Join the validation in flight for this token, or start one."""
        return self._flight.run(key, lambda: self._validate(key, token, issuer))

    async def revalidate(self, entry: CachedToken) -> Identity | None:
        """Re-ask the issuer about a cached token now (the refresh timer)."""
        return await self._shared(token_key(entry.token), entry.token, entry.issuer)

    async def _validate(self, key: bytes, token: str, issuer: str) -> Identity | None:
        started = self._clock.seconds()
        generation = self._generation
        identity = await self._ask_issuer(token, issuer)
        if identity is None:
            self._cache.pop(key, None)
            return None
        if identity.expires_at is not None and identity.expires_at <= self._clock.seconds():
            self._cache.pop(key, None)
            return None
        if generation == self._generation:
            old = self._cache.get(key)
            self._cache[key] = CachedToken(
                token, issuer, identity, started, old.last_used if old is not None else started
            )
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return identity

    async def _ask_issuer(self, token: str, issuer: str) -> Identity | None:
        if not self._client.known(issuer):
            self.log.info("token issued by unconfigured cluster {issuer} refused", issuer=issuer)
            return None
        self.validations += 1
        query = {"remote": self.cluster_id}
        try:
            record = await self._client.get_json(
                issuer, TOKEN_PATH, token=token, query=query, timeout=self._timeout
            )
        except RemoteHTTPError as e:
            if e.status < 500:
                return None
            raise RemoteUnreachable(
                issuer, f"failed to validate remote token: answered {e.status}"
                + (f": {'; '.join(e.errors)}" if e.errors else "")
            ) from e
        if not isinstance(record, dict):
            return None
        token_uuid = record.get("uuid")
        if not isinstance(token_uuid, str) or not ids.UUID_RE.match(token_uuid):
            return None
        if token_uuid[:5] != issuer:
            return None
        if token.startswith("v2/") and token.split("/")[1] != token_uuid:
            return None
        scopes = record.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes) or not scopes:
            scopes = ["all"]
        expires_at = parse_time(record.get("expires_at"))
        owner = record.get("owner_uuid") if isinstance(record.get("owner_uuid"), str) else None

        user = await self._remote_user(token, issuer, owner)
        if user is None:
            return None
        anonymous = user.uuid == ids.anonymous_user_uuid(self.cluster_id)
        return Identity(
            user_uuid=user.uuid,
            token=token,
            token_uuid=token_uuid,
            is_admin=user.is_admin and not anonymous,
            is_active=user.is_active,
            is_anonymous=anonymous,
            scopes=tuple(scopes),
            expires_at=expires_at,
        )

    async def _local_user(self, uuid: str | None) -> UserRecord | None:
        if not uuid:
            return None
        if uuid == ids.anonymous_user_uuid(uuid[:5]):
            uuid = ids.anonymous_user_uuid(self.cluster_id)
        try:
            return await self._store.get_user(uuid)  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def _remote_user(self, token: str, issuer: str, owner: str | None) -> UserRecord | None:
        query = {"remote": self.cluster_id}
        try:
            remote = await self._client.get_json(
                issuer, USER_PATH, token=token, query=query, timeout=self._timeout
            )
        except RemoteHTTPError as e:
            local = await self._local_user(owner)
            if local is not None:
                return local
            if e.status < 500:
                return None
            raise RemoteUnreachable(issuer, f"users/current answered {e.status}") from e
        except RemoteUnreachable:
            local = await self._local_user(owner)
            if local is not None:
                return local
            raise
        uuid = remote.get("uuid") if isinstance(remote, dict) else None
        if not isinstance(uuid, str) or not ids.UUID_RE.match(uuid) or uuid[:5] != issuer:
            # Clusters can only vouch for their own users.
            return await self._local_user(owner)
        if uuid == ids.anonymous_user_uuid(issuer):
            return await self._local_user(ids.anonymous_user_uuid(self.cluster_id))
        remote = dict(remote)
        if uuid == ids.system_user_uuid(issuer):
            remote["first_name"] = "root"
            remote["last_name"] = f"from cluster {issuer}"
        return await self.upsert_user(remote)

    # -- local copies of remote users (spec 8.2) ----------------------------------

    def _flags(self, prefix: str) -> tuple[bool, bool]:
        rc = self._remotes.get(prefix)
        activate = bool(rc is not None and getattr(rc, "activate_users", False))
        from_login = bool(self.login_cluster) and prefix == self.login_cluster
        users = self._users
        should_setup = (
            from_login or activate or bool(getattr(users, "auto_setup_new_users", False))
            or bool(getattr(users, "new_users_are_active", False))
        )
        should_activate = from_login or activate or bool(getattr(users, "new_users_are_active", False))
        return should_setup, should_activate

    async def upsert_user(self, remote: Mapping[str, Any]) -> UserRecord:
        """Create or update the local copy of a remote user; returns it."""
        uuid = str(remote["uuid"])
        prefix = uuid[:5]
        from_login = bool(self.login_cluster) and prefix == self.login_cluster
        _setup, should_activate = self._flags(prefix)
        decision = activation_decision(remote, should_activate=should_activate)
        for _attempt in range(5):
            existing = await self._local_user(uuid)
            if existing is None:
                created = await self._create_copy(remote, decision, from_login)
                if created is not None:
                    return created
                continue  # created meanwhile by someone else: update it
            return await self._update_copy(existing, remote, decision, from_login)
        raise Conflict(f"could not store the local copy of user {uuid}")

    async def _create_copy(
        self, remote: Mapping[str, Any], decision: bool | None, from_login: bool
    ) -> UserRecord | None:
        uuid = str(remote["uuid"])
        active = bool(decision)
        admin = bool(from_login and active and remote.get("is_admin") is True)
        base = _base_username(remote.get("username"))
        candidates: list[str | None] = [None]
        if base is not None:
            if from_login:
                await self._free_username(base, uuid)
                candidates = [base]
            else:
                candidates = [base] + [f"{base}{n}" for n in range(2, 100)] + [None]
        for username in candidates:
            try:
                return await self._store.create_user(  # type: ignore[no-any-return]
                    uuid=uuid,
                    email=_text(remote.get("email")),
                    username=username,
                    first_name=_text(remote.get("first_name")),
                    last_name=_text(remote.get("last_name")),
                    is_active=active,
                    is_admin=admin,
                    prefs=remote.get("prefs") if isinstance(remote.get("prefs"), dict) else None,
                )
            except Conflict:
                if await self._local_user(uuid) is not None:
                    return None
                if from_login and username is not None:
                    await self._free_username(username, uuid)
        return None

    async def _free_username(self, username: str, owner: str) -> None:
        """LoginCluster users win their name: rename whoever holds it here."""
        for user in await self._store.list_users():
            if user.username == username and user.uuid != owner:
                new = f"{username}{self._rng.randrange(99999999)}"
                self.log.warn(
                    "username {name} of {holder} collides with login-cluster user {owner};"
                    " renaming it to {new}", name=username, holder=user.uuid, owner=owner, new=new,
                )
                await self._store.update_user(user.uuid, username=new)

    async def _update_copy(
        self, existing: UserRecord, remote: Mapping[str, Any], decision: bool | None, from_login: bool
    ) -> UserRecord:
        changes: dict[str, Any] = {}
        for name in _USER_FIELDS:
            value = remote.get(name)
            if value is None:
                continue
            if name == "prefs" and not isinstance(value, dict):
                continue
            if name != "prefs":
                value = _text(value)
            if getattr(existing, name) != value:
                changes[name] = value
        if decision is not None and existing.is_active != decision:
            changes["is_active"] = decision
        active = changes.get("is_active", existing.is_active)
        if from_login and active and isinstance(remote.get("is_admin"), bool):
            if existing.is_admin != remote["is_admin"]:
                changes["is_admin"] = remote["is_admin"]
        base = _base_username(remote.get("username"))
        wanted: list[str] = []
        if base is not None:
            if not existing.username:
                wanted = [base] + [f"{base}{n}" for n in range(2, 100)]
            elif from_login and existing.username != base:
                wanted = [base]
        if not changes and not wanted:
            return existing
        for username in wanted:
            if from_login:
                await self._free_username(username, existing.uuid)
            try:
                return await self._store.update_user(  # type: ignore[no-any-return]
                    existing.uuid, **changes, username=username
                )
            except Conflict:
                continue
        if not changes:
            return existing
        return await self._store.update_user(existing.uuid, **changes)  # type: ignore[no-any-return]

    # -- the cache, for the refresh timer and admins --------------------------------

    def entries(self) -> list[CachedToken]:
        """A snapshot of the cached tokens."""
        return list(self._cache.values())

    def stale(self, now: float, age: float | None = None) -> list[CachedToken]:
        """Cached tokens whose last check is at least ``age`` (default: the interval) old."""
        limit = self.refresh_interval if age is None else age
        return [e for e in self._cache.values() if now - e.checked_at >= limit]

    def evict_idle(self, now: float, idle: float) -> int:
        """Drop entries nobody presented for ``idle`` seconds (the timer does
        not keep revalidating a token used once); returns how many."""
        doomed = [k for k, e in self._cache.items() if now - e.last_used >= idle]
        for key in doomed:
            del self._cache[key]
        return len(doomed)

    def discard(self, entry: CachedToken) -> None:
        key = token_key(entry.token)
        if self._cache.get(key) is entry:
            del self._cache[key]

    def drop(self, token_uuid: str | None = None, user_uuid: str | None = None) -> int:
        """Forget cached answers for a token uuid, for a user, or (no arguments) all.

        The next use asks the issuer again. Returns how many entries went.
        """
        self._generation += 1
        if token_uuid is None and user_uuid is None:
            count = len(self._cache)
            self._cache.clear()
            return count
        doomed = [
            key for key, e in self._cache.items()
            if e.identity.token_uuid == token_uuid or e.identity.user_uuid == user_uuid
        ]
        for key in doomed:
            del self._cache[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._cache)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""

