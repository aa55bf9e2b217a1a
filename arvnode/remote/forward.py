"""Relay one API request to another cluster and stream the answer back.

Why a relay and not "parse, call, re-encode": federation must work for every
resource and method, including ones this node does not implement, so the
request goes out as it came in (method, path, query, body) with only what
the spec says must change (arvados-wire.md §3.4, §3.6, §7.3, §7.4):

* the client's token never leaves unsalted: ``api_token`` (and
  ``reader_tokens``) are removed from the query string and from an
  urlencoded body, ``Cookie`` is not copied, and ``Authorization: Bearer``
  carries the token salted for the target (:func:`outgoing_token`);
* hop-by-hop headers, ``Host``, ``Accept-Encoding``, ``Content-Length`` and
  ``If-None-Match`` are dropped; ``X-Request-Id`` is kept; ``Via:
  <proto> arvados-controller`` and ``X-Forwarded-For`` are appended;
* a request whose ``Via`` already names a controller is never forwarded
  again. The controller's router (:mod:`arvnode.api.federation`) serves
  such a request locally, as Arvados does, before it gets here; should one
  reach the relay anyway it is answered **508 Loop Detected**, never sent;
* failures name the cluster: unreachable or 5xx → **502**, no answer within
  the deadline → **504**; a remote 4xx is passed through with its body.

The response body is streamed with backpressure: the remote connection is
registered as the producer of our response, so a slow client pauses the
remote instead of filling memory.

Entry points for the router: :meth:`Forwarder.forward` and the pure
:func:`forwarding_headers` / :func:`outgoing_token` / :func:`strip_api_token_query`.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from arvnode import ids
from arvnode.auth.salting import AlreadySalted, ObsoleteToken, TokenFormatError, salt_token
from arvnode.http.resource import HTTPError
from arvnode.remote.client import RemoteClient, RemoteHTTPError, RemoteTimeout, RemoteUnreachable, UnknownRemote

__all__ = [
    "Forwarder",
    "HOP_BY_HOP",
    "VIA_CONTROLLER",
    "came_through_controller",
    "forwarding_headers",
    "outgoing_token",
    "strip_api_token_query",
]

VIA_CONTROLLER = b"arvados-controller"

#: Request headers never copied to the remote (hop-by-hop, RFC 7230 §6.1,
#: plus what the relay recomputes).
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"trailers", b"upgrade", b"transfer-encoding", b"content-length",
        b"host", b"accept-encoding", b"if-none-match", b"authorization", b"expect",
        # Credentials for this cluster only: a browser's cookies (Arvados'
        # arvados_api_token cookie is the unsalted token).
        b"cookie",
    }
)
#: Response headers not copied back (the local server frames the answer).
_RESPONSE_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"trailers", b"upgrade", b"transfer-encoding", b"date", b"server",
        b"x-request-id",
    }
)
_FORM = b"application/x-www-form-urlencoded"


class LocalTokenToLoginCluster(HTTPError):
    def __init__(self) -> None:
        super().__init__(
            401, "cannot use a locally issued token to forward a request to our login cluster"
        )


def outgoing_token(
    token: str | None,
    target: str,
    *,
    local_cluster: str,
    login_cluster: str = "",
    anonymous_token_uuid: str | None = None,
    v2_form: str | None = None,
) -> str:
    """The token to put in ``Authorization`` for cluster ``target`` (spec 3.4).

    * none → ``-`` (Arvados sends ``Bearer -``);
    * issued by ``target`` → unchanged; already salted → unchanged (second hop);
    * another v2 token → salted for ``target``;
    * a v1 secret → its ``v2_form`` salted, if the caller knows it
      (``v2/<token uuid>/<secret>``), else unchanged; any other shape
      (OIDC) → unchanged;
    * ``target`` is our LoginCluster and the token is ours (not the
      anonymous one) → :class:`LocalTokenToLoginCluster` (401).
    """
    if not token:
        return "-"
    candidate = token
    if not token.startswith("v2/") and v2_form:
        candidate = v2_form
    if login_cluster and target == login_cluster and candidate.startswith(f"v2/{local_cluster}-"):
        uuid = candidate.split("/")[1] if candidate.count("/") >= 2 else ""
        if uuid != anonymous_token_uuid:
            raise LocalTokenToLoginCluster()
    try:
        return salt_token(candidate, target)
    except AlreadySalted:
        return candidate
    except (ObsoleteToken, TokenFormatError):
        return token


#: Parameters that carry the client's tokens unsalted. ``reader_tokens`` (a
#: JSON list) is dropped rather than salted: arvnode does not use reader
#: tokens itself, and an unsalted one must not reach another cluster.
_TOKEN_PARAMS = (b"api_token", b"reader_tokens")


def strip_api_token_query(query: bytes) -> bytes:
    """The raw query string without ``api_token`` or ``reader_tokens``, other bytes untouched."""
    if not query:
        return b""
    kept = [p for p in query.split(b"&") if unquote_to_bytes(p.split(b"=", 1)[0]) not in _TOKEN_PARAMS]
    return b"&".join(p for p in kept if p)


def came_through_controller(headers: Headers) -> bool:
    """True if a ``Via`` header names an Arvados controller (ours or theirs)."""
    return any(VIA_CONTROLLER in v for v in headers.getRawHeaders(b"via", []))


def forwarding_headers(
    incoming: Headers,
    *,
    token: str,
    client_address: str,
    client_proto: bytes = b"HTTP/1.1",
    request_id: str | None = None,
    scheme: bytes = b"https",
) -> Headers:
    """The headers to send to the remote (pure; see the module docstring).

    ``token`` is the already chosen outgoing token (:func:`outgoing_token`).
    """
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower in (b"via", b"x-forwarded-for", b"x-request-id"):
            continue
        out.setRawHeaders(name, list(values))
    # Connection: <names> marks more hop-by-hop headers.
    for value in incoming.getRawHeaders(b"connection", []):
        for extra in value.split(b","):
            out.removeHeader(extra.strip())
    out.setRawHeaders(b"Authorization", [b"Bearer " + token.encode("utf-8")])
    rid = request_id or (incoming.getRawHeaders(b"x-request-id") or [b""])[0]
    if rid:
        out.setRawHeaders(b"X-Request-Id", [rid.encode("latin-1") if isinstance(rid, str) else rid])
    forwarded = [v for v in incoming.getRawHeaders(b"x-forwarded-for", []) if v]
    forwarded.append(client_address.encode("latin-1"))
    out.setRawHeaders(b"X-Forwarded-For", [b", ".join(forwarded)])
    if not incoming.hasHeader(b"x-forwarded-proto"):
        out.setRawHeaders(b"X-Forwarded-Proto", [scheme])
    proto = client_proto if client_proto.startswith(b"HTTP/") else b"HTTP/1.1"
    via = list(incoming.getRawHeaders(b"via", []))
    via.append(proto + b" " + VIA_CONTROLLER)
    out.setRawHeaders(b"Via", [b", ".join(via)])
    return out


def _strip_form_token(body: bytes) -> bytes:
    pairs = parse_qsl(body.decode("utf-8", "surrogateescape"), keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.encode("utf-8", "surrogateescape") not in _TOKEN_PARAMS]
    return urlencode(kept, encoding="utf-8", errors="surrogateescape").encode("utf-8", "surrogateescape")


class _Relay(Protocol):
    """Body of the remote response → our response, paused by our transport."""

    def __init__(self, request: Any, done: Deferred[str]) -> None:
        self._request = request
        self._done = done
        self._registered = False

    def connectionMade(self) -> None:
        # The transport is the remote connection's producer proxy.
        self._request.registerProducer(self.transport, True)
        self._registered = True

    def dataReceived(self, data: bytes) -> None:
        if not self._request.finished and not getattr(self._request, "_disconnected", False):
            self._request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._registered and self._request.producer is not None:
            self._request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback("ok")
        else:
            self._done.callback("broken")


class Forwarder:
    """Forwards authenticated requests to remote clusters (one per node)."""

    log = Logger()

    def __init__(
        self,
        client: RemoteClient,
        *,
        local_cluster: str,
        login_cluster: str = "",
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self.local_cluster = local_cluster
        self.login_cluster = login_cluster if login_cluster != local_cluster else ""
        self._anon = ids.anonymous_token_uuid(local_cluster)
        self._timeout = timeout

    def may_forward(self, cluster_id: str) -> bool:
        """True if ``cluster_id`` is a remote with ``Proxy: true`` (else: serve locally)."""
        return cluster_id != self.local_cluster and self._client.proxy_enabled(cluster_id)

    async def forward(self, request: Any, cluster_id: str, token: str | None, *, v2_form: str | None = None) -> None:
        """Relay ``request`` to ``cluster_id`` and stream the answer into it.

        ``token`` is the caller's token as presented (``v2_form``: its v2
        form when it is a v1 secret). Raises :class:`HTTPError` (502, 504,
        508, 401, 404) before anything was written; once the answer is
        streaming, a broken remote aborts the client connection (a partial
        body must not look complete).
        """
        if came_through_controller(request.requestHeaders):
            raise HTTPError(
                508,
                f"Loop Detected: this request already passed through an Arvados controller"
                f" (Via); not forwarding it to {cluster_id} again",
            )
        if cluster_id == self.local_cluster or not self._client.known(cluster_id):
            raise HTTPError(404, f"no proxy available for cluster {cluster_id}")
        send = outgoing_token(
            token, cluster_id, local_cluster=self.local_cluster,
            login_cluster=self.login_cluster, anonymous_token_uuid=self._anon, v2_form=v2_form,
        )
        peer = request.getClientAddress()
        headers = forwarding_headers(
            request.requestHeaders,
            token=send,
            client_address=str(getattr(peer, "host", "") or ""),
            client_proto=request.clientproto or b"HTTP/1.1",
            request_id=getattr(request, "request_id", None) or None,
            scheme=b"https" if request.isSecure() else b"http",
        )
        path, _, query = request.uri.partition(b"?")
        query = strip_api_token_query(query)
        target = path + (b"?" + query if query else b"")
        body = self._body(request, headers)
        method = request.method.decode("ascii")
        try:
            response = await self._client.request(
                cluster_id, method, self._client.base_url(cluster_id) + target.decode("latin-1"),
                headers=headers, body=body, timeout=self._timeout,
            )
        except RemoteTimeout as e:
            raise HTTPError(504, e.message) from e
        except (RemoteUnreachable, UnknownRemote) as e:
            raise HTTPError(502, e.message) from e
        if response.code >= 500:
            raw = await self._read_quietly(cluster_id, response)
            err = RemoteHTTPError(response.code, raw, cluster=cluster_id)
            raise HTTPError(502, err.message)
        await self._relay(request, response, method == "HEAD", cluster_id)

    def _body(self, request: Any, headers: Headers) -> Any:
        content = getattr(request, "content", None)
        if content is None:
            return None
        content.seek(0, 2)
        length = content.tell()
        content.seek(0)
        if length == 0 and request.method in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
            return None
        ctype = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
        if ctype.split(b";", 1)[0].strip().lower() == _FORM:
            # Form bodies are small (API.MaxRequestSize); the token must go.
            return _strip_form_token(content.read())
        return FileBodyProducer(content)

    async def _read_quietly(self, cluster_id: str, response: Any) -> bytes:
        try:
            return await self._client.read_body(cluster_id, response, timeout=self._timeout)
        except Exception:
            return b""

    async def _relay(self, request: Any, response: Any, head: bool, cluster_id: str) -> None:
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() in _RESPONSE_DROP:
                continue
            request.responseHeaders.setRawHeaders(name, list(values))
        if head:
            # Twisted computes no body for HEAD; keep the remote's length.
            response.deliverBody(_Discard())
            request.finish()
            return
        done: Deferred[str] = Deferred()
        response.deliverBody(_Relay(request, done))

        def client_gone(_: Any) -> None:
            # The client left: stop reading the remote.
            transport = getattr(response, "_transport", None)
            if transport is not None and not done.called:
                transport.stopProducing()

        request.notifyFinish().addErrback(client_gone)
        try:
            outcome = await done
        except CancelledError:
            client_gone(None)
            raise
        if getattr(request, "_disconnected", False) or request.finished:
            return
        if outcome == "ok":
            request.finish()
            return
        self.log.warn(
            "{request_id}: {cluster} closed the connection in the middle of the answer",
            request_id=getattr(request, "request_id", ""), cluster=cluster_id,
        )
        request.channel.transport.abortConnection()


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        return None
