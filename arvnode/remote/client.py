"""HTTP client for the other clusters named in ``RemoteClusters``.

Why one module: forwarding API calls, validating remote tokens and fetching
remote blocks all talk to the same remotes, and they must agree on the base
URL, on TLS (verified unless that remote says ``Insecure: true``), on the
deadline and, above all, on how failures look.  The callers turn the three
error types below into answers: :class:`RemoteUnreachable` → 502,
:class:`RemoteTimeout` → 504, :class:`RemoteHTTPError` → the remote's own
4xx passed through, or 502 for a 5xx.  Every message names the cluster, so
an operator reading "502" knows which peer to look at.

Each remote gets its own :class:`Agent` and connection pool: the TLS policy
belongs to the remote, and a shared pool could hand a connection opened
without verification to a remote that requires it.

Timeouts run on the injected clock (never wall time), so tests drive them
with :class:`twisted.internet.task.Clock`.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping, cast
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from arvnode.http.bodies import read_bounded
from arvnode.tls import client_policy

__all__ = [
    "RemoteClient",
    "RemoteError",
    "RemoteHTTPError",
    "RemoteTimeout",
    "RemoteUnreachable",
    "UnknownRemote",
    "remote_errors",
]


#: The largest document (JSON answer, error text) read whole from another
#: cluster: Arvados' default API.MaxRequestSize, so any record a cluster
#: accepts (a large collection's manifest) can come back.
DOCUMENT_LIMIT = 128 << 20


class RemoteError(Exception):
    """Something went wrong talking to cluster ``cluster``."""

    def __init__(self, cluster: str, message: str) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.message = message


class UnknownRemote(RemoteError):
    """No usable ``RemoteClusters`` entry (no entry, or no ``Host``)."""

    def __init__(self, cluster: str) -> None:
        super().__init__(cluster, f"remote cluster {cluster} is not configured")


class RemoteUnreachable(RemoteError):
    """Connection refused or reset, TLS failure, DNS failure, or a 5xx."""

    def __init__(self, cluster: str, reason: str = "") -> None:
        text = f"remote cluster {cluster} unreachable"
        super().__init__(cluster, f"{text}: {reason}" if reason else text)
        self.reason = reason


class RemoteTimeout(RemoteUnreachable):
    """No answer within the deadline (a kind of unreachable: callers that
    only care about "could not ask" catch :class:`RemoteUnreachable`)."""

    def __init__(self, cluster: str, seconds: float) -> None:
        RemoteError.__init__(
            self, cluster, f"remote cluster {cluster} did not answer within {seconds:g}s"
        )
        self.reason = "timeout"
        self.seconds = seconds


class RemoteHTTPError(RemoteError):
    """The remote answered with a non-2xx status; ``body`` is what it said."""

    def __init__(self, status: int, body: bytes, *, cluster: str, headers: Headers | None = None) -> None:
        errors = remote_errors(body)
        detail = "; ".join(errors) if errors else body[:200].decode("utf-8", "replace").strip()
        super().__init__(
            cluster,
            f"remote cluster {cluster} answered {status}" + (f": {detail}" if detail else ""),
        )
        self.status = status
        self.body = body
        self.headers = headers or Headers()
        self.errors = errors


def remote_errors(body: bytes) -> list[str]:
    """The ``errors`` list of an Arvados JSON error body, or []."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e) for e in errors]


def _describe(exc: BaseException) -> str:
    """A short reason for logs and messages; never includes request headers."""
    reasons = getattr(exc, "reasons", None)  # ResponseFailed, ResponseNeverReceived
    if isinstance(reasons, list):
        # Failures (their .value) or, defensively, bare exceptions.
        inner = [cast(BaseException, getattr(r, "value", r)) for r in reasons]
        return "; ".join(_describe(e) for e in inner) or "connection lost"
    name = exc.__class__.__name__
    text = str(exc).strip()
    return f"{name}: {text}" if text else name


class RemoteClient:
    """Requests to remote clusters, by cluster id.

    ``remotes`` is ``Config.remote_clusters`` (``"*"`` is honoured only for
    ``Insecure``, as Arvados' Rails does). ``ca_file`` adds a private trust
    root for verified remotes (tests, private PKI); ``timeout`` is the
    default deadline, in seconds on ``clock``, for receiving the response
    headers (and, for :meth:`get_json`, the body).
    """

    def __init__(
        self,
        *,
        reactor: Any,
        clock: IReactorTime,
        local_cluster: str,
        remotes: Mapping[str, Any],
        timeout: float = 60.0,
        ca_file: str | None = None,
        max_connections_per_remote: int = 8,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self.local_cluster = local_cluster
        self._remotes = dict(remotes)
        self.timeout = timeout
        self._ca_file = ca_file
        self._max_per_host = max_connections_per_remote
        self._clients: dict[str, tuple[Agent, HTTPConnectionPool]] = {}

    # -- configuration ---------------------------------------------------------

    def config_for(self, cluster: str) -> Any | None:
        """The ``RemoteClusters`` entry of ``cluster`` with a Host, or None."""
        entry = self._remotes.get(cluster)
        if entry is None or not getattr(entry, "host", ""):
            return None
        return entry

    def known(self, cluster: str) -> bool:
        return self.config_for(cluster) is not None

    def proxy_enabled(self, cluster: str) -> bool:
        """True if requests for ``cluster``'s records may be forwarded (``Proxy: true``)."""
        entry = self.config_for(cluster)
        return bool(entry is not None and entry.proxy)

    def base_url(self, cluster: str) -> str:
        """``<Scheme>://<Host>`` of a remote; :class:`UnknownRemote` if not configured."""
        entry = self.config_for(cluster)
        if entry is None:
            raise UnknownRemote(cluster)
        scheme = entry.scheme or "https"
        return f"{scheme}://{entry.host}"

    def _insecure(self, cluster: str) -> bool:
        entry = self.config_for(cluster)
        star = self._remotes.get("*")
        return bool((entry is not None and entry.insecure) or (star is not None and star.insecure))

    def agent(self, cluster: str) -> Agent:
        """The Agent for ``cluster`` (one pool per remote)."""
        found = self._clients.get(cluster)
        if found is None:
            if self.config_for(cluster) is None:
                raise UnknownRemote(cluster)
            pool = HTTPConnectionPool(self._reactor, persistent=True)
            pool.maxPersistentPerHost = self._max_per_host
            pool.retryAutomatically = False
            policy = client_policy(insecure=self._insecure(cluster), ca_file=self._ca_file)
            agent = Agent(self._reactor, contextFactory=policy, pool=pool)
            found = (agent, pool)
            self._clients[cluster] = found
        return found[0]

    async def close(self) -> None:
        """Close every pooled connection (node shutdown, test cleanup)."""
        clients, self._clients = self._clients, {}
        for _client, pool in clients.values():
            await pool.closeCachedConnections()

    # -- requests --------------------------------------------------------------

    def url(self, cluster: str, path: str, query: Mapping[str, Any] | list[tuple[str, str]] | None = None) -> str:
        base = self.base_url(cluster)
        if not path.startswith("/"):
            path = "/" + path
        if query:
            items = query.items() if isinstance(query, Mapping) else query
            path += "?" + urlencode(list(items))
        return base + path

    async def request(
        self,
        cluster: str,
        method: str,
        url_or_path: str,
        *,
        headers: Headers | None = None,
        body: IBodyProducer | bytes | None = None,
        timeout: float | None = None,
    ) -> IResponse:
        """Send a request; return the response once its headers arrived.

        The body is left unread (stream it with ``deliverBody`` or read it
        with :meth:`read_body`). Transport failures become
        :class:`RemoteUnreachable`, the deadline :class:`RemoteTimeout`;
        any status is returned as is. Cancelling the returned coroutine's
        Deferred cancels the request.
        """
        url = url_or_path if "://" in url_or_path else self.base_url(cluster) + url_or_path
        agent = self.agent(cluster)
        seconds = self.timeout if timeout is None else timeout
        if isinstance(body, bytes):
            body = FileBodyProducer(io.BytesIO(body))
        # The bare Agent, not treq: treq adds ``Accept-Encoding: gzip`` and
        # decodes, which would corrupt a relayed body and its headers.
        # Redirects are not followed (as Arvados): a redirect is the answer.
        d: Deferred[IResponse] = agent.request(
            method.encode("ascii"), url.encode("utf-8"), headers or Headers(), body
        )
        return await self._deadline(cluster, d, seconds)

    async def _deadline(self, cluster: str, d: Deferred[Any], seconds: float) -> Any:
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._clock.callLater(seconds, expire) if seconds and seconds > 0 else None
        try:
            return await d
        except (CancelledError, ConnectingCancelledError) as e:
            if timed_out:
                raise RemoteTimeout(cluster, seconds) from e
            raise CancelledError() from e
        except ResponseFailed as e:
            if timed_out or any(r.check(CancelledError) for r in e.reasons):
                if timed_out:
                    raise RemoteTimeout(cluster, seconds) from e
                raise CancelledError() from e
            raise RemoteUnreachable(cluster, _describe(e)) from e
        except (ConnectError, DNSLookupError, OSError) as e:
            raise RemoteUnreachable(cluster, _describe(e)) from e
        except RemoteError:
            raise
        except Exception as e:  # TLS errors and other transport surprises
            if e.__class__.__module__.startswith(("twisted", "OpenSSL", "service_identity")):
                raise RemoteUnreachable(cluster, _describe(e)) from e
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    async def read_body(
        self, cluster: str, response: IResponse, *, timeout: float | None = None,
        limit: int = DOCUMENT_LIMIT,
    ) -> bytes:
        """The whole body of a document response (JSON, an error), under the
        deadline and at most ``limit`` bytes: a larger answer is refused
        (:class:`RemoteUnreachable`, so 502) rather than held in memory.
        Block data never comes through here; it is streamed."""
        seconds = self.timeout if timeout is None else timeout
        collector, done = read_bounded(response, limit)
        body: bytes = await self._deadline(cluster, done, seconds)
        if collector.truncated:
            raise RemoteUnreachable(cluster, f"answer larger than {limit} bytes")
        return body

    async def get_json(
        self,
        cluster: str,
        path: str,
        *,
        token: str | None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """GET a JSON document from a remote.

        Non-2xx → :class:`RemoteHTTPError` carrying status and body; a 2xx
        whose body is not JSON → :class:`RemoteUnreachable` (the peer is not
        speaking Arvados).
        """
        h = Headers({b"Accept": [b"application/json"]})
        if token is not None:
            h.setRawHeaders(b"Authorization", [b"Bearer " + token.encode("utf-8")])
        for name, value in (headers or {}).items():
            h.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
        url = self.url(cluster, path, query)
        response = await self.request(cluster, "GET", url, headers=h, timeout=timeout)
        body = await self.read_body(cluster, response, timeout=timeout)
        if not 200 <= response.code < 300:
            raise RemoteHTTPError(response.code, body, cluster=cluster, headers=response.headers)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RemoteUnreachable(cluster, f"answer to GET {path} is not JSON") from e
