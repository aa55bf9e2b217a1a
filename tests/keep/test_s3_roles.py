# -*- test-case-name: tests.keep.test_s3_roles -*-
"""S3 volumes without static keys (IAM role credentials, session tokens,
refresh) and with a per-volume CA (``ArvNodeCACertificate``).

Real things: moto in a subprocess (tests/s3server.py), both as the bucket and,
where it can, as the instance metadata service: moto's server answers
``PUT /latest/api/token`` and ``/latest/meta-data/iam/security-credentials/``
(role ``default-role``, fixed keys ``test-key``, expiry tomorrow), which
botocore's IMDSv2 fetcher reads as on EC2.

One fake, and why: :class:`FakeIMDS`, a small metadata service on loopback.
Moto's own metadata hands out fixed keys that moto with signature checking
on does not know, with a fixed expiry, so it cannot show that a session
token is checked nor drive a refresh. The fake serves real STS session
credentials of moto (``assume_role``, with auth on, so moto refuses a wrong
or missing ``X-Amz-Security-Token``) and lets a test swap them. Expiry is
driven by ``task.Clock`` (botocore's ``time_fetcher``), not by waiting.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from arvnode.config import config_from_string
from arvnode.config.effective import mask_secrets
from arvnode.keep.volumes import build_volume
from arvnode.keep.volumes.s3 import S3Volume
from arvnode.keep.volumes.s3_client import S3Error
from arvnode.keep.volumes.s3_credentials import METADATA_ENDPOINT_ENV
from arvnode.keep.volumes.s3_params import S3ParameterError, parse_s3_parameters
from arvnode.tls import generate_ca_and_server
from tests.helpers import http_client, make_cluster_config, start_node, wait_for
from tests.keep.test_s3_volume import MotoTestCase, block, free_port, get, put
from tests.s3server import S3Server

UUID = "zzzzz-nyw5e-role00000000000"
IMDS_TOKEN = "imds-session-token-1"
CREDS_PATH = "/latest/meta-data/iam/security-credentials/"


class FakeIMDS(Resource):
    """IMDSv2 on loopback serving :attr:`current` for role ``keep-role``
    (see module docstring for why it exists). Requires the IMDSv2 token."""

    isLeaf = True

    def __init__(self, current: dict[str, Any] | None = None, role: str = "keep-role") -> None:
        super().__init__()
        self.current = current
        self.role = role
        self.token_requests = 0
        self.credential_requests = 0
        self.port: Any = None

    def listen(self, port: int = 0) -> "FakeIMDS":
        self.port = reactor.listenTCP(port, Site(self), interface="127.0.0.1")  # type: ignore[attr-defined]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def serve(self, sts: dict[str, Any], token: str | None = None) -> None:
        """Serve one set of moto's STS credentials (``token``: a wrong one)."""
        self.current = {
            "Code": "Success", "Type": "AWS-HMAC", "LastUpdated": "2026-01-01T00:00:00Z",
            "AccessKeyId": sts["AccessKeyId"], "SecretAccessKey": sts["SecretAccessKey"],
            "Token": token or sts["SessionToken"],
            "Expiration": sts["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def render(self, request: Any) -> bytes:
        # One request per connection (as moto does): no idle keep-alive
        # connection is left behind for trial's clean-reactor check.
        request.setHeader(b"connection", b"close")
        request.notifyFinish().addBoth(lambda _: request.transport.loseConnection())
        return super().render(request)  # type: ignore[no-any-return]

    def render_PUT(self, request: Any) -> bytes:
        if request.path == b"/latest/api/token" and request.getHeader(
                "x-aws-ec2-metadata-token-ttl-seconds"):
            self.token_requests += 1
            return IMDS_TOKEN.encode()
        request.setResponseCode(404)
        return b""

    def render_GET(self, request: Any) -> bytes:
        if request.getHeader("x-aws-ec2-metadata-token") != IMDS_TOKEN:
            request.setResponseCode(401)
            return b""
        path = request.path.decode()
        if path == CREDS_PATH:
            return self.role.encode()
        if path == CREDS_PATH + self.role and self.current is not None:
            self.credential_requests += 1
            return json.dumps(self.current).encode()
        request.setResponseCode(404)
        return b""


def header_fields(head: str) -> dict[str, str]:
    fields = {}
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def role_params(bucket: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"Bucket": bucket, "Endpoint": endpoint, "UsePathStyle": True, **extra}


class RoleParametersTests(TestCase):
    """DriverParameters with Arvados' role semantics and the CA extension."""

    def test_no_keys_means_role(self) -> None:
        """No keys: role credentials (default chain, or the named role);
        keys win over IAMRole (as in Arvados, with a config warning)."""
        p = parse_s3_parameters({"Bucket": "b"})
        self.assertEqual((p.uses_role, p.iam_role), (True, ""))
        p = parse_s3_parameters({"Bucket": "b", "IAMRole": "keep-role", "AccessKeyID": "",
                                 "SecretAccessKey": ""})
        self.assertEqual((p.uses_role, p.iam_role), (True, "keep-role"))
        p = parse_s3_parameters({"Bucket": "b", "IAMRole": "r", "AccessKeyID": "AKIA1",
                                 "SecretAccessKey": "s"})
        self.assertFalse(p.uses_role)

    def test_bad_role_and_ca(self) -> None:
        """Half the keys, a role name that is not one, a CA for an http
        endpoint: each is a problem by key."""
        with self.assertRaises(S3ParameterError) as cm:
            parse_s3_parameters({"Bucket": "b", "AccessKeyID": "AKIA1", "IAMRole": "../x",
                                 "Endpoint": "http://s3.example", "ArvNodeCACertificate": "/ca.pem"})
        self.assertEqual(sorted(k for k, _, _ in cm.exception.problems),
                         ["ArvNodeCACertificate", "IAMRole", "SecretAccessKey"])

    def test_config_check(self) -> None:
        """A role volume loads cleanly; IAMRole next to keys is warned about;
        the keys stay masked in the effective config."""
        text = f"""
Clusters:
  zzzzz:
    SystemRootToken: {"r" * 40}
    Collections: {{BlobSigningKey: {"k" * 40}}}
    Volumes:
      {UUID}:
        Driver: S3
        DriverParameters: {{Bucket: b1, IAMRole: keep-role, ArvNodeCACertificate: /etc/ca.pem}}
      zzzzz-nyw5e-keys00000000000:
        Driver: S3
        DriverParameters: {{Bucket: b2, IAMRole: keep-role, AccessKeyID: AKIAVISIBLE,
                            SecretAccessKey: hushhushhushhush}}
"""
        c = config_from_string(text)
        self.assertEqual([w.split(":")[0] for w in c.warnings],
                         ["Clusters.zzzzz.Volumes.zzzzz-nyw5e-keys00000000000.DriverParameters.IAMRole"])
        shown = json.dumps(mask_secrets(c))
        self.assertNotIn("AKIAVISIBLE", shown)
        self.assertNotIn("hushhushhushhush", shown)
        self.assertIn("keep-role", shown)

    def test_bad_ca_file_refused_at_build(self) -> None:
        """An unreadable or non-PEM CA file stops the volume at build, by key."""
        not_pem = Path(self.mktemp())
        not_pem.write_text("not a certificate")
        for path in (str(not_pem), "/nonexistent/ca.pem"):
            vc = config_from_string(f"""
Clusters:
  zzzzz:
    SystemRootToken: {"r" * 40}
    Collections: {{BlobSigningKey: {"k" * 40}}}
    Volumes:
      {UUID}:
        Driver: S3
        DriverParameters: {{Bucket: b1, Endpoint: "https://127.0.0.1:1", ArvNodeCACertificate: "{path}"}}
""").volumes[UUID]
            e = self.assertRaises(ValueError, build_volume, UUID, vc, reactor=reactor,  # type: ignore[arg-type]
                                  threadpool=None, rng=random.Random(1))
            self.assertIn("ArvNodeCACertificate", str(e))


class RoleCredentialsTests(MotoTestCase):
    """Session credentials of an STS role, checked by moto (auth on), handed
    out by :class:`FakeIMDS`; expiry on an injected clock."""

    @property
    def moto(self) -> S3Server:
        cls = type(self)
        server = cls.__dict__.get("_moto")
        if server is None or not server.running:
            server = S3Server(role_sessions=3).start()
            cls._moto = server
        return server

    def imds(self, port: int = 0) -> FakeIMDS:
        imds = FakeIMDS().listen(port)
        self.addCleanup(imds.port.stopListening)
        return imds

    def role_volume(self, bucket: str, endpoint: str, imds_url: str, clock: Any, **extra: Any) -> S3Volume:
        v = S3Volume(
            UUID, parse_s3_parameters(role_params(bucket, endpoint, **extra)), reactor=reactor,
            clock=clock, rng=random.Random(3), backoff_base=0.01,
            environ={METADATA_ENDPOINT_ENV: imds_url},
        )
        self.addCleanup(v.stop)
        return v

    async def test_session_token_signed_and_refreshed(self) -> None:
        """No keys, IAMRole keep-role: the first request loads the role's
        session credentials (IMDSv2 token first), signs X-Amz-Security-Token
        in, and moto accepts them. In the advisory window a request still
        signs with the old ones while one refresh runs; in the mandatory
        window concurrent requests wait for a single refresh."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        sessions = self.moto.role_credentials
        bucket = self.bucket()
        proxy = self.fault_proxy()
        imds = self.imds()
        imds.serve(sessions[0])  # expires in 1 h (real time)
        clock = Clock()
        clock.advance(time.time())
        v = self.role_volume(bucket, proxy.endpoint, imds.url, clock, IAMRole="keep-role")
        await v.start()
        self.assertEqual(imds.credential_requests, 0)  # nothing fetched at start
        h, data = block(100 * 1024, 1)
        await put(v, data)
        self.assertEqual(self.moto.get(bucket, h), data)
        self.assertEqual((imds.token_requests, imds.credential_requests), (1, 1))

        def last_signer() -> tuple[str, str | None]:
            fields = header_fields(proxy.heads[-1])
            self.assertIn("x-amz-security-token", fields["authorization"].split("SignedHeaders=")[1])
            return fields["authorization"].split("Credential=")[1].split("/")[0], \
                fields.get("x-amz-security-token")

        self.assertEqual(last_signer(), (sessions[0]["AccessKeyId"], sessions[0]["SessionToken"]))
        imds.serve(sessions[1])  # expires in 2 h
        self.assertEqual(await v.stat(h), len(data))
        self.assertEqual(imds.credential_requests, 1)  # not due: no fetch

        clock.advance(46 * 60)  # 14 min left: advisory window
        self.assertEqual(await v.stat(h), len(data))
        self.assertEqual(last_signer()[0], sessions[0]["AccessKeyId"])  # did not wait
        await wait_for(lambda: imds.credential_requests == 2)
        await wait_for(lambda: v.client.credentials.fetches == 2)
        self.assertEqual(await get(v, h), data)
        self.assertEqual(last_signer(), (sessions[1]["AccessKeyId"], sessions[1]["SessionToken"]))

        imds.serve(sessions[2])  # expires in 3 h
        clock.advance(69 * 60)  # session 1 has 5 min left: mandatory window
        jobs = v.client.credentials.fetches
        pending = [v.stat(h) for _ in range(3)]
        self.assertFalse(any(d.called for d in pending))  # waiting for the refresh
        results = [await d for d in pending]
        self.assertEqual(results, [len(data)] * 3)
        # One refresh (one thread job, one metadata request) for three requests.
        self.assertEqual((v.client.credentials.fetches, imds.credential_requests), (jobs + 1, 3))
        self.assertEqual(last_signer(), (sessions[2]["AccessKeyId"], sessions[2]["SessionToken"]))
        # Loads and refreshes were logged, without a key, a secret or a token.
        texts = [formatEvent(e) for e in events] + [repr(v), repr(v.params), repr(v.client)]
        self.assertEqual(sum("S3 credentials refreshed" in t for t in texts), 2)
        for session in sessions:
            for value in (session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"]):
                self.assertFalse(any(value in t for t in texts))

    async def test_wrong_session_token_refused(self) -> None:
        """Moto (auth on) checks the session token: the same keys with
        another token are refused, by the volume's name, never with the
        secret or the token in the message."""
        session = self.moto.role_credentials[0]
        bucket = self.bucket()
        imds = self.imds()
        imds.serve(session, token="not-the-session-token")
        clock = Clock()
        clock.advance(time.time())
        v = self.role_volume(bucket, self.moto.endpoint, imds.url, clock, IAMRole="keep-role")
        e = await self.assertFailure(v.open_read(block(10)[0]), S3Error)
        self.assertIn("refused the request: 400 InvalidToken", str(e))
        self.assertIn(UUID, str(e))
        self.assertNotIn(session["SecretAccessKey"], str(e))
        self.assertNotIn("not-the-session-token", str(e))

    async def test_metadata_down_then_up(self) -> None:
        """The metadata service is down: the volume starts, and each request
        fails with an S3Error naming the volume and where it looked. Once the
        service answers, the same volume works."""
        bucket = self.bucket()
        port = free_port()
        clock = Clock()
        clock.advance(time.time())
        v = self.role_volume(bucket, self.moto.endpoint, f"http://127.0.0.1:{port}", clock,
                             IAMRole="keep-role")
        await v.start()
        h, data = block(1000, 2)
        for op in (v.stat(h), v.open_write(h, len(data))):
            e = await self.assertFailure(op, S3Error)
            self.assertIn(f"volume {UUID}: no S3 credentials", str(e))
            self.assertIn(f"instance metadata service at http://127.0.0.1:{port}", str(e))
        self.assertEqual(v.stats.requests, 0)
        imds = self.imds(port)
        imds.serve(self.moto.role_credentials[0])
        await put(v, data)
        self.assertEqual(await get(v, h), data)


class NodeRoleTests(MotoTestCase):
    """Whole nodes whose S3 volumes have no keys, against moto's own
    instance metadata endpoints (moto without auth: its metadata keys are
    not IAM users), and a volume with its own CA."""

    timeout = 600

    def set_env(self, **values: str | None) -> None:
        """Set (or with None, remove) environment variables for this test:
        the node builds its volumes from the process environment."""
        for name, value in values.items():
            old = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
            self.addCleanup(
                lambda n=name, o=old: os.environ.pop(n, None) if o is None
                else os.environ.__setitem__(n, o)
            )

    async def node_with(self, volumes: dict[str, dict[str, Any]], tmp: str) -> tuple[Any, str]:
        config, paths = make_cluster_config(
            Path(self.mktemp()) / tmp, cluster_id="s3rol",
            extra={"Volumes": volumes,
                   "StorageClasses": {"default": {"Default": True}, "archive": {}, "cold": {}}},
        )
        n = await start_node(self, config, paths)
        user = await n.node.store.create_user(username="s3user", is_active=True)
        return n, (await n.node.store.create_token(user.uuid)).v2

    @staticmethod
    def volume(params: dict[str, Any], cls: str) -> dict[str, Any]:
        return {"Driver": "S3", "DriverParameters": params, "Replication": 1,
                "StorageClasses": {cls: True}}

    async def put_get(self, n: Any, token: str, cls: str, seed: int) -> tuple[int, str]:
        """PUT a block in class ``cls``; on success GET it back."""
        client = http_client(self)
        auth = {"Authorization": f"Bearer {token}"}
        h, data = block(50 * 1024, seed)
        r = await client.put(f"{n.keepproxy_url}/{h}", data=data,
                             headers={**auth, "X-Keep-Storage-Classes": cls})
        text = await r.text()
        if r.code == 200:
            r2 = await client.get(f"{n.keepproxy_url}/{text.strip()}", headers=auth)
            self.assertEqual((r2.code, await r2.content()), (200, data))
        return r.code, text

    async def test_role_credentials_from_moto_metadata(self) -> None:
        """The real flow: botocore's IMDSv2 fetcher asks moto's metadata
        endpoints. No keys and no IAMRole (default chain, environment empty)
        and IAMRole default-role both PUT and GET through the node; a role
        the instance does not have is a 503 naming the volume, not a crash."""
        server = S3Server(auth=False).start()
        self.addCleanup(server.stop)
        bucket = server.create_bucket("roles")
        self.set_env(**{METADATA_ENDPOINT_ENV: server.endpoint, "AWS_ACCESS_KEY_ID": None,
                        "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
                        "AWS_EC2_METADATA_DISABLED": None})
        n, token = await self.node_with({
            "s3rol-nyw5e-chain0000000000": self.volume(role_params(bucket, server.endpoint), "default"),
            "s3rol-nyw5e-named0000000000": self.volume(
                role_params(bucket, server.endpoint, IAMRole="default-role", Prefix="named/"), "archive"),
            "s3rol-nyw5e-wrongrole000000": self.volume(
                role_params(bucket, server.endpoint, IAMRole="not-this-role"), "cold"),
        }, "roles")
        self.assertEqual((await self.put_get(n, token, "default", 1))[0], 200)
        self.assertEqual((await self.put_get(n, token, "archive", 2))[0], 200)
        self.assertTrue(any(k.startswith("named/") for k in server.keys(bucket)))
        code, text = await self.put_get(n, token, "cold", 3)
        self.assertEqual(code, 503, text)
        self.assertIn("s3rol-nyw5e-wrongrole000000", text)
        self.assertIn("no S3 credentials", text)

    async def test_metadata_down_is_502_503(self) -> None:
        """No metadata service at all: the node starts; PUT 503 and GET 502
        name the volume."""
        self.set_env(**{METADATA_ENDPOINT_ENV: f"http://127.0.0.1:{free_port()}",
                        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
        n, token = await self.node_with({
            "s3rol-nyw5e-noimds000000000": self.volume(
                role_params("u0-any", f"http://127.0.0.1:{free_port()}"), "default"),
        }, "noimds")
        code, text = await self.put_get(n, token, "default", 4)
        self.assertEqual(code, 503, text)
        self.assertIn("s3rol-nyw5e-noimds000000000: no S3 credentials", text)
        from arvnode.keep.locator import sign_locator

        h, data = block(50 * 1024, 4)
        locator = sign_locator(f"{h}+{len(data)}", token, n.section["Collections"]["BlobSigningKey"],
                               336 * 3600.0, reactor.seconds())
        r = await http_client(self).get(f"{n.keepproxy_url}/{locator}",
                                        headers={"Authorization": f"Bearer {token}"})
        text = await r.text()
        self.assertEqual(r.code, 502, text)
        self.assertIn("s3rol-nyw5e-noimds000000000", text)

    async def test_per_volume_ca(self) -> None:
        """An https bucket signed by a private CA (moto serving TLS with a
        generated CA): the volume with ArvNodeCACertificate stores and reads
        blocks; the same bucket without it is refused (503 naming the
        volume), never reached in plain text or unverified."""
        tls = generate_ca_and_server(Path(self.mktemp()), common_name="moto")
        server = S3Server(tls=tls).start()
        self.addCleanup(server.stop)
        bucket = self.bucket(server=server)
        n, token = await self.node_with({
            "s3rol-nyw5e-withca000000000": self.volume(
                self.params(bucket, server=server, ArvNodeCACertificate=str(tls["ca"])), "default"),
            "s3rol-nyw5e-noca00000000000": self.volume(self.params(bucket, server=server), "archive"),
        }, "ca")
        self.assertEqual((await self.put_get(n, token, "default", 5))[0], 200)
        self.assertEqual(len(server.keys(bucket)), 1)
        code, text = await self.put_get(n, token, "archive", 6)
        self.assertEqual(code, 503, text)
        self.assertIn("s3rol-nyw5e-noca00000000000", text)
        self.assertEqual(len(server.keys(bucket)), 1)
