"""Small service building blocks: a listener that exposes the port it bound
and shuts down gracefully, and a MultiService that starts and stops its
children in order.

Why not ``strports.service``: tests bind port 0 and need the real port
(``whenListening``), and shutdown must close the listening socket first,
then give in-flight requests a grace period, then cut what is left.
"""
from __future__ import annotations

from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from arvnode.http.site import NodeSite
from arvnode.tls import ReloadableServerTLS


def _bound_port(port: IListeningPort) -> int:
    """The TCP port number ``port`` is bound to (IAddress has no ``.port``;
    the TCP endpoints' addresses do)."""
    return cast("IPv4Address | IPv6Address", port.getHost()).port


class _NoALPN(Factory):
    """Hands connections to the site while hiding its ALPN support.

    ``Site`` offers ALPN (``h2`` when the h2 package is around), and
    TLSMemoryBIOFactory then sets the ALPN callback on the shared SSL
    context for every connection, which pyOpenSSL refuses once the context
    is in use. Neither listener speaks HTTP/2 and libcurl would pick it if
    offered (client-surface §3), so no ALPN at all.
    """

    def __init__(self, site: NodeSite) -> None:
        self.site = site

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self.site.buildProtocol(addr)

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()


class HTTPListener(Service):
    """Listens on one ``http[s]://host:port`` URL for one NodeSite."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        host: str,
        port: int,
        site: NodeSite,
        tls: ReloadableServerTLS | None,
        grace_period: float,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.requested_port = port
        self.site = site
        self.tls = tls
        self.grace_period = grace_period
        self._listening: IListeningPort | None = None
        self._factory: WrappingFactory | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._failure: Any = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the configured one for 0)."""
        assert self._listening is not None, "not listening"
        return _bound_port(self._listening)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def listen(self) -> Deferred[IListeningPort]:
        """Bind now; fires with the port. Called by the node after its
        asynchronous setup (database, volumes) succeeded."""
        endpoint_class = TCP6ServerEndpoint if ":" in self.host else TCP4ServerEndpoint
        endpoint = endpoint_class(self._reactor, self.requested_port, interface=self.host)
        # Both wrappers track live connections (``.protocols``), which
        # shutdown needs to flush and close them.
        factory: WrappingFactory
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls, False, _NoALPN(self.site))
        else:
            factory = WrappingFactory(self.site)
        self._factory = factory
        d = endpoint.listen(factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self._listening = port
            self.log.info(
                "{service} listening on {scheme}://{host}:{port}/",
                service=self.site.service, scheme=self.scheme, host=self.host,
                port=_bound_port(port),
            )
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(port)
            return port

        return d.addCallback(listening)

    def whenListening(self) -> Deferred[IListeningPort]:
        if self._listening is not None:
            return succeed(self._listening)
        d: Deferred[IListeningPort] = Deferred()
        self._waiters.append(d)
        return d

    async def _stop(self) -> None:
        clock: IReactorTime = self.site.clock
        deadline = clock.seconds() + self.grace_period
        if self._listening is not None:
            # A TCP port's stopListening always returns a Deferred.
            await cast("Deferred[None]", self._listening.stopListening())
            self._listening = None
        await self._drain()
        await self._close_connections(clock, deadline)

    async def _close_connections(self, clock: IReactorTime, deadline: float) -> None:
        """Flush and close every connection (keep-alive ones, and those whose
        last response is still in the socket buffer), cutting any left at
        the deadline: a finished request is only acknowledged once its
        bytes have left the process."""
        if self._factory is None:
            return
        for proto in list(self._factory.protocols):
            proto.loseConnection()
        while self._factory.protocols and clock.seconds() < deadline:
            await deferLater(clock, 0.02, lambda: None)
        for proto in list(self._factory.protocols):
            proto.transport.abortConnection()

    async def _drain(self) -> None:
        drained = self.site.drained()
        if drained.called:
            return
        clock: IReactorTime = self.site.clock
        self.log.info(
            "{service}: waiting up to {grace}s for {n} request(s) in flight",
            service=self.site.service, grace=self.grace_period, n=len(self.site.inflight),
        )
        timer = clock.callLater(self.grace_period, drained.cancel)
        try:
            await drained
        except Exception:
            self.log.warn(
                "{service}: grace period over, cutting {n} request(s)",
                service=self.site.service, n=len(self.site.inflight),
            )
            self.site.abort_inflight()
        else:
            timer.cancel()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


class OrderedMultiService(MultiService):
    """Stops children one after another, in reverse order of addition.

    Stock MultiService stops them all at once; the node needs its listeners
    drained before the database pool and volumes go away.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        for service in reversed(list(self)):
            await maybeDeferred(service.stopService)

