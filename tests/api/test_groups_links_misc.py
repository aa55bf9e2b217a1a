# -*- test-case-name: tests.api.test_groups_links_misc -*-
"""Projects and contents, links, workflows and keep_services over HTTPS."""
from __future__ import annotations

from tests.api.base import EMPTY_FILE_MANIFEST, ApiTestCase


class GroupTests(ApiTestCase):
    async def test_project_contents_shape(self):
        """groups/<uuid>/contents lists sub-projects, collections and workflows
        the project owns, Arvados-shaped, paged across kinds; include=owner_uuid
        returns the project in ``included``; groups/contents?uuid= is the same."""
        await self.startNode()
        user, tok = await self.make_user(name="alice")
        proj = (await self.ok("POST", "groups", token=tok,
                              body={"group": {"name": "P", "group_class": "project"}}))["uuid"]
        sub = (await self.ok("POST", "groups", token=tok,
                             body={"name": "sub", "owner_uuid": proj}))["uuid"]
        coll = (await self.ok("POST", "collections", token=tok, body={
            "name": "c", "owner_uuid": proj, "manifest_text": EMPTY_FILE_MANIFEST}))["uuid"]
        wf = (await self.ok("POST", "workflows", token=tok,
                            body={"name": "w", "owner_uuid": proj, "definition": "{}"}))["uuid"]
        await self.ok("POST", "collections", token=tok, body={"name": "elsewhere"})
        body = await self.ok("GET", f"groups/{proj}/contents", token=tok,
                             params={"include": ["owner_uuid"]})
        self.assertEqual(body["kind"], "arvados#objectList")
        self.assertEqual([i["uuid"] for i in body["items"]], [sub, coll, wf])
        self.assertEqual([i["kind"] for i in body["items"]],
                         ["arvados#group", "arvados#collection", "arvados#workflow"])
        self.assertEqual(body["items_available"], 3)
        self.assertEqual([i["uuid"] for i in body["included"]], [proj])
        self.assertRegex(body["items"][1]["manifest_text"], r"\+A[0-9a-f]{40}@")
        page = await self.ok("GET", "groups/contents", token=tok,
                             params={"uuid": proj, "limit": 1, "offset": 1})
        self.assertEqual([i["uuid"] for i in page["items"]], [coll])
        self.assertEqual(page["items_available"], 3)
        only = await self.ok("GET", f"groups/{proj}/contents", token=tok,
                             params={"filters": [["uuid", "is_a", "arvados#collection"]]})
        self.assertEqual([i["uuid"] for i in only["items"]], [coll])
        home = await self.ok("GET", f"groups/{user}/contents", token=tok)
        self.assertEqual(sorted(i["name"] for i in home["items"]), ["P", "elsewhere"])

    async def test_project_trash_and_role_delete(self):
        """Deleting a project trashes it (untrash restores); deleting a role removes it."""
        await self.startNode()
        _, tok = await self.make_user(name="bob")
        proj = (await self.ok("POST", "groups", token=tok, body={"name": "P"}))
        self.assertEqual(proj["group_class"], "project")
        body = await self.ok("DELETE", f"groups/{proj['uuid']}", token=tok)
        self.assertTrue(body["is_trashed"])
        code, _ = await self.api("GET", f"groups/{proj['uuid']}", token=tok)
        self.assertEqual(code, 404)
        await self.ok("POST", f"groups/{proj['uuid']}/untrash", token=tok)
        await self.ok("GET", f"groups/{proj['uuid']}", token=tok)
        role = await self.ok("POST", "groups", token=tok,
                             body={"name": "R", "group_class": "role"})
        await self.ok("DELETE", f"groups/{role['uuid']}", token=tok)
        code, _ = await self.api("GET", f"groups/{role['uuid']}", token=tok,
                                 params={"include_trash": True})
        self.assertEqual(code, 404)
        code, err = await self.api("POST", "groups", token=tok,
                                   body={"name": "bad", "group_class": "club"})
        self.assertEqual(code, 422, err)

    async def test_all_users_group_exists(self):
        """The "All users" group is there and readable by active users."""
        await self.startNode()
        _, tok = await self.make_user(name="carl")
        body = await self.ok("GET", f"groups/{self.cluster}-j7d0g-fffffffffffffff", token=tok)
        self.assertEqual(body["group_class"], "role")


class LinkWorkflowKeepServiceTests(ApiTestCase):
    async def test_links_crud(self):
        """Non-permission links: create, get, list with filters (as arv-copy
        does), update, delete."""
        await self.startNode()
        _, tok = await self.make_user(name="alice")
        coll = (await self.ok("POST", "collections", token=tok, body={"name": "c"}))["uuid"]
        link = await self.ok("POST", "links", token=tok, body={
            "link_class": "tag", "name": "foo", "head_uuid": coll, "properties": {"k": 1}})
        self.assertEqual(link["kind"], "arvados#link")
        listed = await self.ok("GET", "links", token=tok, params={"filters": [
            ["head_uuid", "=", coll], ["link_class", "=", "tag"]]})
        self.assertEqual([i["uuid"] for i in listed["items"]], [link["uuid"]])
        listed = await self.ok("GET", "links", token=tok, params={"filters": [
            ["head_uuid", "=", coll], ["link_class", "=", "docker_image_repo+tag"]]})
        self.assertEqual(listed["items"], [])
        body = await self.ok("PUT", f"links/{link['uuid']}", token=tok, body={"name": "bar"})
        self.assertEqual(body["name"], "bar")
        await self.ok("DELETE", f"links/{link['uuid']}", token=tok)
        code, _ = await self.api("GET", f"links/{link['uuid']}", token=tok)
        self.assertEqual(code, 404)

    async def test_workflows_crud(self):
        """Workflows: create, get, list, update, delete."""
        await self.startNode()
        _, tok = await self.make_user(name="wendy")
        wf = await self.ok("POST", "workflows", token=tok, body={
            "workflow": {"name": "wf", "description": "d", "definition": "cwlVersion: v1.2"}})
        self.assertEqual(wf["kind"], "arvados#workflow")
        self.assertRegex(wf["uuid"], rf"^{self.cluster}-7fd4e-")
        got = await self.ok("GET", f"workflows/{wf['uuid']}", token=tok)
        self.assertEqual(got["definition"], "cwlVersion: v1.2")
        body = await self.ok("PATCH", f"workflows/{wf['uuid']}", token=tok, body={"name": "wf2"})
        self.assertEqual(body["name"], "wf2")
        listed = await self.ok("GET", "workflows", token=tok, params={"filters": [["name", "=", "wf2"]]})
        self.assertEqual(len(listed["items"]), 1)
        await self.ok("DELETE", f"workflows/{wf['uuid']}", token=tok)
        code, _ = await self.api("GET", f"workflows/{wf['uuid']}", token=tok)
        self.assertEqual(code, 404)

    async def test_keep_services_accessible(self):
        """accessible answers this node's keepproxy as a proxy with a 27-character
        uuid, an integer port and the URL's scheme, even without a token."""
        n = await self.startNode()
        for token in (None, self.root):
            body = await self.ok("GET", "keep_services/accessible", token=token)
            (item,) = body["items"]
            self.assertEqual(item["service_type"], "proxy")
            self.assertRegex(item["uuid"], rf"^{self.cluster}-bi6l4-[a-z0-9]{{15}}$")
            self.assertEqual(item["service_port"], n.keepproxy_port)
            self.assertIsInstance(item["service_port"], int)
            self.assertEqual(item["service_host"], "127.0.0.1")
            self.assertIs(item["service_ssl_flag"], False)
            self.assertIs(item["read_only"], False)
        got = await self.ok("GET", f"keep_services/{item['uuid']}", token=self.root)
        self.assertEqual(got["service_port"], n.keepproxy_port)

    async def test_keep_services_admin_crud(self):
        """Admins register, change, list and delete keep services; users may
        read them but not write (403)."""
        await self.startNode()
        _, tok = await self.make_user(name="user")
        body = {"service_host": "keep.example", "service_port": 25107,
                "service_ssl_flag": True, "service_type": "proxy"}
        code, err = await self.api("POST", "keep_services", token=tok, body=body)
        self.assertEqual(code, 403, err)
        made = await self.ok("POST", "keep_services", token=self.root,
                             body={"keep_service": body})
        self.assertEqual(made["service_port"], 25107)
        listed = await self.ok("GET", "keep_services", token=tok)
        self.assertEqual([i["uuid"] for i in listed["items"]], [made["uuid"]])
        code, err = await self.api("PUT", f"keep_services/{made['uuid']}", token=tok,
                                   body={"read_only": True})
        self.assertEqual(code, 403, err)
        body = await self.ok("PUT", f"keep_services/{made['uuid']}", token=self.root,
                             body={"read_only": True})
        self.assertTrue(body["read_only"])
        await self.ok("DELETE", f"keep_services/{made['uuid']}", token=self.root)
        code, err = await self.api("POST", "keep_services", token=self.root,
                                   body={"service_port": "many"})
        self.assertEqual(code, 422, err)


class GroupPostgreSQLTests(GroupTests):
    postgresql = True
