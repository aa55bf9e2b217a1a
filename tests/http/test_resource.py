"""AsyncResource: the concurrency bound, the request deadline and the error funnel."""
from __future__ import annotations

import json
import random

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from arvnode.http.resource import AsyncResource, HTTPError, Limits


class Waiting(AsyncResource):
    """Each request waits on a Deferred the test controls."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pending: list[Deferred] = []

    async def handle(self, request):
        d = Deferred()
        self.pending.append(d)
        return await d


class Failing(AsyncResource):
    def __init__(self, exc, **kw):
        super().__init__(**kw)
        self.exc = exc

    async def handle(self, request):
        raise self.exc


def body(request: DummyRequest) -> dict:
    return json.loads(b"".join(request.written))


class AsyncResourceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def make(self, cls=Waiting, *args, max_concurrent=2, max_queued=1, timeout=10.0):
        limits = Limits(self.clock, max_concurrent=max_concurrent, max_queued=max_queued, timeout=timeout)
        return cls(*args, clock=self.clock, rng=random.Random(1), limits=limits)

    def test_beyond_concurrency_and_queue_is_503(self):
        """With 2 running and 1 queued, a fourth request gets 503 with
        Retry-After; the queued one runs when a slot frees up."""
        r = self.make()
        reqs = [DummyRequest([b""]) for _ in range(4)]
        for req in reqs:
            r.render(req)
        self.assertEqual(len(r.pending), 2)
        self.assertEqual(reqs[3].responseCode, 503)
        self.assertEqual(reqs[3].responseHeaders.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn("too many requests", body(reqs[3])["errors"][0])
        r.pending[0].callback({"ok": 1})
        self.assertEqual(body(reqs[0]), {"ok": 1})
        self.assertEqual(len(r.pending), 3, "the queued request started")

    def test_request_timeout_is_503_and_frees_the_slot(self):
        """A handler still running after API.RequestTimeout is cancelled and
        the client gets a 503 saying so; its slot is released."""
        r = self.make(max_concurrent=1, max_queued=0, timeout=5.0)
        req = DummyRequest([b""])
        r.render(req)
        self.clock.advance(5.0)
        self.assertEqual(req.responseCode, 503)
        self.assertIn("timed out", body(req)["errors"][0])
        again = DummyRequest([b""])
        r.render(again)
        self.assertEqual(len(r.pending), 2, "a new request may run")

    def test_http_error_is_arvados_json(self):
        """HTTPError becomes {"errors": [message], "error_token": ...} with its status."""
        r = self.make(Failing, HTTPError(422, "bad filter"))
        req = DummyRequest([b""])
        r.render(req)
        self.assertEqual(req.responseCode, 422)
        b = body(req)
        self.assertEqual(b["errors"], ["bad filter"])
        self.assertRegex(b["error_token"], r"^\d+\+[0-9a-f]{8}$")

    def test_error_token_is_logged_with_the_message(self):
        """The error_token a client shows its user appears in the node's log
        with the status and the message, so an operator can find it."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        r = self.make(Failing, HTTPError(404, "collection zzzzz-4zz18-000000000000000 not found"))
        req = DummyRequest([b""])
        r.render(req)
        token = body(req)["error_token"]
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any(token in l and "404" in l and "not found" in l for l in lines), lines)

    def test_unexpected_exception_is_logged_500(self):
        """Any other exception is a 500 (a bug) and is logged."""
        r = self.make(Failing, ZeroDivisionError("boom"))
        req = DummyRequest([b""])
        r.render(req)
        self.assertEqual(req.responseCode, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
