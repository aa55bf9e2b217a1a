# -*- test-case-name: tests.remote.test_forward -*-
"""Forwarding API requests to another cluster (:mod:`arvnode.remote.forward`).

The local side is a real NodeSite on loopback whose only resource forwards
every request (standing in for the router H2 is building); the remote is
:mod:`tests.remote.fakecluster`, a loopback TLS server that stands in for a
remote Arvados cluster and echoes what it received.
"""
from __future__ import annotations

import json
import random
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from arvnode.auth.salting import salt_token
from arvnode.auth.tokens import token_from_request
from arvnode.config import RemoteCluster
from arvnode.http.resource import AsyncResource, HTTPError, Limits
from arvnode.http.site import NodeSite
from arvnode.remote.client import RemoteClient
from arvnode.remote.forward import (
    Forwarder,
    forwarding_headers,
    outgoing_token,
    strip_api_token_query,
)
from arvnode.web.metrics import NodeMetrics
from tests.helpers import http_client, wait_for
from tests.remote.fakecluster import FakeCluster, start_fake_cluster

LOCAL = "zzzzz"
PEER = "zbbbb"
V1 = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
V2 = f"v2/zzzzz-gj3su-077z32aux8dg2s1/{V1}"
SALTED_FOR_PEER = "v2/zzzzz-gj3su-077z32aux8dg2s1/33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"


class _ForwardAll(AsyncResource):
    """Forwards every request to ``target``: the router's job, minimally."""

    def __init__(self, forwarder: Forwarder, target: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.forwarder = forwarder
        self.target = target

    async def handle(self, request: Any) -> Any:
        await self.forwarder.forward(request, self.target, token_from_request(request))
        return NOT_DONE_YET


class ForwardTests(TestCase):
    async def build(
        self,
        *,
        remote: RemoteCluster | None = None,
        login_cluster: str = "",
        ca: bool = True,
        timeout: float = 30.0,
        fake: FakeCluster | None = None,
    ) -> None:
        self.fake = fake or await start_fake_cluster(self, PEER)
        self.timer = Clock()
        remotes = {PEER: remote or self.fake.remote_entry(proxy=True)}
        self.client = RemoteClient(
            reactor=reactor, clock=self.timer, local_cluster=LOCAL, remotes=remotes,
            ca_file=str(self.fake.ca) if ca else None, timeout=timeout,
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(self.client.close()))
        self.forwarder = Forwarder(self.client, local_cluster=LOCAL, login_cluster=login_cluster)
        rng = random.Random(2)
        limits = Limits(reactor, max_concurrent=16, max_queued=16, timeout=60)
        root = _ForwardAll(self.forwarder, PEER, clock=reactor, rng=rng, limits=limits)
        site = NodeSite(root, service="controller", clock=reactor, rng=rng, metrics=NodeMetrics(),
                        management_token="", health_checks={})
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.http = http_client(self)

    async def call(self, method: str, path: str, **kw: Any) -> tuple[Any, bytes]:
        response = await self.http.request(method, self.base + path, **kw)
        body = await treq.content(response)
        return response, body

    def seen(self) -> dict[str, Any]:
        return self.fake.calls[-1]

    async def test_get_salts_token_and_strips_api_token(self) -> None:
        """The remote gets the salted token (spec vector) in Authorization and
        a query string without api_token; other parameters arrive intact."""
        await self.build()
        response, body = await self.call(
            "GET", f"/arvados/v1/collections/{PEER}-4zz18-000000000000001?select=%5B%22uuid%22%5D&api_token={V2}&b=2",
        )
        self.assertEqual(response.code, 200)
        seen = self.seen()
        self.assertEqual(seen["headers"]["authorization"], [f"Bearer {SALTED_FOR_PEER}"])
        self.assertEqual(seen["uri"], f"/arvados/v1/collections/{PEER}-4zz18-000000000000001?select=%5B%22uuid%22%5D&b=2")
        self.assertNotIn(V1, json.dumps(seen["headers"]) + seen["uri"])
        self.assertEqual(json.loads(body)["path"], f"/arvados/v1/collections/{PEER}-4zz18-000000000000001")

    async def test_headers(self) -> None:
        """X-Request-Id kept, Via and X-Forwarded-For added, hop-by-hop gone,
        end-to-end headers kept."""
        await self.build()
        response, _ = await self.call("GET", "/arvados/v1/workflows", headers={
            "Authorization": f"Bearer {V2}", "X-Request-Id": "req-abcdefghij0123456789",
            "Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Custom": "kept",
            "Keep-Alive": "timeout=5", "Accept-Encoding": "gzip",
        })
        self.assertEqual(response.code, 200)
        h = self.seen()["headers"]
        self.assertEqual(h["x-request-id"], ["req-abcdefghij0123456789"])
        self.assertEqual(h["via"], ["HTTP/1.1 arvados-controller"])
        self.assertEqual(h["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(h["x-custom"], ["kept"])
        for gone in ("x-hop", "keep-alive", "accept-encoding"):
            self.assertNotIn(gone, h)
        self.assertEqual(h["host"], [f"127.0.0.1:{self.fake.port}"])
        self.assertEqual(response.headers.getRawHeaders("x-request-id"), ["req-abcdefghij0123456789"])

    async def test_token_of_target_and_salted_token_unchanged(self) -> None:
        await self.build()
        theirs = f"v2/{PEER}-gj3su-000000000000001/{V1}"
        await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {theirs}"})
        self.assertEqual(self.seen()["headers"]["authorization"], [f"Bearer {theirs}"])
        salted_elsewhere = salt_token(V2, "zcccc")
        await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {salted_elsewhere}"})
        self.assertEqual(self.seen()["headers"]["authorization"], [f"Bearer {salted_elsewhere}"])

    async def test_form_body_token_removed(self) -> None:
        await self.build()
        response, _ = await self.call(
            "POST", "/arvados/v1/collections",
            data=f"api_token={V2}&collection=%7B%22name%22%3A%22x%22%7D&_method=POST".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(response.code, 200)
        seen = self.seen()
        self.assertEqual(seen["method"], "POST")
        self.assertEqual(seen["body"], b"collection=%7B%22name%22%3A%22x%22%7D&_method=POST")
        self.assertEqual(seen["headers"]["authorization"], [f"Bearer {SALTED_FOR_PEER}"])

    async def test_methods_and_json_body_byte_exact(self) -> None:
        await self.build()
        payload = json.dumps({"collection": {"name": "é" * 10, "manifest_text": "x" * 300000}}).encode()
        for method in ("PUT", "PATCH", "POST", "DELETE"):
            response, _ = await self.call(
                method, f"/arvados/v1/collections/{PEER}-4zz18-000000000000001", data=payload,
                headers={"Authorization": f"Bearer {V2}", "Content-Type": "application/json"},
            )
            self.assertEqual(response.code, 200, method)
            self.assertEqual(self.seen()["method"], method)
            self.assertEqual(self.seen()["body"], payload)

    async def test_large_response_streamed_back(self) -> None:
        await self.build()
        self.fake.echo_body = json.dumps({"items": ["y" * 1000] * 5000}).encode()
        response, body = await self.call("GET", "/arvados/v1/links", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.fake.echo_body)

    async def test_encoded_body_relayed_verbatim(self) -> None:
        """A gzip answer goes back byte for byte with its Content-Encoding
        (the relay neither asks for nor decodes compression)."""
        await self.build()
        import gzip

        self.fake.echo_body = gzip.compress(b'{"items":[]}')
        self.fake.echo_headers = {b"content-encoding": b"gzip", b"x-remote": b"1"}
        from twisted.web.client import Agent, readBody

        # A bare Agent: treq would decode the gzip and hide the header.
        response = await Agent(reactor).request(
            b"GET", (self.base + "/arvados/v1/links").encode(),
            Headers({b"Authorization": [f"Bearer {V2}".encode()]}))
        raw = await readBody(response)
        self.assertEqual(response.headers.getRawHeaders("content-encoding"), ["gzip"])
        self.assertEqual(response.headers.getRawHeaders("x-remote"), ["1"])
        self.assertEqual(gzip.decompress(raw), b'{"items":[]}')

    async def test_head(self) -> None:
        await self.build()
        self.fake.echo_body = b'{"uuid":"x"}'
        response, body = await self.call("HEAD", f"/arvados/v1/collections/{PEER}-4zz18-000000000000001",
                                         headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")
        self.assertEqual(self.seen()["method"], "HEAD")
        self.assertEqual(response.headers.getRawHeaders("content-length"), [str(len(self.fake.echo_body))])

    async def test_loop_refused(self) -> None:
        """A request that already came through a controller is not forwarded again."""
        await self.build()
        response, body = await self.call("GET", "/arvados/v1/users", headers={
            "Authorization": f"Bearer {V2}", "Via": "HTTP/1.1 arvados-controller"})
        self.assertEqual(response.code, 508)
        self.assertIn("already passed through an Arvados controller", json.loads(body)["errors"][0])
        self.assertEqual(self.fake.calls, [])

    async def test_remote_4xx_passed_through(self) -> None:
        await self.build()
        self.fake.echo_status = 404
        self.fake.echo_body = b'{"errors":["Path not found"]}'
        response, body = await self.call("GET", "/arvados/v1/nothing", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 404)
        self.assertEqual(body, b'{"errors":["Path not found"]}')

    async def test_remote_5xx_is_502_naming_cluster(self) -> None:
        await self.build()
        self.fake.echo_status = 500
        self.fake.echo_body = b'{"errors":["database on fire"]}'
        response, body = await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 502)
        message = json.loads(body)["errors"][0]
        self.assertIn(f"remote cluster {PEER} answered 500", message)
        self.assertIn("database on fire", message)

    async def test_remote_down_is_502(self) -> None:
        await self.build()
        await self.fake.listening_port.stopListening()
        response, body = await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 502)
        self.assertIn(f"remote cluster {PEER} unreachable", json.loads(body)["errors"][0])

    async def test_remote_timeout_is_504(self) -> None:
        await self.build(timeout=9.0)
        self.fake.hang = True
        d = Deferred.fromCoroutine(self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"}))
        await wait_for(lambda: len(self.fake.calls) == 1)
        self.timer.advance(9.0)
        response, body = await d
        self.assertEqual(response.code, 504)
        self.assertIn(f"remote cluster {PEER} did not answer within 9s", json.loads(body)["errors"][0])

    async def test_tls_verified_unless_insecure(self) -> None:
        """Without the remote's CA the self-signed certificate is refused (502);
        with Insecure: true the same remote works."""
        fake = await start_fake_cluster(self, PEER)
        await self.build(ca=False, fake=fake)
        response, body = await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 502)
        message = json.loads(body)["errors"][0]
        self.assertIn(f"remote cluster {PEER} unreachable", message)
        self.assertIn("certificate verify failed", message)
        self.assertEqual(fake.calls, [])
        await self.build(ca=False, fake=fake, remote=fake.remote_entry(proxy=True, insecure=True))
        response, _ = await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 200)

    async def test_local_token_never_sent_to_login_cluster(self) -> None:
        await self.build(login_cluster=PEER)
        response, body = await self.call("GET", "/arvados/v1/users", headers={"Authorization": f"Bearer {V2}"})
        self.assertEqual(response.code, 401)
        self.assertIn("locally issued token", json.loads(body)["errors"][0])
        self.assertEqual(self.fake.calls, [])

    async def test_unknown_cluster_404(self) -> None:
        await self.build()
        request_like = None  # forward() is refused before touching the request
        with self.assertRaises(HTTPError) as cm:
            await self.forwarder.forward(_FakeRequest(), "zqqqq", V2)
        self.assertEqual(cm.exception.status, 404)
        self.assertIsNone(request_like)


class _FakeRequest:
    requestHeaders = Headers()


class PureTests(SynchronousTestCase):
    def test_outgoing_token_vectors(self) -> None:
        """Spec 3.4 / 12.2."""
        kw = {"local_cluster": LOCAL}
        self.assertEqual(outgoing_token(V2, PEER, **kw), SALTED_FOR_PEER)
        self.assertEqual(outgoing_token(V2, LOCAL, **kw), V2)
        self.assertEqual(outgoing_token(SALTED_FOR_PEER, "zcccc", **kw), SALTED_FOR_PEER)
        self.assertEqual(outgoing_token(V1, PEER, **kw), V1)
        self.assertEqual(outgoing_token(V1, PEER, v2_form=V2, **kw), SALTED_FOR_PEER)
        self.assertEqual(outgoing_token("eyJhbGciOi.x.y", PEER, **kw), "eyJhbGciOi.x.y")
        self.assertEqual(outgoing_token(None, PEER, **kw), "-")
        with self.assertRaises(HTTPError) as cm:
            outgoing_token(V2, PEER, login_cluster=PEER, **kw)
        self.assertEqual(cm.exception.status, 401)
        anon = f"v2/{LOCAL}-gj3su-anonymouspublic/{'a' * 40}x"
        self.assertTrue(outgoing_token(anon, PEER, login_cluster=PEER,
                                       anonymous_token_uuid=f"{LOCAL}-gj3su-anonymouspublic", **kw))

    def test_strip_api_token_query(self) -> None:
        self.assertEqual(strip_api_token_query(b"a=1&api_token=x&b=%2F&api_token=y"), b"a=1&b=%2F")
        self.assertEqual(strip_api_token_query(b"api_token=x"), b"")
        self.assertEqual(strip_api_token_query(b"api_tokens=x"), b"api_tokens=x")

    def test_forwarding_headers(self) -> None:
        incoming = Headers({
            b"Authorization": [b"Bearer secret"], b"Host": [b"a.example"], b"TE": [b"trailers"],
            b"Connection": [b"close, X-Private"], b"X-Private": [b"1"], b"Via": [b"1.1 lb"],
            b"X-Forwarded-For": [b"10.0.0.1"], b"X-Request-Id": [b"req-1"], b"Content-Length": [b"5"],
            b"If-None-Match": [b"abc"], b"Content-Type": [b"application/json"],
        })
        out = forwarding_headers(incoming, token="v2/x/y", client_address="10.0.0.2", request_id="req-2")
        self.assertEqual(out.getRawHeaders(b"authorization"), [b"Bearer v2/x/y"])
        self.assertEqual(out.getRawHeaders(b"via"), [b"1.1 lb, HTTP/1.1 arvados-controller"])
        self.assertEqual(out.getRawHeaders(b"x-forwarded-for"), [b"10.0.0.1, 10.0.0.2"])
        self.assertEqual(out.getRawHeaders(b"x-request-id"), [b"req-2"])
        self.assertEqual(out.getRawHeaders(b"content-type"), [b"application/json"])
        for gone in (b"host", b"te", b"connection", b"x-private", b"content-length", b"if-none-match"):
            self.assertFalse(out.hasHeader(gone), gone)
