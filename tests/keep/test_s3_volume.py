# -*- test-case-name: tests.keep.test_s3_volume -*-
"""The S3 volume against a real S3-protocol server: moto in a subprocess on
loopback, with signature checking on (tests/s3server.py), so a signing bug or
the wrong key is refused as a real bucket would refuse it.

Not faked: the bucket, the sockets, the signatures, the keepproxy node.
Faults moto cannot produce (500s, stalls) come from
:class:`tests.s3server.FaultProxy`, a loopback TCP proxy in front of moto;
each test that uses it says so. Moto ignores ``Content-MD5`` (s3-notes §3), so
the header is checked on the wire instead of relying on a BadDigest.
"""
from __future__ import annotations

import hashlib
import random
import re
import socket
from base64 import b64encode
from itertools import count
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from arvnode.config import config_from_string
from arvnode.keep.locator import sign_locator
from arvnode.keep.volume import IBlockReader, IBlockWriter, IVolume, VolumeError
from arvnode.keep.volumes import build_volume
from arvnode.keep.volumes.s3 import S3Volume
from arvnode.keep.volumes.s3_client import S3Error
from arvnode.keep.volumes.s3_params import S3ParameterError, parse_s3_parameters
from arvnode.tls import client_policy, generate_ca_and_server
from tests.helpers import http_client, make_cluster_config, start_node, wait_for
from tests.s3server import FaultProxy, S3Server

UUID = "zzzzz-nyw5e-000000000000000"
MiB = 1 << 20
_names = count()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def block(size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return md5(data), data


def free_port() -> int:
    """A loopback port nothing listens on (a bucket that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@implementer(IConsumer)
class Collector:
    """Consumer for a block reader; can pause its producer after a write."""

    def __init__(self, pause_after_first: bool = False) -> None:
        self.parts: list[bytes] = []
        self.producer: IPushProducer | None = None
        self.paused = False
        self.writes_while_paused = 0
        self._pause_after_first = pause_after_first

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        if self.paused:
            self.writes_while_paused += 1
        self.parts.append(data)
        if self._pause_after_first and len(self.parts) == 1:
            self.pause()

    def pause(self) -> None:
        self.paused = True
        assert self.producer is not None
        self.producer.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        assert self.producer is not None
        self.producer.resumeProducing()

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


async def put(volume: IVolume, data: bytes, chunk: int = 256 * 1024) -> str:
    h = md5(data)
    writer = await volume.open_write(h, len(data))
    for i in range(0, len(data), chunk):
        await writer.write(data[i : i + chunk])
    await writer.commit()
    return h


async def get(volume: IVolume, h: str) -> bytes | None:
    reader = await volume.open_read(h)
    if reader is None:
        return None
    sink = Collector()
    await reader.produce(sink)
    return sink.data


class MotoTestCase(TestCase):
    """One moto server per test class, started on first use (trial has no
    setUpClass); it is stopped when the test process exits."""

    _moto: S3Server | None = None

    @property
    def moto(self) -> S3Server:
        cls = type(self)
        server = cls.__dict__.get("_moto")
        if server is None or not server.running:
            server = S3Server().start()
            cls._moto = server
        return server

    def bucket(self, user: int = 0, server: S3Server | None = None) -> str:
        """A fresh bucket owned by IAM user ``user``."""
        name = re.sub(r"[^a-z0-9]+", "-", self._testMethodName.lower())[:30].strip("-")
        return (server or self.moto).create_bucket(f"{name}-{next(_names)}", user)

    def params(
        self, bucket: str, *, user: int = 0, endpoint: str | None = None,
        server: S3Server | None = None, **extra: Any,
    ) -> dict[str, Any]:
        server = server or self.moto
        access, secret = server.credentials[user]
        p: dict[str, Any] = {
            "Bucket": bucket,
            "Region": "us-east-1",
            "Endpoint": endpoint or server.endpoint,
            "UsePathStyle": True,
            "AccessKeyID": access,
            "SecretAccessKey": secret,
        }
        p.update(extra)
        return p

    def volume(
        self, bucket: str, *, clock: Any = None, replay_limit: int | None = None,
        max_attempts: int = 4, **kw: Any,
    ) -> S3Volume:
        more: dict[str, Any] = {} if replay_limit is None else {"replay_limit": replay_limit}
        v = S3Volume(
            UUID, parse_s3_parameters(self.params(bucket, **kw)), reactor=reactor, clock=clock,
            rng=random.Random(3), backoff_base=0.01, max_attempts=max_attempts, **more,
        )
        self.addCleanup(v.stop)
        return v

    def fault_proxy(self, server: S3Server | None = None) -> FaultProxy:
        proxy = FaultProxy((server or self.moto).port).listen()
        self.addCleanup(lambda: proxy.close() if proxy.port is not None else None)
        return proxy


class S3ParametersTests(TestCase):
    """The Arvados-shaped DriverParameters are checked, with secrets kept out
    of messages."""

    SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

    def test_defaults(self) -> None:
        """Only Bucket and credentials are needed; AWS is the default endpoint."""
        p = parse_s3_parameters({"Bucket": "b1", "AccessKeyID": "AKIA1", "SecretAccessKey": self.SECRET})
        self.assertEqual(
            (p.endpoint, p.region, p.use_path_style, p.prefix, p.prefix_length,
             p.index_page_size, p.connect_timeout, p.read_timeout),
            ("https://s3.us-east-1.amazonaws.com", "us-east-1", False, "", 0, 1000, 60.0, 600.0),
        )
        self.assertEqual(p.key("0123456789abcdef0123456789abcdef"), "0123456789abcdef0123456789abcdef")

    def test_all_keys(self) -> None:
        """Every supported key is read; ignored Arvados keys are accepted."""
        p = parse_s3_parameters({
            "Bucket": "keep-blocks", "Region": "auto", "Endpoint": "https://ACCT.R2.example.com:443/",
            "AccessKeyID": "AKIA1", "SecretAccessKey": self.SECRET, "UsePathStyle": True,
            "Prefix": "keep/", "PrefixLength": 3, "IndexPageSize": 500,
            "ConnectTimeout": "5s", "ReadTimeout": "2m", "RaceWindow": "24h",
            "LocationConstraint": False, "IAMRole": "", "V2Signature": False,
        })
        self.assertEqual((p.endpoint, p.region, p.index_page_size, p.connect_timeout, p.read_timeout),
                         ("https://acct.r2.example.com", "auto", 500, 5.0, 120.0))
        self.assertEqual(p.key("0123456789abcdef0123456789abcdef"),
                         "keep/012/0123456789abcdef0123456789abcdef")

    def test_problems_named_secrets_hidden(self) -> None:
        """All problems are reported at once, by key, never showing a secret."""
        with self.assertRaises(S3ParameterError) as cm:
            parse_s3_parameters({
                "SecretAccessKey": 12345, "UsePathStyle": "yes", "Endpoint": "s3.example.com/x",
                "PrefixLength": 40, "ReadTimeout": "10", "Bukcet": "typo", "IAMRole": "a/b",
                "V2Signature": True,
            })
        keys = [k for k, _, _ in cm.exception.problems]
        self.assertEqual(sorted(keys), sorted([
            "Bukcet", "Bucket", "SecretAccessKey", "IAMRole", "V2Signature",
            "UsePathStyle", "Endpoint", "PrefixLength", "ReadTimeout",
        ]))
        self.assertNotIn("12345", str(cm.exception))

    def test_addressing_styles(self) -> None:
        """Path style puts the bucket in the path, virtual-host style in the
        Host; keys are percent-encoded as SigV4 canonicalises them."""
        from arvnode.keep.volumes.s3_client import S3Client, S3Stats

        def client(**extra: Any) -> S3Client:
            p = parse_s3_parameters({"Bucket": "b1", "AccessKeyID": "AKIA1",
                                     "SecretAccessKey": self.SECRET, **extra})
            return S3Client(p, reactor=reactor, clock=Clock(), rng=random.Random(1),
                            tls_policy=client_policy(insecure=False), stats=S3Stats())

        path = client(Endpoint="http://127.0.0.1:9000", UsePathStyle=True)
        self.assertEqual(path.url("keep/a b+c"), ("http://127.0.0.1:9000/b1/keep/a%20b%2Bc", "127.0.0.1:9000"))
        self.assertEqual(path.url(None, {"prefix": "k/", "list-type": "2"}),
                         ("http://127.0.0.1:9000/b1?list-type=2&prefix=k%2F", "127.0.0.1:9000"))
        virtual = client(Region="eu-west-1")
        self.assertEqual(virtual.url("abc"), ("https://b1.s3.eu-west-1.amazonaws.com/abc",
                                              "b1.s3.eu-west-1.amazonaws.com"))
        headers = path.sign("GET", *path.url("abc"), {})
        self.assertEqual(headers.getRawHeaders(b"x-amz-content-sha256"), [b"UNSIGNED-PAYLOAD"])
        self.assertEqual(headers.getRawHeaders(b"host"), [b"127.0.0.1:9000"])

    def test_repr_hides_credentials(self) -> None:
        p = parse_s3_parameters({"Bucket": "b1", "AccessKeyID": "AKIAVISIBLE", "SecretAccessKey": self.SECRET})
        self.assertNotIn(self.SECRET, repr(p))
        self.assertNotIn("AKIAVISIBLE", repr(p))

    def test_build_volume(self) -> None:
        """build_volume makes an S3Volume from a Volumes entry, or names the
        bad parameter."""
        config = config_from_string(f"""
Clusters:
  zzzzz:
    SystemRootToken: {"r" * 40}
    Collections: {{BlobSigningKey: {"k" * 40}}}
    StorageClasses: {{default: {{Default: true}}, archive: {{}}}}
    Volumes:
      {UUID}:
        Driver: S3
        Replication: 2
        StorageClasses: {{archive: true}}
        DriverParameters:
          Bucket: b1
          AccessKeyID: AKIA1
          SecretAccessKey: "{self.SECRET}"
          Endpoint: http://127.0.0.1:9000
          UsePathStyle: true
""")
        v = build_volume(UUID, config.volumes[UUID], reactor=reactor, threadpool=None,  # type: ignore[arg-type]
                         rng=random.Random(1))
        self.assertIsInstance(v, S3Volume)
        verifyObject(IVolume, v)
        self.assertEqual((v.replication, v.storage_classes, v.read_only), (2, ("archive",), False))
        bad = config.volumes[UUID].__class__(driver="S3", driver_parameters={
            "Bucket": "b1", "SecretAccessKey": "x"})
        e = self.assertRaises(ValueError, build_volume, UUID, bad, reactor=reactor, threadpool=None,
                              rng=random.Random(1))
        self.assertIn(f"Volumes.{UUID}.DriverParameters: AccessKeyID", str(e))

    def test_config_check(self) -> None:
        """``arvnode config check`` reports bad S3 parameters by path and warns
        about a missing half of the static keys (the volume would not start);
        no keys at all means role credentials, which is fine."""
        text = f"""
Clusters:
  zzzzz:
    SystemRootToken: {"r" * 40}
    Collections: {{BlobSigningKey: {"k" * 40}}}
    Volumes:
      {UUID}:
        Driver: S3
        DriverParameters: {{Bucket: b1, UsePathStyle: "yes", Endpoint: "ftp://x"}}
"""
        from arvnode.config import ConfigError

        e = self.assertRaises(ConfigError, config_from_string, text)
        path = f"Clusters.zzzzz.Volumes.{UUID}.DriverParameters."
        self.assertEqual(sorted(p.split(":")[0] for p in e.problems),
                         [path + "Endpoint", path + "UsePathStyle"])
        ok = config_from_string(text.replace('UsePathStyle: "yes", Endpoint: "ftp://x"', "Region: r"))
        self.assertEqual(ok.warnings, ())
        half = config_from_string(text.replace('UsePathStyle: "yes", Endpoint: "ftp://x"',
                                               "SecretAccessKey: s3cr3t"))
        self.assertEqual([w.split(":")[0] for w in half.warnings], [path + "AccessKeyID"])


class S3VolumeTests(MotoTestCase):
    """Block operations against moto, one bucket per test."""

    async def test_put_get_head_index(self) -> None:
        """Blocks of 0, 1, 100 KiB and 3 MiB round-trip; HEAD gives sizes;
        the index lists them with sizes and mtimes."""
        v = self.volume(self.bucket())
        verifyObject(IVolume, v)
        await v.start()
        stored = {}
        for i, size in enumerate((0, 1, 100 * 1024, 3 * MiB)):
            h, data = block(size, i)
            writer = await v.open_write(h, size)
            verifyObject(IBlockWriter, writer)
            for j in range(0, size, MiB):
                await writer.write(data[j : j + MiB])
            await writer.commit()
            stored[h] = data
        for h, data in stored.items():
            self.assertEqual(await v.stat(h), len(data))
            reader = await v.open_read(h)
            verifyObject(IBlockReader, reader)
            self.assertEqual(reader.size, len(data))
            sink = Collector()
            await reader.produce(sink)
            self.assertEqual(sink.data, data)
        index = await v.index("")
        self.assertEqual([(h, size) for h, size, _ in index],
                         sorted((h, len(d)) for h, d in stored.items()))
        self.assertTrue(all(mtime > 1_600_000_000 * 10**9 for _, _, mtime in index))
        one = sorted(stored)[1]
        self.assertEqual([h for h, _, _ in await v.index(one[:2])],
                         sorted(h for h in stored if h.startswith(one[:2])))

    async def test_missing_block(self) -> None:
        """A missing block is None for HEAD and GET; a missing bucket is an error."""
        v = self.volume(self.bucket())
        h, _ = block(10)
        self.assertIsNone(await v.stat(h))
        self.assertIsNone(await v.open_read(h))
        gone = self.volume("u0-no-such-bucket-here")
        e = await self.assertFailure(gone.open_read(h), S3Error)
        self.assertIn("does not exist", str(e))

    async def test_put_on_the_wire(self) -> None:
        """The PUT declares its length (no chunked body, which real S3
        refuses), sends Content-MD5 from the locator, UNSIGNED-PAYLOAD, and
        a SigV4 signature covering Content-MD5 (seen through the fault proxy,
        here only forwarding)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        v = self.volume(bucket, endpoint=proxy.endpoint)
        h, data = block(100 * 1024, 5)
        await put(v, data)
        heads = [head for head in proxy.heads if head.startswith("PUT ")]
        self.assertEqual(len(heads), 1)
        fields = {}
        for line in heads[0].split("\r\n")[1:]:
            name, _, value = line.partition(":")
            self.assertNotIn(name.lower(), fields, "header sent twice")
            fields[name.lower()] = value.strip()
        self.assertEqual(fields["content-length"], str(len(data)))
        self.assertNotIn("transfer-encoding", fields)
        self.assertEqual(fields["content-md5"], b64encode(bytes.fromhex(h)).decode())
        self.assertEqual(fields["x-amz-content-sha256"], "UNSIGNED-PAYLOAD")
        self.assertIn("content-md5", fields["authorization"])
        self.assertTrue(fields["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={self.moto.credentials[0][0]}/"))
        self.assertEqual(self.moto.get(bucket, h), data)

    async def test_block_lands_only_at_commit(self) -> None:
        """Until commit (which the keepproxy calls after its md5 matched) the
        object does not exist, and abort leaves nothing behind."""
        bucket = self.bucket()
        v = self.volume(bucket)
        h, data = block(600 * 1024, 7)
        writer = await v.open_write(h, len(data))
        for j in range(0, len(data), 200 * 1024):
            await writer.write(data[j : j + 200 * 1024])
        self.assertIsNone(await v.stat(h))  # all but the last byte is with the bucket
        await writer.abort()
        await self.assertFailure(writer.commit(), VolumeError)
        self.assertIsNone(await v.stat(h))
        self.assertEqual(self.moto.keys(bucket), [])
        # A short or overlong body is refused and stores nothing either.
        short = await v.open_write(h, len(data))
        await short.write(data[:1000])
        await self.assertFailure(short.commit(), VolumeError)
        long = await v.open_write(h, 10)
        await self.assertFailure(long.write(data[:11]), VolumeError)
        self.assertEqual(self.moto.keys(bucket), [])
        await put(v, data)
        self.assertEqual(self.moto.keys(bucket), [h])

    async def test_stored_block_not_uploaded_again(self) -> None:
        """A block already in the bucket with its md5 as ETag is not sent
        again (seen through the forwarding fault proxy); its mtime is
        refreshed instead by a bodiless server-side copy onto itself (as
        keepstore touches a block written again, so it is not trashed as old)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        v = self.volume(bucket, endpoint=proxy.endpoint)
        h, data = block(50 * 1024, 9)
        await put(v, data)
        await put(v, data)
        self.assertEqual([line.split(" ")[0] for line in proxy.seen],
                         ["HEAD", "PUT", "HEAD", "PUT"])
        self.assertEqual(await get(v, h), data)

    async def test_prefix_honoured(self) -> None:
        """Prefix and PrefixLength place keys; other objects are not indexed,
        and a volume with another prefix does not see the block."""
        bucket = self.bucket()
        plain = self.volume(bucket)
        prefixed = self.volume(bucket, Prefix="keep/")
        nested = self.volume(bucket, Prefix="n/", PrefixLength=3)
        h1, d1 = block(1000, 1)
        h2, d2 = block(2000, 2)
        await put(prefixed, d1)
        await put(nested, d2)
        self.moto.put(bucket, "keep/recent/" + h1, b"x")
        self.moto.put(bucket, "keep/not-a-block", b"x")
        self.assertEqual(sorted(self.moto.keys(bucket)), sorted([
            f"keep/{h1}", f"n/{h2[:3]}/{h2}", f"keep/recent/{h1}", "keep/not-a-block",
        ]))
        self.assertIsNone(await plain.stat(h1))
        self.assertEqual(await get(prefixed, h1), d1)
        self.assertEqual(await get(nested, h2), d2)
        self.assertEqual([(h, s) for h, s, _ in await prefixed.index("")], [(h1, 1000)])
        self.assertEqual([(h, s) for h, s, _ in await nested.index(h2[:5])], [(h2, 2000)])
        self.assertEqual([(h, s) for h, s, _ in await nested.index(h2[:1])], [(h2, 2000)])
        self.assertEqual(await plain.index(""), [])

    async def test_two_buckets_two_credentials(self) -> None:
        """Each volume signs with its own key; one user's key is refused (403,
        a VolumeError, not retried) on the other's bucket."""
        b0, b1 = self.bucket(user=0), self.bucket(user=1)
        v0, v1 = self.volume(b0, user=0), self.volume(b1, user=1)
        h0, d0 = block(3000, 10)
        h1, d1 = block(4000, 11)
        await put(v0, d0)
        await put(v1, d1)
        self.assertEqual(await get(v0, h0), d0)
        self.assertEqual(await get(v1, h1), d1)
        self.assertEqual(self.moto.keys(b0), [h0])
        self.assertEqual(self.moto.keys(b1, user=1), [h1])
        crossed = self.volume(b0, user=1)
        e = await self.assertFailure(crossed.open_read(h0), S3Error)
        self.assertEqual((e.status, e.code), (403, "AccessDenied"))
        self.assertIn("refused", str(e))
        await self.assertFailure(crossed.open_write(h1, 4000), VolumeError)
        await self.assertFailure(crossed.stat(h0), VolumeError)
        self.assertEqual(crossed.stats.retries, 0)

    async def test_bad_secret_refused(self) -> None:
        """A wrong secret gets SignatureDoesNotMatch: an error, no retries."""
        bucket = self.bucket()
        v = self.volume(bucket, SecretAccessKey="not-the-secret")
        h, _ = block(10)
        e = await self.assertFailure(v.open_read(h), S3Error)
        self.assertEqual((e.status, e.code), (403, "SignatureDoesNotMatch"))
        self.assertEqual(v.stats.retries, 0)

    async def test_500_then_recovers(self) -> None:
        """A bucket that answers 500 twice, then works: HEAD, GET and PUT
        succeed after retries. (The 500s come from the fault proxy in front
        of moto, which cannot inject faults.)"""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        v = self.volume(bucket, endpoint=proxy.endpoint)
        h, data = block(300 * 1024, 12)
        proxy.fail_next(2)
        self.assertIsNone(await v.stat(h))
        self.assertEqual(v.stats.retries, 2)
        writer = await v.open_write(h, len(data))
        proxy.fail_next(2)  # now the PUT itself: the block is small enough to replay
        await writer.write(data)
        await writer.commit()
        self.assertEqual(v.stats.retries, 4)
        proxy.fail_next(2)
        self.assertEqual(await get(v, h), data)
        self.assertEqual(v.stats.retries, 6)
        self.assertEqual(proxy.failed, 6)
        self.assertEqual(self.moto.get(bucket, h), data)

    async def test_500_that_persists(self) -> None:
        """After max_attempts 500s the operation fails with a VolumeError
        naming the status (fault proxy)."""
        proxy = self.fault_proxy()
        v = self.volume(self.bucket(), endpoint=proxy.endpoint, max_attempts=3)
        proxy.fail_next(3)
        e = await self.assertFailure(v.stat(block(5)[0]), S3Error)
        self.assertIn("500", str(e))
        self.assertEqual((v.stats.retries, proxy.failed), (2, 3))

    async def test_big_upload_failing_after_sending(self) -> None:
        """A 500 after part of a block too big to replay was sent fails the
        write (the client retries the PUT), and nothing is stored (fault proxy)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        v = self.volume(bucket, endpoint=proxy.endpoint, replay_limit=64 * 1024)
        h, data = block(MiB, 13)
        writer = await v.open_write(h, len(data))
        proxy.fail_next(1)
        failure: Exception | None = None
        try:
            for j in range(0, len(data), 256 * 1024):
                await writer.write(data[j : j + 256 * 1024])
            await writer.commit()
        except VolumeError as e:
            failure = e
        self.assertIsNotNone(failure)
        self.assertIn("client may retry", str(failure))
        await writer.abort()
        self.assertIsNone(await v.stat(h))
        self.assertEqual(self.moto.keys(bucket), [])

    async def test_timeout_retried(self) -> None:
        """A bucket that accepts the request and never answers is timed out
        after ReadTimeout on the injected clock, then retried (fault proxy)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        clock = Clock()
        v = self.volume(bucket, endpoint=proxy.endpoint, clock=clock, ReadTimeout="7s")
        h, data = block(2000, 14)
        self.moto.put(bucket, h, data)
        proxy.stall_next(1)
        d = v.stat(h)
        await wait_for(lambda: len(proxy.stalled) == 1)
        self.assertFalse(d.called)
        clock.advance(6.9)
        self.assertFalse(d.called)
        clock.advance(0.2)  # timed out: the backoff timer is next
        await wait_for(lambda: bool(clock.getDelayedCalls()) or d.called)
        clock.advance(60)
        self.assertEqual(await d, 2000)
        self.assertEqual(v.stats.retries, 1)

    async def test_stalled_upload_retried(self) -> None:
        """A PUT the bucket never answers is dropped after ReadTimeout on the
        injected clock and sent again from the replay buffer (fault proxy)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        clock = Clock()
        v = self.volume(bucket, endpoint=proxy.endpoint, clock=clock, ReadTimeout="9s")
        h, data = block(200 * 1024, 19)
        writer = await v.open_write(h, len(data))
        proxy.stall_next(1)
        await writer.write(data)
        committed = writer.commit()
        await wait_for(lambda: len(proxy.stalled) == 1)
        clock.advance(9.5)  # no answer: dropped, backoff next
        await wait_for(lambda: bool(clock.getDelayedCalls()) or committed.called)
        clock.advance(60)
        await committed
        self.assertEqual(v.stats.retries, 1)
        self.assertEqual(self.moto.get(bucket, h), data)

    async def test_bucket_down_then_back(self) -> None:
        """An unreachable bucket is a VolumeError after the retries; once it
        is back, the same volume works again (the fault proxy's port closed
        and reopened stands for the bucket's address)."""
        bucket = self.bucket()
        proxy = self.fault_proxy()
        port = proxy.port.getHost().port  # type: ignore[union-attr]
        v = self.volume(bucket, endpoint=proxy.endpoint)
        h, data = block(5000, 15)
        await put(v, data)
        await proxy.close()
        for op in (v.stat(h), v.open_read(h), v.open_write(h, len(data))):
            e = await self.assertFailure(op, S3Error)
            self.assertIn("unreachable", str(e))
        self.assertEqual(v.stats.retries, 9)
        proxy.listen(port)
        self.assertEqual(await get(v, h), data)

    async def test_https_endpoint(self) -> None:
        """An https endpoint is verified with the node's client TLS policy:
        with the bucket's CA trusted it works, without it the bucket is an
        error (VolumeError), never a silent plain-text fallback."""
        tls = generate_ca_and_server(Path(self.mktemp()), common_name="moto")
        server = S3Server(tls=tls).start()
        self.addCleanup(server.stop)
        bucket = self.bucket(server=server)
        params = parse_s3_parameters(self.params(bucket, server=server))
        self.assertTrue(params.endpoint.startswith("https://127.0.0.1:"))
        trusting = S3Volume(UUID, params, reactor=reactor, rng=random.Random(1), backoff_base=0.01,
                            tls_policy=client_policy(insecure=False, ca_file=str(tls["ca"])))
        self.addCleanup(trusting.stop)
        h, data = block(300 * 1024, 25)
        await put(trusting, data)
        self.assertEqual(await get(trusting, h), data)
        untrusting = S3Volume(UUID, params, reactor=reactor, rng=random.Random(1), backoff_base=0.01,
                              max_attempts=2)
        self.addCleanup(untrusting.stop)
        await self.assertFailure(untrusting.stat(h), VolumeError)

    async def test_unreachable_endpoint(self) -> None:
        """Nothing listening at all: every operation fails with a VolumeError."""
        v = self.volume("u0-anything", endpoint=f"http://127.0.0.1:{free_port()}")
        h, _ = block(1)
        await self.assertFailure(v.stat(h), VolumeError)
        await self.assertFailure(v.index(""), VolumeError)

    async def test_reader_backpressure(self) -> None:
        """A paused reader pauses the S3 connection: while the consumer is
        paused no bytes reach it and the reader holds at most a socket read
        or two, however long the pause (three HEAD round trips here)."""
        bucket = self.bucket()
        v = self.volume(bucket)
        h, data = block(4 * MiB, 16)
        await put(v, data, chunk=MiB)
        reader = await v.open_read(h)
        assert reader is not None
        sink = Collector(pause_after_first=True)
        done = reader.produce(sink)
        await wait_for(lambda: sink.paused)
        for _ in range(3):
            self.assertEqual(await v.stat(h), len(data))
        self.assertEqual(len(sink.parts), 1)
        self.assertLessEqual(v.stats.reader_max_buffered, 256 * 1024)
        sink.resume()
        await done
        self.assertEqual(sink.writes_while_paused, 0)
        self.assertEqual(md5(sink.data), h)
        self.assertIsNone(sink.producer)

    async def test_close_unread_reader(self) -> None:
        """A reader closed without producing (the client left) frees its
        connection; the volume keeps working."""
        v = self.volume(self.bucket())
        h, data = block(2 * MiB, 17)
        await put(v, data, chunk=MiB)
        reader = await v.open_read(h)
        assert reader is not None
        reader.close()
        await self.assertFailure(reader.produce(Collector()), VolumeError)
        self.assertEqual(await get(v, h), data)

    async def test_credentials_never_logged(self) -> None:
        """Refusals, 500s and retries are logged without the secret, the
        access key or a signature (fault proxy for the 500s)."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bucket = self.bucket()
        proxy = self.fault_proxy()
        v = self.volume(bucket, endpoint=proxy.endpoint)
        wrong = self.volume(bucket, SecretAccessKey="wrong-" + self.moto.credentials[0][1])
        h, data = block(1000, 18)
        proxy.fail_next(2)
        await put(v, data)
        proxy.fail_next(4)
        errors = [str(await self.assertFailure(v.stat(h), VolumeError))]
        errors.append(str(await self.assertFailure(wrong.stat(h), VolumeError)))
        errors.append(repr(v) + repr(v.params) + repr(v.client))
        texts = errors + [formatEvent(e) for e in events]
        texts += [e["log_failure"].getTraceback() for e in events if "log_failure" in e]
        self.assertTrue(any("retrying" in t for t in texts), "retries should be logged")
        access, secret = self.moto.credentials[0]
        for text in texts:
            self.assertNotIn(secret, text)
            self.assertNotIn(access, text)
            self.assertNotIn("Signature=", text)


class NodeS3Tests(MotoTestCase):
    """Whole nodes (tests/helpers.start_node) whose volumes are S3 buckets."""

    timeout = 600

    async def node_with(self, volumes: dict[str, dict[str, Any]], tmp: str) -> tuple[Any, str]:
        config, paths = make_cluster_config(
            Path(self.mktemp()) / tmp,
            cluster_id="s3nod",
            extra={
                "Volumes": volumes,
                "StorageClasses": {"default": {"Default": True}, "archive": {}},
            },
        )
        n = await start_node(self, config, paths)
        user = await n.node.store.create_user(username="s3user", is_active=True)
        token = (await n.node.store.create_token(user.uuid)).v2
        return n, token

    def s3_volume(self, params: dict[str, Any], classes: tuple[str, ...] = ("default",)) -> dict[str, Any]:
        return {
            "Driver": "S3",
            "DriverParameters": params,
            "Replication": 1,
            "StorageClasses": {c: True for c in classes},
        }

    def signed(self, n: Any, token: str, h: str, size: int) -> str:
        return sign_locator(f"{h}+{size}", token, n.section["Collections"]["BlobSigningKey"],
                            336 * 3600.0, reactor.seconds())

    async def test_storage_classes_pick_buckets(self) -> None:
        """Two buckets with their own credentials on one node: a client picks
        one with X-Keep-Storage-Classes, and reads the block back."""
        b0, b1 = self.bucket(user=0), self.bucket(user=1)
        n, token = await self.node_with({
            "s3nod-nyw5e-s3default000000": self.s3_volume(self.params(b0, user=0)),
            "s3nod-nyw5e-s3archive000000": self.s3_volume(self.params(b1, user=1), ("archive",)),
        }, "classes")
        client = http_client(self)
        auth = {"Authorization": f"Bearer {token}"}
        h, data = block(200 * 1024, 20)
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data,
                             headers={**auth, "X-Keep-Storage-Classes": "archive"})
        body = await r.text()
        self.assertEqual(r.code, 200, body)
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Storage-Classes-Confirmed"), ["archive=1"])
        self.assertEqual((self.moto.keys(b0), self.moto.keys(b1, user=1)), ([], [h]))
        r = await client.get(f"{n.keepproxy_url}/{body.strip()}", headers=auth)
        self.assertEqual((r.code, await r.content()), (200, data))
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data, headers=auth)
        self.assertEqual(r.code, 200, await r.text())
        self.assertEqual(self.moto.keys(b0), [h])

    async def test_refusing_bucket_is_502_503(self) -> None:
        """A bucket that refuses the node's key (403): GET and HEAD 502, PUT
        503 with no replica stored; never 500."""
        b0 = self.bucket(user=0)
        h, data = block(1000, 21)
        self.moto.put(b0, h, data)
        n, token = await self.node_with({
            "s3nod-nyw5e-s3refused000000": self.s3_volume(self.params(b0, user=1)),
        }, "refused")
        client = http_client(self)
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{n.keepproxy_url}/{self.signed(n, token, h, len(data))}"
        r = await client.get(url, headers=auth)
        text = await r.text()
        self.assertEqual(r.code, 502, text)
        self.assertIn("refused", text)
        r = await client.head(url, headers=auth)
        self.assertEqual(r.code, 502)
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data, headers=auth)
        self.assertEqual(r.code, 503, await r.text())
        self.assertEqual(r.headers.getRawHeaders("X-Keep-Replicas-Stored"), ["0"])

    async def test_bucket_down_is_502_503(self) -> None:
        """The bucket's server stopped: GET/HEAD 502, PUT 503 (never 500).
        Started again, the same node stores blocks there. (This moto runs
        without auth so its keys survive the restart.)"""
        server = S3Server(auth=False).start()
        self.addCleanup(server.stop)
        bucket = self.bucket(server=server)
        n, token = await self.node_with({
            "s3nod-nyw5e-s3down000000000": self.s3_volume(self.params(bucket, server=server)),
        }, "down")
        client = http_client(self)
        auth = {"Authorization": f"Bearer {token}"}
        h, data = block(1000, 22)
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data, headers=auth)
        locator = (await r.text()).strip()
        self.assertEqual(r.code, 200, locator)
        server.stop()
        r = await client.get(f"{n.keepproxy_url}/{locator}", headers=auth)
        text = await r.text()
        self.assertEqual(r.code, 502, text)
        self.assertIn("unreachable", text)
        r = await client.head(f"{n.keepproxy_url}/{locator}", headers=auth)
        self.assertEqual(r.code, 502)
        h2, data2 = block(1000, 23)
        r = await client.put(f"{n.keepproxy_url}/{h2}", data=data2, headers=auth)
        self.assertEqual(r.code, 503, await r.text())
        server.start(same_port=True)
        server.s3().create_bucket(Bucket=bucket)  # moto kept nothing
        r = await client.put(f"{n.keepproxy_url}/{h2}", data=data2, headers=auth)
        self.assertEqual(r.code, 200, await r.text())
        self.assertEqual(server.keys(bucket), [h2])

    async def test_64mib_block_bounded_memory(self) -> None:
        """A 64 MiB block goes through the keepproxy into the bucket and back
        while the upload holds at most its window, the S3 writer one batch,
        and the S3 reader a socket read or two."""
        server = S3Server().start()  # its own moto: the 64 MiB stays out of the shared one
        self.addCleanup(server.stop)
        bucket = self.bucket(server=server)
        n, token = await self.node_with({
            "s3nod-nyw5e-s3big0000000000": self.s3_volume(self.params(bucket, server=server)),
        }, "big")
        proxy = n.node.getServiceNamed("keepproxy").site.proxy
        volume = n.node.getServiceNamed("volumes").volumes[0]
        client = http_client(self)
        auth = {"Authorization": f"Bearer {token}"}
        h, data = block(64 * MiB, 24)
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data, headers=auth)
        locator = (await r.text()).strip()
        self.assertEqual(r.code, 200, locator)
        del data
        window = n.node.config.arvnode.keepproxy.upload_window
        self.assertLessEqual(proxy.upload_stats.max_held, window + 2 * 65536)
        self.assertLessEqual(volume.stats.writer_max_held, proxy.batch_size + 65536 + 1)
        self.assertGreater(volume.stats.writer_max_held, 0)
        r = await client.get(f"{n.keepproxy_url}/{locator}", headers=auth, unbuffered=True)
        self.assertEqual(r.code, 200)
        digest = hashlib.md5()
        got = [0]

        def chunk(data: bytes) -> None:
            digest.update(data)
            got[0] += len(data)

        await treq.collect(r, chunk)
        self.assertEqual((got[0], digest.hexdigest()), (64 * MiB, h))
        # One batch being hashed plus one filling up, as for any volume; each
        # overshoots its half window by at most one piece from the reader
        # (one 1 MiB socket read, or small pieces joined up to WRITE_MAX).
        from arvnode.keep.volumes.s3_client import READ_SIZE
        from arvnode.keep.volumes.s3_reader import WRITE_MAX

        self.assertLessEqual(proxy.relay_stats.max_unhashed, window + 2 * max(READ_SIZE, WRITE_MAX))
        self.assertLessEqual(volume.stats.reader_max_buffered, 256 * 1024)
        Logger().info(
            f"64 MiB: upload held max {proxy.upload_stats.max_held}, S3 writer held max"
            f" {volume.stats.writer_max_held}, relay unhashed max {proxy.relay_stats.max_unhashed},"
            f" S3 reader buffered max {volume.stats.reader_max_buffered}"
        )
