"""Audit of issue 3's bullets **Embedded default**, **TLS inside Twisted**,
**One MultiService**, **Health and metrics**, **Access log** and **Test
harness**: what the existing tests (tests/integration/test_node.py,
tests/integration/test_process.py, tests/remote/test_forward.py) did not
already prove, checked against real sockets, real TLS and real processes.
"""
from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg2
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.enterprise.adbapi import ConnectionLost
from twisted.logger import eventAsText, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from arvnode.auth.salting import salt_token
from arvnode.config import RemoteCluster
from arvnode.remote.client import RemoteClient, RemoteUnreachable
from arvnode.services import _NoALPN
from arvnode.tls import generate_ca_and_server, load_server_options
from tests.helpers import (
    REPO,
    ProcessNode,
    http_client,
    make_cluster_config,
    start_node,
    subprocess_env,
    venv_bin,
    wait_exit,
    wait_for,
)
from tests.pgfixture import _admin_connection, fresh_database

LISTENING_RE = re.compile(r"controller listening on https://127\.0\.0\.1:(\d+)/")


# --- blocking stdlib clients, run on a thread so the in-process node answers --


def _https_get(port: int, path: str, *, cafile: str, host: str = "127.0.0.1",
               token: str | None = None, max_version: ssl.TLSVersion | None = None) -> tuple[int, bytes, str]:
    """GET over TLS with the stdlib client trusting only ``cafile``."""
    ctx = ssl.create_default_context(cafile=cafile)
    if max_version is not None:
        ctx.maximum_version = max_version
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, r.read(), conn.sock.version()
    finally:
        conn.close()


def _tls11_handshake(port: int, cafile: str) -> str:
    """Try a TLSv1.1-only handshake; the error text, or the version if accepted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer 1.1 at all
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                             server_hostname="127.0.0.1") as s:
            return "ACCEPTED " + str(s.version())
    except (ssl.SSLError, OSError) as e:
        return str(e)


class _KeepAlive:
    """One HTTPS keep-alive connection, used from a thread."""

    def __init__(self, port: int, cafile: str, token: str) -> None:
        ctx = ssl.create_default_context(cafile=cafile)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
        self.token = token

    def ping(self) -> tuple[int, bytes, Any]:
        self.conn.request("GET", "/_health/ping", headers={"Authorization": f"Bearer {self.token}"})
        r = self.conn.getresponse()
        return r.status, r.read(), self.conn.sock.getsockname()

    def close(self) -> None:
        self.conn.close()


def _chain(directory: Path) -> dict[str, Path]:
    """root CA → intermediate CA → leaf for 127.0.0.1/localhost.

    ``server.pem`` holds leaf + intermediate (not the root), as a real
    certificate from a public CA does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, *, ca: bool,
              path_length: int | None, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit root")])
    root = build("audit root", root_key, root_name, root_key, ca=True, path_length=1)
    mid = build("audit intermediate", mid_key, root.subject, root_key, ca=True, path_length=0)
    leaf = build("127.0.0.1", leaf_key, mid.subject, mid_key, ca=False, path_length=None,
                 sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    pem = serialization.Encoding.PEM
    paths = {"ca": directory / "root.pem", "cert": directory / "chain.pem", "key": directory / "leaf.key"}
    paths["ca"].write_bytes(root.public_bytes(pem))
    paths["cert"].write_bytes(leaf.public_bytes(pem) + mid.public_bytes(pem))
    paths["key"].write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _arvnode(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("arvnode"), *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def _twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_bin("twistd"), "--nodaemon", "--pidfile=", "arvnode", *args],
                          cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=120)


def _embedded_config_on_port_0(data: Path) -> dict[str, Any]:
    """The generated config.yml with its listeners moved to ephemeral ports
    (the conventional 8443/25107 may be taken by another node on this host)."""
    config = yaml.safe_load((data / "config.yml").read_text())
    (section,) = config["Clusters"].values()
    for name, scheme in (("Controller", "https"), ("Keepproxy", "http")):
        url = f"{scheme}://127.0.0.1:0/"
        section["Services"][name] = {"ExternalURL": url, "InternalURLs": {url: {}}}
    return config


class EmbeddedDefaultAudit(TestCase):
    timeout = 180

    async def test_init_creates_private_identity_used_by_a_later_start(self) -> None:
        """Embedded default: `arvnode init --data DIR` creates DIR 0700 with a
        cluster id x+4 [a-z0-9], distinct random secrets in a 0600 config, the
        admin token (0600), the anonymous token, a CA and a server
        certificate for 127.0.0.1, ::1 and localhost (keys 0600) and the
        SQLite database, without starting anything; a second init changes
        nothing; a node started from DIR uses that identity, serves HTTPS
        that a stdlib client trusting only ca.pem verifies for 127.0.0.1 and
        localhost, and the admin token is an admin's."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        first = _arvnode("init", "--data", "state", cwd=cwd)
        self.assertEqual(first.returncode, 0, first.stderr)
        data = cwd / "state"
        mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
        self.assertEqual(mode(data), 0o700)
        for private in ("config.yml", "admin-token", "arvnode.sqlite", "tls/ca.key", "tls/server.key"):
            self.assertEqual(mode(data / private), 0o600, private)
        config = yaml.safe_load((data / "config.yml").read_text())
        ((cluster_id, section),) = config["Clusters"].items()
        self.assertRegex(cluster_id, r"^x[a-z0-9]{4}$")
        secrets = [section["SystemRootToken"], section["ManagementToken"],
                   section["Collections"]["BlobSigningKey"], section["Users"]["AnonymousUserToken"]]
        self.assertEqual(len(set(secrets)), 4)
        for s in secrets:
            self.assertGreaterEqual(len(s), 32)
        self.assertEqual(section["TLS"]["Certificate"], str(data / "tls" / "server.pem"))
        # Loopback only.
        for name in ("Controller", "Keepproxy"):
            for url in section["Services"][name]["InternalURLs"]:
                self.assertTrue(url.split("://")[1].startswith("127.0.0.1:"), url)

        leaf, *rest = x509.load_pem_x509_certificates((data / "tls" / "server.pem").read_bytes())
        ca = x509.load_pem_x509_certificate((data / "tls" / "ca.pem").read_bytes())
        leaf.verify_directly_issued_by(ca)
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(sans.get_values_for_type(x509.DNSName)),
            {"127.0.0.1", "::1", "localhost"})
        # The process-wide check of the file: SQLite's magic header.
        self.assertEqual((data / "arvnode.sqlite").read_bytes()[:16], b"SQLite format 3\x00")

        admin_token = (data / "admin-token").read_text().strip()
        self.assertIn(f"export ARVADOS_API_TOKEN={admin_token}", first.stdout)
        self.assertIn(f"export SSL_CERT_FILE={data / 'tls' / 'ca.pem'}", first.stdout)
        before = {p: p.read_bytes() for p in (data / "config.yml", data / "admin-token",
                                              data / "tls" / "ca.pem", data / "tls" / "server.pem")}
        again = _arvnode("init", "--data", "state", cwd=cwd)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(again.stdout, first.stdout)
        self.assertEqual({p: p.read_bytes() for p in before}, before)

        announced: list[str] = []
        n = await start_node(self, _embedded_config_on_port_0(data), {"ca": data / "tls" / "ca.pem"},
                             embedded_mode=True, announce=announced.append)
        self.assertEqual(n.cluster_id, cluster_id)
        self.assertIn(f"export ARVADOS_API_TOKEN={admin_token}\n", announced[0])
        self.assertIn(f"export ARVADOS_API_HOST=127.0.0.1:{n.controller_port}\n", announced[0])
        ca_file = str(data / "tls" / "ca.pem")
        for host in ("127.0.0.1", "localhost"):
            code, body, _ = await threads.deferToThread(
                _https_get, n.controller_port, "/arvados/v1/users/current", cafile=ca_file,
                host=host, token=admin_token)
            self.assertEqual(code, 200, body)
            me = json.loads(body)
            self.assertTrue(me["is_admin"])
            self.assertTrue(me["uuid"].startswith(f"{cluster_id}-tpzed-"))
        # The anonymous token of the config is the anonymous user's.
        code, body, _ = await threads.deferToThread(
            _https_get, n.controller_port, "/arvados/v1/users/current", cafile=ca_file,
            token=section["Users"]["AnonymousUserToken"])
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["uuid"], f"{cluster_id}-tpzed-anonymouspublic")

    async def test_restart_keeps_data(self) -> None:
        """Embedded default: a second start from the same state directory
        keeps the cluster id, the admin token and the records written by the
        first (a user created through the API)."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        self.assertEqual(_arvnode("init", "--data", "state", cwd=cwd).returncode, 0)
        data = cwd / "state"
        config = _embedded_config_on_port_0(data)
        paths = {"ca": data / "tls" / "ca.pem"}
        first = await start_node(self, config, paths, embedded_mode=True)
        user = await first.node.store.create_user(email="kept@example.com", username="kept")
        token = first.node.admin_token
        await first.node.stopService()
        second = await start_node(self, config, paths, embedded_mode=True)
        self.assertEqual(second.node.admin_token, token)
        client = http_client(self, paths["ca"])
        r = await client.get(f"{second.controller_url}/arvados/v1/users/{user.uuid}",
                             headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(r.code, 200)
        self.assertEqual(json.loads(await r.text())["email"], "kept@example.com")

    def test_interrupted_init_is_completed(self) -> None:
        """Embedded default: a state directory left by a crash during init
        (certificates, database file and a temp file, but no config.yml yet)
        is completed by the next init, which prints a working environment."""
        cwd = Path(self.mktemp()).absolute()
        data = cwd / "state"
        generate_ca_and_server(data / "tls", common_name="stale")
        (data / "arvnode.sqlite").touch()
        (data / "config.yml.tmp").write_text("Clusters: {xabcd: {Serv")
        os.chmod(data, 0o755)
        result = _arvnode("init", "--data", "state", cwd=cwd)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertEqual(os.stat(data).st_mode & 0o777, 0o700)
        config = yaml.safe_load((data / "config.yml").read_text())
        (cluster_id,) = config["Clusters"]
        leaf = x509.load_pem_x509_certificates((data / "tls" / "server.pem").read_bytes())[0]
        self.assertIn(cluster_id, leaf.issuer.rfc4514_string())  # regenerated, not the stale CA
        self.assertIn("export ARVADOS_API_TOKEN=v2/" + cluster_id, result.stdout)

    def test_damaged_state_dir_and_bad_data_path_are_clear_errors(self) -> None:
        """Embedded default: a state directory whose server key went missing
        stops `twistd arvnode --data` with exit 1 and one line naming TLS.Key
        and the file; `arvnode init --data <a file>` exits 1 naming it; no
        traceback either way."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        self.assertEqual(_arvnode("init", "--data", "state", cwd=cwd).returncode, 0)
        key = cwd / "state" / "tls" / "server.key"
        key.unlink()
        result = _twistd("--data", "state", cwd=cwd)
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertIn("TLS.Key", out)
        self.assertIn(str(key), out)
        self.assertNotIn("Traceback", out)

        (cwd / "a-file").write_text("")
        result = _arvnode("init", "--data", "a-file", cwd=cwd)
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertIn("a-file", out)
        self.assertNotIn("Traceback", out)

    def test_uncreatable_data_directory_exits_1_with_one_line(self) -> None:
        """A DataDirectory that cannot be created (here: under a file) fails
        the start before anything waits: the node must still exit 1 (it used
        to log a traceback and then run forever, serving nothing), with one
        line naming ArvNode.DataDirectory and the path."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        self.assertEqual(_arvnode("init", "--data", "state", cwd=cwd).returncode, 0)
        (cwd / "a-file").write_text("")
        config = _embedded_config_on_port_0(cwd / "state")
        (section,) = config["Clusters"].values()
        section["ArvNode"]["DataDirectory"] = str(cwd / "a-file" / "data")
        (cwd / "bad.yml").write_text(yaml.safe_dump(config))
        result = _twistd("--config", "bad.yml", cwd=cwd)
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertIn("arvnode failed to start: ArvNode.DataDirectory", out)
        self.assertIn(str(cwd / "a-file" / "data"), out)
        self.assertNotIn("Traceback", out)

    def test_port_taken_on_restart_is_one_line(self) -> None:
        """Embedded default: when the port the state directory names is
        taken by the time of a later start, the node exits 1 with a line
        naming the address, not a traceback."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        self.assertEqual(_arvnode("init", "--data", "state", cwd=cwd).returncode, 0)
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = _embedded_config_on_port_0(cwd / "state")
        (section,) = config["Clusters"].values()
        url = f"https://127.0.0.1:{port}/"
        section["Services"]["Controller"] = {"ExternalURL": url, "InternalURLs": {url: {}}}
        (cwd / "state" / "config.yml").write_text(yaml.safe_dump(config))
        result = _twistd("--data", "state", cwd=cwd)
        out = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, out)
        self.assertIn(f"127.0.0.1:{port}", out)
        self.assertIn("arvnode failed to start", out)
        self.assertNotIn("Traceback", out)


class TLSAudit(TestCase):
    timeout = 120

    async def test_full_chain_served_on_every_https_listener(self) -> None:
        """TLS inside Twisted: with a root → intermediate → leaf certificate
        in TLS.Certificate, both https listeners (controller and keepproxy)
        send the chain, so a client trusting only the root verifies them."""
        base = Path(self.mktemp())
        chain = _chain(base / "chain")
        config, paths = make_cluster_config(base, keepproxy_scheme="https", extra={
            "TLS.Certificate": str(chain["cert"]), "TLS.Key": str(chain["key"])})
        n = await start_node(self, config, paths)
        for port in (n.controller_port, n.keepproxy_port):
            code, body, _ = await threads.deferToThread(
                _https_get, port, "/_health/ping", cafile=str(chain["ca"]), token=n.management_token)
            self.assertEqual((code, json.loads(body)), (200, {"health": "OK"}))
        r = await http_client(self, chain["ca"]).get(
            n.keepproxy_url + "/_health/ping", headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 200)
        await r.text()

    async def test_tls12_floor(self) -> None:
        """TLS inside Twisted: a client limited to TLSv1.1 is refused by the
        server; a client limited to TLSv1.2 is served."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        outcome = await threads.deferToThread(_tls11_handshake, n.controller_port, str(paths["ca"]))
        self.assertNotIn("ACCEPTED", outcome)
        self.assertIn("PROTOCOL_VERSION", outcome.upper())
        code, _, version = await threads.deferToThread(
            _https_get, n.controller_port, "/_health/ping", cafile=str(paths["ca"]),
            token=n.management_token, max_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual((code, version), (200, "TLSv1.2"))

    async def test_reload_keeps_open_keepalive_connection(self) -> None:
        """TLS inside Twisted: after the files are replaced and the reload
        hook runs, an open keep-alive connection keeps working (same socket),
        new connections get the new certificate, and the old one is gone."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        conn = _KeepAlive(n.controller_port, str(paths["ca"]), n.management_token)
        self.addCleanup(conn.close)
        code, _, sock_before = await threads.deferToThread(conn.ping)
        self.assertEqual(code, 200)
        fresh = generate_ca_and_server(Path(self.mktemp()), common_name="renewed")
        shutil.copy(fresh["cert"], paths["cert"])
        shutil.copy(fresh["key"], paths["key"])
        n.node.reload_tls()
        code, _, sock_after = await threads.deferToThread(conn.ping)
        self.assertEqual((code, sock_after), (200, sock_before))
        code, _, _ = await threads.deferToThread(
            _https_get, n.controller_port, "/_health/ping", cafile=str(fresh["ca"]), token=n.management_token)
        self.assertEqual(code, 200)
        with self.assertRaises(ssl.SSLCertVerificationError):
            await threads.deferToThread(
                _https_get, n.controller_port, "/_health/ping", cafile=str(paths["ca"]), token=n.management_token)

    async def test_sighup_reloads_in_twistd(self) -> None:
        """TLS inside Twisted: `kill -HUP` on a real `twistd arvnode` re-reads
        certificate and key; an open keep-alive connection survives, a new
        connection verifies with the new CA only, and SIGTERM then exits 0."""
        base = Path(self.mktemp()).absolute()
        config, paths = make_cluster_config(base)
        (section,) = config["Clusters"].values()
        cfg_path = base / "config.yml"
        cfg_path.write_text(yaml.safe_dump(config))
        node = ProcessNode(["--config", str(cfg_path)], base, base / "twistd.log")
        self.addCleanup(node.close)
        await wait_for(lambda: LISTENING_RE.search(node.output()) or node.proc.poll() is not None, timeout=60)
        m = LISTENING_RE.search(node.output())
        self.assertIsNotNone(m, node.output())
        port = int(m.group(1))
        conn = _KeepAlive(port, str(paths["ca"]), section["ManagementToken"])
        self.addCleanup(conn.close)
        code, _, sock_before = await threads.deferToThread(conn.ping)
        self.assertEqual(code, 200)
        fresh = generate_ca_and_server(base / "renewed", common_name="renewed")
        shutil.copy(fresh["cert"], paths["cert"])
        shutil.copy(fresh["key"], paths["key"])
        node.signal(signal.SIGHUP)
        await wait_for(lambda: "TLS certificate reloaded" in node.output(), timeout=30)
        code, _, sock_after = await threads.deferToThread(conn.ping)
        self.assertEqual((code, sock_after), (200, sock_before))
        code, _, _ = await threads.deferToThread(
            _https_get, port, "/_health/ping", cafile=str(fresh["ca"]), token=section["ManagementToken"])
        self.assertEqual(code, 200)
        with self.assertRaises(ssl.SSLCertVerificationError):
            await threads.deferToThread(
                _https_get, port, "/_health/ping", cafile=str(paths["ca"]), token=section["ManagementToken"])
        conn.close()
        node.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(node.proc), 0, node.output())

    async def test_remote_with_wrong_hostname_refused_unless_insecure(self) -> None:
        """TLS inside Twisted (client side): a remote whose certificate is
        signed by a trusted CA but names another host is refused with an
        error naming the cluster (a 502 at the API); with Insecure: true the
        same remote is used."""
        tls = generate_ca_and_server(Path(self.mktemp()), common_name="zbbbb", hosts=("wrong.example",))
        root = Resource()
        users = Resource()
        root.putChild(b"arvados", Resource())
        root.children[b"arvados"].putChild(b"v1", Resource())
        root.children[b"arvados"].children[b"v1"].putChild(b"users", users)

        class Current(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b'{"uuid": "zbbbb-tpzed-000000000000000"}'

        users.putChild(b"current", Current())
        factory = TLSMemoryBIOFactory(load_server_options(str(tls["cert"]), str(tls["key"])),
                                      False, _NoALPN(Site(root)))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.abortConnection() for p in list(factory.protocols)])
        host = f"127.0.0.1:{port.getHost().port}"

        async def ask(insecure: bool) -> Any:
            client = RemoteClient(reactor=reactor, clock=reactor, local_cluster="zaaaa",
                                  remotes={"zbbbb": RemoteCluster(host=host, insecure=insecure)},
                                  ca_file=str(tls["ca"]), timeout=20)
            try:
                return await client.get_json("zbbbb", "/arvados/v1/users/current", token="t")
            finally:
                await client.close()

        with self.assertRaises(RemoteUnreachable) as cm:
            await ask(insecure=False)
        self.assertIn("remote cluster zbbbb unreachable", str(cm.exception))
        self.assertIn("Mismatch", str(cm.exception))  # service-identity's verdict
        self.assertEqual((await ask(insecure=True))["uuid"], "zbbbb-tpzed-000000000000000")


class ServiceTreeAudit(TestCase):
    def test_only_the_plugin_imports_the_global_reactor(self) -> None:
        """One MultiService: no module of the package but arvnode/tap.py (and
        the twistd plugin) imports the global reactor."""
        offenders = []
        pattern = re.compile(r"from twisted\.internet import[^\n]*\breactor\b|twisted\.internet\.reactor\b"
                             r"|import twisted\.internet\.reactor")
        for path in sorted((REPO / "arvnode").rglob("*.py")):
            if path.name == "tap.py":
                continue
            for line in path.read_text().splitlines():
                if pattern.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
        self.assertEqual(offenders, [])

    async def test_every_child_is_named_and_listeners_expose_ports(self) -> None:
        """One MultiService: every child of the node has a name (unique), and
        each listener exposes the port it bound, equal to what a client reaches."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        names = [s.name for s in n.node]
        self.assertNotIn(None, names)
        self.assertEqual(len(names), len(set(names)), names)
        for listener in n.node.listeners:
            self.assertIs(n.node.getServiceNamed(listener.name), listener)
            self.assertEqual((await listener.whenListening()).getHost().port, listener.port)
            self.assertNotEqual(listener.port, 0)


def _metrics(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


class HealthMetricsAudit(TestCase):
    timeout = 120

    async def test_keepproxy_port_guards_like_the_controller(self) -> None:
        """Health and metrics: on the keepproxy port too, /_health/ping and
        /metrics are 401 without a header and 403 with a wrong token, and
        404 on both ports when no ManagementToken is configured."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        client = http_client(self, paths["ca"])
        for path in ("/_health/ping", "/metrics"):
            r = await client.get(n.keepproxy_url + path)
            self.assertEqual(r.code, 401, path)
            await r.text()
            r = await client.get(n.keepproxy_url + path, headers={"Authorization": "Bearer nope"})
            self.assertEqual(r.code, 403, path)
            await r.text()
        config, paths = make_cluster_config(Path(self.mktemp()), extra={"ManagementToken": ""})
        off = await start_node(self, config, paths)
        client = http_client(self, paths["ca"])
        for base in (off.controller_url, off.keepproxy_url):
            for path in ("/_health/ping", "/metrics"):
                r = await client.get(base + path)
                self.assertEqual(r.code, 404, base + path)
                await r.text()

    async def test_metrics_parse_as_prometheus_on_both_ports(self) -> None:
        """Health and metrics: /metrics on each port parses with
        prometheus_client's parser and has request counts and durations by
        service, method and status, and the in-flight gauge (the /metrics
        request itself is in flight while it is rendered)."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        client = http_client(self, paths["ca"])
        auth = {"Authorization": f"Bearer {n.management_token}"}
        for base in (n.controller_url, n.keepproxy_url):
            r = await client.get(base + "/_health/ping", headers=auth)
            await r.text()
        r = await client.post(n.keepproxy_url + "/", data=b"x", headers={"Authorization": "Bearer bogus"})
        await r.text()
        # The first /metrics GET (on the controller) is counted once answered.
        for base, service, controller_gets in ((n.controller_url, "controller", 1),
                                               (n.keepproxy_url, "keepproxy", 2)):
            r = await client.get(base + "/metrics", headers=auth)
            self.assertEqual(r.code, 200)
            self.assertTrue(r.headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
            families = _metrics(await r.text())
            counts = {(s.labels["service"], s.labels["method"], s.labels["code"]): s.value
                      for s in families["arvnode_requests"] if s.name == "arvnode_requests_total"}
            self.assertEqual(counts[("controller", "GET", "200")], controller_gets)
            self.assertEqual(counts[("keepproxy", "GET", "200")], 1.0)
            self.assertEqual(counts[("keepproxy", "POST", "403")], 1.0)
            durations = {(s.labels["service"], s.labels["method"], s.labels["code"])
                         for s in families["arvnode_request_duration_seconds"]
                         if s.name == "arvnode_request_duration_seconds_count"}
            self.assertIn(("keepproxy", "POST", "403"), durations)
            inflight = {s.labels["service"]: s.value for s in families["arvnode_inflight_requests"]}
            self.assertEqual(inflight[service], 1.0)

    async def test_database_unreachable_is_503(self) -> None:
        """Health and metrics: the controller's ping touches the database;
        with PostgreSQL refusing connections (backends killed, database
        closed to new connections) it answers 503 with "health":"ERROR",
        not 500, while the keepproxy's ping stays OK."""
        pg = fresh_database(self)
        config, paths = make_cluster_config(Path(self.mktemp()), postgresql=pg)
        n = await start_node(self, config, paths)
        client = http_client(self, paths["ca"])
        auth = {"Authorization": f"Bearer {n.management_token}"}
        r = await client.get(n.controller_url + "/_health/ping", headers=auth)
        self.assertEqual(r.code, 200)
        await r.text()

        def close_database(allow: bool) -> None:
            admin = _admin_connection()
            try:
                with admin.cursor() as cur:
                    cur.execute(f'ALTER DATABASE "{pg["dbname"]}" ALLOW_CONNECTIONS {str(allow).lower()}')
                    if not allow:
                        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> pg_backend_pid()", (pg["dbname"],))
            finally:
                admin.close()

        close_database(False)
        self.addCleanup(close_database, True)
        r = await client.get(n.controller_url + "/_health/ping", headers=auth)
        body = await r.text()
        # adbapi logs its failed rollback on the killed connection.
        self.flushLoggedErrors(ConnectionLost, psycopg2.InterfaceError)
        self.assertEqual(r.code, 503, body)
        self.assertEqual(json.loads(body)["health"], "ERROR")
        r = await client.get(n.keepproxy_url + "/_health/ping", headers=auth)
        self.assertEqual(r.code, 200)
        await r.text()


class AccessLogAudit(TestCase):
    timeout = 120

    async def test_no_secret_in_any_log_line(self) -> None:
        """Access log: requests carrying tokens in the Authorization header
        (Bearer and OAuth2, v1 and v2 forms), in the api_token query, in a
        form body, a failed bogus token, and a remote cluster's salted token
        whose issuer is unreachable (a 502 with a logged failure) leave no
        token secret in any captured log event, tracebacks included."""
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()  # nothing listens there: the remote is unreachable
        config, paths = make_cluster_config(Path(self.mktemp()), extra={
            "RemoteClusters": {"zbbbb": {"Host": f"127.0.0.1:{dead_port}", "Insecure": True}}})
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        n = await start_node(self, config, paths)
        store = n.node.store
        user = await store.create_user(email="u@example.com", username="u", is_active=True)
        record = await store.create_token(user.uuid)
        secret = record.secret
        bogus = "bogussecret" + "q" * 40
        remote_v2 = "v2/zbbbb-gj3su-000000000000001/" + "r3m0t3s3cr3t" * 4
        salted = salt_token(remote_v2, n.cluster_id)
        salted_secret = salted.rsplit("/", 1)[1]
        secrets = {secret, bogus, "r3m0t3s3cr3t" * 4, salted_secret, n.root_token,
                   n.management_token, n.section["Users"]["AnonymousUserToken"]}
        client = http_client(self, paths["ca"])
        api = n.controller_url + "/arvados/v1/users/current"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        calls = [
            ("GET", api, {"Authorization": f"Bearer {record.v2}"}, None),
            ("GET", api, {"Authorization": f"OAuth2 {secret}"}, None),
            ("GET", api + "?" + urlencode({"api_token": secret, "x": "1"}), {}, None),
            ("GET", api + "?" + urlencode({"api_token": record.v2}), {}, None),
            ("POST", n.controller_url + "/arvados/v1/users/current", form,
             urlencode({"api_token": record.v2, "_method": "GET"}).encode()),
            ("POST", n.controller_url + "/arvados/v1/collections", form,
             urlencode({"api_token": secret}).encode()),
            ("GET", api, {"Authorization": f"Bearer {bogus}"}, None),
            ("GET", api + "?api_token=" + bogus, {}, None),
            ("GET", api, {"Authorization": f"Bearer {salted}"}, None),
            ("GET", api, {"Authorization": f"Bearer {remote_v2}"}, None),
            ("GET", api, {"Authorization": f"Bearer {n.section['Users']['AnonymousUserToken']}"}, None),
            ("GET", n.controller_url + "/_health/ping", {"Authorization": f"Bearer {n.management_token}"}, None),
            ("GET", n.controller_url + "/_health/ping", {"Authorization": f"Bearer {bogus}"}, None),
            ("GET", n.keepproxy_url + "/" + hashlib.md5(b"").hexdigest(),
             {"Authorization": f"OAuth2 {record.v2}"}, None),
            ("PUT", n.keepproxy_url + "/" + hashlib.md5(b"abc").hexdigest(),
             {"Authorization": f"OAuth2 {bogus}"}, b"abc"),
            ("PUT", n.keepproxy_url + "/" + hashlib.md5(b"abc").hexdigest(),
             {"Authorization": f"OAuth2 {salted}"}, b"abc"),
            ("GET", n.keepproxy_url + "/index", {"Authorization": f"OAuth2 {n.root_token}"}, None),
        ]
        codes = []
        for method, url, headers, body in calls:
            r = await client.request(method, url, headers=headers, data=body)
            await r.content()
            codes.append(r.code)
        self.assertEqual(codes[0], 200)
        self.assertIn(502, codes, "the unreachable issuer was asked")  # so a failure was logged
        text = [eventAsText(e, includeTraceback=True, includeTimestamp=False, includeSystem=True)
                for e in events]
        text += [repr(v) for e in events for k, v in e.items()
                 if not k.startswith("log_") and isinstance(v, (str, bytes, int, float))]
        leaks = [(s[:6], line) for line in text for s in secrets if s in line]
        self.assertEqual(leaks, [])
        self.assertTrue([line for line in text if "users/current" in line and "zbbbb" in line
                         or "remote cluster zbbbb" in line], "no failure was logged at all")

    async def test_access_line_fields(self) -> None:
        """Access log: one structured line per request, with the request id
        (generated req-<20 base36> and returned, or the incoming one), client
        address, method, path without api_token, status, bytes in and out,
        duration, and the user uuid once known."""
        config, paths = make_cluster_config(Path(self.mktemp()))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        n = await start_node(self, config, paths)
        client = http_client(self, paths["ca"])
        r = await client.post(n.controller_url + "/arvados/v1/users/current?api_token=" + n.root_token + "&z=1",
                              data=b"_method=GET",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        body = await r.content()
        (rid,) = r.headers.getRawHeaders("X-Request-Id")
        self.assertRegex(rid, r"^req-[0-9a-z]{20}$")
        access = [e for e in events if e.get("log_namespace") == "arvnode.access"
                  and e.get("request_id") == rid]
        self.assertEqual(len(access), 1)
        e = access[0]
        self.assertEqual((e["service"], e["client"], e["method"], e["path"], e["status"]),
                         ("controller", "127.0.0.1", "POST", "/arvados/v1/users/current?z=1", r.code))
        self.assertEqual(e["bytes_in"], len(b"_method=GET"))
        self.assertEqual(e["bytes_out"], len(body))
        self.assertGreaterEqual(e["duration"], 0)
        self.assertEqual(e["user"], json.loads(body)["uuid"])
        r = await client.get(n.keepproxy_url + "/index", headers={"X-Request-Id": "req-fromtheclient"})
        await r.content()
        self.assertEqual(r.headers.getRawHeaders("X-Request-Id"), ["req-fromtheclient"])
        access = [e for e in events if e.get("log_namespace") == "arvnode.access"
                  and e.get("request_id") == "req-fromtheclient"]
        self.assertEqual([(e["service"], e["status"]) for e in access], [("keepproxy", r.code)])


class HarnessAudit(TestCase):
    async def test_several_nodes_at_once_are_independent(self) -> None:
        """Test harness: two nodes started from configs in one process get
        their own ephemeral ports, CAs and metrics (a request to one is not
        counted by the other); trial's reactor check after the test proves
        the teardown is clean."""
        rng = random.Random(7)
        nodes = []
        for _ in range(2):
            config, paths = make_cluster_config(Path(self.mktemp()), rng=rng)
            nodes.append((await start_node(self, config, paths), paths))
        (a, pa), (b, pb) = nodes
        self.assertNotEqual(a.cluster_id, b.cluster_id)
        self.assertEqual(len({a.controller_port, a.keepproxy_port, b.controller_port, b.keepproxy_port}), 4)
        r = await http_client(self, pa["ca"]).get(a.controller_url + "/arvados/v1/none")
        await r.content()
        with self.assertRaises(Exception):  # b's certificate is not a's CA's
            await http_client(self, pa["ca"]).get(b.controller_url + "/_health/ping")
        r = await http_client(self, pb["ca"]).get(
            b.controller_url + "/metrics", headers={"Authorization": f"Bearer {b.management_token}"})
        families = _metrics(await r.text())
        counted = [s for s in families["arvnode_requests"] if s.labels.get("code") == "404"]
        self.assertEqual(counted, [])
