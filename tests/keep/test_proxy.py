# -*- test-case-name: tests.keep.test_proxy -*-
"""The keepproxy HTTP API over real loopback sockets: round trips, header-time
refusals, signatures, CORS, replicas and storage classes, the index."""
from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

from arvnode.keep.locator import EMPTY_BLOCK_HASH, MAX_BLOCK_SIZE
from tests.keep.test_proxy_fixture import (
    ADMIN,
    ANON,
    BROKEN,
    ROOT,
    SCOPED,
    USER,
    Permission,
    VolumeSpec,
    auth,
    md5,
    start_keepproxy,
)

SIGNED_RE = re.compile(r"^([0-9a-f]{32})\+(\d+)\+A[0-9a-f]{40}@[0-9a-f]{8}$")
CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, HEAD, PUT, OPTIONS, POST",
    "access-control-allow-headers": (
        "Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas,"
        " X-Keep-Signature, X-Keep-Storage-Classes"
    ),
    "access-control-expose-headers": (
        "X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed"
    ),
    "access-control-max-age": "86486400",
}


class RoundTripTests(TestCase):
    """PUT then GET/HEAD of blocks of the interesting sizes."""

    async def _round_trip(self, data: bytes) -> None:
        keep = await start_keepproxy(self)
        c = await keep.client()
        expect = len(data) > 1 << 20  # what pycurl does
        response, got_continue = await c.request(
            "PUT", f"/{md5(data)}", auth(), data, expect_continue=expect
        )
        assert response is not None
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(got_continue, expect)
        locator = response.body.decode()
        match = SIGNED_RE.match(locator)
        self.assertIsNotNone(match, locator)
        self.assertEqual(match.group(1), md5(data))  # type: ignore[union-attr]
        self.assertEqual(int(match.group(2)), len(data))  # type: ignore[union-attr]
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "1")
        self.assertEqual(response.header("X-Keep-Storage-Classes-Confirmed"), "default=1")
        self.assertEqual(response.header("Via"), "HTTP/1.1 keepproxy")
        # Same (keep-alive) connection: GET and HEAD with the signed locator.
        got, _ = await c.request("GET", f"/{locator}", auth())
        assert got is not None
        self.assertEqual(got.status, 200)
        self.assertEqual(got.header("Content-Length"), str(len(data)))
        self.assertEqual(md5(got.body), md5(data))
        head, _ = await c.request("HEAD", f"/{locator}", auth())
        assert head is not None
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header("Content-Length"), str(len(data)))
        self.assertEqual(head.body, b"")

    async def test_empty_block(self) -> None:
        """A 0-byte block is stored and read back."""
        await self._round_trip(b"")

    async def test_three_bytes(self) -> None:
        """A 3-byte block round-trips with a signed locator."""
        await self._round_trip(b"foo")

    async def test_one_mib_plus_one(self) -> None:
        """1 MiB + 1 (the first size pycurl sends with Expect) round-trips."""
        await self._round_trip(os.urandom((1 << 20) + 1))

    async def test_max_block(self) -> None:
        """Exactly 64 MiB round-trips."""
        await self._round_trip(os.urandom(MAX_BLOCK_SIZE))

    async def test_put_with_size_hint(self) -> None:
        """PUT /<hash>+<size> works (Arvados' keepproxy fails it)."""
        keep = await start_keepproxy(self)
        response = await keep.put(b"foo", path=f"/{md5(b'foo')}+3")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.body.decode().startswith(f"{md5(b'foo')}+3+A"))

    async def test_post_computes_hash(self) -> None:
        """POST / stores the body under its md5."""
        keep = await start_keepproxy(self)
        c = await keep.client()
        response, _ = await c.request("POST", "/", auth(), b"hello")
        assert response is not None
        self.assertEqual(response.status, 200, response.body)
        self.assertTrue(response.body.decode().startswith(f"{md5(b'hello')}+5+A"))
        self.assertTrue(keep.volumes[0].has_block(md5(b"hello")))

    async def test_get_without_size_hint(self) -> None:
        """GET /<hash>+A... without a size works; Content-Length is the stored size."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        signed = keep.sign(md5(b"foo"), 3)
        unsized = signed.replace("+3+", "+")
        c = await keep.client()
        got, _ = await c.request("GET", f"/{unsized}", auth())
        assert got is not None
        self.assertEqual((got.status, got.body), (200, b"foo"))

    async def test_cluster_hint_stripped(self) -> None:
        """A +K@<cluster> hint is ignored."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        signed = keep.sign(md5(b"foo"), 3)
        c = await keep.client()
        got, _ = await c.request("GET", "/" + signed.replace("+3+", "+3+K@zzzzz+"), auth())
        assert got is not None
        self.assertEqual((got.status, got.body), (200, b"foo"))

    async def test_not_found(self) -> None:
        """A block no volume has: 404 'Block not found' with CORS."""
        keep = await start_keepproxy(self)
        c = await keep.client()
        got, _ = await c.request("GET", "/" + keep.sign(md5(b"nope"), 4), auth())
        assert got is not None
        self.assertEqual(got.status, 404)
        self.assertEqual(got.body, b"Block not found\n")
        self.assertEqual(got.header("Content-Type"), "text/plain; charset=utf-8")
        for name, value in CORS.items():
            self.assertEqual(got.header(name), value)

    async def test_bad_md5_nothing_stored(self) -> None:
        """A body whose md5 is not the locator's: 422 naming both, nothing kept."""
        keep = await start_keepproxy(self)
        wrong = md5(b"something else")
        c = await keep.client()
        response, _ = await c.request("PUT", f"/{wrong}", auth(), b"foo")
        assert response is not None
        self.assertEqual(response.status, 422)
        self.assertIn(md5(b"foo").encode(), response.body)
        self.assertIn(wrong.encode(), response.body)
        vol = keep.volumes[0]
        self.assertFalse(vol.has_block(wrong))
        self.assertFalse(vol.has_block(md5(b"foo")))
        self.assertEqual(vol.temp_files(), [])
        self.assertTrue(all(w.aborted.called for w in vol.writers))

    async def test_bad_md5_large(self) -> None:
        """A 3 MiB body with a wrong hash: 422 after streaming, temp file removed."""
        keep = await start_keepproxy(self)
        data = os.urandom(3 << 20)
        wrong = md5(b"x")
        c = await keep.client()
        response, got_continue = await c.request(
            "PUT", f"/{wrong}", auth(), data, expect_continue=True
        )
        assert response is not None
        self.assertTrue(got_continue)
        self.assertEqual(response.status, 422)
        self.assertEqual(keep.volumes[0].temp_files(), [])
        self.assertFalse(keep.volumes[0].has_block(wrong))


class SignatureTests(TestCase):
    """GET/HEAD need a valid +A signature for the caller's token."""

    async def _get(self, keep, path: str, token: str | None = USER) -> tuple[int, bytes, dict]:
        c = await keep.client()
        headers = auth(token) if token else {}
        got, _ = await c.request("GET", path, headers)
        assert got is not None
        return got.status, got.body, got.headers

    async def test_missing_expired_invalid(self) -> None:
        """Missing, expired and foreign signatures are 403 with a reason."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        h = md5(b"foo")
        status, body, _ = await self._get(keep, f"/{h}+3")
        self.assertEqual((status, body), (403, b"missing signature\n"))
        expired = keep.sign(h, 3, now=keep.site.clock.seconds() - 30 * 24 * 3600)
        status, body, _ = await self._get(keep, f"/{expired}")
        self.assertEqual((status, body), (403, b"expired signature\n"))
        other = keep.sign(h, 3, token=ADMIN)
        status, body, _ = await self._get(keep, f"/{other}")
        self.assertEqual((status, body), (403, b"invalid signature\n"))

    async def test_no_token_is_403(self) -> None:
        """No or unknown token: 403 (never 401), with CORS."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        signed = keep.sign(md5(b"foo"), 3)
        for token in (None, "bogus"):
            status, body, headers = await self._get(keep, f"/{signed}", token)
            self.assertEqual(status, 403)
            self.assertEqual(headers["access-control-allow-origin"], ["*"])
        c = await keep.client()
        got, _ = await c.request("GET", f"/{signed}", {"Authorization": f"Basic {USER}"})
        assert got is not None
        self.assertEqual(got.status, 403)

    async def test_oauth2_scheme(self) -> None:
        """'Authorization: OAuth2 <token>' works like Bearer."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        c = await keep.client()
        got, _ = await c.request(
            "GET", "/" + keep.sign(md5(b"foo"), 3), {"Authorization": f"OAuth2 {USER}"}
        )
        assert got is not None
        self.assertEqual((got.status, got.body), (200, b"foo"))

    async def test_empty_block_needs_auth_only(self) -> None:
        """The empty block is served without a signature, but not without a token."""
        keep = await start_keepproxy(self)
        status, body, _ = await self._get(keep, f"/{EMPTY_BLOCK_HASH}+0")
        self.assertEqual((status, body), (200, b""))
        status, _, _ = await self._get(keep, f"/{EMPTY_BLOCK_HASH}+0", None)
        self.assertEqual(status, 403)

    async def test_anonymous_reads_its_signatures(self) -> None:
        """The anonymous token may GET blocks signed for it."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        status, body, _ = await self._get(keep, "/" + keep.sign(md5(b"foo"), 3, ANON), ANON)
        self.assertEqual((status, body), (200, b"foo"))

    async def test_x_keep_signature_local(self) -> None:
        """HEAD with X-Keep-Signature: local answers X-Keep-Locator, freshly signed."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        c = await keep.client()
        got, _ = await c.request(
            "HEAD",
            "/" + keep.sign(md5(b"foo"), 3),
            {**auth(), "X-Keep-Signature": "local, 2026-01-01T00:00:00Z"},
        )
        assert got is not None
        self.assertEqual(got.status, 200)
        self.assertEqual(got.header("X-Keep-Locator"), keep.sign(md5(b"foo"), 3))

    async def test_download_permission(self) -> None:
        """KeepproxyPermission.User.Download=false refuses users, not admins."""
        keep = await start_keepproxy(self, permission=Permission(user_download=False))
        await keep.put(b"foo")
        status, _, _ = await self._get(keep, "/" + keep.sign(md5(b"foo"), 3))
        self.assertEqual(status, 403)
        status, _, _ = await self._get(keep, "/" + keep.sign(md5(b"foo"), 3, ADMIN), ADMIN)
        self.assertEqual(status, 200)

    async def test_store_failure_is_503(self) -> None:
        """If the token cannot be checked (store down), the answer is 503."""
        keep = await start_keepproxy(self)
        status, body, _ = await self._get(keep, f"/{EMPTY_BLOCK_HASH}+0", BROKEN)
        self.assertEqual(status, 503)
        self.assertNotIn(BROKEN.encode(), body)


class UploadRefusalTests(TestCase):
    """Upload checks at header time (status and message)."""

    async def _put_status(self, keep, **kw) -> tuple[int, bytes, dict]:
        response = await keep.put(b"foo", **kw)
        return response.status, response.body, response.headers

    async def test_upload_permissions(self) -> None:
        """Anonymous and scoped tokens never upload; permission flags apply."""
        keep = await start_keepproxy(self, permission=Permission(user_upload=False))
        for token in (ANON, SCOPED, USER):
            status, _, _ = await self._put_status(keep, token=token)
            self.assertEqual(status, 403, token)
        status, _, _ = await self._put_status(keep, token=ADMIN)
        self.assertEqual(status, 200)

    async def test_size_hint_mismatch(self) -> None:
        """A size hint that disagrees with Content-Length: 400."""
        keep = await start_keepproxy(self)
        status, body, _ = await self._put_status(keep, path=f"/{md5(b'foo')}+4")
        self.assertEqual(status, 400)
        self.assertIn(b"size hint", body)

    async def test_bad_paths(self) -> None:
        """PUT to a non-locator path and POST to a path: 400."""
        keep = await start_keepproxy(self)
        status, _, _ = await self._put_status(keep, path="/index")
        self.assertEqual(status, 400)
        c = await keep.client()
        got, _ = await c.request("POST", "/foo", auth(), b"foo")
        assert got is not None
        self.assertEqual(got.status, 400)

    async def test_loop_detected(self) -> None:
        """A request that already passed a keepproxy: 508 'loop detected'."""
        keep = await start_keepproxy(self)
        status, body, _ = await self._put_status(keep, headers={"Via": "HTTP/1.1 keepproxy"})
        self.assertEqual((status, body), (508, b"loop detected\n"))
        c = await keep.client()
        got, _ = await c.request("GET", f"/{EMPTY_BLOCK_HASH}+0", {**auth(), "Via": "1.1 keepproxy"})
        assert got is not None
        self.assertEqual(got.status, 508)

    async def test_inflight_budget(self) -> None:
        """Over the in-flight budget: 503 + Retry-After at header time."""
        keep = await start_keepproxy(self, max_inflight_bytes=2 << 20)
        first = await keep.client()
        # Declare 2 MiB, get 100 Continue, send nothing yet: it holds its budget.
        first.send(
            f"PUT /{md5(b'x')} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {USER}\r\n"
            "Content-Length: 2097152\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        interim = await first.read_response()
        assert interim is not None
        self.assertEqual(interim.status, 100)
        status, _, headers = await self._put_status(keep)
        self.assertEqual(status, 503)
        self.assertEqual(headers["retry-after"], ["1"])
        first.transport.abortConnection()
        await first.closed


class CorsTests(TestCase):
    """CORS headers on every answer, OPTIONS preflight."""

    async def test_options(self) -> None:
        """OPTIONS / and OPTIONS /<locator>: 200, empty, CORS headers."""
        keep = await start_keepproxy(self)
        c = await keep.client()
        for path in ("/", f"/{md5(b'foo')}+3"):
            got, _ = await c.request("OPTIONS", path)
            assert got is not None
            self.assertEqual((got.status, got.body), (200, b""))
            for name, value in CORS.items():
                self.assertEqual(got.header(name), value)

    async def test_errors_carry_cors(self) -> None:
        """403, 404 and 411 answers carry CORS and Via."""
        keep = await start_keepproxy(self)
        c = await keep.client()
        got403, _ = await c.request("GET", f"/{md5(b'x')}+1")
        got404, _ = await c.request("GET", "/" + keep.sign(md5(b"x"), 1), auth())
        c411 = await keep.client()
        c411.send(
            f"PUT /{md5(b'x')} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {USER}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        got411 = await c411.read_response()
        for got, status in ((got403, 403), (got404, 404), (got411, 411)):
            assert got is not None
            self.assertEqual(got.status, status)
            self.assertEqual(got.header("Via"), "HTTP/1.1 keepproxy")
            for name, value in CORS.items():
                self.assertEqual(got.header(name), value, (status, name))
            self.assertEqual(got.header("Content-Type"), "text/plain; charset=utf-8")
            self.assertTrue(got.body.endswith(b"\n"))

    async def test_unknown_route(self) -> None:
        """Unknown routes are 400; a locator with the wrong method is 405."""
        keep = await start_keepproxy(self)
        c = await keep.client()
        got, _ = await c.request("GET", "/nonsense", auth())
        assert got is not None
        self.assertEqual(got.status, 400)
        got, _ = await c.request("DELETE", f"/{md5(b'x')}", auth())
        assert got is not None
        self.assertEqual(got.status, 405)


class ReplicaTests(TestCase):
    """Volume choice, X-Keep-Replicas-Stored and storage classes."""

    VOLUMES = (
        VolumeSpec("zzzzz-nyw5e-000000000000001", ("default",)),
        VolumeSpec("zzzzz-nyw5e-000000000000002", ("archive",)),
    )

    async def test_two_replicas_two_classes(self) -> None:
        """Desired 2 with no classes: both volumes, per-class true counts."""
        keep = await start_keepproxy(self, volumes=self.VOLUMES)
        response = await keep.put(b"foo", headers={"X-Keep-Desired-Replicas": "2"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "2")
        self.assertEqual(
            response.header("X-Keep-Storage-Classes-Confirmed"), "archive=1, default=1"
        )
        self.assertTrue(all(v.has_block(md5(b"foo")) for v in keep.volumes))

    async def test_requested_class(self) -> None:
        """X-Keep-Storage-Classes: archive writes only the archive volume."""
        keep = await start_keepproxy(self, volumes=self.VOLUMES)
        response = await keep.put(b"foo", headers={"X-Keep-Storage-Classes": "archive"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("X-Keep-Storage-Classes-Confirmed"), "archive=1")
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "1")
        self.assertEqual([v.has_block(md5(b"foo")) for v in keep.volumes], [False, True])

    async def test_both_classes(self) -> None:
        """Two requested classes with one replica each: both volumes written."""
        keep = await start_keepproxy(self, volumes=self.VOLUMES)
        response = await keep.put(
            b"foo", headers={"X-Keep-Storage-Classes": "default, archive"}
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(
            response.header("X-Keep-Storage-Classes-Confirmed"), "archive=1, default=1"
        )

    async def test_short_replicas_503_kept(self) -> None:
        """Three replicas wanted, two possible: 503, stored count, blocks kept."""
        keep = await start_keepproxy(self, volumes=self.VOLUMES)
        response = await keep.put(b"foo", headers={"X-Keep-Desired-Replicas": "3"})
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "2")
        self.assertTrue(all(v.has_block(md5(b"foo")) for v in keep.volumes))

    async def test_unavailable_class_503(self) -> None:
        """A class no volume serves: 503 with that class confirmed at 0."""
        keep = await start_keepproxy(self, volumes=self.VOLUMES)
        response = await keep.put(b"foo", headers={"X-Keep-Storage-Classes": "tape"})
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header("X-Keep-Storage-Classes-Confirmed"), "tape=0")

    async def test_failed_volume_replaced(self) -> None:
        """A volume that cannot open a write is replaced by the next one."""
        keep = await start_keepproxy(
            self,
            volumes=(
                VolumeSpec("zzzzz-nyw5e-000000000000001"),
                VolumeSpec("zzzzz-nyw5e-000000000000002"),
            ),
        )
        for v in keep.volumes:
            v.fail_open = True
            response = await keep.put(b"foo")
            v.fail_open = False
            self.assertEqual(response.status, 200)
        self.flushLoggedErrors()

    async def test_read_only_volume_not_written(self) -> None:
        """Read-only volumes are never written; with none writable: 503."""
        keep = await start_keepproxy(
            self, volumes=(VolumeSpec("zzzzz-nyw5e-000000000000001", read_only=True),)
        )
        response = await keep.put(b"foo")
        self.assertEqual(response.status, 503)
        self.assertEqual(response.header("X-Keep-Replicas-Stored"), "0")


class IndexTests(TestCase):
    """GET /index is for the SystemRootToken only."""

    async def test_index(self) -> None:
        """Root token lists blocks (with prefix filter); others get 403."""
        keep = await start_keepproxy(self)
        await keep.put(b"foo")
        await keep.put(b"bar")
        c = await keep.client()
        got, _ = await c.request("GET", "/index", auth(ROOT))
        assert got is not None
        self.assertEqual(got.status, 200)
        lines = got.body.decode().split("\n")
        self.assertEqual(lines[-2:], ["", ""])
        hashes = sorted(line.split("+")[0] for line in lines if line)
        self.assertEqual(hashes, sorted([md5(b"foo"), md5(b"bar")]))
        got, _ = await c.request("GET", f"/index/{md5(b'foo')[:3]}", auth(ROOT))
        assert got is not None
        self.assertEqual(got.body.decode().split("+")[0], md5(b"foo"))
        for token in (USER, ADMIN):
            got, _ = await c.request("GET", "/index", auth(token))
            assert got is not None
            self.assertEqual(got.status, 403)


class AuditTests(TestCase):
    """One audit line per block transfer, without secrets."""

    async def test_audit_lines(self) -> None:
        """PUT and GET each log locator, user, bytes, replicas, request id,
        outcome; never the token or the signature."""
        from twisted.logger import globalLogPublisher

        events: list[dict] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "arvnode.keep.audit":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        keep = await start_keepproxy(self)
        response = await keep.put(b"foo")
        c = await keep.client()
        await c.request("GET", "/" + response.body.decode(), auth())
        self.assertEqual([e["op"] for e in events], ["put", "get"])
        for event in events:
            self.assertEqual(event["locator"], f"{md5(b'foo')}+3")
            self.assertEqual(event["user"], "zzzzz-tpzed-000000000000001")
            self.assertEqual(event["bytes"], 3)
            self.assertEqual(event["outcome"], "ok")
            self.assertTrue(event["request_id"].startswith("req-"))
            self.assertEqual(event["client"], "127.0.0.1")
            text = repr(event)
            self.assertNotIn("usersecret", text)
            self.assertNotIn("+A", text)
        self.assertEqual(events[0]["replicas"], 1)
        self.assertEqual(events[0]["classes"], "default=1")
