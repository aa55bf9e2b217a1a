"""A raw HTTP/1.1 client over a real TCP socket, for tests that must see the
exact bytes on the wire: whether ``100 Continue`` was sent, whether the server
closed or aborted, how much of a body arrived.

It is deliberately not an HTTP library: requests are written as bytes,
responses are parsed just enough (status line, headers, ``Content-Length``
bodies), and reading can be paused to play a slow client.
"""
from __future__ import annotations

from typing import Callable

from attrs import define, field
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


@define
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]] = field(factory=dict)
    body: bytes = b""
    complete: bool = True

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class RawHTTP(Protocol):
    """Collects everything the server sends; waits on conditions over it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.total_received = 0
        self.lost = False
        self.lost_reason: Failure | None = None
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.on_data: Callable[[RawHTTP], None] | None = None

    # -- Protocol ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self.total_received += len(data)
        if self.on_data is not None:
            self.on_data(self)
        self._check()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        self.lost_reason = reason
        self._check()
        if not self.closed.called:
            self.closed.callback(None)

    # -- helpers --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def wait_until(self, predicate: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if predicate() or self.lost:
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def _check(self) -> None:
        waiting, self._waiters = self._waiters, []
        for predicate, d in waiting:
            if predicate() or self.lost:
                d.callback(None)
            else:
                self._waiters.append((predicate, d))

    async def read_response(self, *, head: bool = False) -> Response | None:
        """The next response (``100`` interim ones included); None if the
        connection closed before a status line."""
        await self.wait_until(lambda: b"\r\n\r\n" in self.buffer)
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head_bytes = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        lines = head_bytes.decode("latin-1").split("\r\n")
        _version, status, *reason = lines[0].split(" ", 2)
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        response = Response(int(status), reason[0] if reason else "", headers)
        if response.status == 100 or head or response.status in (204, 304):
            return response
        length = int(headers.get("content-length", ["0"])[0])
        await self.wait_until(lambda: len(self.buffer) >= length)
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        response.body = body
        response.complete = len(body) == length
        return response

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        *,
        expect_continue: bool = False,
    ) -> tuple[Response | None, bool]:
        """Send a request; return (final response, whether 100 Continue came).

        With ``expect_continue`` the body is only sent after ``100 Continue``.
        """
        all_headers = {"Host": "keep.test"}
        all_headers.update(headers or {})
        if body is not None and "Content-Length" not in all_headers:
            all_headers["Content-Length"] = str(len(body))
        if expect_continue:
            all_headers["Expect"] = "100-continue"
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in all_headers.items()
        ) + "\r\n"
        got_continue = False
        if expect_continue:
            self.send(head.encode("latin-1"))
            first = await self.read_response()
            if first is None:
                return None, False
            if first.status != 100:
                return first, False
            got_continue = True
            if body:
                self.send(body)
        else:
            self.send(head.encode("latin-1") + (body or b""))
        response = await self.read_response(head=method == "HEAD")
        return response, got_continue


async def connect(port: int) -> RawHTTP:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, RawHTTP())
