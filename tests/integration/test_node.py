"""A whole node in this process: TLS, health, metrics, request ids, access log.

Real loopback sockets, real TLS with a CA generated per test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from arvnode.tls import generate_ca_and_server
from tests.helpers import http_client, make_cluster_config, start_node


class NodeTestCase(TestCase):
    extra: dict = {}

    async def startNode(self, **extra):
        base = Path(self.mktemp())
        merged = dict(self.extra)
        merged.update(extra)
        config, paths = make_cluster_config(base, extra=merged)
        self.running = await start_node(self, config, paths)
        self.client = http_client(self, paths["ca"])
        return self.running


class HealthTests(NodeTestCase):
    async def test_ping_ok_on_both_ports(self):
        """GET /_health/ping with the ManagementToken answers {"health":"OK"} on
        the controller (HTTPS) and on the keepproxy."""
        n = await self.startNode()
        for base in (n.controller_url, n.keepproxy_url):
            r = await self.client.get(base + "/_health/ping",
                                      headers={"Authorization": f"Bearer {n.management_token}"})
            self.assertEqual(r.code, 200, base)
            self.assertEqual(json.loads(await r.text()), {"health": "OK"})

    async def test_ping_without_header_is_401_and_wrong_token_403(self):
        """No Authorization header → 401; a wrong token → 403."""
        n = await self.startNode()
        r = await self.client.get(n.controller_url + "/_health/ping")
        self.assertEqual(r.code, 401)
        await r.text()
        r = await self.client.get(n.controller_url + "/_health/ping",
                                  headers={"Authorization": "Bearer wrong"})
        self.assertEqual(r.code, 403)
        await r.text()

    async def test_unknown_check_is_404(self):
        """An unknown health check name is a 404 that names it."""
        n = await self.startNode()
        r = await self.client.get(n.controller_url + "/_health/nosuch",
                                  headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 404)
        self.assertIn("nosuch", await r.text())

    async def test_database_down_is_503_error(self):
        """When the controller's ping cannot reach the database the answer is
        503 with "health":"ERROR" (load balancers read the status)."""
        n = await self.startNode()
        await n.node.store.stop()
        r = await self.client.get(n.controller_url + "/_health/ping",
                                  headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 503)
        answer = json.loads(await r.text())
        self.assertEqual(answer["health"], "ERROR")
        self.assertIn("store is stopped", answer["error"])

    async def test_disabled_without_management_token(self):
        """With no ManagementToken configured, /_health and /metrics are off (404)."""
        n = await self.startNode(ManagementToken="")
        for path in ("/_health/ping", "/metrics"):
            r = await self.client.get(n.controller_url + path,
                                      headers={"Authorization": "Bearer anything"})
            self.assertEqual(r.code, 404, path)
            await r.text()


class MetricsTests(NodeTestCase):
    async def test_metrics_count_requests_by_service_method_status(self):
        """/metrics (behind the ManagementToken) reports request counts by
        service, method and status, durations, and in-flight requests."""
        n = await self.startNode()
        r = await self.client.get(n.controller_url + "/arvados/v1/nothing-here")
        await r.text()
        r = await self.client.get(n.keepproxy_url + "/metrics",
                                  headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 200)
        text = await r.text()
        self.assertIn('arvnode_requests_total{code="404",method="GET",service="controller"} 1.0', text)
        self.assertIn("arvnode_request_duration_seconds_bucket", text)
        self.assertIn("arvnode_inflight_requests", text)

    async def test_metrics_require_token(self):
        """/metrics without the ManagementToken is 401, with a wrong one 403."""
        n = await self.startNode()
        r = await self.client.get(n.controller_url + "/metrics")
        self.assertEqual(r.code, 401)
        await r.text()
        r = await self.client.get(n.controller_url + "/metrics", headers={"Authorization": "Bearer x"})
        self.assertEqual(r.code, 403)
        await r.text()


class RequestIdAndLogTests(NodeTestCase):
    async def test_request_id_honoured_or_generated(self):
        """An incoming X-Request-Id is echoed; otherwise one of the form
        req-<20 base36> is generated and returned."""
        n = await self.startNode()
        r = await self.client.get(n.controller_url + "/arvados/v1/x", headers={"X-Request-Id": "req-mine"})
        self.assertEqual(r.headers.getRawHeaders("X-Request-Id"), ["req-mine"])
        await r.text()
        r = await self.client.get(n.controller_url + "/arvados/v1/x")
        (rid,) = r.headers.getRawHeaders("X-Request-Id")
        self.assertRegex(rid, r"^req-[0-9a-z]{20}$")
        await r.text()

    async def test_access_log_line_without_token_secrets(self):
        """One access log line per request with id, method, path, status and
        byte counts; a token sent in the header or as api_token never appears."""
        n = await self.startNode()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        secret = "s3cr3tt0k3nvalue0123456789abcdefghij"
        r = await self.client.get(
            n.controller_url + f"/arvados/v1/collections?api_token={secret}&limit=1",
            headers={"Authorization": f"Bearer v2/{n.cluster_id}-gj3su-000000000000001/{secret}",
                     "X-Request-Id": "req-logtest"},
        )
        await r.text()
        lines = [formatEvent(e) for e in events]
        self.assertFalse([l for l in lines if secret in l], "token secret in the log")
        access = [l for l in lines if "req-logtest" in l and l.startswith("controller ")]
        self.assertEqual(len(access), 1, lines)
        self.assertIn("GET /arvados/v1/collections?limit=1 401", access[0])
        self.assertIn("controller", access[0])


class TLSTests(NodeTestCase):
    async def test_untrusted_ca_is_refused(self):
        """A client that does not trust the node's CA cannot talk to the API:
        the listener really serves the configured certificate."""
        n = await self.startNode()
        other = generate_ca_and_server(Path(self.mktemp()), common_name="other")
        client = http_client(self, other["ca"])
        with self.assertRaises(Exception):
            await client.get(n.controller_url + "/_health/ping")

    async def test_reload_swaps_certificate_for_new_connections(self):
        """After the certificate files are replaced, reload (SIGHUP) makes new
        connections present the new certificate without a restart."""
        n = await self.startNode()
        fresh = generate_ca_and_server(Path(self.mktemp()), common_name="renewed")
        shutil.copy(fresh["cert"], n.paths["cert"])
        shutil.copy(fresh["key"], n.paths["key"])
        headers = {"Authorization": f"Bearer {n.management_token}"}
        # Before reload the old CA still works.
        r = await http_client(self, n.paths["ca"]).get(n.controller_url + "/_health/ping", headers=headers)
        self.assertEqual(r.code, 200)
        await r.text()
        n.node.reload_tls()
        r = await http_client(self, fresh["ca"]).get(n.controller_url + "/_health/ping", headers=headers)
        self.assertEqual(r.code, 200)
        await r.text()
        with self.assertRaises(Exception):
            await http_client(self, n.paths["ca"]).get(n.controller_url + "/_health/ping", headers=headers)

    async def test_reload_with_broken_files_keeps_serving(self):
        """A reload with an unreadable key keeps the old certificate in use."""
        n = await self.startNode()
        Path(n.paths["key"]).write_text("not a key")
        self.assertFalse(n.node.getServiceNamed("controller").tls.reload())
        r = await self.client.get(n.controller_url + "/_health/ping",
                                  headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 200)
        await r.text()


class ServiceTreeTests(NodeTestCase):
    async def test_named_children_and_bound_ports(self):
        """The node is one MultiService with named children; the listeners
        expose the ports they bound (configured as port 0)."""
        n = await self.startNode()
        names = {s.name for s in n.node}
        self.assertTrue({"threadpools", "store", "volumes", "controller", "keepproxy"} <= names, names)
        self.assertNotEqual(n.controller_port, 0)
        self.assertNotEqual(n.keepproxy_port, 0)
        self.assertNotEqual(n.controller_port, n.keepproxy_port)


class DataDirectoryTests(NodeTestCase):
    async def test_missing_data_directory_is_created_private(self):
        """A configured ArvNode.DataDirectory that does not exist yet is
        created (mode 0700) and holds the SQLite database."""
        data = Path(self.mktemp()).absolute() / "fresh" / "state"
        n = await self.startNode(**{"ArvNode.DataDirectory": str(data)})
        self.assertTrue((data / "arvnode.sqlite").is_file())
        self.assertEqual(data.stat().st_mode & 0o777, 0o700)
        r = await self.client.get(n.controller_url + "/_health/ping",
                                  headers={"Authorization": f"Bearer {n.management_token}"})
        self.assertEqual(r.code, 200)
        await r.text()


class UnknownKeysTests(NodeTestCase):
    async def test_unused_arvados_keys_reported_once_at_start(self):
        """Keys of a real Arvados config that arvnode does not use are
        reported once, as one warning naming them, and do not stop the start."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.startNode(**{"Containers.MaxRetryAttempts": 3, "Workbench.SiteName": "x",
                                "Mail.MailchimpListID": "y"})
        lines = [formatEvent(e) for e in events if "not used by arvnode" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        for key in ("Containers", "Workbench", "Mail"):
            self.assertIn(key, lines[0])
