# -*- test-case-name: tests.integration.test_federation -*-
"""Federation routing in the controller (issue 5), three real nodes on loopback.

A (``zzzzz``), B (``zbbbb``) and C (``zcccc``) are in-process nodes whose
``RemoteClusters`` name each other with ``Proxy: true`` (``Insecure``: each
node has its own test CA). A client holding only a token issued by A talks
only to A. What B received is checked at B: a test-only wrapper around B's
controller resource records each request as it arrived on B's socket
(method, URI, headers, body), and B's remote-token cache shows which token
it validated.

Two fakes, said where they are used: a TCP listener that never answers
(a hung remote: a real node cannot be made to hang on demand) and a tiny
HTTP server answering 500 or a wrong manifest (a misbehaving remote).
"""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import treq
import treq.client
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from arvnode.api.federation import uuid_filter_set
from arvnode.auth.salting import salt_token
from arvnode.keep.manifest import portable_data_hash
from arvnode.store.kinds import KINDS
from tests.helpers import deferred_sleep, http_client, make_cluster_config, start_node, wait_for

A, B, C = "zzzzz", "zbbbb", "zcccc"
# Spec arvados-wire.md §12.2: this token salted for zbbbb.
SPEC_TOKEN_UUID = "zzzzz-gj3su-077z32aux8dg2s1"
SPEC_SECRET = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
SPEC_TOKEN = f"v2/{SPEC_TOKEN_UUID}/{SPEC_SECRET}"
SPEC_SALTED_FOR_B = f"v2/{SPEC_TOKEN_UUID}/33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"
DATA = b"federated bytes living only on B\n" * 1000


def free_port() -> int:
    """A loopback port nobody listens on now (the configs must name each
    other's ports before the nodes start)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pinned_controller(port: int) -> dict[str, Any]:
    url = f"https://127.0.0.1:{port}/"
    return {"ExternalURL": url, "InternalURLs": {url: {}}}


def remote(port: int, **extra: Any) -> dict[str, Any]:
    entry = {"Host": f"127.0.0.1:{port}", "Proxy": True, "Insecure": True, "ActivateUsers": True}
    entry.update(extra)
    return entry


class Recorder:
    """Test-only hook on a node's controller: every request as it arrived."""

    def __init__(self, running: Any) -> None:
        self.seen: list[dict[str, Any]] = []
        root = running.node.getServiceNamed("controller").site.resource
        original = root.handle

        async def handle(request: Any) -> Any:
            content = request.content
            body = b""
            if content is not None:
                content.seek(0)
                body = content.read()
                content.seek(0)
            self.seen.append({
                "method": request.method.decode(), "uri": request.uri.decode(),
                "headers": {k.decode().lower(): [v.decode() for v in vs]
                            for k, vs in request.requestHeaders.getAllRawHeaders()},
                "body": body,
            })
            return await original(request)

        root.handle = handle

    def matching(self, fragment: str) -> list[dict[str, Any]]:
        return [r for r in self.seen if fragment in r["uri"]]


class _Hang(Protocol):
    """Accepts and never answers; counts the connections open right now."""

    def connectionMade(self) -> None:
        self.factory.open += 1
        self.factory.peak = max(self.factory.peak, self.factory.open)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1

    def dataReceived(self, data: bytes) -> None:
        pass


class _Misbehaving(Resource):
    """A "remote" that answers 500, or a collection whose manifest is not the PDH asked for."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        path = request.path.decode()
        if "/collections/" in path and "+" in path.rsplit("/", 1)[1].replace("%2B", "+"):
            return json.dumps({"uuid": "x", "manifest_text":
                               ". 37b51d194a7513e45b56f6524f2d51f2+3 0:3:bar\n"}).encode()
        request.setResponseCode(500)
        return json.dumps({"errors": ["database on fire"]}).encode()


class UuidFilterTests(TestCase):
    def test_uuid_filters(self) -> None:
        """Which uuids a list names: = and in, intersected, non-strings ignored."""
        a, b = f"{A}-4zz18-000000000000001", f"{B}-4zz18-000000000000001"
        self.assertEqual(uuid_filter_set([["uuid", "in", [a, b, 3]]]), ({a, b}, True))
        self.assertEqual(uuid_filter_set([["uuid", "in", [a, b]], ["uuid", "=", b]]), ({b}, True))
        self.assertEqual(uuid_filter_set([["uuid", "=", a], ["name", "=", "x"]]), ({a}, False))
        self.assertEqual(uuid_filter_set([["name", "=", "x"]]), (None, False))
        self.assertEqual(uuid_filter_set(None), (None, True))


class FederationTests(TestCase):
    timeout = 240

    async def setUp(self) -> None:
        base = Path(self.mktemp())
        ports = {c: free_port() for c in (A, B, C)}
        nodes = {}
        for cid in (A, B, C):
            remotes = {o: remote(ports[o]) for o in (A, B, C) if o != cid}
            if cid == A:
                # Same host as B but TLS verified against the system CAs: must fail.
                remotes["zdddd"] = remote(ports[B], Insecure=False)
                # A remote without Proxy: its records are served here (404).
                remotes["zeeee"] = remote(ports[B], Proxy=False)
            config, paths = make_cluster_config(base / cid, cluster_id=cid, extra={
                "Services.Controller": pinned_controller(ports[cid]),
                "RemoteClusters": remotes,
            })
            nodes[cid] = await start_node(self, config, paths)
        self.a, self.b, self.c = nodes[A], nodes[B], nodes[C]
        # Each node has its own CA; the client side of TLS is not the point here.
        self.http = treq.client.HTTPClient(self._insecure_agent())
        store = self.a.node.store
        self.user = await store.create_user(email="fed@a.example", username="fed",
                                            first_name="Fed", is_active=True)
        self.token = await store.create_token(self.user.uuid, uuid=SPEC_TOKEN_UUID,
                                              secret=SPEC_SECRET)
        self.assertEqual(self.token.v2, SPEC_TOKEN)
        self.rec_b = Recorder(self.b)

    def _insecure_agent(self) -> Any:
        from twisted.web.client import Agent, HTTPConnectionPool

        from arvnode.tls import client_policy

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return Agent(reactor, contextFactory=client_policy(insecure=True), pool=pool)

    # -- helpers ---------------------------------------------------------------

    async def api(self, node: Any, method: str, path: str, *, token: str | None = None,
                  headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any, Any]:
        h = {k: [v] for k, v in (headers or {}).items()}
        if token is not None:
            h["Authorization"] = [f"Bearer {token}"]
        r = await self.http.request(method, node.controller_url + path, headers=h, **kw)
        body = await treq.content(r)
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = body
        return r.code, doc, r.headers

    async def b_collection(self, owner: str, data: bytes = DATA, name: str = "on B") -> dict[str, Any]:
        """A collection and its block stored only on B, readable by ``owner``."""
        root = self.b.root_token
        r = await self.http.put(self.b.keepproxy_url + "/" + hashlib.md5(data).hexdigest(),
                                data=data, headers={"Authorization": [f"Bearer {root}"]})
        self.assertEqual(r.code, 200, await treq.content(r))
        locator = (await treq.content(r)).decode().strip()
        manifest = f". {locator} 0:{len(data)}:hello.txt\n"
        code, body, _ = await self.api(self.b, "POST", "/arvados/v1/collections", token=root,
                                       json={"collection": {"owner_uuid": owner, "name": name,
                                                            "manifest_text": manifest}})
        self.assertEqual(code, 200, body)
        return body

    # -- collections -------------------------------------------------------------

    async def test_remote_collection_by_uuid_is_rewritten_and_token_salted(self) -> None:
        """GET collections/<B uuid> at A: B's record, every +A turned into
        +Rzbbbb-, and B received exactly the spec's salted token (§12.2),
        never the real one; X-Request-Id kept, Via added."""
        coll = await self.b_collection(self.user.uuid)
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{coll['uuid']}",
                                       token=SPEC_TOKEN, headers={"X-Request-Id": "req-fed-000001"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["uuid"], coll["uuid"])
        self.assertEqual(body["portable_data_hash"], coll["portable_data_hash"])
        self.assertEqual(portable_data_hash(body["manifest_text"]), coll["portable_data_hash"])
        self.assertIn("+Rzbbbb-", body["manifest_text"])
        self.assertNotIn("+A", body["manifest_text"])
        seen = self.rec_b.matching(coll["uuid"])
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["headers"]["authorization"], [f"Bearer {SPEC_SALTED_FOR_B}"])
        self.assertEqual(seen[0]["headers"]["x-request-id"], ["req-fed-000001"])
        self.assertIn("arvados-controller", seen[0]["headers"]["via"][0])
        cached = [e.token for e in self.b.node.remote_tokens.entries()]
        self.assertEqual(cached, [SPEC_SALTED_FOR_B])
        self.assertNotIn(SPEC_SECRET, json.dumps([r["headers"] for r in self.rec_b.seen]))
        # The same token as a bare v1 secret: its v2 form is what gets salted.
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{coll['uuid']}",
                                       token=SPEC_SECRET)
        self.assertEqual(code, 200, body)
        seen = self.rec_b.matching(coll["uuid"])
        self.assertEqual(seen[-1]["headers"]["authorization"], [f"Bearer {SPEC_SALTED_FOR_B}"])

    async def test_collection_by_pdh_found_on_a_remote(self) -> None:
        """GET collections/<pdh> at A: not here, so asked of B and C in
        parallel; B's answer hashes to the PDH and comes back with +R hints.
        An unknown PDH is 404 after every cluster said so."""
        coll = await self.b_collection(self.user.uuid)
        pdh = coll["portable_data_hash"]
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{pdh}",
                                       token=SPEC_TOKEN)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["portable_data_hash"], pdh)
        self.assertIn("+Rzbbbb-", body["manifest_text"])
        self.assertEqual(portable_data_hash(body["manifest_text"]), pdh)
        asked = self.rec_b.matching(pdh.split("+")[0])
        self.assertEqual(len(asked), 1)
        self.assertIn("forwarded_for=zzzzz-", asked[0]["uri"])

        # Unknown everywhere: B and C say 404, but zdddd (TLS refused) could
        # not be asked, so the answer is 502 naming it, not a false 404.
        missing = hashlib.md5(b"nothing").hexdigest() + "+7"
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{missing}",
                                       token=SPEC_TOKEN)
        self.assertEqual(code, 502, body)
        self.assertIn("remote cluster zdddd unreachable", body["errors"][0])
        self.assertIn("remote cluster zcccc answered 404", body["errors"][0])

    async def test_list_with_uuid_filters_spanning_clusters(self) -> None:
        """A list filtered by uuids of A, B and C fans out and merges the pages."""
        here = await self.api(self.a, "POST", "/arvados/v1/collections", token=SPEC_TOKEN,
                              json={"collection": {"name": "on A", "manifest_text": ""}})
        self.assertEqual(here[0], 200, here[1])
        on_b = await self.b_collection(self.user.uuid)
        on_c_owner = self.c.root_token
        code, on_c, _ = await self.api(self.c, "POST", "/arvados/v1/collections", token=on_c_owner,
                                       json={"collection": {"owner_uuid": self.user.uuid,
                                                            "name": "on C", "manifest_text": ""}})
        self.assertEqual(code, 200, on_c)
        uuids = [here[1]["uuid"], on_b["uuid"], on_c["uuid"]]
        query = {"filters": json.dumps([["uuid", "in", uuids]]), "count": "none"}
        code, body, _ = await self.api(self.a, "GET", "/arvados/v1/collections", token=SPEC_TOKEN,
                                       params=query)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["kind"], "arvados#collectionList")
        self.assertEqual(sorted(i["uuid"] for i in body["items"]), sorted(uuids))
        self.assertNotIn("items_available", body)
        # Federated lists cannot count or page: a clear 400.
        code, body, _ = await self.api(self.a, "GET", "/arvados/v1/collections", token=SPEC_TOKEN,
                                       params={"filters": json.dumps([["uuid", "in", uuids]])})
        self.assertEqual(code, 400, body)
        self.assertIn('count=="none"', body["errors"][0])
        uuid_in = ["uuid", "in", uuids]
        for extra, words in (({"limit": "2"}, "limit (2)"), ({"offset": "1"}, "offset"),
                             ({"order": '["name"]'}, "order"),
                             ({"filters": json.dumps([uuid_in, ["name", "=", "x"]])}, "filters")):
            query = {"filters": json.dumps([uuid_in]), "count": "none", **extra}
            code, body, _ = await self.api(self.a, "GET", "/arvados/v1/collections",
                                           token=SPEC_TOKEN, params=query)
            self.assertEqual(code, 400, (extra, body))
            self.assertIn(words, body["errors"][0])
        # Only A's uuids: an ordinary local list (counts allowed), no remote asked.
        before = len(self.rec_b.seen)
        code, body, _ = await self.api(self.a, "GET", "/arvados/v1/collections", token=SPEC_TOKEN,
                                       params={"filters": json.dumps([["uuid", "=", uuids[0]]])})
        self.assertEqual((code, body["items_available"]), (200, 1), body)
        self.assertEqual(len(self.rec_b.seen), before)

    # -- every method, every resource ---------------------------------------------

    async def test_workflow_lifecycle_through_a(self) -> None:
        """Create on B via cluster_id, then GET/HEAD/PATCH/PUT/OPTIONS/DELETE of the
        B uuid at A: all relayed, B's record returned with the owner being A's user
        (B's local copy of the user keeps the home UUID)."""
        code, wf, _ = await self.api(self.a, "POST", "/arvados/v1/workflows", token=SPEC_TOKEN,
                                     params={"cluster_id": B},
                                     json={"workflow": {"name": "wf on B", "definition": "{}"}})
        self.assertEqual(code, 200, wf)
        self.assertTrue(wf["uuid"].startswith(B + "-7fd4e-"), wf)
        self.assertEqual(wf["owner_uuid"], self.user.uuid)
        path = f"/arvados/v1/workflows/{wf['uuid']}"

        code, got, _ = await self.api(self.a, "GET", path, token=SPEC_TOKEN)
        self.assertEqual((code, got["uuid"], got["owner_uuid"], got["name"]),
                         (200, wf["uuid"], self.user.uuid, "wf on B"))
        r = await self.http.head(self.a.controller_url + path,
                                 headers={"Authorization": [f"Bearer {SPEC_TOKEN}"]})
        self.assertEqual(r.code, 200)
        self.assertEqual(await treq.content(r), b"")

        code, got, _ = await self.api(self.a, "PATCH", path, token=SPEC_TOKEN,
                                      json={"workflow": {"name": "renamed"}})
        self.assertEqual((code, got.get("name")), (200, "renamed"), got)
        # api_token in a form body (and in the query) never reaches B.
        code, got, _ = await self.api(
            self.a, "PUT", path + f"?api_token={SPEC_TOKEN}",
            data={"workflow": json.dumps({"description": "via form"}), "api_token": SPEC_TOKEN},
            headers={"Keep-Alive": "timeout=5", "Connection": "keep-alive, X-Hop",
                     "X-Hop": "drop me"})
        self.assertEqual((code, got.get("description")), (200, "via form"), got)
        put = [r for r in self.rec_b.seen if r["method"] == "PUT"][0]
        self.assertNotIn("api_token", put["uri"])
        self.assertNotIn(b"api_token", put["body"])
        self.assertEqual(put["headers"]["authorization"], [f"Bearer {SPEC_SALTED_FOR_B}"])
        self.assertNotIn("keep-alive", put["headers"])
        self.assertNotIn("x-hop", put["headers"])
        stored = await self.b.node.store.get_object(KINDS["workflows"], wf["uuid"])
        self.assertEqual((stored["name"], stored["description"]), ("renamed", "via form"))

        r = await self.http.request("OPTIONS", self.a.controller_url + path)
        self.assertEqual(r.code, 200)
        self.assertEqual([x["method"] for x in self.rec_b.matching(wf["uuid"])][-1], "OPTIONS")

        code, got, _ = await self.api(self.a, "DELETE", path, token=SPEC_TOKEN)
        self.assertEqual(code, 200, got)
        code, got, _ = await self.api(self.a, "GET", path, token=SPEC_TOKEN)
        self.assertEqual(code, 404, got)  # B's 404, passed through with its body
        self.assertIn(wf["uuid"], got["errors"][0])
        # A resource A does not implement at all still goes to B.
        code, got, _ = await self.api(self.a, "GET", f"/arvados/v1/container_requests/{B}-xvhdp-"
                                      "012345678901234", token=SPEC_TOKEN)
        self.assertEqual(len(self.rec_b.matching("container_requests")), 1)

    async def test_token_issued_by_target_goes_unchanged(self) -> None:
        """A token of B used at A for a B record reaches B as it is."""
        b_user = await self.b.node.store.create_user(email="b@b.example", is_active=True)
        b_token = await self.b.node.store.create_token(b_user.uuid)
        coll = await self.b_collection(b_user.uuid)
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{coll['uuid']}",
                                       token=b_token.v2)
        self.assertEqual(code, 200, body)
        seen = self.rec_b.matching(coll["uuid"])
        self.assertEqual(seen[-1]["headers"]["authorization"], [f"Bearer {b_token.v2}"])

    async def test_already_salted_token_is_not_salted_again(self) -> None:
        """C's token salted for A, presented at A, goes to B unchanged (no
        second salting); B asks C, which refuses it for B: 401 passed through."""
        c_user = await self.c.node.store.create_user(email="c@c.example", is_active=True)
        c_token = await self.c.node.store.create_token(c_user.uuid)
        salted_for_a = salt_token(c_token.v2, A)
        wf_path = f"/arvados/v1/workflows/{B}-7fd4e-000000000000001"
        code, body, _ = await self.api(self.a, "GET", wf_path, token=salted_for_a)
        self.assertEqual(code, 401, body)
        seen = self.rec_b.matching(wf_path)
        self.assertEqual(seen[-1]["headers"]["authorization"], [f"Bearer {salted_for_a}"])

    async def test_no_second_forward_and_local_fallbacks(self) -> None:
        """A request that already came through a controller (Via) is served
        locally, as is a prefix with no remote or a Proxy:false remote: 404s
        that never reach B."""
        wf = f"/arvados/v1/workflows/{B}-7fd4e-000000000000002"
        code, body, _ = await self.api(self.a, "GET", wf, token=SPEC_TOKEN,
                                       headers={"Via": "HTTP/1.1 arvados-controller"})
        self.assertEqual(code, 404, body)
        for path in (wf, "/arvados/v1/workflows/zqqqq-7fd4e-000000000000002",
                     "/arvados/v1/workflows/zeeee-7fd4e-000000000000002"):
            if path != wf:
                code, body, _ = await self.api(self.a, "GET", path, token=SPEC_TOKEN)
                self.assertEqual(code, 404, body)
        self.assertEqual(self.rec_b.seen, [])

    # -- failures ----------------------------------------------------------------------

    async def test_remote_down_is_502_naming_it_and_local_records_still_work(self) -> None:
        code, mine, _ = await self.api(self.a, "POST", "/arvados/v1/collections", token=SPEC_TOKEN,
                                       json={"collection": {"name": "mine"}})
        self.assertEqual(code, 200, mine)
        await self.b.node.getServiceNamed("controller").stopService()
        started = reactor.seconds()
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/workflows/{B}-7fd4e-"
                                       "000000000000003", token=SPEC_TOKEN)
        self.assertEqual(code, 502, body)
        self.assertIn(f"remote cluster {B} unreachable", body["errors"][0])
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{B}-4zz18-"
                                       "000000000000003", token=SPEC_TOKEN)
        self.assertEqual(code, 502, body)
        self.assertIn(B, body["errors"][0])
        self.assertLess(reactor.seconds() - started, 30)
        code, body, _ = await self.api(self.a, "GET", f"/arvados/v1/collections/{mine['uuid']}",
                                       token=SPEC_TOKEN)
        self.assertEqual(code, 200, body)

    async def test_tls_to_remotes_is_verified_unless_insecure(self) -> None:
        """zdddd is B's address without Insecure: B's certificate is not
        trusted, so A refuses to talk (502 naming zdddd), B never sees it."""
        code, body, _ = await self.api(self.a, "GET", "/arvados/v1/workflows/zdddd-7fd4e-"
                                       "000000000000004", token=SPEC_TOKEN)
        self.assertEqual(code, 502, body)
        self.assertIn("remote cluster zdddd unreachable", body["errors"][0])
        self.assertEqual(self.rec_b.seen, [])


class MisbehavingRemoteTests(TestCase):
    """One real node, A, whose remotes misbehave (fakes: see the module docstring)."""

    timeout = 120

    async def start(self, *, silent: int = 1, amplification: int = 4) -> None:
        """Node A with ``silent`` remotes that never answer (``zhun1``...) and
        ``zfive``, which answers 500 or a wrong manifest."""
        self.hung = Factory.forProtocol(_Hang)
        self.hung.open = self.hung.peak = 0
        hang = reactor.listenTCP(0, self.hung, interface="127.0.0.1")
        self.addCleanup(hang.stopListening)
        bad = reactor.listenTCP(0, Site(_Misbehaving()), interface="127.0.0.1")
        self.addCleanup(bad.stopListening)
        remotes = {f"zhun{i}": remote(hang.getHost().port, Scheme="http")
                   for i in range(1, silent + 1)}
        remotes["zfive"] = remote(bad.getHost().port, Scheme="http")
        config, paths = make_cluster_config(Path(self.mktemp()), cluster_id=A, extra={
            "API.RequestTimeout": "3s",
            "API.MaxRequestAmplification": amplification,
            "RemoteClusters": remotes,
        })
        self.a = await start_node(self, config, paths)
        user = await self.a.node.store.create_user(email="x@a.example", is_active=True)
        self.token = (await self.a.node.store.create_token(user.uuid)).v2
        self.http = http_client(self, paths["ca"])

    async def get(self, path: str) -> tuple[int, Any]:
        r = await self.http.get(self.a.controller_url + path,
                                headers={"Authorization": [f"Bearer {self.token}"]})
        return r.code, json.loads(await treq.content(r))

    async def test_timeout_is_504_naming_the_cluster(self) -> None:
        await self.start()
        started = reactor.seconds()
        code, body = await self.get("/arvados/v1/workflows/zhun1-7fd4e-000000000000005")
        self.assertEqual(code, 504, body)
        self.assertIn("remote cluster zhun1 did not answer", body["errors"][0])
        self.assertLess(reactor.seconds() - started, 3.0)
        code, body = await self.get("/arvados/v1/collections/zhun1-4zz18-000000000000005")
        self.assertEqual(code, 504, body)

    async def test_remote_5xx_is_502_with_its_message(self) -> None:
        await self.start()
        for path in ("/arvados/v1/workflows/zfive-7fd4e-000000000000006",
                     "/arvados/v1/collections/zfive-4zz18-000000000000006"):
            code, body = await self.get(path)
            self.assertEqual(code, 502, body)
            self.assertIn("remote cluster zfive answered 500: database on fire", body["errors"][0])

    async def test_pdh_answer_that_does_not_hash_to_the_pdh_is_refused(self) -> None:
        """zfive answers a PDH lookup with another manifest; zhun1 never answers:
        502 naming the bad hash (not a wrong collection)."""
        await self.start()
        pdh = "83367e8913dcec0bf3fc25ed5a27eacb+49"
        code, body = await self.get(f"/arvados/v1/collections/{pdh}")
        self.assertEqual(code, 502, body)
        self.assertIn("bad portable data hash", body["errors"][0])

    async def test_pdh_fan_out_is_bounded_by_max_request_amplification(self) -> None:
        """Three silent remotes, MaxRequestAmplification 2: never more than two
        asked at once. (The answer is our own request timeout, since the third
        is asked only after the first two gave up.)"""
        await self.start(silent=3, amplification=2)
        pdh = "d41d8cd98f00b204e9800998ecf8427e+77"
        d = Deferred.fromCoroutine(self.get(f"/arvados/v1/collections/{pdh}"))
        await wait_for(lambda: self.hung.open >= 2, timeout=10)
        await deferred_sleep(1.0)
        self.assertEqual(self.hung.peak, 2)
        code, body = await d
        self.assertIn(code, (502, 503, 504), body)
        self.assertEqual(self.hung.peak, 2)
