# -*- test-case-name: tests.api.test_permissions -*-
"""Who sees what, through the HTTP API of a real node.

A user sees what they own and what is shared with them (directly or
through a group), nothing else, and what they cannot see is 404, not 403;
admins see everything; the anonymous token reads what is shared with the
anonymous group; inactive users cannot change anything.
"""
from __future__ import annotations

from arvnode import ids
from tests.api.base import EMPTY_FILE_MANIFEST, ApiTestCase


class VisibilityMixin:
    async def _setup(self):
        await self.startNode()
        self.alice, self.a_tok = await self.make_user(name="alice")
        self.bob, self.b_tok = await self.make_user(name="bob")
        self.coll = (await self.ok("POST", "collections", token=self.a_tok, body={
            "name": "private", "manifest_text": EMPTY_FILE_MANIFEST}))["uuid"]

    async def test_unshared_is_404_and_unlisted(self):
        """Bob cannot get, list, update or delete Alice's collection: 404 each time."""
        await self._setup()
        for method, body in (("GET", None), ("PUT", {"name": "x"}), ("DELETE", None)):
            code, err = await self.api(method, f"collections/{self.coll}", token=self.b_tok,
                                       body=body)
            self.assertEqual(code, 404, (method, err))
        listed = await self.ok("GET", "collections", token=self.b_tok)
        self.assertEqual(listed["items"], [])
        self.assertEqual(listed["items_available"], 0)
        code, _ = await self.api("GET", "collections/" + self.q(
            "2a6b9a7bd0d1a5b0a49f4e9a92e10ee6+52"), token=self.b_tok)
        self.assertEqual(code, 404)

    async def test_direct_share_can_read_then_can_write(self):
        """A can_read link lets Bob read (not write, 403); upgrading it to
        can_write lets him write; deleting it hides the collection again."""
        await self._setup()
        link = await self.ok("POST", "links", token=self.a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": self.bob, "head_uuid": self.coll})
        await self.ok("GET", f"collections/{self.coll}", token=self.b_tok)
        listed = await self.ok("GET", "collections", token=self.b_tok)
        self.assertEqual([i["uuid"] for i in listed["items"]], [self.coll])
        code, err = await self.api("PUT", f"collections/{self.coll}", token=self.b_tok,
                                   body={"name": "bob was here"})
        self.assertEqual(code, 403, err)
        # The grantee sees the link but cannot upgrade it.
        await self.ok("GET", f"links/{link['uuid']}", token=self.b_tok)
        code, err = await self.api("PUT", f"links/{link['uuid']}", token=self.b_tok,
                                   body={"name": "can_manage"})
        self.assertEqual(code, 403, err)
        await self.ok("PUT", f"links/{link['uuid']}", token=self.a_tok, body={"name": "can_write"})
        body = await self.ok("PUT", f"collections/{self.coll}", token=self.b_tok,
                             body={"name": "bob was here"})
        self.assertEqual(body["name"], "bob was here")
        await self.ok("DELETE", f"links/{link['uuid']}", token=self.a_tok)
        code, _ = await self.api("GET", f"collections/{self.coll}", token=self.b_tok)
        self.assertEqual(code, 404)

    async def test_share_through_group_and_project(self):
        """Alice shares a project with a role group Bob belongs to: Bob sees the
        project and what it contains, not Alice's other things."""
        await self._setup()
        project = await self.ok("POST", "groups", token=self.a_tok,
                                body={"name": "proj", "group_class": "project"})
        inside = await self.ok("POST", "collections", token=self.a_tok, body={
            "name": "in project", "owner_uuid": project["uuid"],
            "manifest_text": EMPTY_FILE_MANIFEST})
        role = await self.ok("POST", "groups", token=self.a_tok,
                             body={"name": "team", "group_class": "role"})
        await self.ok("POST", "links", token=self.a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": self.bob, "head_uuid": role["uuid"]})
        await self.ok("POST", "links", token=self.a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": role["uuid"], "head_uuid": project["uuid"]})
        await self.ok("GET", f"collections/{inside['uuid']}", token=self.b_tok)
        await self.ok("GET", f"groups/{project['uuid']}", token=self.b_tok)
        code, _ = await self.api("GET", f"collections/{self.coll}", token=self.b_tok)
        self.assertEqual(code, 404)
        contents = await self.ok("GET", f"groups/{project['uuid']}/contents", token=self.b_tok)
        self.assertEqual([i["uuid"] for i in contents["items"]], [inside["uuid"]])
        # Read-only through the group: cannot add to the project.
        code, err = await self.api("POST", "collections", token=self.b_tok, body={
            "name": "intruder", "owner_uuid": project["uuid"]})
        self.assertEqual(code, 403, err)

    async def test_only_managers_share(self):
        """Bob cannot grant himself access to Alice's collection."""
        await self._setup()
        code, err = await self.api("POST", "links", token=self.b_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": self.bob, "head_uuid": self.coll})
        self.assertEqual(code, 422, err)
        code, err = await self.api("POST", "links", token=self.a_tok, body={
            "link_class": "permission", "name": "can_fly",
            "tail_uuid": self.bob, "head_uuid": self.coll})
        self.assertEqual(code, 422, err)
        self.assertIn("can_read", err["errors"][0])

    async def test_admin_sees_everything(self):
        """The root token lists and gets every user's collections."""
        await self._setup()
        await self.ok("GET", f"collections/{self.coll}", token=self.root)
        listed = await self.ok("GET", "collections", token=self.root)
        self.assertIn(self.coll, [i["uuid"] for i in listed["items"]])

    async def test_anonymous_reads_what_is_shared_with_anonymous_group(self):
        """The configured anonymous token reads a collection shared with the
        anonymous group, nothing else, and cannot write."""
        await self._setup()
        anon = self.node.section["Users"]["AnonymousUserToken"]
        code, _ = await self.api("GET", f"collections/{self.coll}", token=anon)
        self.assertEqual(code, 404)
        await self.ok("POST", "links", token=self.a_tok, body={
            "link_class": "permission", "name": "can_read",
            "tail_uuid": ids.anonymous_group_uuid(self.cluster), "head_uuid": self.coll})
        await self.ok("GET", f"collections/{self.coll}", token=anon)
        code, err = await self.api("POST", "collections", token=anon, body={"name": "spam"})
        self.assertEqual(code, 403, err)
        # All active users read what the public reads.
        await self.ok("GET", f"collections/{self.coll}", token=self.b_tok)

    async def test_inactive_user(self):
        """An inactive user can call users/current but changes nothing (403);
        no token is 401, a bad token 401."""
        await self._setup()
        _, tok = await self.make_user(name="sleepy", active=False)
        me = await self.ok("GET", "users/current", token=tok)
        self.assertFalse(me["is_active"])
        code, err = await self.api("POST", "collections", token=tok, body={"name": "x"})
        self.assertEqual(code, 403, err)
        self.assertIn("not active", err["errors"][0])
        code, err = await self.api("GET", "collections")
        self.assertEqual(code, 401, err)
        code, err = await self.api("GET", "collections", token="v2/nope/nope")
        self.assertEqual(code, 401, err)


class VisibilitySQLiteTests(VisibilityMixin, ApiTestCase):
    pass


class VisibilityPostgreSQLTests(VisibilityMixin, ApiTestCase):
    postgresql = True
