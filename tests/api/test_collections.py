# -*- test-case-name: tests.api.test_collections -*-
"""Collections over HTTPS against a real in-process node and its keepproxy.

What a client notices: the fields arv-put reads on create, manifests that
come back signed for *its* token (and work at Keep), PDH lookups with a
percent-encoded ``+``, signatures enforced on save, trash and untrash.
"""
from __future__ import annotations

import hashlib
import re

from arvnode.keep.locator import sign_locator
from twisted.internet import reactor

from arvnode.keep.manifest import portable_data_hash, strip_signatures
from arvnode.store.kinds import KINDS, from_api_time, to_api_time
from tests.api.base import EMPTY_FILE_MANIFEST, ApiTestCase

_SIG = re.compile(r"\+A[0-9a-f]{40}@[0-9a-f]{8}")


class CollectionCreateTests(ApiTestCase):
    async def test_create_returns_what_arv_put_reads(self):
        """POST with a flat body (as the SDK sends it) answers uuid, name, PDH,
        a signed manifest and a trash_at key; the PDH is the spec's md5+size of
        the stripped manifest and the store keeps the manifest unsigned."""
        await self.startNode()
        user, token = await self.make_user(name="alice")
        manifest = await self.signed_manifest(token)
        body = await self.ok("POST", "collections", token=token, params={"ensure_unique_name": "true",
                                                                          "alt": "json"},
                             body={"manifest_text": manifest, "name": "Saved at noon",
                                   "replication_desired": None, "owner_uuid": user})
        for key in ("uuid", "name", "portable_data_hash", "manifest_text", "trash_at"):
            self.assertIn(key, body)
        self.assertEqual(body["kind"], "arvados#collection")
        self.assertRegex(body["uuid"], rf"^{self.cluster}-4zz18-[a-z0-9]{{15}}$")
        self.assertIsNone(body["trash_at"])
        self.assertEqual(body["owner_uuid"], user)
        stripped = strip_signatures(manifest).encode()
        self.assertEqual(body["portable_data_hash"],
                         f"{hashlib.md5(stripped).hexdigest()}+{len(stripped)}")
        self.assertRegex(body["manifest_text"], _SIG)
        self.assertEqual(body["file_count"], 1)
        self.assertEqual(body["file_size_total"], 12)
        stored = await self.store.get_object(KINDS["collections"], body["uuid"])
        self.assertNotIn("+A", stored["manifest_text"])

    async def test_wrapped_body_is_accepted(self):
        """{"collection": {...}} works like the flat body (Arvados controller)."""
        await self.startNode()
        _, token = await self.make_user(name="bob")
        body = await self.ok("POST", "collections", token=token,
                             body={"collection": {"manifest_text": EMPTY_FILE_MANIFEST,
                                                  "name": "wrapped"}})
        self.assertEqual(body["name"], "wrapped")
        self.assertEqual(body["portable_data_hash"], portable_data_hash(EMPTY_FILE_MANIFEST))

    async def test_empty_block_needs_no_signature(self):
        """Only-empty-files uploads send the bare empty block; that is accepted."""
        await self.startNode()
        _, token = await self.make_user(name="carol")
        await self.ok("POST", "collections", token=token,
                      body={"manifest_text": EMPTY_FILE_MANIFEST, "name": "empties"})

    async def test_unsigned_block_is_refused_with_403(self):
        """A non-empty block without +A is refused (Arvados: 403), naming the line."""
        await self.startNode()
        _, token = await self.make_user(name="dave")
        manifest = (". " + hashlib.md5(b"x").hexdigest() + "+1 0:1:x\n")
        code, body = await self.api("POST", "collections", token=token,
                                    body={"manifest_text": manifest})
        self.assertEqual(code, 403, body)
        self.assertIn("line 1", body["errors"][0])
        self.assertIn("error_token", body)

    async def test_other_users_signature_is_refused(self):
        """A locator signed for someone else's token cannot be saved by me."""
        await self.startNode()
        _, alice = await self.make_user(name="alice")
        _, mallory = await self.make_user(name="mallory")
        manifest = await self.signed_manifest(alice)
        code, body = await self.api("POST", "collections", token=mallory,
                                    body={"manifest_text": manifest})
        self.assertEqual(code, 403, body)
        self.assertIn("does not match", body["errors"][0])

    async def test_expired_signature_is_refused(self):
        """A correctly keyed but expired signature is refused, and says so."""
        n = await self.startNode()
        _, token = await self.make_user(name="erin")
        h = hashlib.md5(b"old").hexdigest()
        key = n.section["Collections"]["BlobSigningKey"]
        loc = sign_locator(f"{h}+3", token, key, 336 * 3600, now=1_000_000.0)
        code, body = await self.api("POST", "collections", token=token,
                                    body={"manifest_text": f". {loc} 0:3:old\n"})
        self.assertEqual(code, 403, body)
        self.assertIn("expired", body["errors"][0])

    async def test_admin_skips_signature_check(self):
        """Admins may save unsigned locators (Arvados' check_signatures)."""
        await self.startNode()
        manifest = ". " + hashlib.md5(b"x").hexdigest() + "+1 0:1:x\n"
        await self.ok("POST", "collections", token=self.root, body={"manifest_text": manifest})

    async def test_malformed_manifest_is_422_naming_the_line(self):
        """A bad second line is a 422 that says 'line 2' and why."""
        await self.startNode()
        _, token = await self.make_user(name="fay")
        manifest = EMPTY_FILE_MANIFEST + ". d41d8cd98f00b204e9800998ecf8427e+0 0:0\n"
        code, body = await self.api("POST", "collections", token=token,
                                    body={"manifest_text": manifest})
        self.assertEqual(code, 422, body)
        self.assertIn("line 2", body["errors"][0])
        code, body = await self.api("POST", "collections", token=token,
                                    body={"manifest_text": ". nothex+1 0:1:x"})
        self.assertEqual(code, 422, body)

    async def test_wrong_pdh_is_refused(self):
        """A portable_data_hash that does not match the manifest is a 422."""
        await self.startNode()
        _, token = await self.make_user(name="gus")
        code, body = await self.api("POST", "collections", token=token, body={
            "manifest_text": EMPTY_FILE_MANIFEST,
            "portable_data_hash": "d41d8cd98f00b204e9800998ecf8427e+0"})
        self.assertEqual(code, 422, body)
        self.assertIn("does not match", body["errors"][0])

    async def test_name_clash(self):
        """Same name in the same owner: 422 without ensure_unique_name, renamed with it."""
        await self.startNode()
        _, token = await self.make_user(name="hal")
        await self.ok("POST", "collections", token=token, body={"name": "same"})
        code, body = await self.api("POST", "collections", token=token, body={"name": "same"})
        self.assertEqual(code, 422, body)
        self.assertIn("already", body["errors"][0])
        body = await self.ok("POST", "collections", token=token, body={"name": "same"},
                             params={"ensure_unique_name": "true"})
        self.assertEqual(body["name"], f"same ({body['uuid'][-15:]})")

    async def test_attribute_types(self):
        """replication_desired, storage_classes_desired and properties round-trip;
        a wrong type is a 422 naming the attribute; an unknown attribute too."""
        await self.startNode()
        _, token = await self.make_user(name="ivy")
        body = await self.ok("POST", "collections", token=token, body={
            "replication_desired": 2, "storage_classes_desired": ["default", "archive"],
            "properties": {"a": "b", "n": 1}})
        self.assertEqual(body["replication_desired"], 2)
        self.assertEqual(body["storage_classes_desired"], ["default", "archive"])
        self.assertEqual(body["properties"], {"a": "b", "n": 1})
        code, err = await self.api("POST", "collections", token=token,
                                   body={"replication_desired": "two"})
        self.assertEqual(code, 422, err)
        self.assertIn("replication_desired", err["errors"][0])
        code, err = await self.api("POST", "collections", token=token, body={"colour": "red"})
        self.assertEqual(code, 422, err)
        self.assertIn("colour", err["errors"][0])


class CollectionReadTests(ApiTestCase):
    async def _saved(self, token):
        manifest = await self.signed_manifest(token)
        return await self.ok("POST", "collections", token=token,
                             body={"manifest_text": manifest, "name": "c"})

    async def test_get_by_uuid_and_signed_manifest_works_at_keep(self):
        """GET by uuid answers a manifest whose locator the keepproxy accepts."""
        await self.startNode()
        _, token = await self.make_user(name="jo")
        made = await self._saved(token)
        body = await self.ok("GET", f"collections/{made['uuid']}", token=token)
        loc = body["manifest_text"].split(" ")[1]
        code, data = await self.keep_get(loc, token)
        self.assertEqual((code, data), (200, b"hello world\n"))

    async def test_get_by_percent_encoded_pdh(self):
        """GET collections/<md5>%2B<size> answers Arvados' synthetic record."""
        await self.startNode()
        _, token = await self.make_user(name="kim")
        made = await self._saved(token)
        pdh = made["portable_data_hash"]
        body = await self.ok("GET", "collections/" + self.q(pdh), token=token)
        self.assertEqual(body["uuid"], pdh)
        self.assertEqual(body["portable_data_hash"], pdh)
        self.assertRegex(body["manifest_text"], _SIG)
        self.assertIn("trash_at", body)
        code, _ = await self.api("GET", "collections/" + self.q("0" * 32 + "+5"), token=token)
        self.assertEqual(code, 404)

    async def test_resigned_per_token(self):
        """Two tokens get different signatures for the same block, each valid
        only with its own token at Keep."""
        await self.startNode()
        user, token1 = await self.make_user(name="lee")
        token2 = (await self.store.create_token(user)).v2
        made = await self._saved(token1)
        m1 = (await self.ok("GET", f"collections/{made['uuid']}", token=token1))["manifest_text"]
        m2 = (await self.ok("GET", f"collections/{made['uuid']}", token=token2))["manifest_text"]
        self.assertNotEqual(m1, m2)
        self.assertEqual(strip_signatures(m1), strip_signatures(m2))
        loc2 = m2.split(" ")[1]
        self.assertEqual((await self.keep_get(loc2, token2))[0], 200)
        self.assertEqual((await self.keep_get(loc2, token1))[0], 403)

    async def test_update_with_signatures_from_a_get(self):
        """arv-put --update-collection: PUT back a manifest signed by an earlier GET
        plus a fresh block; PATCH works too."""
        await self.startNode()
        _, token = await self.make_user(name="max")
        made = await self._saved(token)
        got = await self.ok("GET", f"collections/{made['uuid']}", token=token)
        extra = await self.keep_put(b"more", token)
        merged = got["manifest_text"].rstrip("\n") + "\n" + f"./sub {extra} 0:4:more.txt\n"
        body = await self.ok("PUT", f"collections/{made['uuid']}", token=token, body={
            "manifest_text": merged, "storage_classes_desired": got["storage_classes_desired"]})
        self.assertEqual(body["portable_data_hash"], portable_data_hash(merged))
        self.assertEqual(body["file_count"], 2)
        body = await self.ok("PATCH", f"collections/{made['uuid']}", token=token,
                             body={"name": "renamed"})
        self.assertEqual(body["name"], "renamed")
        self.assertRegex(body["manifest_text"], _SIG)

    async def test_list_filters_order_limit_select(self):
        """The SDK's list parameters over HTTP: filters (JSON), order as a plain
        string and as an array, limit/offset, select, count=none."""
        await self.startNode()
        _, token = await self.make_user(name="ned")
        for name in ("b-one", "a-two", "c-three"):
            await self.ok("POST", "collections", token=token,
                          body={"name": name, "manifest_text": EMPTY_FILE_MANIFEST})
        body = await self.ok("GET", "collections", token=token,
                             params={"filters": [["name", "like", "%-t%"]], "order": "name asc"})
        self.assertEqual([i["name"] for i in body["items"]], ["a-two", "c-three"])
        self.assertEqual(body["items_available"], 2)
        body = await self.ok("GET", "collections", token=token,
                             params={"order": ["name desc"], "limit": 1, "offset": 1})
        self.assertEqual([i["name"] for i in body["items"]], ["b-one"])
        self.assertEqual(body["items_available"], 3)
        body = await self.ok("GET", "collections", token=token,
                             params={"select": ["uuid", "name", "manifest_text"],
                                     "count": "none", "order": "name"})
        self.assertNotIn("items_available", body)
        self.assertEqual(set(body["items"][0]) - {"kind", "etag", "href"},
                         {"uuid", "name", "manifest_text"})
        self.assertRegex(body["items"][0]["manifest_text"], _SIG)
        pdh = portable_data_hash(EMPTY_FILE_MANIFEST)
        body = await self.ok("GET", "collections", token=token,
                             params={"filters": [["portable_data_hash", "=", pdh]],
                                     "order": "created_at asc"})
        self.assertEqual(len(body["items"]), 3)
        code, err = await self.api("GET", "collections", token=token,
                                   params={"filters": [["name", "sounds like", "x"]]})
        self.assertEqual(code, 422, err)
        self.assertIn("operator", err["errors"][0])
        code, err = await self.api("GET", "collections", token=token,
                                   params={"filters": [["nosuch", "=", "x"]]})
        self.assertEqual(code, 422, err)
        self.assertIn("nosuch", err["errors"][0])


class TrashTests(ApiTestCase):
    async def test_trash_untrash_delete(self):
        """trash hides the collection (404, not listed) unless include_trash;
        untrash brings it back; DELETE also trashes, with delete_at after trash_at."""
        await self.startNode()
        _, token = await self.make_user(name="olga")
        made = await self.ok("POST", "collections", token=token,
                             body={"name": "t", "manifest_text": EMPTY_FILE_MANIFEST})
        uuid = made["uuid"]
        body = await self.ok("POST", f"collections/{uuid}/trash", token=token)
        self.assertTrue(body["is_trashed"])
        self.assertIsNotNone(body["trash_at"])
        self.assertGreater(body["delete_at"], body["trash_at"])
        code, _ = await self.api("GET", f"collections/{uuid}", token=token)
        self.assertEqual(code, 404)
        listed = await self.ok("GET", "collections", token=token)
        self.assertEqual(listed["items"], [])
        listed = await self.ok("GET", "collections", token=token, params={"include_trash": "true"})
        self.assertEqual([i["uuid"] for i in listed["items"]], [uuid])
        await self.ok("GET", f"collections/{uuid}", token=token, params={"include_trash": "true"})
        body = await self.ok("POST", f"collections/{uuid}/untrash", token=token)
        self.assertFalse(body["is_trashed"])
        self.assertIsNone(body["trash_at"])
        await self.ok("GET", f"collections/{uuid}", token=token)
        code, err = await self.api("POST", f"collections/{uuid}/untrash", token=token)
        self.assertEqual(code, 422, err)
        body = await self.ok("DELETE", f"collections/{uuid}", token=token)
        self.assertTrue(body["is_trashed"])
        code, _ = await self.api("GET", f"collections/{uuid}", token=token)
        self.assertEqual(code, 404)

    async def test_future_trash_at_caps_signature_expiry(self):
        """A trash_at in the future is the latest a returned signature may expire."""
        await self.startNode()
        _, token = await self.make_user(name="pia")
        manifest = await self.signed_manifest(token)
        trash_at = to_api_time(reactor.seconds() + 86400)
        body = await self.ok("POST", "collections", token=token, body={
            "manifest_text": manifest, "trash_at": trash_at})
        self.assertFalse(body["is_trashed"])
        self.assertIsNotNone(body["delete_at"])
        expiry = int(_SIG.search(body["manifest_text"]).group(0).split("@")[1], 16)
        self.assertLessEqual(expiry, from_api_time(trash_at))
        self.assertGreater(expiry, reactor.seconds() + 86000)
