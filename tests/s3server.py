"""A real S3-protocol server for tests: ``python -m moto.server`` on loopback,
and a tiny fault proxy to put in front of it.

Why a subprocess (spec/s3-notes.md §6): moto then shares neither the GIL nor
global state with the node under test, its memory is not the test process's
(the 64 MiB tests measure the node's own buffers), and stopping the process
is a real "bucket is down".

Moto runs with signature checking on: IAM users are created while auth is
still off, then ``/moto-api/reset-auth`` turns it on, so a signing bug or the
wrong key is refused as real S3 would (403). The setup calls use boto3 with
explicit credentials (never ``~/.aws``), synchronously: they are a few short
requests to another process, made before the reactor is needed.

:class:`FaultProxy` exists because moto cannot inject faults: it forwards TCP
to moto but can answer the next requests with ``500 InternalError`` or swallow
them (a stall, for timeouts), which is what a flaky bucket looks like.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IListeningPort

_RUNNING_RE = re.compile(r"Running on (https?://127\.0\.0\.1:(\d+))")
START_TIMEOUT = 120.0  # generous: the machine is shared by several test runs



def _policy(user: int) -> str:
    """``s3:*`` on the buckets named ``u<user>-*`` only, so one user's key
    is refused (403) on another user's bucket."""
    arn = f"arn:aws:s3:::u{user}-*"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": [arn, arn + "/*"]}],
        }
    )


class S3Server:
    """One moto server process on 127.0.0.1 with signature checking on.

    ``start()`` blocks until moto listens (about half a second). ``stop()``
    and ``start(same_port=True)`` simulate a bucket that goes down and comes
    back (moto keeps no state across restarts: :meth:`setup` runs again).
    """

    def __init__(
        self, users: int = 2, auth: bool = True, tls: dict[str, Any] | None = None,
        role_sessions: int = 0,
    ) -> None:
        """``tls``: the paths from :func:`arvnode.tls.generate_ca_and_server`
        (``cert``, ``key``, ``ca``) to serve HTTPS with a test CA.
        ``role_sessions``: that many STS sessions of role ``keep-role``
        (allowed on user 0's buckets), in :attr:`role_credentials`; with
        auth on, moto checks their session token on every request."""
        self.role_sessions = role_sessions
        self.role_credentials: list[dict[str, Any]] = []
        self.auth = auth
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.users = users
        self.credentials: list[tuple[str, str]] = []
        self._log_path = ""
        self._drainer: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, same_port: bool = False) -> "S3Server":
        if self.running:
            return self
        port = self.port if same_port else 0
        fd, self._log_path = tempfile.mkstemp(prefix="moto-", suffix=".log")
        os.close(fd)
        tls_args = ["-c", str(self.tls["cert"]), "-k", str(self.tls["key"])] if self.tls else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), *tls_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
        )
        found = threading.Event()
        proc = self.proc
        log_path = self._log_path

        def drain() -> None:
            # Werkzeug logs every request on stderr: keep reading so a full
            # pipe never blocks moto.
            assert proc.stderr is not None
            with open(log_path, "ab") as log:
                for line in proc.stderr:
                    log.write(line)
                    m = _RUNNING_RE.search(line.decode("latin-1"))
                    if m and not found.is_set():
                        self.port = int(m.group(2))
                        found.set()
            found.set()

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()
        if not found.wait(START_TIMEOUT) or proc.poll() is not None or not self.port:
            self.stop()
            raise RuntimeError(f"moto did not start; log in {log_path}")
        atexit.register(self.stop)
        self.setup()
        return self

    def setup(self) -> None:
        """IAM users (auth still off), then turn auth on. User ``i`` may use
        the buckets named ``u<i>-*`` (see :meth:`create_bucket`). Without
        ``auth``, any key works: the same credentials survive a restart."""
        self.credentials = []
        if not self.auth:
            self.credentials = [(f"AKIAOPEN{i:012d}", f"open-secret-{i}") for i in range(self.users)]
            return
        iam = self._boto("iam", ("anything", "anything"))
        for i in range(self.users):
            name = f"keep{i}"
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="s3own", PolicyDocument=_policy(i))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            self.credentials.append((key["AccessKeyId"], key["SecretAccessKey"]))
        self.role_credentials = []
        if self.role_sessions:
            role = iam.create_role(RoleName="keep-role", AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                               "Action": "sts:AssumeRole"}],
            }))["Role"]
            iam.put_role_policy(RoleName="keep-role", PolicyName="s3own", PolicyDocument=_policy(0))
            sts = self._boto("sts", ("anything", "anything"))
            for i in range(self.role_sessions):
                self.role_credentials.append(sts.assume_role(
                    RoleArn=role["Arn"], RoleSessionName=f"keep{i}", DurationSeconds=3600 * (i + 1),
                )["Credentials"])
        req = urllib.request.Request(
            self.endpoint + "/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=str(self.tls["ca"]))
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            resp.read()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drainer is not None:
            self._drainer.join(10)
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass

    def _boto(self, service: str, creds: tuple[str, str]) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
            verify=str(self.tls["ca"]) if self.tls else None,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
            ),
        )

    def s3(self, user: int = 0) -> Any:
        """A boto3 S3 client as IAM user ``user`` (to inspect buckets)."""
        return self._boto("s3", self.credentials[user])

    def create_bucket(self, name: str, user: int = 0) -> str:
        """Create bucket ``u<user>-<name>`` as that user; returns its name."""
        bucket = f"u{user}-{name}"
        self.s3(user).create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, user: int = 0) -> list[str]:
        out: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": bucket}
        client = self.s3(user)
        while True:
            page = client.list_objects_v2(**kwargs)
            out.extend(o["Key"] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def get(self, bucket: str, key: str, user: int = 0) -> bytes:
        return self.s3(user).get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def put(self, bucket: str, key: str, data: bytes, user: int = 0) -> None:
        self.s3(user).put_object(Bucket=bucket, Key=key, Body=data)


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    """Block until nothing listens on 127.0.0.1:``port`` (after a stop)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


# -- the fault proxy ------------------------------------------------------------


class _Upstream(protocol.Protocol):
    def __init__(self, peer: "_Downstream") -> None:
        self.peer = peer

    def connectionMade(self) -> None:
        self.peer.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.peer.transport.loseConnection()


_FAULT_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class _Downstream(protocol.Protocol):
    """One client connection: judged at its first request head, then either
    answered by the proxy (fault) or piped both ways to moto."""

    def __init__(self, proxy: "FaultProxy") -> None:
        self.proxy = proxy
        self.head = b""
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.decided = False
        self.mode = "forward"

    def connectionMade(self) -> None:
        self.proxy.connections += 1

    def dataReceived(self, data: bytes) -> None:
        if not self.decided:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.decided = True
            head = self.head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            first_line = head.split("\r\n", 1)[0]
            self.proxy.seen.append(first_line)
            self.proxy.heads.append(head)
            self.mode = self.proxy._next_mode()
            data, self.head = self.head, b""
            if self.mode == "fail":
                self.proxy.failed += 1
                method = first_line.split(" ", 1)[0]
                body = b"" if method == "HEAD" else _FAULT_BODY
                self.transport.write(
                    b"HTTP/1.1 500 Internal Server Error\r\n"
                    b"Content-Type: application/xml\r\n"
                    + f"Content-Length: {len(_FAULT_BODY)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + body
                )
                self.transport.loseConnection()
                return
            if self.mode == "stall":
                self.proxy.stalled.append(self)
                return
            factory = protocol.ClientFactory()
            factory.protocol = lambda: _Upstream(self)  # type: ignore[assignment]
            reactor.connectTCP("127.0.0.1", self.proxy.target_port, factory)  # type: ignore[attr-defined]
        if self.mode != "forward":
            return
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending = []

    def connectionLost(self, reason: Any = None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class FaultProxy:
    """TCP on 127.0.0.1 in front of moto (one request per connection, which
    is what moto's ``Connection: close`` gives anyway).

    ``fail_next(n)`` answers the next ``n`` requests ``500`` without passing
    them on; ``stall_next(n)`` accepts the next ``n`` and never answers.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port: IListeningPort | None = None
        self.connections = 0
        self.failed = 0
        self.seen: list[str] = []
        self.heads: list[str] = []  # request heads (status line and headers)
        self.stalled: list[_Downstream] = []
        self._plan: list[str] = []

    def listen(self, port: int = 0) -> "FaultProxy":
        """Listen on ``port`` (0: any); after :meth:`close`, pass the old
        port to bring the "bucket" back where clients expect it."""
        factory = protocol.Factory()
        factory.protocol = lambda: _Downstream(self)  # type: ignore[assignment]
        self.port = reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        return self

    @property
    def endpoint(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def fail_next(self, n: int) -> None:
        self._plan.extend(["fail"] * n)

    def stall_next(self, n: int) -> None:
        self._plan.extend(["stall"] * n)

    def _next_mode(self) -> str:
        return self._plan.pop(0) if self._plan else "forward"

    def close(self) -> Any:
        for d in self.stalled:
            d.transport.abortConnection()
        self.stalled = []
        assert self.port is not None
        return self.port.stopListening()
