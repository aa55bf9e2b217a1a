# -*- test-case-name: tests.test_issue3_config -*-
"""Audit of issue 3's **Config** bullet and ``arvnode config check``.

The loader's per-key messages are proven in tests/test_config.py; this module
adds what the bullet promises beyond parsing: that the keys change what a
running node does (nodes in-process on loopback), that ``twistd arvnode``
itself refuses a bad config (a real subprocess: exit status, one line per
problem, no traceback) and reports unused keys once, and that
``config check`` never prints a secret of its input.
"""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from arvnode import cli
from arvnode.auth.refresh import SERVICE_NAME
from arvnode.config import config_from_string
from arvnode.keep.locator import SignatureInvalid, verify_locator
from tests.api.base import ApiTestCase
from tests.helpers import (
    ProcessNode,
    http_client,
    make_cluster_config,
    start_node,
    subprocess_env,
    venv_bin,
    wait_exit,
    wait_for,
)

FULL = Path(__file__).parent / "data" / "arvados-full.yml"
ROOT = "r00tt0kenr00tt0kenr00tt0kenr00tt0ken12"
KEY = "s1gn1ngkeys1gn1ngkeys1gn1ngkeys1gn1ng12"


class _Hang(Protocol):
    """A "remote cluster" that accepts and never answers."""

    def connectionMade(self) -> None:
        self.factory.open.append(self.transport)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.remove(self.transport)


class _HangFactory(Factory):
    protocol = _Hang

    def __init__(self) -> None:
        self.open: list[Any] = []


class KeysTakeEffectTests(ApiTestCase):
    """Config bullet: the keys the issue lists change what a running node does."""

    async def hung_remote(self) -> tuple[_HangFactory, dict[str, Any]]:
        factory = _HangFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def drop_all() -> None:
            for transport in list(factory.open):
                transport.abortConnection()

        self.addCleanup(drop_all)
        self.drop_hung = drop_all
        entry = {"Host": f"127.0.0.1:{port.getHost().port}", "Proxy": True, "Scheme": "http"}
        return factory, {"zhung": entry}

    async def test_max_concurrent_requests_beyond_is_503(self) -> None:
        """Config bullet, API.MaxConcurrentRequests (+ MaxQueuedRequests): with
        1 request running and no queue, the next API request gets 503 with
        Retry-After, as Arvados; once the slot frees, requests run again."""
        factory, remotes = await self.hung_remote()
        await self.startNode(**{"API.MaxConcurrentRequests": 1, "API.MaxQueuedRequests": 0,
                                "RemoteClusters": remotes})
        _, token = await self.make_user()
        held = Deferred.fromCoroutine(
            self.api("GET", "workflows/zhung-7fd4e-000000000000001", token=token))
        await wait_for(lambda: len(factory.open) == 1, timeout=10)
        code, content, headers = await self.raw("GET", "/arvados/v1/users/current", token=token)
        self.assertEqual(code, 503, content)
        self.assertIn(b"too many requests", content)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])
        self.drop_hung()
        code, _ = await held
        self.assertEqual(code, 502)
        await self.ok("GET", "users/current", token=token)

    async def test_max_concurrent_requests_zero_is_no_limit(self) -> None:
        """Config bullet, API.MaxConcurrentRequests: 0 means no limit (Arvados'
        meaning, and older Arvados defaults ship 0): requests are served, also
        while another one is in flight, with no queue at all."""
        factory, remotes = await self.hung_remote()
        await self.startNode(**{"API.MaxConcurrentRequests": 0, "API.MaxQueuedRequests": 0,
                                "API.RequestTimeout": "20s", "RemoteClusters": remotes})
        _, token = await self.make_user()
        held = Deferred.fromCoroutine(
            self.api("GET", "workflows/zhung-7fd4e-000000000000001", token=token))
        await wait_for(lambda: len(factory.open) == 1, timeout=10)
        await self.ok("GET", "users/current", token=token)
        self.drop_hung()
        await held

    async def test_default_replication_is_the_default(self) -> None:
        """Config bullet, Collections.DefaultReplication: a keepproxy PUT
        without X-Keep-Desired-Replicas stores that many copies (2 volumes of
        replication 1 both get the block), and discovery publishes it."""
        base = Path(self.mktemp())
        config, paths = make_cluster_config(base, extra={"Collections.DefaultReplication": 2})
        cid, section = next(iter(config["Clusters"].items()))
        roots = [paths["data"] / "keep0", paths["data"] / "keep1"]
        section["Volumes"] = {
            f"{cid}-nyw5e-00000000000000{i}": {
                "Driver": "Directory", "DriverParameters": {"Root": str(root)}, "Replication": 1}
            for i, root in enumerate(roots)
        }
        self.node = await start_node(self, config, paths)
        self.client = http_client(self, paths["ca"])
        data = b"two copies by default"
        h = hashlib.md5(data).hexdigest()
        r = await self.client.request(
            "PUT", f"{self.node.keepproxy_url}/{h}", data=data,
            headers={"Authorization": [f"Bearer {self.node.root_token}"]})
        self.assertEqual(r.code, 200, await r.text())
        self.assertEqual(r.headers.getRawHeaders("x-keep-replicas-stored"), ["2"])
        for root in roots:
            self.assertTrue((root / h[:3] / h).exists(), root)
        r = await self.client.get(self.node.controller_url + "/discovery/v1/apis/arvados/v1/rest")
        self.assertEqual((await r.json())["defaultCollectionReplication"], 2)

    async def test_blob_signing_key_and_ttl_sign_what_keepproxy_returns(self) -> None:
        """Config bullet, Collections.BlobSigningKey and BlobSigningTTL: the
        locator a PUT returns is signed with the configured key, expires TTL
        (1h here, not the 336h default) from now, and does not verify under
        another key; discovery publishes the TTL."""
        await self.startNode(**{"Collections.BlobSigningTTL": "1h"})
        section = self.node.section
        before = reactor.seconds()
        locator = await self.keep_put(b"signed for an hour", self.root)
        expiry = int(re.search(r"\+A[0-9a-f]{40}@([0-9a-f]{8})", locator).group(1), 16)
        self.assertTrue(before + 3600 - 5 <= expiry <= reactor.seconds() + 3600 + 5, locator)
        key = section["Collections"]["BlobSigningKey"]
        verify_locator(locator, self.root, key, 3600, reactor.seconds())
        self.assertRaises(SignatureInvalid, verify_locator, locator, self.root, "x" * 40, 3600,
                          reactor.seconds())
        r = await self.client.get(self.node.controller_url + "/discovery/v1/apis/arvados/v1/rest")
        self.assertEqual((await r.json())["blobSignatureTtl"], 3600)

    async def test_remote_token_refresh_sets_the_looping_call_interval(self) -> None:
        """Config bullet, Login.RemoteTokenRefresh: the node's refresh timer
        (a LoopingCall) runs every RemoteTokenRefresh (7m here, not 5m)."""
        await self.startNode(**{"Login.RemoteTokenRefresh": "7m"})
        refresh = self.node.node.getServiceNamed(SERVICE_NAME)
        self.assertEqual(refresh.interval, 420.0)
        self.assertTrue(refresh._loop.running)
        self.assertEqual(refresh._loop.interval, 420.0)


class DurationSyntaxTests(SynchronousTestCase):
    def test_arvados_duration_forms_in_keys(self) -> None:
        """Config bullet, durations in Arvados syntax: `1.5h`, `300ms`, `0s`
        and `1h30m` are read in the keys that take durations."""
        c = config_from_string(
            "Clusters:\n  zzzzz:\n"
            f"    SystemRootToken: {ROOT}\n"
            f"    Collections: {{BlobSigningKey: {KEY}, BlobSigningTTL: 1h30m}}\n"
            "    Login: {RemoteTokenRefresh: 1.5h, TokenLifetime: 0s}\n"
            "    API: {RequestTimeout: 300ms}\n")
        self.assertEqual((c.collections.blob_signing_ttl, c.login.remote_token_refresh,
                          c.login.token_lifetime, c.api.request_timeout),
                         (5400.0, 5400.0, 0.0, 0.3))

    def test_request_timeout_zero_refused(self) -> None:
        """Config bullet, API.RequestTimeout: 0 would cancel every request at
        once, so it is refused by key path instead of breaking the node."""
        from arvnode.config import ConfigError

        e = self.assertRaises(ConfigError, config_from_string,
                              "Clusters:\n  zzzzz:\n"
                              f"    SystemRootToken: {ROOT}\n"
                              f"    Collections: {{BlobSigningKey: {KEY}}}\n"
                              "    API: {RequestTimeout: 0s}\n")
        [problem] = e.problems
        self.assertTrue(problem.startswith("Clusters.zzzzz.API.RequestTimeout: got"), problem)
        self.assertIn("expected a positive duration", problem)


# One config that has every error the bullet lists except the TAB (which
# stops YAML parsing): (key path, a fragment of the bad value) per problem.
def _bad_cluster_config() -> tuple[str, list[tuple[str, str]]]:
    text = (
        "Clusters:\n"
        "  Prod1:\n"
        "    ManagementToken: m4n4g3m3ntt0k3nm4n4g3m3ntt0k3nm4n4g3\n"
        "    Collections: {BlobSigningKey: %s}\n"
        "    API:\n"
        "      MaxConcurrentRequests: lots\n"
        "      RequestTimeout: 300\n"
        "    Services:\n"
        "      Controller:\n"
        "        ExternalURL: \"https//api.example\"\n"
        "        InternalURLs: {\"https://0.0.0.0:70000\": {}}\n"
        "    RemoteClusters:\n"
        "      aaaaa: {Proxy: true}\n"
    ) % KEY
    expected = [
        ("Clusters.Prod1", '"Prod1"'),
        ("Clusters.Prod1.SystemRootToken", "nothing"),
        ("Clusters.Prod1.API.MaxConcurrentRequests", '"lots"'),
        ("Clusters.Prod1.API.RequestTimeout", "300"),
        ("Clusters.Prod1.Services.Controller.ExternalURL", '"https//api.example"'),
        ('Clusters.Prod1.Services.Controller.InternalURLs."https://0.0.0.0:70000"', "70000"),
        ("Clusters.Prod1.RemoteClusters.aaaaa.Host", "nothing"),
    ]
    return text, expected


TAB_CONFIG = (
    "Clusters:\n"
    "  zzzzz:\n"
    f"    SystemRootToken: {ROOT}\n"
    f"    Collections: {{BlobSigningKey: {KEY}}}\n"
    "    RemoteClusters:\n"
    "      clsr2:\n"
    "        Host: c2.example.org\n"
    "        Proxy: true\n"
    "\tActivateUsers: true\n"
)


def _twistd(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("twistd"), "--nodaemon", "--pidfile=", "arvnode", *args],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )


class TwistdRefusesBadConfigTests(SynchronousTestCase):
    """Config bullet: an invalid config stops `twistd arvnode` (a real subprocess)."""

    def write(self, text: str) -> Path:
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        path = base / "config.yml"
        path.write_text(text)
        return path

    def test_several_problems_one_line_each(self) -> None:
        """Config bullet: wrong type, duration without unit, malformed URL, port
        out of range, RemoteClusters entry without Host, bad cluster id and a
        missing required secret, all in one file: twistd exits 1 with one line
        per problem naming key path, bad value and what was expected, and no
        traceback; no secret of the file is echoed."""
        text, expected = _bad_cluster_config()
        path = self.write(text)
        proc = _twistd(["--config", str(path)], path.parent)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 1, out)
        self.assertNotIn("Traceback", out)
        self.assertNotIn(KEY, out)
        self.assertNotIn("m4n4g3m3nt", out)
        problems = [line for line in out.splitlines() if line.startswith("Clusters.")]
        self.assertEqual(len(problems), len(expected), out)
        for key_path, bad in expected:
            [line] = [p for p in problems if p.startswith(key_path + ":")]
            self.assertIn(bad, line)
            self.assertIn("expected", line)

    def test_tab_indentation(self) -> None:
        """Config bullet: a TAB used for indentation (as the Arvados federation
        docs ship one) stops twistd with exit 1 and a line naming the key path
        of the TAB line, the file and line, without a traceback."""
        path = self.write(TAB_CONFIG)
        proc = _twistd(["--config", str(path)], path.parent)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 1, out)
        self.assertNotIn("Traceback", out)
        self.assertIn("Clusters.zzzzz.RemoteClusters.clsr2.ActivateUsers: got a TAB in the "
                      f"indentation ({path}, line 9); expected spaces only", out)

    def test_cluster_choice(self) -> None:
        """`--cluster ID`: a file with several clusters and no --cluster, or an
        unknown --cluster, stops twistd with exit 1 and a message naming the
        clusters the file defines."""
        text = (f"Clusters:\n  aaaaa: {{SystemRootToken: {ROOT}}}\n"
                f"  bbbbb: {{SystemRootToken: {ROOT}}}\n")
        path = self.write(text)
        proc = _twistd(["--config", str(path)], path.parent)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 1, out)
        self.assertIn("several clusters (aaaaa, bbbbb)", out)
        self.assertIn("--cluster", out)
        proc = _twistd(["--config", str(path), "--cluster", "ccccc"], path.parent)
        out = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 1, out)
        self.assertIn("Clusters.ccccc: not in", out)
        self.assertIn("aaaaa, bbbbb", out)
        self.assertNotIn("Traceback", out)


class TwistdStartTests(TestCase):
    timeout = 90

    async def test_unused_keys_one_warning_and_cluster_picked(self) -> None:
        """Config bullet: `twistd arvnode --config F --cluster ID` runs the
        named cluster of a multi-cluster file; the unused Arvados keys are
        logged once, as one warning line (not one per key, not twice), and
        the other cluster's keys are not among them."""
        base = Path(self.mktemp()).absolute()
        config, _ = make_cluster_config(base, extra={
            "Containers.MaxRetryAttempts": 3, "Workbench.SiteName": "x",
            "Mail.MailchimpListID": "y", "Collections.TrashSweepInterval": "60s"})
        (cid, section), = config["Clusters"].items()
        other = "zothr" if cid != "zothr" else "zoth2"
        config["Clusters"][other] = {"SystemRootToken": ROOT, "Unused": {"Deep": 1}}
        path = base / "config.yml"
        path.write_text(yaml.safe_dump(config))
        node = ProcessNode(["--config", str(path), "--cluster", cid], base, base / "twistd.log")
        self.addCleanup(node.close)
        await wait_for(lambda: f"cluster {cid} is up" in node.output()
                       or node.proc.poll() is not None, timeout=60)
        out = node.output()
        self.assertIn(f"cluster {cid} is up", out)
        warnings = [line for line in out.splitlines() if "not used by arvnode" in line]
        self.assertEqual(len(warnings), 1, out)
        for key in ("Containers", "Workbench", "Mail", "Collections.TrashSweepInterval"):
            self.assertIn(f"Clusters.{cid}.{key}", warnings[0])
        self.assertNotIn(other, warnings[0])
        node.signal()
        self.assertEqual(await wait_exit(node.proc), 0, node.output())


class ConfigCheckCommandTests(SynchronousTestCase):
    """`arvnode config check [--config PATH]`: same validation, secrets masked."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return cli.main(list(argv)), out.getvalue(), err.getvalue()

    def test_no_secret_of_the_input_is_printed(self) -> None:
        """config check: the effective configuration of a real Arvados config
        masks SystemRootToken, ManagementToken, BlobSigningKey,
        AnonymousUserToken, the PostgreSQL password and the S3 keys; no secret
        string of the file appears on stdout or stderr (TLS keys are files:
        their path is shown, never their content)."""
        text = FULL.read_text()
        data = yaml.safe_load(text)
        cluster = data["Clusters"]["x9a2b"]
        secrets = [
            cluster["SystemRootToken"], cluster["ManagementToken"],
            cluster["Collections"]["BlobSigningKey"], cluster["Users"]["AnonymousUserToken"],
            cluster["Users"]["AnonymousUserToken"].split("/")[-1],
            cluster["PostgreSQL"]["Connection"]["password"],
            "example/secret+key", "AKIAEXAMPLEEXAMPLE", "oidc-secret-value",
        ]
        for secret in secrets:
            self.assertIn(secret, text)
        code, out, err = self.run_cli("config", "check", "--config", str(FULL))
        self.assertEqual(code, 0, err)
        for secret in secrets:
            self.assertNotIn(secret, out + err)
        effective = yaml.safe_load(out)["Clusters"]["x9a2b"]
        for value in (effective["SystemRootToken"], effective["ManagementToken"],
                      effective["Collections"]["BlobSigningKey"],
                      effective["Users"]["AnonymousUserToken"],
                      effective["PostgreSQL"]["Connection"]["password"]):
            self.assertEqual(value, "***")
        self.assertEqual(effective["TLS"]["Key"], "/etc/arvados/tls/x9a2b.key")

    def test_each_listed_error(self) -> None:
        """config check: every error the bullet lists exits 1 with a line that
        names the key path (and nothing on stdout); together they are one line
        each."""
        text, expected = _bad_cluster_config()
        path = Path(self.mktemp())
        path.write_text(text)
        code, out, err = self.run_cli("config", "check", "--config", str(path))
        self.assertEqual((code, out), (1, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), len(expected) + 1, err)  # + the summary line
        for key_path, bad in expected:
            [line] = [p for p in lines if p.startswith(key_path + ":")]
            self.assertIn(bad, line)
        path.write_text(TAB_CONFIG)
        code, out, err = self.run_cli("config", "check", "--config", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("Clusters.zzzzz.RemoteClusters.clsr2.ActivateUsers: "
                                       "got a TAB"), err)

    def test_inline_tls_key_refused_without_echoing_it(self) -> None:
        """config check, TLS.Key: key contents pasted inline (instead of a file
        path) are refused by key path, and none of the key material is printed."""
        material = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"
        path = Path(self.mktemp())
        path.write_text(
            "Clusters:\n  zzzzz:\n"
            f"    SystemRootToken: {ROOT}\n"
            f"    Collections: {{BlobSigningKey: {KEY}}}\n"
            "    TLS:\n      Certificate: /c.pem\n      Key: |\n"
            f"        -----BEGIN PRIVATE KEY-----\n        {material}\n"
            "        -----END PRIVATE KEY-----\n")
        code, out, err = self.run_cli("config", "check", "--config", str(path))
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("Clusters.zzzzz.TLS.Key: got inline PEM key material"), err)
        self.assertNotIn(material[:12], err)
        self.assertNotIn("PRIVATE", err)

    def test_unknown_cluster_names_the_available_ones(self) -> None:
        """config check --cluster ID: an id the file lacks names the ones it has."""
        path = Path(self.mktemp())
        path.write_text(f"Clusters:\n  aaaaa: {{SystemRootToken: {ROOT}}}\n"
                        f"  bbbbb: {{SystemRootToken: {ROOT}}}\n")
        code, out, err = self.run_cli("config", "check", "--config", str(path), "--cluster", "ccccc")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("Clusters.ccccc: not in", err)
        self.assertIn("aaaaa, bbbbb", err)

