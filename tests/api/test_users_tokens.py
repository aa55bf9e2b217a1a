# -*- test-case-name: tests.api.test_users_tokens -*-
"""Users and api_client_authorizations over HTTPS on a real node.

The user-visible points: who am I, what admins may do, that a token's
secret is shown only to its owner at creation or via ``current``, and that
revoking a token or deactivating a user takes effect at once on both this
node's API (401/403) and its keepproxy (403).
"""
from __future__ import annotations

from tests.api.base import ApiTestCase


class UserTests(ApiTestCase):
    async def test_current_get_list(self):
        """users/current answers the caller; active users of this cluster see
        each other (all members of "All users", as Arvados' set-up users
        are); an inactive user sees only themselves (404 for others); an
        admin lists everyone."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        bob, _ = await self.make_user(name="bob")
        me = await self.ok("GET", "users/current", token=a_tok)
        self.assertEqual((me["uuid"], me["kind"], me["is_active"]), (alice, "arvados#user", True))
        self.assertEqual(me["full_name"], "alice")
        await self.ok("GET", f"users/{alice}", token=a_tok)
        await self.ok("GET", f"users/{bob}", token=a_tok)
        listed = await self.ok("GET", "users", token=a_tok,
                               params={"filters": [["username", "in", ["alice", "bob"]]]})
        self.assertEqual(sorted(u["uuid"] for u in listed["items"]), sorted([alice, bob]))
        carol, c_tok = await self.make_user(name="carol")
        await self.ok("PATCH", f"users/{carol}", token=self.root, body={"is_active": False})
        code, _ = await self.api("GET", f"users/{bob}", token=c_tok)
        self.assertEqual(code, 404)
        listed = await self.ok("GET", "users", token=c_tok)
        self.assertEqual([u["uuid"] for u in listed["items"]], [carol])
        listed = await self.ok("GET", "users", token=self.root,
                               params={"filters": [["username", "in", ["alice", "bob"]]],
                                       "order": "username"})
        self.assertEqual([u["uuid"] for u in listed["items"]], [alice, bob])

    async def test_admin_create_update_activate_deactivate(self):
        """Admins create users, change them, activate and deactivate them; a
        deactivated user's token stops writing at once."""
        await self.startNode()
        made = await self.ok("POST", "users", token=self.root, body={
            "user": {"email": "new@example.com", "username": "newbie", "first_name": "New"}})
        uuid = made["uuid"]
        self.assertFalse(made["is_active"])
        body = await self.ok("POST", f"users/{uuid}/activate", token=self.root)
        self.assertTrue(body["is_active"])
        token = (await self.store.create_token(uuid)).v2
        await self.ok("POST", "collections", token=token, body={"name": "ok"})
        body = await self.ok("PUT", f"users/{uuid}", token=self.root,
                             body={"is_active": False, "last_name": "User"})
        self.assertEqual((body["is_active"], body["full_name"]), (False, "New User"))
        code, err = await self.api("POST", "collections", token=token, body={"name": "no"})
        self.assertEqual(code, 403, err)
        await self.ok("PATCH", f"users/{uuid}", token=self.root, body={"is_active": True})
        await self.ok("POST", "collections", token=token, body={"name": "yes again"})
        body = await self.ok("POST", f"users/{uuid}/unsetup", token=self.root)
        self.assertFalse(body["is_active"])

    async def test_non_admin_limits(self):
        """A user may rename themselves but not make themselves admin (403),
        nor create users (403), nor change another user they can see (403)."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        bob, _ = await self.make_user(name="bob")
        body = await self.ok("PUT", f"users/{alice}", token=a_tok, body={"first_name": "Al"})
        self.assertEqual(body["first_name"], "Al")
        code, err = await self.api("PUT", f"users/{alice}", token=a_tok, body={"is_admin": True})
        self.assertEqual(code, 403, err)
        self.assertIn("is_admin", err["errors"][0])
        code, err = await self.api("POST", "users", token=a_tok, body={"email": "x@y"})
        self.assertEqual(code, 403, err)
        code, err = await self.api("PUT", f"users/{bob}", token=a_tok, body={"first_name": "B"})
        self.assertEqual(code, 403, err)
        code, err = await self.api("POST", f"users/{bob}/activate", token=a_tok)
        self.assertEqual(code, 403, err)
        code, err = await self.api("PUT", f"users/{alice}", token=self.root,
                                   body={"is_admin": "yes"})
        self.assertEqual(code, 422, err)


class TokenTests(ApiTestCase):
    async def test_current_shows_secret_list_does_not(self):
        """api_client_authorizations/current shows the caller's api_token; get and
        list never show secrets."""
        await self.startNode()
        user, token = await self.make_user(name="alice")
        cur = await self.ok("GET", "api_client_authorizations/current", token=token)
        self.assertEqual(cur["kind"], "arvados#apiClientAuthorization")
        self.assertEqual(f"v2/{cur['uuid']}/{cur['api_token']}", token)
        self.assertEqual(cur["owner_uuid"], user)
        listed = await self.ok("GET", "api_client_authorizations", token=token)
        self.assertEqual([t["uuid"] for t in listed["items"]], [cur["uuid"]])
        self.assertNotIn("api_token", listed["items"][0])
        got = await self.ok("GET", f"api_client_authorizations/{cur['uuid']}", token=token)
        self.assertNotIn("api_token", got)

    async def test_create_for_self_and_for_others(self):
        """A user creates tokens for themselves (the secret is in the answer and
        works); only admins create tokens for someone else."""
        await self.startNode()
        alice, a_tok = await self.make_user(name="alice")
        bob, _ = await self.make_user(name="bob")
        made = await self.ok("POST", "api_client_authorizations", token=a_tok,
                             body={"api_client_authorization": {"scopes": ["GET /"]}})
        self.assertEqual(made["scopes"], ["GET /"])
        new = f"v2/{made['uuid']}/{made['api_token']}"
        me = await self.ok("GET", "users/current", token=new)
        self.assertEqual(me["uuid"], alice)
        code, err = await self.api("POST", "collections", token=new, body={"name": "x"})
        self.assertEqual(code, 403, err)
        self.assertIn("scopes", err["errors"][0])
        code, err = await self.api("POST", "api_client_authorizations", token=a_tok,
                                   body={"owner_uuid": bob})
        self.assertEqual(code, 403, err)
        made = await self.ok("POST", "api_client_authorizations", token=self.root,
                             body={"owner_uuid": bob, "expires_at": "2099-01-01T00:00:00Z"})
        self.assertEqual(made["owner_uuid"], bob)
        self.assertTrue(made["expires_at"].startswith("2099-01-01T00:00:00"))

    async def test_revocation_takes_effect_at_once_on_api_and_keepproxy(self):
        """After DELETE of a token (which has just been used, so it is cached),
        the API answers 401 and the keepproxy 403 for PUT and GET."""
        await self.startNode()
        user, a_tok = await self.make_user(name="alice")
        made = await self.ok("POST", "api_client_authorizations", token=a_tok, body={})
        doomed = f"v2/{made['uuid']}/{made['api_token']}"
        loc = await self.keep_put(b"block", doomed)
        self.assertEqual((await self.keep_get(loc, doomed))[0], 200)
        await self.ok("GET", "users/current", token=doomed)
        await self.ok("DELETE", f"api_client_authorizations/{made['uuid']}", token=a_tok)
        code, err = await self.api("GET", "users/current", token=doomed)
        self.assertEqual(code, 401, err)
        self.assertEqual((await self.keep_get(loc, doomed))[0], 403)
        r = await self.client.request(
            "PUT", f"{self.node.keepproxy_url}/{loc.split('+')[0]}", data=b"block",
            headers={"Authorization": [f"Bearer {doomed}"]})
        self.assertEqual(r.code, 403)
        await r.content()
        # The other token of the same user still works.
        await self.ok("GET", "users/current", token=a_tok)

    async def test_cannot_delete_someone_elses_token(self):
        """Another user's token is 404 to me; the configured root token cannot be deleted."""
        await self.startNode()
        _, a_tok = await self.make_user(name="alice")
        _, b_tok = await self.make_user(name="bob")
        b_uuid = b_tok.split("/")[1]
        code, _ = await self.api("DELETE", f"api_client_authorizations/{b_uuid}", token=a_tok)
        self.assertEqual(code, 404)
        await self.ok("GET", "users/current", token=b_tok)
        code, err = await self.api("DELETE",
                                   f"api_client_authorizations/{self.cluster}-gj3su-000000000000000",
                                   token=self.root)
        self.assertEqual(code, 422, err)


class TokenPostgreSQLTests(TokenTests):
    postgresql = True
