"""Talking to one S3 bucket: botocore signs, Twisted's Agent sends.

Why this shape (spec/s3-notes.md):

* **botocore signs headers only.** ``S3SigV4Auth`` with payload signing
  disabled yields ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD``, so a 64 MiB
  body never has to be hashed (or held) before it is sent. Every attempt is
  signed afresh (``X-Amz-Date``), immediately before it goes out.
* **Twisted sends.** Bodies stream through ``IBodyProducer`` / ``deliverBody``
  with backpressure; :func:`read_small` is only for error XML and listings,
  with a size cap.
* **Retries with backoff and jitter** (injected clock and rng) on 5xx and
  network failures of requests that can be repeated. Uploads are retried by
  their writer, which alone knows whether it still has the bytes.
* **Credentials per request.** :class:`~.s3_credentials.S3Credentials`
  hands out the keys to sign with: static ones at once, role credentials
  once loaded (or refreshed) in a thread; a request waits only then.
* **Nothing secret in messages.** Errors name the operation, the key, the
  status and S3's ``<Code>``; never a header, a signature or a credential.
"""
from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from base64 import b64encode
from typing import Any, Mapping, Sequence
from urllib.parse import quote, urlsplit

from attrs import define
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from arvnode.keep.volume import VolumeError
from arvnode.keep.volumes.s3_credentials import S3Credentials
from arvnode.keep.volumes.s3_params import S3Parameters

__all__ = ["S3Client", "S3Error", "S3Stats", "read_small", "content_md5"]

#: Statuses worth another attempt (S3 asks for retries on 500/503 SlowDown).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Network-level failures worth another attempt.
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    neterror.ConnectError,
    neterror.DNSLookupError,
    neterror.TimeoutError,
    neterror.ConnectionLost,
    neterror.ConnectionClosed,
    DeferredTimeout,
    _newclient.ResponseNeverReceived,
    _newclient.RequestTransmissionFailed,
    _newclient.RequestNotSent,
    _newclient.ResponseFailed,
)
ERROR_BODY_LIMIT = 64 * 1024
#: Bytes asked of the socket per read on the connections that carry GET
#: bodies (Twisted's default is 64 KiB); see :class:`LargeReadEndpoints`.
READ_SIZE = 1 << 20
#: S3's answers (400) about a session token: a refusal like a 403.
_TOKEN_CODES = frozenset({"InvalidToken", "ExpiredToken", "TokenRefreshRequired"})
_UNSIGNED = Config(s3={"payload_signing_enabled": False})
_USER_AGENT = b"arvnode-s3"


class S3Error(VolumeError):
    """A bucket operation failed; ``retryable`` says whether trying again
    could help (5xx, timeouts, connection trouble)."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


@define
class S3Stats:
    """Counters of one volume, for metrics and for tests that bound memory."""

    requests: int = 0
    retries: int = 0
    #: Largest number of body bytes one upload held in the writer (queued,
    #: handed to the transport but not yet acknowledged, kept for a replay).
    writer_max_held: int = 0
    #: Largest number of bytes a reader held back from its consumer.
    reader_max_buffered: int = 0

    def note_writer(self, held: int) -> None:
        if held > self.writer_max_held:
            self.writer_max_held = held

    def note_reader(self, buffered: int) -> None:
        if buffered > self.reader_max_buffered:
            self.reader_max_buffered = buffered


HASH_RE = re.compile(r"^[0-9a-f]{32}$")


def etag_md5(response: IResponse) -> str | None:
    """The response's ETag if it is a plain md5 (single-part upload, no
    SSE-KMS); None otherwise."""
    raw = response.headers.getRawHeaders(b"etag", [b""])[0]
    value = raw.decode("latin-1").strip().strip('"').lower()
    return value if HASH_RE.match(value) else None


def content_length(response: IResponse) -> int | None:
    """The ``Content-Length`` header (Twisted reports 0 as the length of
    every HEAD response, s3-notes §1.5)."""
    raw = response.headers.getRawHeaders(b"content-length", [None])[0]
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def content_md5(hash: str) -> str:
    """``Content-MD5`` for a block: its locator hash, base64 of the raw bytes.
    A real bucket then refuses (400 BadDigest) a body that does not match."""
    return b64encode(bytes.fromhex(hash)).decode("ascii")


def _describe(f: Failure) -> str:
    """A short text for a network failure (Twisted nests the real reason)."""
    value = f.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(_describe(r) for r in reasons)
    if isinstance(value, (DeferredTimeout, neterror.TimeoutError)):
        return f"timed out ({value})" if str(value) else "timed out"
    text = str(value) or type(value).__name__
    return text.strip()


def is_cancellation(f: Failure) -> bool:
    """Whether ``f`` is (or wraps, as Agent does) a ``CancelledError``."""
    if f.check(CancelledError):
        return True
    return any(is_cancellation(r) for r in getattr(f.value, "reasons", None) or ())


def with_timeout(d: "Deferred[Any]", seconds: float, clock: IReactorTime) -> "Deferred[Any]":
    """Cancel ``d`` after ``seconds`` and fail it with ``TimeoutError``.

    Not ``Deferred.addTimeout``: Agent wraps the cancellation in
    ``ResponseNeverReceived``, which ``addTimeout`` would pass on as is, and
    a timeout must not look like the caller cancelling.
    """
    fired = [False]

    def expire() -> None:
        fired[0] = True
        d.cancel()

    call = clock.callLater(seconds, expire)

    def settle(result: Any) -> Any:
        if call.active():
            call.cancel()
        if fired[0] and isinstance(result, Failure) and is_cancellation(result):
            return Failure(DeferredTimeout(f"no answer within {seconds:g}s"))
        return result

    return d.addBoth(settle)


def failure_to_error(f: Failure, what: str) -> S3Error:
    """Network failures as retryable :class:`S3Error`; other errors pass."""
    if f.check(S3Error):
        return f.value  # type: ignore[return-value]
    if is_cancellation(f):
        raise CancelledError()
    if f.check(*RETRY_ERRORS):
        return S3Error(f"{what}: bucket unreachable: {_describe(f)}", retryable=True)
    f.raiseException()
    raise AssertionError("unreachable")  # pragma: no cover


class _Collect(Protocol):
    def __init__(self, limit: int, done: "Deferred[bytes]") -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._done = done
        self._too_big = False

    def dataReceived(self, data: bytes) -> None:
        if self._too_big:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._too_big = True
            self._parts = []
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._too_big:
            self._done.errback(S3Error(f"response body larger than {self._limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def read_small(response: IResponse, limit: int = ERROR_BODY_LIMIT) -> "Deferred[bytes]":
    """The whole body of a response known to be small (error XML, listing)."""
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Collect(limit, done))
    return done


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element | None:
    """Parse S3's XML; None for anything else. A DOCTYPE is refused outright
    (S3 never sends one; entity tricks have no business here)."""
    if not body.strip() or b"<!DOCTYPE" in body[:1024].upper():
        return None
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def error_code(body: bytes) -> tuple[str | None, str | None]:
    """``(Code, Message)`` of an S3 error body, if it is one."""
    root = parse_xml(body)
    if root is None or _local(root.tag) != "Error":
        return None, None
    return child_text(root, "Code"), child_text(root, "Message")


def status_error(what: str, status: int, body: bytes) -> S3Error:
    """The error for an unexpected status (and its XML body, if any)."""
    code, message = error_code(body)
    detail = f"{status} {code}" if code else str(status)
    if message:
        detail += f" ({message[:200]})"
    if status in (401, 403) or code in _TOKEN_CODES:
        text = f"{what}: the bucket refused the request: {detail}"
    elif status in RETRY_STATUSES:
        text = f"{what}: the bucket failed: {detail}"
    else:
        text = f"{what}: unexpected answer from the bucket: {detail}"
    return S3Error(text, status=status, code=code, retryable=status in RETRY_STATUSES)


@implementer(IStreamClientEndpoint)
class _LargeReadEndpoint:
    """An endpoint whose TCP connections are read ``read_size`` at a time."""

    def __init__(self, endpoint: IStreamClientEndpoint, read_size: int) -> None:
        self._endpoint = endpoint
        self._read_size = read_size

    def connect(self, factory: Any) -> "Deferred[Any]":
        return self._endpoint.connect(factory).addCallback(self._tune)

    def _tune(self, protocol: Any) -> Any:
        # Plain HTTP: the protocol's transport is the TCP connection; HTTPS:
        # the TLS protocol sits in between and the TCP connection is below it.
        transport = getattr(protocol, "transport", None)
        for _ in range(3):
            if transport is None:
                break
            if getattr(transport, "socket", None) is not None and hasattr(transport, "bufferSize"):
                transport.bufferSize = self._read_size
                break
            transport = getattr(transport, "transport", None)
        return protocol


@implementer(IAgentEndpointFactory)
class LargeReadEndpoints:
    """Agent's standard endpoints (TCP for http, TLS over TCP for https)
    whose sockets are read ``read_size`` bytes per ``recv``.

    Why: Twisted reads a TCP socket 64 KiB at a time, so a 64 MiB GET body
    was ~1,000 reactor turns, each one a ``recv``, a trip through the HTTP
    client parser, a write to the keep client, a pause and a resume of both
    connections (four ``epoll_ctl``): about 2 reactor CPU s/GiB, most of a
    GET's cost after md5 (bench/README.md, S3 volume). With 1 MiB reads the
    body comes in pieces of ~1 MiB (whatever the socket holds, since the
    connection is paused while the keep client drains) and the reactor's
    share fell to about 1 s/GiB, nearly all of it the kernel's copies.
    Memory stays bounded: one read per connection, as before.

    Not a raw HTTP/1.1 GET client (``recv_into``, like the keepproxy's PUT
    fast path): with 1 MiB reads Twisted's client parser is a few percent of
    the reactor's time (py-spy), the rest being the ``recv`` and ``send``
    copies any client pays, and ``recv_into`` would need a copy into
    ``bytes`` anyway for the keep client's transport. Agent keeps the
    pooling, timeouts and TLS that retries and tests rely on.
    """

    def __init__(
        self, reactor: Any, tls_policy: IPolicyForHTTPS, connect_timeout: float | None,
        read_size: int = READ_SIZE,
    ) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._connect_timeout = connect_timeout
        self._read_size = read_size

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        kwargs: dict[str, Any] = {}
        if self._connect_timeout is not None:
            kwargs["timeout"] = self._connect_timeout
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, **kwargs
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise ValueError(f"unsupported scheme {uri.scheme!r}")
        return _LargeReadEndpoint(endpoint, self._read_size)


class S3Client:
    """Signs and sends requests to one bucket; owns the connection pools.

    ``reactor`` provides the network, ``clock`` the timers (header timeout,
    backoff): tests can drive time while the sockets are real.
    """

    log = Logger()

    def __init__(
        self,
        params: S3Parameters,
        *,
        reactor: Any,
        clock: IReactorTime,
        rng: random.Random,
        tls_policy: IPolicyForHTTPS,
        stats: S3Stats,
        max_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        pool_size: int = 8,
        threadpool: Any = None,
        name: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``threadpool`` (default: the reactor's) runs credential loads;
        ``name`` (the volume) is what credential errors name; ``environ``
        (default ``os.environ``) is read for role credentials."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.params = params
        self.clock = clock
        self.stats = stats
        self.max_attempts = max_attempts
        self._rng = rng
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self.credentials = S3Credentials(
            params, name=name or params.bucket, reactor=reactor, clock=clock, environ=environ,
            threadpool=(threadpool if threadpool is not None or not params.uses_role
                        else reactor.getThreadPool()),
        )
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = pool_size
        self._pool.cachedConnectionTimeout = 30  # below usual server idle timeouts
        # GET bodies (and HEADs, listings) come through large socket reads.
        self._agent = Agent.usingEndpointFactory(
            reactor, LargeReadEndpoints(reactor, tls_policy, params.connect_timeout),
            pool=self._pool,
        )
        # Uploads get a fresh connection each: a streamed body cannot be
        # replayed after a pooled connection turns out to be stale (s3-notes §7).
        self._put_pool = HTTPConnectionPool(reactor, persistent=False)
        self._put_agent = Agent(
            reactor, contextFactory=tls_policy, connectTimeout=params.connect_timeout,
            pool=self._put_pool,
        )
        split = urlsplit(params.endpoint)
        self._scheme = split.scheme
        self._netloc = split.netloc

    def __repr__(self) -> str:
        return f"<S3Client {self.params.bucket} at {self.params.endpoint}>"

    # -- addressing and signing ---------------------------------------------------

    def url(self, key: str | None, query: Mapping[str, str] | None = None) -> tuple[str, str]:
        """``(url, host)`` for an object (or the bucket when ``key`` is None),
        encoded exactly as SigV4 canonicalises it (s3-notes §1.4)."""
        p = self.params
        path = "" if key is None else quote(key, safe="/~")
        if p.use_path_style:
            host = self._netloc
            target = f"/{p.bucket}" + (f"/{path}" if key is not None else "")
        else:
            host = f"{p.bucket}.{self._netloc}"
            target = f"/{path}"
        url = f"{self._scheme}://{host}{target}"
        if query:
            url += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
            )
        return url, host

    def sign(
        self, method: str, url: str, host: str, headers: Mapping[str, str],
        credentials: ReadOnlyCredentials | None = None,
    ) -> Headers:
        """Twisted headers for one attempt, ``Authorization`` included
        (``X-Amz-Security-Token`` too when the credentials carry a session
        token: botocore signs it in).

        ``credentials`` default to the static keys (only those are known
        without waiting). ``Content-Length`` is signed when given but left
        out of the result: Agent writes its own from the body producer (a
        second copy would be sent otherwise).
        """
        if credentials is None:
            d = self.credentials.current()
            if not d.called:
                d.cancel()
                raise ValueError("role credentials are not loaded yet: pass credentials")
            credentials = d.result
        h = dict(headers)
        h["Host"] = host
        req = AWSRequest(method=method, url=url, headers=h)
        req.context["client_config"] = _UNSIGNED  # => UNSIGNED-PAYLOAD
        S3SigV4Auth(credentials, "s3", self.params.region).add_auth(req)
        out = Headers()
        for name, value in req.headers.items():
            if name.lower() == "content-length":
                continue
            out.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        out.setRawHeaders(b"user-agent", [_USER_AGENT])
        return out

    # -- sending --------------------------------------------------------------------

    def send(
        self,
        method: str,
        key: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: IBodyProducer | None = None,
        timeout: float | None = None,
    ) -> "Deferred[IResponse]":
        """One attempt. ``timeout`` (default ReadTimeout) bounds the wait for
        the response headers; uploads pass ``0`` and watch progress themselves."""
        url, host = self.url(key, query)
        agent = self._put_agent if method == "PUT" else self._agent

        def signed_request(credentials: ReadOnlyCredentials) -> "Deferred[IResponse]":
            # Signed only now: X-Amz-Date and the credentials of this moment.
            signed = self.sign(method, url, host, headers or {}, credentials)
            self.stats.requests += 1
            return agent.request(method.encode("ascii"), url.encode("ascii"), signed, body)

        # Static keys: fires at once; role credentials: maybe after a load.
        d = self.credentials.current().addCallback(signed_request)
        limit = self.params.read_timeout if timeout is None else timeout
        if limit:
            with_timeout(d, limit, self.clock)
        return d

    def backoff(self, attempt: int) -> "Deferred[None]":
        """Wait before attempt ``attempt + 1`` (1-based ``attempt`` failed):
        exponential with a cap, jittered between half and all of it."""
        delay = min(self._backoff_cap, self._backoff_base * (2 ** (attempt - 1)))
        delay *= 0.5 + 0.5 * self._rng.random()
        return deferLater(self.clock, delay, lambda: None)

    async def call(
        self,
        method: str,
        key: str | None,
        what: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Sequence[int] = (200,),
        body_limit: int = ERROR_BODY_LIMIT,
        keep_open: bool = False,
    ) -> tuple[IResponse, bytes | None]:
        """A request without a body, retried with backoff on 5xx and network
        failures. Returns the response with an accepted status and its body
        (read up to ``body_limit``), or with ``keep_open`` the response with
        its body unread (the caller streams it). 404 is always returned to
        the caller (it means different things to different operations);
        other statuses raise :class:`S3Error`."""
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    response = await self.send(method, key, query=query, headers=headers)
                except Exception:
                    raise failure_to_error(Failure(), what)
                if response.code in ok and keep_open:
                    return response, None
                body = await read_small(
                    response, body_limit if response.code in ok else ERROR_BODY_LIMIT
                )
                if response.code in ok or response.code == 404:
                    return response, body
                raise status_error(what, response.code, body)
            except CancelledError:
                raise
            except S3Error as e:
                if not e.retryable or attempt >= self.max_attempts:
                    raise
                self.stats.retries += 1
                self.log.info(
                    "{error} (attempt {attempt} of {total}); retrying",
                    attempt=attempt, total=self.max_attempts, error=str(e),
                )
                await self.backoff(attempt)
            except Exception as e:
                # A body that broke off mid-way (read_small) counts as network trouble.
                err = failure_to_error(Failure(e), what)
                if attempt >= self.max_attempts:
                    raise err from e
                self.stats.retries += 1
                self.log.info(
                    "{error} (attempt {attempt} of {total}); retrying",
                    attempt=attempt, total=self.max_attempts, error=str(err),
                )
                await self.backoff(attempt)

    def close(self) -> "Deferred[Any]":
        """Drop idle pooled connections."""
        from twisted.internet.defer import gatherResults

        return gatherResults(
            [self._pool.closeCachedConnections(), self._put_pool.closeCachedConnections()]
        )
