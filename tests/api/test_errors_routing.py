# -*- test-case-name: tests.api.test_errors_routing -*-
"""Routing and bad input: every mistake is a 4xx JSON error that says what
was wrong, nothing half-written, and the request shapes other clients use
(form bodies, wrapped bodies, method override, ``alt=json``) work."""
from __future__ import annotations

import json

from arvnode.store.kinds import KINDS
from arvnode.store.query import ListQuery
from tests.api.base import ApiTestCase


class ErrorTests(ApiTestCase):
    extra = {"API.MaxRequestSize": 4096}

    def assertError(self, body):
        self.assertIsInstance(body, dict)
        self.assertIsInstance(body["errors"], list)
        self.assertRegex(body["error_token"], r"^\d+\+[0-9a-f]{8}$")

    async def _count(self, kind="collections"):
        _, n = await self.store.list_objects(KINDS[kind], ListQuery(limit=0), readable=None)
        return n

    async def test_malformed_json_is_400_naming_the_problem(self):
        """Broken JSON is a 400 that says where; a JSON array body too; nothing is created."""
        await self.startNode()
        _, tok = await self.make_user(name="a")
        code, body, _ = await self.raw("POST", "/arvados/v1/collections", token=tok,
                                       body=b'{"name": "x",', headers={
                                           "Content-Type": "application/json"})
        self.assertEqual(code, 400)
        body = json.loads(body)
        self.assertError(body)
        self.assertIn("malformed JSON", body["errors"][0])
        self.assertIn("line 1", body["errors"][0])
        code, body, _ = await self.raw("POST", "/arvados/v1/collections", token=tok,
                                       body=b'["name"]', headers={
                                           "Content-Type": "application/json"})
        self.assertEqual(code, 400, body)
        self.assertEqual(await self._count(), 0)

    async def test_oversized_body_is_413(self):
        """A body over API.MaxRequestSize is refused with 413 and nothing saved."""
        await self.startNode()
        _, tok = await self.make_user(name="a")
        big = json.dumps({"name": "x", "description": "y" * 10000}).encode()
        code, body, _ = await self.raw("POST", "/arvados/v1/collections", token=tok, body=big,
                                       headers={"Content-Type": "application/json"})
        self.assertEqual(code, 413, body)
        self.assertIn("MaxRequestSize", json.loads(body)["errors"][0])
        self.assertEqual(await self._count(), 0)

    async def test_unknown_path_and_method(self):
        """Unknown resources and sub-paths are 404 JSON; a known path with the
        wrong method is 405 with Allow."""
        await self.startNode()
        for path in ("/arvados/v1/nosuch", "/arvados/v2/collections", "/",
                     f"/arvados/v1/collections/{self.cluster}-4zz18-000000000000000/frob"):
            code, body, _ = await self.raw("GET", path, token=self.root)
            self.assertEqual(code, 404, path)
            self.assertError(json.loads(body))
        code, body, headers = await self.raw("DELETE", "/arvados/v1/collections", token=self.root)
        self.assertEqual(code, 405)
        self.assertIn("POST", headers.getRawHeaders("allow")[0])
        code, body, _ = await self.raw("DELETE", "/arvados/v1/users/current", token=self.root)
        self.assertEqual(code, 405)

    async def test_wrong_type_uuid_is_422(self):
        """A user uuid under /collections (and junk, and an encoded '/') is a 422
        naming the expected type."""
        await self.startNode()
        user, tok = await self.make_user(name="a")
        code, body = await self.api("GET", f"collections/{user}", token=tok)
        self.assertEqual(code, 422, body)
        self.assertIn("4zz18", body["errors"][0])
        code, body = await self.api("GET", "collections/..%2Fusers", token=tok)
        self.assertEqual(code, 422, body)
        code, body = await self.api("GET", "groups/not-a-uuid", token=tok)
        self.assertEqual(code, 422, body)
        code, body = await self.api("GET", f"collections/{self.cluster}-4zz18-000000000000000",
                                    token=tok)
        self.assertEqual(code, 404, body)

    async def test_bad_list_parameters(self):
        """Unknown operator, unknown attribute, wrong operand type, bad limit,
        unknown select: each a 422 that names it."""
        await self.startNode()
        _, tok = await self.make_user(name="a")
        cases = [
            ({"filters": [["name", "~~", "x"]]}, "~~"),
            ({"filters": [["colour", "=", "x"]]}, "colour"),
            ({"filters": [["replication_desired", "=", "many"]]}, "replication_desired"),
            ({"limit": "lots"}, "limit"),
            ({"select": ["uuid", "nope"]}, "nope"),
            ({"order": ["name sideways"]}, "sideways"),
        ]
        for params, word in cases:
            code, body = await self.api("GET", "collections", token=tok, params=params)
            self.assertEqual(code, 422, (params, body))
            self.assertIn(word, body["errors"][0])
        code, body, _ = await self.raw("GET", "/arvados/v1/collections?filters=%5B%5B", token=tok)
        self.assertIn(code, (400, 422))
        self.assertIn("filters", json.loads(body)["errors"][0])

    async def test_path_like_names_refused(self):
        """Collection and project names that would be paths are 422."""
        await self.startNode()
        _, tok = await self.make_user(name="a")
        for name in ("a/b", "..", "."):
            code, body = await self.api("POST", "collections", token=tok, body={"name": name})
            self.assertEqual(code, 422, (name, body))
            code, body = await self.api("POST", "groups", token=tok, body={"name": name})
            self.assertEqual(code, 422, (name, body))
        self.assertEqual(await self._count(), 0)


class RequestShapeTests(ApiTestCase):
    async def test_form_body_and_query_token_and_override(self):
        """A urlencoded form with the attributes as JSON text, api_token in the
        query string, and POST + X-Http-Method-Override: GET all work."""
        await self.startNode()
        user, tok = await self.make_user(name="a")
        form = "collection=" + json.dumps({"name": "from form"})
        code, body, _ = await self.raw(
            "POST", "/arvados/v1/collections", token=tok, body=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(code, 200, body)
        made = json.loads(body)
        self.assertEqual(made["name"], "from form")
        code, body, _ = await self.raw("GET", f"/arvados/v1/users/current?api_token={tok}&alt=json")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["uuid"], user)
        code, body, _ = await self.raw("POST", "/arvados/v1/collections", token=tok,
                                       headers={"X-Http-Method-Override": "GET"})
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["kind"], "arvados#collectionList")
        code, body, _ = await self.raw("HEAD", f"/arvados/v1/collections/{made['uuid']}", token=tok)
        self.assertEqual((code, body), (200, b""))

    async def test_discovery_and_config_without_token(self):
        """The discovery document is served without a token, with a short public
        Cache-Control, and its rootUrl is where this node really listens;
        /config answers without a token too."""
        n = await self.startNode()
        code, body, headers = await self.raw("GET", "/discovery/v1/apis/arvados/v1/rest")
        self.assertEqual(code, 200)
        self.assertIn("max-age", headers.getRawHeaders("cache-control")[0])
        doc = json.loads(body)
        self.assertEqual(doc["rootUrl"], n.controller_url + "/")
        self.assertEqual(doc["uuidPrefix"], self.cluster)
        code, body = await self.api("GET", "config")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["ClusterID"], self.cluster)
        self.assertEqual(body["Services"]["Keepproxy"]["ExternalURL"], n.keepproxy_url + "/")

    async def test_cors_and_options(self):
        """Responses carry Arvados' CORS headers; OPTIONS preflight is 200."""
        await self.startNode()
        code, _, headers = await self.raw("OPTIONS", "/arvados/v1/collections")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("access-control-allow-origin"), ["*"])


class AvailabilityTests(ApiTestCase):
    async def test_database_down_is_503_not_401(self):
        """With the database gone an API call is 503 (clients retry), never a
        401 that looks like a logout; keep_services/accessible still answers."""
        await self.startNode()
        _, tok = await self.make_user(name="a")
        await self.ok("GET", "users/current", token=tok)
        self.node.node.authenticator.forget()
        await self.store.stop()
        code, body = await self.api("GET", "collections", token=tok)
        self.assertEqual(code, 503, body)
        self.assertIn("database", body["errors"][0])
        code, body = await self.api("GET", "keep_services/accessible")
        self.assertEqual(code, 200, body)

    async def test_accessible_ignores_a_bad_token(self):
        """keep_services/accessible needs no valid token (Arvados skips the check)."""
        await self.startNode()
        code, body = await self.api("GET", "keep_services/accessible", token="v2/bad/bad")
        self.assertEqual(code, 200, body)
        self.assertEqual(len(body["items"]), 1)
