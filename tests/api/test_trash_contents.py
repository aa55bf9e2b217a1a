# -*- test-case-name: tests.api.test_trash_contents -*-
"""Trash inheritance, delete-after-trash and groups/contents options, over HTTPS.

A real node in this process (tests/helpers.start_node), requests as a
client sends them. Each test is also run on PostgreSQL.
"""
from __future__ import annotations

import time
from typing import Any

from arvnode.store.kinds import to_api_time
from arvnode.store.sweeper import SERVICE_NAME
from tests.api.base import EMPTY_FILE_MANIFEST, ApiTestCase


class Fixture(ApiTestCase):
    async def project(self, tok: str, name: str, owner: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "group_class": "project"}
        if owner:
            body["owner_uuid"] = owner
        return str((await self.ok("POST", "groups", token=tok, body=body))["uuid"])

    async def coll(self, tok: str, name: str, owner: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "manifest_text": EMPTY_FILE_MANIFEST}
        if owner:
            body["owner_uuid"] = owner
        return str((await self.ok("POST", "collections", token=tok, body=body))["uuid"])

    async def share(self, tok: str, who: str, what: str, level: str = "can_read") -> None:
        await self.ok("POST", "links", token=tok, body={
            "link_class": "permission", "name": level, "tail_uuid": who, "head_uuid": what})

    async def code(self, method: str, path: str, **kw: Any) -> int:
        code, _ = await self.api(method, path, **kw)
        return code

    async def uuids(self, path: str, tok: str, **params: Any) -> list[str]:
        body = await self.ok("GET", path, token=tok, params=params or None)
        return [i["uuid"] for i in body["items"]]


class TrashInheritanceTests(Fixture):
    async def test_trashed_project_takes_its_contents_along(self) -> None:
        """Trashing a project hides everything below it from get, list, contents and
        a user it was shared with (404); include_trash reaches them; nothing can be
        added to it; untrashing the project brings it all back."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        bob, b_tok = await self.make_user(name="bob")
        p = await self.project(a_tok, "P")
        sub = await self.project(a_tok, "Sub", p)
        in_p = await self.coll(a_tok, "inP", p)
        deep = await self.coll(a_tok, "deep", sub)
        home = await self.coll(a_tok, "home")
        await self.share(a_tok, bob, p)
        pdh = (await self.ok("GET", f"collections/{deep}", token=b_tok))["portable_data_hash"]

        trashed = await self.ok("POST", f"groups/{p}/trash", token=a_tok)
        self.assertTrue(trashed["is_trashed"])
        for tok in (a_tok, b_tok):
            for path in (f"collections/{in_p}", f"collections/{deep}", f"groups/{sub}",
                         f"groups/{p}/contents", f"groups/{sub}/contents"):
                self.assertEqual(await self.code("GET", path, token=tok), 404, path)
        self.assertEqual(await self.uuids("collections", a_tok), [home])
        self.assertEqual(await self.uuids("collections", b_tok), [])
        self.assertEqual(await self.code("GET", f"collections/{self.q(pdh)}", token=b_tok), 404)
        # Nothing new goes into a trashed project.
        code, err = await self.api("POST", "collections", token=a_tok,
                                   body={"name": "late", "owner_uuid": p})
        self.assertEqual(code, 403, err)
        # include_trash reaches them, marked trashed, for the owner and the grantee.
        for tok in (a_tok, b_tok):
            got = await self.ok("GET", f"collections/{deep}", token=tok,
                                params={"include_trash": True})
            self.assertTrue(got["is_trashed"])
            self.assertIsNone(got["trash_at"])
            self.assertEqual(
                sorted(await self.uuids(f"groups/{p}/contents", tok, include_trash=True)),
                sorted([sub, in_p]))
        self.assertEqual(
            sorted(await self.uuids("collections", a_tok, include_trash=True,
                                    filters=[["is_trashed", "=", True]])),
            sorted([in_p, deep]))
        # Untrashing something trashed only through its project says so.
        code, err = await self.api("POST", f"collections/{deep}/untrash", token=a_tok)
        self.assertEqual(code, 422, err)
        self.assertIn("project above it", err["errors"][0])

        await self.ok("POST", f"groups/{p}/untrash", token=a_tok)
        self.assertEqual(sorted(await self.uuids("collections", a_tok)),
                         sorted([home, in_p, deep]))
        self.assertFalse((await self.ok("GET", f"collections/{deep}", token=b_tok))["is_trashed"])
        self.assertEqual(sorted(await self.uuids(f"groups/{p}/contents", b_tok)),
                         sorted([sub, in_p]))

    async def test_grantee_can_untrash_shared_project(self) -> None:
        """A user with write access to a trashed project (through a link) can still
        untrash it, and then reaches its contents again."""
        await self.startNode()
        _, a_tok = await self.make_user(name="alice")
        bob, b_tok = await self.make_user(name="bob")
        p = await self.project(a_tok, "shared")
        inside = await self.coll(a_tok, "inside", p)
        await self.share(a_tok, bob, p, "can_write")
        await self.ok("DELETE", f"groups/{p}", token=a_tok)
        self.assertEqual(await self.code("GET", f"collections/{inside}", token=b_tok), 404)
        await self.ok("POST", f"groups/{p}/untrash", token=b_tok)
        await self.ok("GET", f"collections/{inside}", token=b_tok)


class DeleteAfterTrashTests(Fixture):
    async def test_past_delete_at_is_gone_and_swept(self) -> None:
        """Once delete_at has passed a record cannot be read or untrashed, even with
        include_trash and before any sweep; the node's trash-sweeper then deletes the
        rows, a deleted project's contents with them."""
        await self.startNode()
        _, tok = await self.make_user(name="carol")
        doomed = await self.coll(tok, "doomed")
        p = await self.project(tok, "doomed project")
        inside = await self.coll(tok, "inside", p)
        kept = await self.coll(tok, "kept")
        await self.ok("POST", f"collections/{kept}/trash", token=tok)  # delete_at in 14 days
        past = {"trash_at": to_api_time(time.time() - 20),
                "delete_at": to_api_time(time.time() - 10)}
        await self.ok("PUT", f"collections/{doomed}", token=tok, body=past)
        await self.ok("PUT", f"groups/{p}", token=tok, body=past)
        for path in (f"collections/{doomed}", f"collections/{inside}", f"groups/{p}"):
            self.assertEqual(await self.code("GET", path, token=tok,
                                             params={"include_trash": True}), 404, path)
        self.assertEqual(await self.code("POST", f"collections/{doomed}/untrash", token=tok), 404)
        self.assertEqual(await self.uuids("collections", tok, include_trash=True), [kept])

        sweeper = self.node.node.getServiceNamed(SERVICE_NAME)
        self.assertEqual(await sweeper.sweep(),
                         {"collections": 2, "groups": 1, "workflows": 0, "links": 0})
        self.assertEqual(await sweeper.sweep(),
                         {"collections": 0, "groups": 0, "workflows": 0, "links": 0})
        self.assertEqual(await self.uuids("collections", tok, include_trash=True), [kept])
        await self.ok("POST", f"collections/{kept}/untrash", token=tok)


class ContentsTests(Fixture):
    async def setup_tree(self) -> dict[str, str]:
        """Alice: P > (Sub > deep), P > inP, a role, home; Bob: BP > bx shared with
        Alice, and bc (in Bob's home) shared with Alice."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        bob, b_tok = await self.make_user(name="bob")
        u = {"alice": alice, "a_tok": a_tok, "bob": bob, "b_tok": b_tok}
        u["P"] = await self.project(a_tok, "P")
        u["Sub"] = await self.project(a_tok, "Sub", u["P"])
        u["deep"] = await self.coll(a_tok, "deep", u["Sub"])
        u["inP"] = await self.coll(a_tok, "inP", u["P"])
        u["home"] = await self.coll(a_tok, "home")
        u["role"] = (await self.ok("POST", "groups", token=a_tok,
                                   body={"name": "team", "group_class": "role"}))["uuid"]
        u["BP"] = await self.project(b_tok, "BP")
        u["bx"] = await self.coll(b_tok, "bx", u["BP"])
        u["bc"] = await self.coll(b_tok, "bc")
        await self.coll(b_tok, "bob only")
        await self.share(b_tok, alice, u["BP"])
        await self.share(b_tok, alice, u["bc"])
        return u

    async def test_recursive(self) -> None:
        """recursive=true adds what sub-projects hold, at any depth, groups first; paging
        runs across kinds; for a user it is everything they own."""
        u = await self.setup_tree()
        tok = u["a_tok"]
        self.assertEqual(await self.uuids(f"groups/{u['P']}/contents", tok),
                         [u["Sub"], u["inP"]])
        body = await self.ok("GET", f"groups/{u['P']}/contents", token=tok,
                             params={"recursive": True, "order": "name"})
        self.assertEqual([i["uuid"] for i in body["items"]], [u["Sub"], u["deep"], u["inP"]])
        self.assertEqual(body["items_available"], 3)
        page = await self.ok("GET", "groups/contents", token=tok, params={
            "uuid": u["P"], "recursive": "true", "order": "name", "limit": 1, "offset": 1})
        self.assertEqual([i["uuid"] for i in page["items"]], [u["deep"]])
        mine = await self.uuids(f"groups/{u['alice']}/contents", tok, recursive=True)
        self.assertEqual(sorted(mine), sorted([u["P"], u["Sub"], u["deep"], u["inP"], u["home"]]))
        # Bob's shared project, recursively, as Alice sees it.
        self.assertEqual(await self.uuids(f"groups/{u['BP']}/contents", tok, recursive=True),
                         [u["bx"]])

    async def test_no_uuid_lists_everything_readable_without_roles(self) -> None:
        """Without a uuid, contents lists every readable project, collection and workflow
        (Arvados); roles are never contents."""
        u = await self.setup_tree()
        everything = await self.uuids("groups/contents", u["a_tok"], limit=100)
        self.assertEqual(sorted(everything), sorted(
            [u[k] for k in ("P", "Sub", "deep", "inP", "home", "BP", "bx", "bc")]))
        self.assertNotIn(u["role"], await self.uuids(f"groups/{u['alice']}/contents",
                                                     u["a_tok"]))

    async def test_exclude_home_project(self) -> None:
        """exclude_home_project=true keeps what is shared with the caller: Bob's shared
        project and collection, not what sits inside that project nor Alice's own."""
        u = await self.setup_tree()
        shared = await self.uuids("groups/contents", u["a_tok"], exclude_home_project=True)
        self.assertEqual(sorted(shared), sorted([u["BP"], u["bc"]]))
        code, err = await self.api("GET", f"groups/{u['P']}/contents", token=u["a_tok"],
                                   params={"exclude_home_project": True})
        self.assertEqual(code, 422, err)
        self.assertIn("exclude_home_project", err["errors"][0])
        # Admins: the same rule against every project.
        admin_shared = await self.uuids("groups/contents", self.root, exclude_home_project=True,
                                        limit=100)
        self.assertIn(u["bc"], admin_shared)
        self.assertNotIn(u["inP"], admin_shared)

    async def test_include_owner_uuid(self) -> None:
        """include=owner_uuid (JSON array or plain) lists the readable owners of the page's
        items under "included"; without include there is no "included"; others are 422."""
        u = await self.setup_tree()
        tok = u["a_tok"]
        body = await self.ok("GET", f"groups/{u['P']}/contents", token=tok,
                             params={"recursive": True, "include": ["owner_uuid"]})
        self.assertEqual(sorted(i["uuid"] for i in body["included"]), sorted([u["P"], u["Sub"]]))
        self.assertEqual({i["kind"] for i in body["included"]}, {"arvados#group"})
        plain = await self.ok("GET", f"groups/{u['alice']}/contents", token=tok,
                              params={"include": "owner_uuid"})
        self.assertEqual([(i["uuid"], i["kind"]) for i in plain["included"]],
                         [(u["alice"], "arvados#user")])
        # Owners the caller cannot read are left out (Bob, owner of what he shared).
        shared = await self.ok("GET", "groups/contents", token=tok,
                               params={"exclude_home_project": True, "include": ["owner_uuid"]})
        self.assertEqual(shared["included"], [])
        bare = await self.ok("GET", f"groups/{u['P']}/contents", token=tok)
        self.assertNotIn("included", bare)
        code, err = await self.api("GET", f"groups/{u['P']}/contents", token=tok,
                                   params={"include": ["manifest_text"]})
        self.assertEqual(code, 422, err)


class TrashInheritancePostgreSQLTests(TrashInheritanceTests):
    postgresql = True


class DeleteAfterTrashPostgreSQLTests(DeleteAfterTrashTests):
    postgresql = True


class ContentsPostgreSQLTests(ContentsTests):
    postgresql = True
