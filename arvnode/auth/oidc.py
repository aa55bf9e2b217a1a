"""OpenID Connect, the protocol side: discovery, the code exchange, ID token checks, the state.

Why a module of its own: ``arvnode/api/login_oidc.py`` only decides where
the browser goes; everything that talks to the provider or judges what it
said is here, testable without a node.

Decisions (Arvados: lib/controller/localdb/login_oidc.go):

* The provider is found through ``<Issuer>/.well-known/openid-configuration``
  and its metadata kept for an hour; the JWKS is kept until an ID token
  names a key it lacks (the provider rotated its keys), then fetched again
  (ID tokens come from the token endpoint, not from the browser, so nobody
  else can make us refetch). Both go through the node's Twisted HTTP client
  (:class:`arvnode.remote.client.RemoteClient`: deadlines on the clock,
  bounded bodies, verified TLS unless ``TLS.Insecure``), never a blocking
  client on the reactor thread.
* The ``state`` sent to the provider carries ``return_to`` and ``remote``
  and its creation time, HMAC-SHA256-signed with a key derived from
  ``SystemRootToken`` (every node of the cluster has it, so the provider
  may send the browser back to any node); it expires after
  :data:`STATE_LIFETIME` seconds, as in Arvados. The ID token's ``nonce``
  is an HMAC of the state, so it needs no server-side storage either.
* ID tokens: signature against the provider's JWKS with an asymmetric
  algorithm the provider advertises (never ``none`` or HMAC), ``iss`` the
  issuer of the metadata, ``aud`` our ClientID, ``exp`` (on the node's
  clock, :data:`LEEWAY` seconds of skew), ``nonce``. The email claim is
  required and, unless ``EmailVerifiedClaim`` is ``""``, must be verified:
  Arvados refuses an unverified address and so do we.
* The client secret goes to the token endpoint the way the provider's
  ``token_endpoint_auth_methods_supported`` allows (``client_secret_basic``
  first, the OAuth default). Codes, tokens and the secret never reach a log
  or an error message.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from typing import Any, Mapping
from urllib.parse import quote, urlencode, urlsplit

import jwt
from twisted.web.http_headers import Headers

from arvnode.remote.client import RemoteError

__all__ = [
    "IDTokenInvalid", "OIDCProvider", "ProviderRefused", "ProviderUnreachable", "StateInvalid",
    "nonce_for", "sign_state", "state_key", "verify_state",
]

#: Seconds a login may take between leaving for the provider and coming back (Arvados: 300).
STATE_LIFETIME = 300.0
#: Clock skew tolerated on the ID token's ``exp`` and ``iat``.
LEEWAY = 60.0
METADATA_TTL = 3600.0
#: The name of the provider in the RemoteClient (one pseudo-remote).
CLIENT_KEY = "oidc"
_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
               "EdDSA")


class ProviderUnreachable(Exception):
    """The provider could not be asked, or answered nonsense (→ 502)."""


class ProviderRefused(Exception):
    """The provider said no: its error text, never a secret (→ 401)."""


class IDTokenInvalid(Exception):
    """The ID token is not one we may believe (→ 401)."""


class StateInvalid(Exception):
    """The state is not ours, was changed, or expired (→ 400)."""


# -- state and nonce -------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def state_key(system_root_token: str) -> bytes:
    """The state's HMAC key: derived, so the root token itself signs nothing."""
    return hmac.new(system_root_token.encode("utf-8"), b"arvnode oidc login state v1",
                    hashlib.sha256).digest()


def sign_state(key: bytes, now: float, return_to: str, remote: str) -> str:
    body = json.dumps({"t": int(now), "u": return_to, "r": remote, "n": _b64(os.urandom(12))},
                      separators=(",", ":")).encode("utf-8")
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return _b64(body) + "." + _b64(mac)


def verify_state(key: bytes, state: str, now: float) -> tuple[str, str]:
    """(return_to, remote) of a state we made less than STATE_LIFETIME ago."""
    try:
        body_text, mac_text = state.split(".")
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, TypeError):
        raise StateInvalid("the state parameter is not one this cluster made") from None
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
        raise StateInvalid("the state parameter is not one this cluster made (or was changed)")
    doc = json.loads(body)
    age = now - float(doc["t"])
    if age < -LEEWAY or age > STATE_LIFETIME:
        raise StateInvalid(f"the login took too long (more than {STATE_LIFETIME:g}s): start again")
    return str(doc["u"]), str(doc["r"])


def nonce_for(key: bytes, state: str) -> str:
    return _b64(hmac.new(key, b"nonce:" + state.encode("ascii"), hashlib.sha256).digest())


# -- the provider -------------------------------------------------------------------


def _text(value: Any, limit: int = 200) -> str:
    return str(value)[:limit]


class OIDCProvider:
    """One configured provider (``Login.OpenIDConnect`` or ``Login.Google``).

    ``settings`` is an :class:`arvnode.config.model.OpenIDConnectConfig`;
    ``client`` a :class:`RemoteClient` whose remote :data:`CLIENT_KEY` is
    the issuer's host (any URL may be fetched through it); ``clock`` the
    node's IReactorTime.
    """

    def __init__(self, settings: Any, client: Any, clock: Any) -> None:
        self.settings = settings
        self.issuer = settings.issuer
        self.client = client
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: Any = None

    # -- HTTP ---------------------------------------------------------------------

    async def _call(self, method: str, url: str, headers: Headers | None = None,
                    body: bytes | None = None) -> tuple[int, Any]:
        """(status, decoded JSON or None) of one request to the provider."""
        what = urlsplit(url).path or "/"
        try:
            response = await self.client.request(CLIENT_KEY, method, url, headers=headers, body=body)
            data = await self.client.read_body(CLIENT_KEY, response, limit=1 << 20)
        except RemoteError as e:
            reason = getattr(e, "reason", "") or e.message
            raise ProviderUnreachable(
                f"OpenID Connect provider {self.issuer} unreachable ({method} {what}): {reason}"
            ) from e
        try:
            doc = json.loads(data) if data else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        if response.code >= 500 or (200 <= response.code < 300 and not isinstance(doc, dict)):
            raise ProviderUnreachable(
                f"OpenID Connect provider {self.issuer} answered {response.code} to "
                f"{method} {what}" + ("" if response.code >= 500 else " without a JSON object"))
        return response.code, doc

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (cached for METADATA_TTL)."""
        now = self.clock.seconds()
        if self._metadata is not None and now - self._metadata_at < METADATA_TTL:
            return self._metadata
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        code, doc = await self._call("GET", url, Headers({b"Accept": [b"application/json"]}))
        if code != 200:
            raise ProviderUnreachable(f"OpenID Connect provider {self.issuer} answered {code} "
                                      "to GET /.well-known/openid-configuration")
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
            raise ProviderUnreachable(
                f"OpenID Connect provider {self.issuer} calls itself {_text(doc.get('issuer'))!r}: "
                "Login.OpenIDConnect.Issuer must be the provider's issuer exactly")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(key), str) or "://" not in doc[key]:
                raise ProviderUnreachable(
                    f"OpenID Connect provider {self.issuer}: its metadata has no {key}")
        self._metadata, self._metadata_at = doc, now
        return doc

    # -- step 1 -------------------------------------------------------------------

    async def authorization_url(self, redirect_uri: str, state: str, nonce: str) -> str:
        meta = await self.metadata()
        query = dict(self.settings.authentication_request_parameters)
        query.update(response_type="code", client_id=self.settings.client_id,
                     redirect_uri=redirect_uri, scope="openid email profile",
                     state=state, nonce=nonce)
        endpoint = meta["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    # -- step 2 -------------------------------------------------------------------

    async def exchange(self, code: str, redirect_uri: str) -> str:
        """The raw ID token for an authorization code."""
        meta = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        headers = Headers({b"Accept": [b"application/json"],
                           b"Content-Type": [b"application/x-www-form-urlencoded"]})
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        cid, secret = self.settings.client_id, self.settings.client_secret
        if "client_secret_basic" in methods or "client_secret_post" not in methods:
            # RFC 6749 2.3.1: each part form-encoded before base64.
            pair = f"{quote(cid, safe='')}:{quote(secret, safe='')}".encode("utf-8")
            headers.setRawHeaders(b"Authorization", [b"Basic " + base64.b64encode(pair)])
        else:
            form.update(client_id=cid, client_secret=secret)
        status, doc = await self._call("POST", meta["token_endpoint"], headers,
                                       urlencode(form).encode("ascii"))
        if status != 200:
            detail = ""
            if isinstance(doc, dict):
                detail = ": ".join(_text(doc[k]) for k in ("error", "error_description") if doc.get(k))
            raise ProviderRefused(f"the OpenID Connect provider refused the login code "
                                  f"({status}{': ' + detail if detail else ''})")
        raw = doc.get("id_token")
        if not isinstance(raw, str) or not raw:
            raise ProviderRefused("the OpenID Connect provider's answer has no id_token")
        return raw

    async def _key_for(self, kid: str | None, alg: str) -> Any:
        """The provider's public key named ``kid`` (refetching the JWKS once if unknown)."""
        # (A key the refetched set lacks too is refused below.)
        for attempt in (0, 1):
            if self._jwks is None or attempt == 1:
                meta = await self.metadata()
                code, doc = await self._call("GET", meta["jwks_uri"],
                                             Headers({b"Accept": [b"application/json"]}))
                if code != 200:
                    raise ProviderUnreachable(f"OpenID Connect provider {self.issuer} answered "
                                              f"{code} to GET {urlsplit(meta['jwks_uri']).path}")
                try:
                    self._jwks = jwt.PyJWKSet.from_dict(doc)
                except jwt.PyJWTError as e:
                    raise ProviderUnreachable(
                        f"OpenID Connect provider {self.issuer}: unusable JWKS ({e})") from e
            candidates = [k for k in self._jwks.keys
                          if (kid is None or k.key_id == kid) and k.public_key_use in (None, "sig")]
            if kid is None:
                candidates = [k for k in candidates if _fits(k, alg)]
            if candidates:
                return candidates[0]
        raise IDTokenInvalid(f"the ID token is signed with a key ({_text(kid, 60)}) "
                             "the provider does not publish")

    async def verify_id_token(self, raw: str, nonce: str) -> dict[str, Any]:
        """The claims of a valid ID token for us; :class:`IDTokenInvalid` otherwise."""
        meta = await self.metadata()
        try:
            header = jwt.get_unverified_header(raw)
        except jwt.PyJWTError as e:
            raise IDTokenInvalid(f"the ID token is not a JWT ({e})") from None
        alg = header.get("alg")
        advertised = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in _ALGORITHMS or alg not in advertised:
            raise IDTokenInvalid(f"the ID token's algorithm {_text(alg, 20)!r} is not accepted")
        key = await self._key_for(header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                raw, key=key.key, algorithms=[alg], audience=self.settings.client_id,
                issuer=meta["issuer"],
                options={"require": ["iss", "aud", "exp", "iat"], "verify_exp": False,
                         "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidSignatureError:
            raise IDTokenInvalid("the ID token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise IDTokenInvalid("the ID token is not meant for this cluster "
                                 "(its audience is not Login.OpenIDConnect.ClientID)") from None
        except jwt.InvalidIssuerError:
            raise IDTokenInvalid(f"the ID token was not issued by {self.issuer}") from None
        except jwt.PyJWTError as e:
            raise IDTokenInvalid(f"the ID token is not valid ({e})") from None
        now = self.clock.seconds()
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] + LEEWAY < now:
            raise IDTokenInvalid("the ID token has expired")
        if "nbf" in claims and isinstance(claims["nbf"], (int, float)) and claims["nbf"] - LEEWAY > now:
            raise IDTokenInvalid("the ID token is not valid yet")
        azp = claims.get("azp")
        if isinstance(claims["aud"], list) and len(claims["aud"]) > 1 and azp != self.settings.client_id:
            raise IDTokenInvalid("the ID token was issued to another client (azp)")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise IDTokenInvalid("the ID token's nonce is not this login's")
        return claims

    # -- access tokens (Login.OpenIDConnect.AcceptAccessToken) -----------------------

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The claims the provider's ``userinfo_endpoint`` gives for an access token.

        The provider is the judge of its own access tokens: 400/401/403 mean
        it does not accept this one (:class:`ProviderRefused`); no endpoint,
        another status or no JSON object mean it cannot be asked
        (:class:`ProviderUnreachable`). The token goes only in the
        ``Authorization`` header, never in a URL or a message.
        """
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ProviderUnreachable(
                f"OpenID Connect provider {self.issuer}: its metadata has no userinfo_endpoint, "
                "so access tokens cannot be checked (Login.OpenIDConnect.AcceptAccessToken)")
        headers = Headers({b"Accept": [b"application/json"],
                           b"Authorization": [b"Bearer " + access_token.encode("utf-8", "replace")]})
        status, doc = await self._call("GET", endpoint, headers)
        if status in (400, 401, 403):
            detail = ""
            if isinstance(doc, dict):
                detail = ": ".join(_text(doc[k]) for k in ("error", "error_description") if doc.get(k))
            raise ProviderRefused(f"the OpenID Connect provider does not accept the access token "
                                  f"({status}{': ' + detail if detail else ''})")
        if status != 200:
            raise ProviderUnreachable(f"OpenID Connect provider {self.issuer} answered {status} "
                                      f"to GET {urlsplit(endpoint).path or '/'}")
        return doc  # type: ignore[no-any-return]

    def identity(self, claims: Mapping[str, Any]) -> tuple[str, str, str, str]:
        """(email, username, first name, last name) from verified claims.

        @raise IDTokenInvalid: no email, or an unverified one.
        """
        s = self.settings
        email = claims.get(s.email_claim)
        if not isinstance(email, str) or "@" not in email:
            raise IDTokenInvalid(f"the provider gave no email address (claim {s.email_claim!r}): "
                                 "this cluster needs one to know who you are")
        if s.email_verified_claim and claims.get(s.email_verified_claim) is not True:
            raise IDTokenInvalid(f"cannot log in with unverified email address {email!r}: "
                                 "verify it with your identity provider first")
        username = claims.get(s.username_claim) if s.username_claim else None
        if not isinstance(username, str) or not username:
            username = email.split("@", 1)[0]
        # Arvados user names are letters and digits, starting with a letter.
        username = re.sub(r"[^A-Za-z0-9]", "", username)
        if not username[:1].isalpha():
            username = "u" + username
        first = claims.get("given_name")
        last = claims.get("family_name")
        if not isinstance(first, str) or not first:
            names = str(claims.get("name") or "").split()
            first = " ".join(names[:-1]) if len(names) > 1 else (names[0] if names else username)
            last = names[-1] if len(names) > 1 else ""
        return email, username, first, last if isinstance(last, str) else ""


def _fits(key: Any, alg: str) -> bool:
    family = "OKP" if alg == "EdDSA" else {"R": "RSA", "P": "RSA", "E": "EC"}.get(alg[0], "")
    return str(getattr(key, "key_type", "")) == family
