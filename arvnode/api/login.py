"""``/login`` and ``/logout``: the test login, LoginCluster redirects, TrustedClients.

Why here and not in a resource: these are browser endpoints (HTML forms and
redirects, no CORS, no token needed to start), not ``/arvados/v1`` records.

Decisions (spec arvados-wire.md §8.4, §8.5; DESIGN.md §3a):

* A **satellite** (``Login.LoginCluster: X``, X is not us) answers ``GET
  /login`` with 302 to ``<X>/login?return_to=...[&remote=...]``. ``remote``
  is passed through as the client gave it, as Arvados does: a client that
  wants a token for one cluster only asks for it (``remote=<that cluster>``)
  and gets it salted; without ``remote`` the token is X's plain v2 token,
  which every cluster of the federation accepts (they validate it with X).
  The satellite does not judge ``return_to``: X's ``TrustedClients`` does.
* The **login cluster** (or a standalone cluster) logs people in with
  ``Login.Test.Users`` (username → Email, Password; Arvados' test login):
  ``GET /login`` shows a plain HTML form (no JavaScript, so any HTTP client
  can drive it), ``POST /login`` checks the password (constant time),
  creates the user on first login (found again by email or username),
  issues a token and answers 303 to ``return_to`` with
  ``api_token=v2/<uuid>/<secret>`` — salted for ``remote`` when given.
  ``POST /arvados/v1/users/authenticate`` (Arvados' JSON form of the same
  check) returns the token record with ``api_token``.
* ``return_to`` must be ``http(s)``, without userinfo, backslashes, spaces or
  control characters, with a plain ASCII host name or IP address (what a
  browser would rewrite, we refuse, as Go's url.Parse does), and its origin must be
  one of ``Login.TrustedClients`` (``scheme://*.domain`` matches subdomains)
  or, with ``TrustPrivateNetworks``, localhost or a private address; else
  400 naming the problem. (arvnode runs no Workbench, so there is no
  implicit Workbench entry.)
* ``/logout`` with a token issued by another cluster (the login cluster, on
  a satellite): the token is dropped from this node's caches at once,
  revoked at its issuer server-side (the issuer is the one cluster the
  unsalted token may be sent to, and a redirect cannot carry it safely),
  then the browser is sent to ``<issuer>/logout?return_to=...`` so the
  issuer ends whatever else it holds. With a token of ours, the token is
  revoked here (the configured root and anonymous tokens excepted) and the
  browser goes to ``return_to``. Satellites still accept the revoked token
  until their next check, i.e. within one ``Login.RemoteTokenRefresh``.
* With ``Login.OpenIDConnect`` (or ``Login.Google``) instead of the test
  login, ``GET /login`` is a round trip to the provider
  (:mod:`arvnode.api.login_oidc`); what happens once the provider vouched
  for an email address (user found or created, token issued, salted for
  ``remote``, 303 to ``return_to``) is :meth:`LoginHandler.deliver`, shared
  by both methods.
"""
from __future__ import annotations

import hmac
import html
import ipaddress
import re
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from arvnode import ids
from arvnode.api import params as P
from arvnode.api.login_oidc import OIDCLogin
from arvnode.auth.local_users import find_or_create_user
from arvnode.auth.salting import salt_token
from arvnode.auth.tokens import token_from_request
from arvnode.http.resource import HTTPError
from arvnode.remote.client import RemoteError, RemoteHTTPError
from arvnode.store.errors import StoreUnavailable
from arvnode.store.kinds import KINDS

__all__ = ["LoginHandler", "return_to_problem"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    return scheme.lower(), host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme, 0)


def return_to_problem(target: str, trusted: tuple[str, ...], *,
                      trust_private_networks: bool = False) -> str | None:
    """Why ``target`` may not receive a token, or None if it may (spec 8.5)."""
    # Browsers read "\\" as "/" and drop tabs and newlines; urlsplit does
    # not, so "https://evil.com\\.trusted.example/" would pass a wildcard
    # entry while the browser (and the token) goes to evil.com.
    if any(ch in "\\\x7f" or ch <= " " for ch in target):
        return f"{target!r} contains a backslash, a space or a control character"
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError as e:
        return f"{target!r} is not a valid URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{target!r} is not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "a return_to URL with a user name or password is not accepted"
    if not _HOST_RE.fullmatch(parts.hostname) and not _is_ip(parts.hostname):
        # Percent-encoded or non-ASCII hosts are decoded/IDNA-mapped by the
        # browser, which our comparison would not follow.
        return f"{target!r} does not have a plain DNS name (letters, digits, '-', '.') or IP address"
    want = _origin(parts.scheme, parts.hostname, port)
    for entry in trusted:
        try:
            t = urlsplit(entry)
            tport = t.port
        except ValueError:
            continue
        if not t.hostname:
            continue
        scheme, host, tp = _origin(t.scheme, t.hostname, tport)
        if scheme != want[0] or tp != want[2]:
            continue
        if host == want[1]:
            return None
        if host.startswith("*.") and want[1].endswith(host[1:]):
            return None
    if trust_private_networks:
        if want[1] == "localhost":
            return None
        try:
            address = ipaddress.ip_address(want[1])
        except ValueError:
            address = None
        if address is not None and (address.is_private or address.is_loopback):
            return None
    origin = f"{want[0]}://{parts.netloc.rsplit('@', 1)[-1]}"
    return f"{origin} is not in Login.TrustedClients"


def _with_token(target: str, token: str) -> str:
    sep = "&" if "?" in target else "?"
    fragment = ""
    if "#" in target:
        target, fragment = target.split("#", 1)
        fragment = "#" + fragment
    return f"{target}{sep}api_token={quote(token, safe='/')}{fragment}"


_FORM_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Log in to {cluster}</title></head>
<body>
<h1>Log in to {cluster}</h1>
{error}<form method="POST" action="/login">
<input type="hidden" name="return_to" value="{return_to}">
<input type="hidden" name="remote" value="{remote}">
<p><label>Username <input type="text" name="username" autofocus></label></p>
<p><label>Password <input type="password" name="password"></label></p>
<p><input type="submit" value="Log in"></p>
</form>
</body></html>
"""


class LoginHandler:
    """The ``/login``, ``/logout`` and ``users/authenticate`` endpoints of one node.

    ``deps`` is the controller's :class:`arvnode.api.resources.base.Deps`;
    ``remote_client`` the node's :class:`arvnode.remote.client.RemoteClient`
    (None: no federation); ``oidc_provider`` an
    :class:`arvnode.auth.oidc.OIDCProvider` when an OpenID Connect login is
    enabled.
    """

    log = Logger()

    def __init__(self, deps: Any, remote_client: Any = None, oidc_provider: Any = None) -> None:
        self.deps = deps
        self.remote_client = remote_client
        login = deps.config.login
        self.login_cluster = login.login_cluster if login.login_cluster != deps.cluster_id else ""
        self.oidc = OIDCLogin(self, oidc_provider) if oidc_provider is not None else None

    @property
    def clock(self) -> IReactorTime:
        return self.deps.clock  # type: ignore[no-any-return]

    # -- helpers --------------------------------------------------------------

    def _check_return_to(self, target: str, what: str = "return_to") -> None:
        login = self.deps.config.login
        problem = return_to_problem(target, login.trusted_clients,
                                    trust_private_networks=login.trust_private_networks)
        if problem is not None:
            raise HTTPError(400, f"invalid {what} parameter: {problem}")

    def _remote_base(self, cluster: str) -> str:
        if self.remote_client is None or not self.remote_client.known(cluster):
            raise HTTPError(503, f"cluster {cluster} has no RemoteClusters entry with a Host: "
                                 "this node cannot send you there (configuration error)")
        return str(self.remote_client.base_url(cluster))

    @staticmethod
    def _redirect(request: Any, status: int, location: str) -> Any:
        request.setResponseCode(status)
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"0")
        request.finish()
        return NOT_DONE_YET

    @staticmethod
    def _html(request: Any, status: int, text: str) -> Any:
        data = text.encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(data)).encode())
        request.write(data)
        request.finish()
        return NOT_DONE_YET

    def _params(self, request: Any) -> dict[str, Any]:
        params, _ = P.read_params(request, max_size=self.deps.config.api.max_request_size)
        return {k: v for k, v in params.items() if isinstance(v, str)}

    def _test_users(self) -> Any:
        login = self.deps.config.login
        return login.test_users if login.test_enable else {}

    # -- /login -----------------------------------------------------------------

    async def login(self, request: Any, method: str) -> Any:
        params = self._params(request)
        return_to = params.get("return_to", "")
        remote = params.get("remote", "")
        if remote and not ids.CLUSTER_ID_RE.match(remote):
            raise HTTPError(400, f"invalid remote parameter {remote[:40]!r}: expected a cluster id")
        if self.login_cluster:
            if method not in ("GET", "HEAD", "POST"):
                raise HTTPError(405, f"method {method} is not allowed on /login", {"Allow": "GET, POST"})
            query = {"return_to": return_to}
            if remote:
                query["remote"] = remote
            target = self._remote_base(self.login_cluster) + "/login?" + urlencode(query)
            return self._redirect(request, 302, target)
        if self.oidc is not None:
            return await self.oidc.login(request, method, params)
        if not self._test_users():
            raise HTTPError(404, "this cluster has no login method configured (set "
                                 "Login.OpenIDConnect, Login.Test.Enable and Login.Test.Users, "
                                 "or Login.LoginCluster)")
        if not return_to:
            raise HTTPError(400, "missing return_to parameter: where should the token go?")
        self._check_return_to(return_to)
        if method in ("GET", "HEAD"):
            return self._form(request, 200, return_to, remote)
        if method != "POST":
            raise HTTPError(405, f"method {method} is not allowed on /login", {"Allow": "GET, POST"})
        user = await self._check_password(params.get("username", ""), params.get("password", ""))
        if user is None:
            return self._form(request, 401, return_to, remote,
                              error="Wrong username or password.")
        return await self.deliver(request, user, return_to, remote, how="test login")

    async def deliver(self, request: Any, user: Any, return_to: str, remote: str, how: str) -> Any:
        """Issue ``user`` a token (salted for ``remote``) and send the browser to ``return_to``."""
        token = await self._issue(user)
        if remote and remote != self.deps.cluster_id:
            token = salt_token(token, remote)
        self.log.info("{how}: {user} logged in (token for {where})",
                      how=how, user=user.uuid, where=remote or "any cluster")
        return self._redirect(request, 303, _with_token(return_to, token))

    def _form(self, request: Any, status: int, return_to: str, remote: str, error: str = "") -> Any:
        page = _FORM_PAGE.format(
            cluster=html.escape(self.deps.cluster_id),
            return_to=html.escape(return_to, quote=True),
            remote=html.escape(remote, quote=True),
            error=f"<p class=\"error\">{html.escape(error)}</p>\n" if error else "",
        )
        return self._html(request, status, page)

    async def _check_password(self, username: str, password: str) -> Any:
        """The local user for a correct Login.Test.Users password (created on first login)."""
        entry = self._test_users().get(username) if username else None
        # Compare even for an unknown name, so timing does not tell names apart.
        expected = (entry.password if entry is not None else "\0unknown").encode("utf-8")
        ok = hmac.compare_digest(expected, password.encode("utf-8", "surrogatepass"))
        if entry is None or not ok or not entry.password:
            return None
        return await self._user_for(username, entry.email)

    async def _user_for(self, username: str, email: str, first_name: str | None = None,
                        last_name: str = "") -> Any:
        try:
            return await find_or_create_user(self.deps.store, self.deps.config.users, username,
                                             email, first_name, last_name)
        except StoreUnavailable as e:
            raise HTTPError(503, str(e)) from e

    async def _issue(self, user: Any) -> str:
        lifetime = float(self.deps.config.login.token_lifetime)
        expires = self.clock.seconds() + lifetime if lifetime > 0 else None
        row = await self.deps.store.create_token(user.uuid, expires_at=expires, scopes=["all"])
        return str(row.v2)

    # -- POST /arvados/v1/users/authenticate ------------------------------------------

    async def authenticate(self, request: Any) -> Any:
        """Arvados' JSON password check: ``{username, password}`` → token record."""
        if self.login_cluster:
            raise HTTPError(404, f"users/authenticate: log in on the login cluster {self.login_cluster}")
        params = self._params(request)
        user = await self._check_password(params.get("username", ""), params.get("password", ""))
        if user is None:
            raise HTTPError(401, "wrong username or password")
        token = await self._issue(user)
        uuid, secret = token.split("/")[1:3]
        record = await self.deps.store.get_object(KINDS["api_client_authorizations"], uuid)
        out = {k: v for k, v in record.items() if k not in ("api_token", "secret")}
        out.update(kind="arvados#apiClientAuthorization", uuid=uuid, api_token=secret,
                   owner_uuid=user.uuid)
        return out

    # -- /logout ----------------------------------------------------------------

    async def logout(self, request: Any, method: str) -> Any:
        if method not in ("GET", "HEAD", "POST"):
            raise HTTPError(405, f"method {method} is not allowed on /logout", {"Allow": "GET, POST"})
        params = self._params(request)
        return_to = params.get("return_to", "")
        token = token_from_request(request)
        issuer = self._remote_issuer(token)
        if issuer is not None and token:
            token_uuid = token.split("/")[1]
            self.deps.authenticator.forget(token_uuid=token_uuid)
            await self._revoke_at_issuer(issuer, token, token_uuid)
            query = "?" + urlencode({"return_to": return_to}) if return_to else ""
            return self._redirect(request, 302, self._remote_base(issuer) + "/logout" + query)
        if return_to:
            self._check_return_to(return_to)
        if token:
            await self._revoke_local(token)
        if return_to:
            return self._redirect(request, 302, return_to)
        return self._html(request, 200, "<!DOCTYPE html><html><body><p>You are logged out of "
                                        f"{html.escape(self.deps.cluster_id)}.</p></body></html>\n")

    def _remote_issuer(self, token: str | None) -> str | None:
        if not token or not token.startswith("v2/"):
            return None
        parts = token.split("/")
        if len(parts) < 3 or not ids.UUID_RE.match(parts[1]):
            return None
        issuer = parts[1][:5]
        if issuer == self.deps.cluster_id or self.remote_client is None:
            return None
        return issuer if self.remote_client.known(issuer) else None

    async def _revoke_at_issuer(self, issuer: str, token: str, token_uuid: str) -> None:
        """Best effort: the browser is sent to the issuer's /logout either way."""
        if len(token.split("/")[2]) == 40:
            return  # salted for us: the issuer accepts it only to validate it
        headers = Headers({b"Authorization": [b"Bearer " + token.encode("utf-8")],
                           b"Accept": [b"application/json"]})
        path = f"/arvados/v1/api_client_authorizations/{token_uuid}"
        try:
            response = await self.remote_client.request(issuer, "DELETE", path, headers=headers)
            await self.remote_client.read_body(issuer, response)
        except RemoteError as e:
            self.log.warn("logout: could not revoke token {uuid} at {issuer}: {error}",
                          uuid=token_uuid, issuer=issuer, error=e.message)
            return
        if response.code >= 300 and response.code != 404:
            err = RemoteHTTPError(response.code, b"", cluster=issuer)
            self.log.warn("logout: revoking token {uuid}: {error}", uuid=token_uuid, error=err.message)

    async def _revoke_local(self, token: str) -> None:
        try:
            identity = await self.deps.authenticator.authenticate(token)
        except RemoteError:
            return
        if identity is None:
            return
        c = self.deps.cluster_id
        uuid = identity.token_uuid
        if uuid[:5] != c or uuid in (ids.system_root_token_uuid(c), ids.anonymous_token_uuid(c)):
            return
        await self.deps.authenticator.revoke(uuid)
        self.deps.levels.invalidate()
