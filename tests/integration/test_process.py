"""The node as an operator runs it: ``twistd ... arvnode`` in a child process.

These tests cross the process boundary on purpose: printed output, signals
and exit codes are what the README and the systemd unit promise.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import yaml
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import TestCase

from tests.helpers import (
    ProcessNode,
    http_client,
    make_cluster_config,
    subprocess_env,
    venv_bin,
    wait_exit,
    wait_for,
)

EXPORT_RE = re.compile(r"^export (ARVADOS_API_HOST|ARVADOS_API_TOKEN|SSL_CERT_FILE)=(\S+)$", re.M)


def exports(text: str) -> dict[str, str]:
    return dict(EXPORT_RE.findall(text))


class RawClient(protocol.Protocol):
    """Collects everything the server sends."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(None)


class EmbeddedDefaultTests(TestCase):
    timeout = 180

    def startProcess(self, cwd: Path, *args: str) -> ProcessNode:
        p = ProcessNode(list(args), cwd, cwd / f"node-{len(os.listdir(cwd))}.log")
        self.addCleanup(p.close)
        return p

    async def test_first_start_prints_env_and_second_start_keeps_identity(self):
        """With no configuration the node creates its state directory (0700),
        prints the three export lines, answers /_health/ping over HTTPS with
        its own CA, stops with exit 0 on SIGTERM, and a second start prints
        the same host, token and CA."""
        cwd = Path(self.mktemp())
        cwd.mkdir()
        first = self.startProcess(cwd)
        await wait_for(lambda: len(exports(first.output())) == 3 or first.proc.poll() is not None, timeout=60)
        env1 = exports(first.output())
        self.assertEqual(len(env1), 3, first.output())
        data = cwd / "arvnode-data"
        self.assertEqual(os.stat(data).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(data / "config.yml").st_mode & 0o777, 0o600)
        self.assertTrue(env1["SSL_CERT_FILE"].startswith(str(data.absolute())))
        self.assertTrue(env1["ARVADOS_API_HOST"].startswith("127.0.0.1:"))

        (cluster,) = yaml.safe_load((data / "config.yml").read_text())["Clusters"].values()
        client = http_client(self, env1["SSL_CERT_FILE"])
        r = await client.get(f"https://{env1['ARVADOS_API_HOST']}/_health/ping",
                             headers={"Authorization": f"Bearer {cluster['ManagementToken']}"})
        self.assertEqual(r.code, 200)
        self.assertEqual(json.loads(await r.text()), {"health": "OK"})

        first.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(first.proc), 0, first.output())

        second = self.startProcess(cwd)
        await wait_for(lambda: len(exports(second.output())) == 3 or second.proc.poll() is not None, timeout=60)
        self.assertEqual(exports(second.output()), env1)
        second.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(second.proc), 0, second.output())

    async def test_sigterm_lets_inflight_upload_finish(self):
        """SIGTERM during a slow upload: the listener closes at once, the
        upload finishes within the grace period and is acknowledged, then the
        process exits 0."""
        cwd = Path(self.mktemp())
        cwd.mkdir()
        node = self.startProcess(cwd)
        await wait_for(lambda: len(exports(node.output())) == 3 or node.proc.poll() is not None, timeout=60)
        env = exports(node.output())
        cfg = yaml.safe_load((cwd / "arvnode-data" / "config.yml").read_text())
        (cluster,) = cfg["Clusters"].values()
        keep_port = int(cluster["Services"]["Keepproxy"]["ExternalURL"].rsplit(":", 1)[1].strip("/"))

        body = os.urandom(200_000)
        md5 = hashlib.md5(body).hexdigest()
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", keep_port), client)
        client.transport.write(
            (f"PUT /{md5} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env['ARVADOS_API_TOKEN']}\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:1000]
        )
        node.signal(signal.SIGTERM)
        # The listening socket closes first: a new connection is refused.
        await wait_for(lambda: "waiting up to" in node.output(), timeout=20)
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", keep_port), RawClient())
        client.transport.write(body[1000:])
        await client.closed
        self.assertIn(b"HTTP/1.1 200", client.received)
        self.assertIn(md5.encode(), client.received)
        self.assertEqual(await wait_exit(node.proc), 0, node.output())


class ConfigErrorTests(TestCase):
    timeout = 60

    async def test_invalid_config_stops_start_with_key_path(self):
        """An invalid config stops the start with a non-zero exit and a line
        naming the key path and the bad value."""
        base = Path(self.mktemp()).absolute()
        config, _ = make_cluster_config(base, extra={"API.RequestTimeout": 300})
        (cid, _), = config["Clusters"].items()
        path = base / "config.yml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [venv_bin("twistd"), "--nodaemon", "--pidfile=", "arvnode", "--config", str(path)],
            cwd=base, env=subprocess_env(), capture_output=True, text=True, timeout=60,
        )
        self.assertNotEqual(proc.returncode, 0)
        out = proc.stdout + proc.stderr
        self.assertIn(f"Clusters.{cid}.API.RequestTimeout", out)
        self.assertIn("300", out)

    async def test_unstartable_config_stops_start_without_traceback(self):
        """A config that loads but cannot start a node (here: a volume driver
        arvnode lacks) exits 1 with the key path, not a traceback."""
        base = Path(self.mktemp()).absolute()
        config, _ = make_cluster_config(base)
        (cid, section), = config["Clusters"].items()
        (uuid,) = section["Volumes"]
        section["Volumes"][uuid]["Driver"] = "Azure"
        path = base / "config.yml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [venv_bin("twistd"), "--nodaemon", "--pidfile=", "arvnode", "--config", str(path)],
            cwd=base, env=subprocess_env(), capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        out = proc.stdout + proc.stderr
        self.assertIn(f"Clusters.{cid}.Volumes.{uuid}.Driver", out)
        self.assertNotIn("Traceback", out)


class PluginTests(TestCase):
    timeout = 60

    # `twistd --help` lists arvnode after a non-editable `pip install .`:
    # tests/test_issue3_process.py builds and installs the wheel into a fresh
    # venv (this venv may be an editable install, which ships no plugin file).

    def test_arvnode_help_documents_options(self):
        """`twistd arvnode --help` documents --config, --cluster and --data."""
        proc = subprocess.run([venv_bin("twistd"), "arvnode", "--help"], env=subprocess_env(),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for option in ("--config", "--cluster", "--data"):
            self.assertIn(option, proc.stdout)

    def test_console_script_exists(self):
        """The `arvnode` console script runs and lists its commands."""
        proc = subprocess.run([venv_bin("arvnode"), "--help"], env=subprocess_env(),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for command in ("init", "config", "user", "token"):
            self.assertIn(command, proc.stdout)

