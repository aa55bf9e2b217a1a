# -*- test-case-name: tests.remote.test_client -*-
"""The remote-cluster client (:mod:`arvnode.remote.client`) against the
loopback stand-in for a remote Arvados cluster (:mod:`tests.remote.fakecluster`)."""
from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode.config import RemoteCluster
from arvnode.remote.client import (
    RemoteClient,
    RemoteHTTPError,
    RemoteTimeout,
    RemoteUnreachable,
    UnknownRemote,
    remote_errors,
)
from tests.helpers import wait_for
from tests.remote.fakecluster import start_fake_cluster


class ConfigTests(SynchronousTestCase):
    def client(self, **remotes: RemoteCluster) -> RemoteClient:
        return RemoteClient(reactor=reactor, clock=Clock(), local_cluster="zzzzz", remotes=remotes)

    def test_base_url_uses_scheme_and_host(self) -> None:
        c = self.client(zbbbb=RemoteCluster(host="b.example:8443"),
                        zcccc=RemoteCluster(host="c.example", scheme="http", proxy=True))
        self.assertEqual(c.base_url("zbbbb"), "https://b.example:8443")
        self.assertEqual(c.base_url("zcccc"), "http://c.example")
        self.assertFalse(c.proxy_enabled("zbbbb"))
        self.assertTrue(c.proxy_enabled("zcccc"))

    def test_unknown_remote_named(self) -> None:
        c = self.client(zbbbb=RemoteCluster(host=""))
        for cid in ("zbbbb", "zqqqq"):
            with self.assertRaises(UnknownRemote) as cm:
                c.base_url(cid)
            self.assertIn(cid, str(cm.exception))
            self.assertFalse(c.known(cid))

    def test_remote_errors(self) -> None:
        self.assertEqual(remote_errors(b'{"errors":["a", 2]}'), ["a", "2"])
        self.assertEqual(remote_errors(b"<html>"), [])
        e = RemoteHTTPError(403, b'{"errors":["Forbidden"]}', cluster="zbbbb")
        self.assertEqual(str(e), "remote cluster zbbbb answered 403: Forbidden")


class RequestTests(TestCase):
    async def test_get_json_and_errors(self) -> None:
        fake = await start_fake_cluster(self, "zbbbb")
        clock = Clock()
        c = RemoteClient(reactor=reactor, clock=clock, local_cluster="zzzzz",
                         remotes={"zbbbb": fake.remote_entry()}, ca_file=str(fake.ca), timeout=5)
        self.addCleanup(lambda: Deferred.fromCoroutine(c.close()))
        doc = await c.get_json("zbbbb", "/arvados/v1/anything", token="t", query={"a": "1"})
        self.assertEqual(doc["uri"], "/arvados/v1/anything?a=1")
        self.assertEqual(doc["headers"]["authorization"], ["Bearer t"])

        fake.echo_status = 422
        fake.echo_body = b'{"errors":["bad filter"]}'
        e = await self.assertFailure(Deferred.fromCoroutine(c.get_json("zbbbb", "/x", token=None)),
                                     RemoteHTTPError)
        self.assertEqual((e.status, e.errors), (422, ["bad filter"]))

        fake.echo_status, fake.echo_body = 200, b"not json"
        await self.assertFailure(Deferred.fromCoroutine(c.get_json("zbbbb", "/x", token=None)),
                                 RemoteUnreachable)

        fake.hang = True
        d = Deferred.fromCoroutine(c.get_json("zbbbb", "/x", token=None))
        await wait_for(lambda: len(fake.calls) == 4)
        clock.advance(5)
        e = await self.assertFailure(d, RemoteTimeout)
        self.assertIsInstance(e, RemoteUnreachable)  # callers may treat both alike

    async def test_oversized_document_refused(self) -> None:
        """A remote answer larger than the document limit is refused (502
        material), not held in memory; one within it is read whole."""
        fake = await start_fake_cluster(self, "zbbbb")
        c = RemoteClient(reactor=reactor, clock=reactor, local_cluster="zzzzz",
                         remotes={"zbbbb": fake.remote_entry()}, ca_file=str(fake.ca), timeout=30)
        self.addCleanup(lambda: Deferred.fromCoroutine(c.close()))
        fake.echo_status, fake.echo_body = 200, b"x" * 300_000
        response = await c.request("zbbbb", "GET", "/big")
        e = await self.assertFailure(
            Deferred.fromCoroutine(c.read_body("zbbbb", response, limit=100_000)), RemoteUnreachable)
        self.assertIn("larger than 100000 bytes", e.message)
        response = await c.request("zbbbb", "GET", "/big")
        self.assertEqual(len(await c.read_body("zbbbb", response, limit=300_000)), 300_000)
