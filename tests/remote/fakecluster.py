"""A stand-in for a remote Arvados cluster, on a loopback TLS port.

Used because arvnode's own controller does not serve ``users/current``,
``api_client_authorizations/current`` and ``keep_services/accessible`` yet:
this Resource implements exactly what the spec says the *issuing* cluster
does for them (arvados-wire.md §3.5, §8.1, §10.3): a token is accepted if
its secret equals the stored one, or, with ``?remote=<id>``, equals
HMAC-SHA1(stored secret, id); with ``remote`` the token record comes back
with ``api_token: null``. Every other path answers with a JSON echo of the
request (method, path, query, headers, body), which is what the forwarding
tests inspect. Knobs make it fail (status), hang, or hold answers.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import random
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from arvnode import ids
from arvnode.config import RemoteCluster
from arvnode.services import _NoALPN
from arvnode.tls import generate_ca_and_server, load_server_options


@define
class Token:
    uuid: str
    secret: str
    user_uuid: str
    scopes: list[str] = field(factory=lambda: ["all"])
    expires_at: str | None = None

    @property
    def v2(self) -> str:
        return f"v2/{self.uuid}/{self.secret}"


class _Root(Resource):
    isLeaf = True

    def __init__(self, cluster: "FakeCluster") -> None:
        super().__init__()
        self.cluster = cluster

    def render(self, request: Any) -> Any:
        return self.cluster.handle(request)


class _Site(Site):
    def __init__(self, resource: Resource, owner: "FakeCluster") -> None:
        super().__init__(resource)
        self.owner = owner
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.owner.server_protocols.append(p)
        return p


class FakeCluster:
    def __init__(self, cluster_id: str, rng: random.Random | None = None) -> None:
        self.cluster_id = cluster_id
        self.rng = rng or random.Random(5)
        self.tokens: dict[str, Token] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.keep_services: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.fail_status: int | None = None  # answer the token/user endpoints with this
        self.user_fail_status: int | None = None  # only users/current
        self.hang = False  # never answer anything
        self.gate: Deferred[None] | None = None  # hold token answers until fired
        self.echo_status = 200
        self.echo_body: bytes | None = None
        self.echo_headers: dict[bytes, bytes] = {}
        self.server_protocols: list[Any] = []
        self.port = 0
        self.ca: Path | None = None
        self._hanging: list[Any] = []

    # -- data ---------------------------------------------------------------------

    def add_user(self, **fields: Any) -> dict[str, Any]:
        uuid = fields.pop("uuid", None) or ids.new_uuid(self.cluster_id, "tpzed", self.rng)
        user = {
            "kind": "arvados#user", "uuid": uuid, "email": f"{uuid[-4:]}@example.com",
            "username": "user" + uuid[-4:], "first_name": "Fed", "last_name": "User",
            "is_active": True, "is_admin": False, "is_invited": True, "prefs": {},
        }
        user.update(fields)
        self.users[uuid] = user
        return user

    def add_token(self, user_uuid: str, **kw: Any) -> Token:
        token = Token(
            uuid=ids.new_uuid(self.cluster_id, "gj3su", self.rng),
            secret=ids.new_secret(self.rng), user_uuid=user_uuid, **kw,
        )
        self.tokens[token.uuid] = token
        return token

    def deactivate(self, user_uuid: str) -> None:
        """What Arvados' unsetup does: inactive and no longer invited."""
        self.users[user_uuid].update(is_active=False, is_invited=False)

    def revoke(self, token_uuid: str) -> None:
        del self.tokens[token_uuid]

    def calls_to(self, suffix: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"].endswith(suffix)]

    # -- serving --------------------------------------------------------------------

    def _find(self, request: Any) -> Token | None:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if scheme not in ("Bearer", "OAuth2"):
            return None
        parts = presented.strip().split("/")
        if len(parts) == 1:  # a bare secret (v1, or an OIDC access token)
            for row in self.tokens.values():
                if hmac.compare_digest(row.secret, parts[0]):
                    return row
            return None
        if len(parts) != 3 or parts[0] != "v2":
            return None
        row = self.tokens.get(parts[1])
        if row is None:
            return None
        remote = (request.args.get(b"remote") or [self.cluster_id.encode()])[0].decode()
        salted = hmac.new(row.secret.encode(), remote.encode(), hashlib.sha1).hexdigest()
        if hmac.compare_digest(parts[2], row.secret) or hmac.compare_digest(parts[2], salted):
            return row
        return None

    def handle(self, request: Any) -> Any:
        path = request.path.decode()
        body = request.content.read() if request.content is not None else b""
        self.calls.append({
            "method": request.method.decode(), "path": path, "uri": request.uri.decode(),
            "args": {k.decode(): [x.decode() for x in v] for k, v in request.args.items()},
            "headers": {k.decode().lower(): [x.decode("latin-1") for x in v]
                        for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": body,
        })
        if self.hang:
            self._hanging.append(request)
            return NOT_DONE_YET
        if path in ("/arvados/v1/api_client_authorizations/current", "/arvados/v1/users/current"):
            if self.gate is not None and not self.gate.called:
                self.gate.addCallback(lambda _: self._answer_auth(request, path))
                return NOT_DONE_YET
            self._answer_auth(request, path)
            return NOT_DONE_YET
        if path == "/arvados/v1/keep_services/accessible":
            return self._json(request, 200, {"kind": "arvados#keepServiceList", "items": self.keep_services})
        if self.echo_body is not None:
            request.setResponseCode(self.echo_status)
            request.setHeader(b"content-type", b"application/json")
            for name, value in self.echo_headers.items():
                request.setHeader(name, value)
            if request.method == b"HEAD":
                request.setHeader(b"content-length", str(len(self.echo_body)).encode())
                return b""
            return self.echo_body
        return self._json(request, self.echo_status, self.calls[-1] | {"body": body.decode("latin-1")})

    def _answer_auth(self, request: Any, path: str) -> None:
        status = self.fail_status
        if status is None and path.endswith("users/current"):
            status = self.user_fail_status
        if status is not None:
            self._finish(request, status, {"errors": [f"fake failure {status}"]})
            return
        row = self._find(request)
        if row is None:
            self._finish(request, 401, {"errors": ["Not logged in"]})
            return
        if path.endswith("users/current"):
            self._finish(request, 200, self.users[row.user_uuid])
            return
        remote = request.args.get(b"remote")
        self._finish(request, 200, {
            "kind": "arvados#apiClientAuthorization", "uuid": row.uuid,
            "owner_uuid": row.user_uuid, "scopes": row.scopes, "expires_at": row.expires_at,
            "api_token": None if remote else row.secret,
        })

    def _json(self, request: Any, status: int, doc: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(doc).encode()

    def _finish(self, request: Any, status: int, doc: Any) -> None:
        if request.finished or request._disconnected:
            return
        request.write(self._json(request, status, doc))
        request.finish()

    def remote_entry(self, **kw: Any) -> RemoteCluster:
        return RemoteCluster(host=f"127.0.0.1:{self.port}", **kw)


async def start_fake_cluster(testcase: Any, cluster_id: str) -> FakeCluster:
    """Listen on a loopback TLS port with a fresh CA (``cluster.ca``)."""
    fake = FakeCluster(cluster_id)
    paths = generate_ca_and_server(Path(testcase.mktemp()), common_name=cluster_id)
    fake.ca = paths["ca"]
    options = load_server_options(str(paths["cert"]), str(paths["key"]))
    site = _Site(_Root(fake), fake)
    factory = TLSMemoryBIOFactory(options, False, _NoALPN(site))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    fake.port = port.getHost().port
    fake.listening_port = port

    async def cleanup() -> None:
        for p in list(factory.protocols):
            p.abortConnection()
        await maybeDeferred(port.stopListening)
        for _ in range(3):
            await deferLater(reactor, 0, lambda: None)
        await gatherResults([], consumeErrors=True)

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return fake
