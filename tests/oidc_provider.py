"""An in-test OpenID Connect provider, shared by the OIDC login and access-token tests.

A real OpenID provider (Keycloak, Google ...) cannot run here, so the tests
run this small one instead: twisted.web on a loopback port, plain http
(which the config allows only for loopback), serving
``/.well-known/openid-configuration``, ``/authorize`` (which "logs the user
in" at once and sends the browser back with a code), ``/token`` (checks the
client's credentials and the code, answers an RS256-signed ID token made
with ``cryptography`` + PyJWT), ``/jwks`` and ``/userinfo`` (the claims of
an access token :meth:`FakeProvider.issue_access_token` made, 401 for any
other). Each test can make it misbehave (unverified email, another
audience, another signing key, an expired token, an error at /token, a
failing or slow /userinfo).
"""
from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

TRUSTED = "https://wb.example.com"
CLIENT_ID = "arvnode-test"
CLIENT_SECRET = "s3cr3t-Client+Secret/x"


def new_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeProvider(Resource):
    """A minimal OpenID provider on 127.0.0.1 (see the module docstring)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.key = new_key()
        self.kid = "k1"
        self.port: Any = None
        self.codes: dict[str, dict[str, Any]] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.auth_methods = ["client_secret_basic", "client_secret_post"]
        # What the next login's ID token says, and how it is made.
        self.email = "carol@example.org"
        self.claims: dict[str, Any] = {}
        self.sign_key: Any = None  # None: self.key
        self.token_error: tuple[int, dict[str, str]] | None = None
        # Access tokens: token -> the claims /userinfo answers for it.
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.userinfo_requests: list[str] = []  # the tokens /userinfo was asked about
        self.userinfo_error: tuple[int, Any] | None = None  # e.g. (503, {...})
        # Set to a Deferred to hold /userinfo answers until it fires.
        self.userinfo_gate: Deferred[None] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def start(self, testcase: Any) -> FakeProvider:
        self.port = reactor.listenTCP(0, Site(self), interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        return self

    def _json(self, request: Any, status: int, doc: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(doc).encode()

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if path == "/.well-known/openid-configuration":
            return self._json(request, 200, {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "userinfo_endpoint": self.issuer + "/userinfo",
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": self.auth_methods,
            })
        if path == "/jwks":
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            jwk.update(kid=self.kid, use="sig", alg="RS256")
            return self._json(request, 200, {"keys": [jwk]})
        if path == "/userinfo":
            return self._userinfo(request)
        if path == "/authorize":
            self.authorize_requests.append(args)
            code = secrets.token_urlsafe(18)
            self.codes[code] = args
            target = args["redirect_uri"] + "?" + urlencode({"code": code, "state": args["state"]})
            request.setResponseCode(302)
            request.setHeader(b"Location", target.encode())
            return b""
        request.setResponseCode(404)
        return b"not found"

    def render_POST(self, request: Any) -> bytes:
        if request.path != b"/token":
            request.setResponseCode(404)
            return b""
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        auth = request.getHeader(b"authorization")
        self.token_requests.append({"form": form, "authorization": auth})
        if auth:
            cid, _, secret = base64.b64decode(auth.split(b" ", 1)[1]).decode().partition(":")
            cid, secret = unquote(cid), unquote(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        if (cid, secret) != (CLIENT_ID, CLIENT_SECRET):
            return self._json(request, 401, {"error": "invalid_client"})
        if self.token_error is not None:
            return self._json(request, *self.token_error)
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return self._json(request, 400, {"error": "invalid_grant",
                                             "error_description": "Code not valid"})
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": "user-1", "iat": now,
                  "exp": now + 300, "nonce": grant["nonce"], "email": self.email,
                  "email_verified": True, "name": "Carol Ann Smith"}
        claims.update(self.claims)
        id_token = jwt.encode(claims, self.sign_key or self.key, algorithm="RS256",
                              headers={"kid": self.kid})
        return self._json(request, 200, {"access_token": "at-" + secrets.token_urlsafe(15),
                                         "token_type": "Bearer", "id_token": id_token})


    # -- access tokens -----------------------------------------------------------

    def issue_access_token(self, *, as_jwt: bool = True, scope: str = "openid email profile",
                           lifetime: float = 300.0, **claims: Any) -> str:
        """A new access token /userinfo will vouch for (``claims`` override
        the userinfo answer, e.g. ``email_verified=False``): an RS256 JWT
        as Keycloak makes them, or an opaque string as Google's are."""
        now = int(time.time())
        info = {"sub": "user-1", "email": self.email, "email_verified": True,
                "name": "Carol Ann Smith", "preferred_username": "carol"}
        info.update(claims)
        if as_jwt:
            token = jwt.encode({"iss": self.issuer, "aud": "account", "sub": info["sub"],
                                "iat": now, "exp": now + int(lifetime), "scope": scope,
                                "jti": secrets.token_urlsafe(8)},
                               self.key, algorithm="RS256", headers={"kid": self.kid})
        else:
            token = "ya29." + secrets.token_urlsafe(40)
        self.access_tokens[token] = info
        return token

    def _userinfo(self, request: Any) -> Any:
        auth = (request.getHeader(b"authorization") or b"").decode()
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        self.userinfo_requests.append(token)

        def answer() -> bytes:
            if self.userinfo_error is not None:
                return self._json(request, *self.userinfo_error)
            claims = self.access_tokens.get(token)
            if claims is None:
                request.setHeader(b"WWW-Authenticate", b'Bearer error="invalid_token"')
                return self._json(request, 401, {"error": "invalid_token",
                                                 "error_description": "Token verification failed"})
            return self._json(request, 200, claims)

        if self.userinfo_gate is None:
            return answer()

        def finish(_: Any) -> None:
            request.write(answer())
            request.finish()

        self.userinfo_gate.addCallback(finish)
        return NOT_DONE_YET


def oidc_config(issuer: str, **more: Any) -> dict[str, Any]:
    conf = {"Enable": True, "Issuer": issuer, "ClientID": CLIENT_ID,
            "ClientSecret": CLIENT_SECRET,
            "AuthenticationRequestParameters": {"prompt": "select_account"}}
    conf.update(more)
    return {"Login.OpenIDConnect": conf, "Login.TrustedClients": {TRUSTED + "/": {}},
            "Users.NewUsersAreActive": True}


