# -*- test-case-name: tests.store.test_objects -*-
"""Tests for the generic Arvados object methods of the store, on SQLite and PostgreSQL.

Each behaviour is written once in a mixin and run against both engines, so
a filter, a name rule or a permission that differs between them fails here.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.store import (
    KINDS,
    Conflict,
    Filter,
    ListQuery,
    NameConflict,
    NotFound,
    QueryError,
    Store,
    parse_list_query,
    to_api_time,
)
from tests.store.helpers import CLUSTER, T0, PostgreSQLEngine, SQLiteEngine, StoreFactoryMixin

C = KINDS["collections"]
G = KINDS["groups"]
L = KINDS["links"]
W = KINDS["workflows"]
K = KINDS["keep_services"]
U = KINDS["users"]
T = KINDS["api_client_authorizations"]

ROOT = ids.system_user_uuid(CLUSTER)
ALICE = f"{CLUSTER}-tpzed-aaaaaaaaaaaaaaa"
BOB = f"{CLUSTER}-tpzed-bbbbbbbbbbbbbbb"
PDH = "acbd18db4cc2f85cedef654fccc4a4d8+3"
MANIFEST = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo.txt\n"


class Base(StoreFactoryMixin):
    store: Store

    async def fresh(self) -> Store:
        self.store = await self.started()
        return self.store

    async def coll(self, **values: Any) -> dict[str, Any]:
        values.setdefault("owner_uuid", ALICE)
        return await self.store.create_object(C, values, actor_uuid=ALICE)

    async def names(self, kind: Any = C, readable: frozenset[str] | None = None,
                    **params: Any) -> list[str]:
        params.setdefault("order", "name")
        items, _ = await self.store.list_objects(kind, parse_list_query(kind, params),
                                                 readable=readable)
        return [i["name"] for i in items]


class CrudTestsMixin(Base):
    """Create, get, update and delete for every kind."""

    async def test_collection_round_trip(self) -> None:
        """A created collection comes back API-ready: defaults, times, derived fields."""
        await self.fresh()
        c = await self.coll(name="foo", manifest_text=MANIFEST, portable_data_hash=PDH,
                            properties={"a": 1}, trash_at="2030-01-01T00:00:00Z",
                            replication_desired=None)
        self.assertRegex(c["uuid"], rf"^{CLUSTER}-4zz18-[a-z0-9]{{15}}$")
        self.assertEqual(c["owner_uuid"], ALICE)
        self.assertEqual(c["modified_by_user_uuid"], ALICE)
        self.assertEqual(c["created_at"], to_api_time(T0))
        self.assertEqual(c["modified_at"], to_api_time(T0))
        self.assertEqual(c["trash_at"], "2030-01-01T00:00:00.000000000Z")
        self.assertIsNone(c["delete_at"])
        self.assertFalse(c["is_trashed"])
        self.assertEqual(c["storage_classes_desired"], ["default"])
        self.assertEqual(c["storage_classes_confirmed"], [])
        self.assertEqual(c["properties"], {"a": 1})
        self.assertEqual((c["version"], c["current_version_uuid"]), (1, c["uuid"]))
        self.assertIs(c["preserve_version"], False)
        self.assertEqual((c["file_count"], c["file_size_total"]), (0, 0))
        self.assertEqual(await self.store.get_object(C, c["uuid"]), c)

    async def test_update(self) -> None:
        """update_object changes the given fields, stamps modified_*, ignores read-only ones."""
        await self.fresh()
        c = await self.coll(name="foo")
        self.clock.advance(5)
        u = await self.store.update_object(
            C, c["uuid"], {"name": "bar", "created_at": "2000-01-01T00:00:00Z",
                           "is_trashed": True, "uuid": c["uuid"]}, actor_uuid=BOB)
        self.assertEqual(u["name"], "bar")
        self.assertEqual(u["created_at"], c["created_at"])
        self.assertEqual(u["modified_at"], to_api_time(T0 + 5))
        self.assertEqual(u["modified_by_user_uuid"], BOB)
        self.assertFalse(u["is_trashed"])
        with self.assertRaises(QueryError):
            await self.store.update_object(C, c["uuid"], {"uuid": f"{CLUSTER}-4zz18-{'x' * 15}"})
        with self.assertRaises(NotFound):
            await self.store.update_object(C, f"{CLUSTER}-4zz18-{'x' * 15}", {"name": "x"})

    async def test_delete(self) -> None:
        """delete_object returns the row as it was, and it is gone."""
        await self.fresh()
        c = await self.coll(name="foo")
        self.assertEqual(await self.store.delete_object(C, c["uuid"]), c)
        with self.assertRaises(NotFound):
            await self.store.get_object(C, c["uuid"])
        with self.assertRaises(NotFound):
            await self.store.delete_object(C, c["uuid"])

    async def test_other_kinds(self) -> None:
        """Groups, links, workflows and keep services round-trip with their own fields."""
        await self.fresh()
        g = await self.store.create_object(G, {"owner_uuid": ALICE, "name": "P",
                                               "group_class": "project"})
        self.assertEqual((g["group_class"], g["properties"], g["frozen_by_uuid"]),
                         ("project", {}, None))
        link = await self.store.create_object(L, {
            "owner_uuid": ALICE, "link_class": "permission", "name": "can_read",
            "tail_uuid": BOB, "head_uuid": g["uuid"], "properties": {"x": [1]}})
        self.assertEqual((link["tail_uuid"], link["head_uuid"], link["properties"]),
                         (BOB, g["uuid"], {"x": [1]}))
        w = await self.store.create_object(W, {"owner_uuid": ALICE, "name": "wf",
                                               "definition": "cwlVersion: v1.2\n"})
        self.assertEqual(w["definition"], "cwlVersion: v1.2\n")
        ks = await self.store.create_object(K, {
            "owner_uuid": ROOT, "uuid": f"{CLUSTER}-bi6l4-000000000000000",
            "service_host": "127.0.0.1", "service_port": 25107, "service_ssl_flag": True,
            "service_type": "proxy"})
        self.assertEqual((ks["service_port"], ks["service_ssl_flag"], ks["read_only"]),
                         (25107, True, False))
        for kind, rec in ((G, g), (L, link), (W, w), (K, ks)):
            self.assertEqual(await self.store.get_object(kind, rec["uuid"]), rec)
        with self.assertRaises(Conflict):
            await self.store.create_object(K, {"owner_uuid": ROOT, "uuid": ks["uuid"]})

    async def test_bad_values(self) -> None:
        """Unknown attributes, wrong types, bad uuids and missing required values: QueryError."""
        await self.fresh()
        cases = [
            (C, {"owner_uuid": ALICE, "colour": "red"}, "unknown attribute 'colour'"),
            (C, {"owner_uuid": ALICE, "name": 3}, "collections.name must be a string"),
            (C, {"owner_uuid": ALICE, "replication_desired": "2"}, "must be an integer"),
            (C, {"owner_uuid": ALICE, "properties": []}, "must be an object"),
            (C, {"owner_uuid": ALICE, "storage_classes_desired": "default"}, "must be an array"),
            (C, {"owner_uuid": ALICE, "trash_at": "tomorrow"}, "invalid time"),
            (C, {"owner_uuid": ALICE, "preserve_version": None}, "must not be null"),
            (C, {"owner_uuid": ALICE, "name": "a\x00b"}, "NUL"),
            (C, {"owner_uuid": ALICE, "properties": {"a": "\x00"}}, "NUL"),
            (C, {"name": "x"}, "owner_uuid is required"),
            (C, {"owner_uuid": ALICE, "uuid": f"{CLUSTER}-j7d0g-{'a' * 15}"}, "invalid uuid"),
            (G, {"owner_uuid": ALICE, "name": "x"}, "group_class is required"),
            (G, {"owner_uuid": ALICE, "name": "x", "group_class": "folder"}, "must be one of"),
            (U, {"email": "x"}, "cannot be created"),
        ]
        for kind, values, needle in cases:
            with self.assertRaises(QueryError) as e:
                await self.store.create_object(kind, values)
            self.assertIn(needle, str(e.exception))

    async def test_users_and_tokens_listed(self) -> None:
        """Users and tokens are listable with filters; owners as Arvados shows them."""
        await self.fresh()
        await self.store.ensure_system_records(system_root_token="r" * 50, anonymous_token="")
        user = await self.store.create_user(email="a@example.com", username="alice",
                                            is_active=True)
        token = await self.store.create_token(user.uuid)
        items, n = await self.store.list_objects(
            U, parse_list_query(U, {"filters": [["username", "=", "alice"]]}), readable=None)
        self.assertEqual(n, 1)
        self.assertEqual(items[0]["owner_uuid"], ROOT)
        self.assertIs(items[0]["is_active"], True)
        self.assertEqual(items[0]["prefs"], {})
        items, n = await self.store.list_objects(
            T, parse_list_query(T, {"filters": [["owner_uuid", "=", user.uuid]]}), readable=None)
        self.assertEqual([i["uuid"] for i in items], [token.uuid])
        self.assertEqual(items[0]["user_uuid"], user.uuid)
        self.assertNotIn("api_token", items[0])
        self.assertNotIn(token.secret, repr(items))
        updated = await self.store.update_object(U, user.uuid, {"first_name": "Alice"})
        self.assertEqual(updated["first_name"], "Alice")
        self.assertEqual((await self.store.get_user(user.uuid)).first_name, "Alice")

    async def test_system_groups(self) -> None:
        """ensure_system_records creates the All users, anonymous and system role groups."""
        await self.fresh()
        for _ in range(2):
            await self.store.ensure_system_records(system_root_token="r" * 50,
                                                   anonymous_token="a" * 50)
        for uuid in (ids.all_users_group_uuid(CLUSTER), ids.anonymous_group_uuid(CLUSTER),
                     ids.system_group_uuid(CLUSTER)):
            g = await self.store.get_object(G, uuid)
            self.assertEqual((g["group_class"], g["owner_uuid"]), ("role", ROOT))


class NameTestsMixin(Base):
    """Unique names per owner among live collections and projects."""

    async def test_duplicate_name_conflict(self) -> None:
        await self.fresh()
        await self.coll(name="same")
        with self.assertRaises(NameConflict) as e:
            await self.coll(name="same")
        self.assertIn("already exists", str(e.exception))
        self.assertIsInstance(e.exception, Conflict)
        await self.coll(name="same", owner_uuid=BOB)  # another owner: fine
        await self.coll(name=None)
        await self.coll(name=None)  # unnamed collections never clash

    async def test_ensure_unique_name(self) -> None:
        """A clash renames the new record: name cut to 237 chars plus ' (<uuid tail>)'."""
        await self.fresh()
        long = "n" * 300
        await self.coll(name=long)
        c = await self.store.create_object(C, {"owner_uuid": ALICE, "name": long},
                                           ensure_unique_name=True)
        self.assertEqual(c["name"], "n" * 237 + f" ({c['uuid'][-15:]})")
        plain = await self.store.create_object(C, {"owner_uuid": ALICE, "name": "free"},
                                               ensure_unique_name=True)
        self.assertEqual(plain["name"], "free")

    async def test_trashed_do_not_clash(self) -> None:
        """A trashed collection's name can be reused; untrashing into a clash is refused."""
        await self.fresh()
        old = await self.coll(name="same", trash_at=to_api_time(T0))
        self.assertTrue(old["is_trashed"])
        await self.coll(name="same")
        with self.assertRaises(NameConflict):
            await self.store.update_object(C, old["uuid"], {"trash_at": None})
        renamed = await self.store.update_object(C, old["uuid"], {"trash_at": None},
                                                 ensure_unique_name=True)
        self.assertEqual(renamed["name"], f"same ({old['uuid'][-15:]})")

    async def test_rename_into_clash(self) -> None:
        await self.fresh()
        await self.coll(name="a")
        b = await self.coll(name="b")
        with self.assertRaises(NameConflict):
            await self.store.update_object(C, b["uuid"], {"name": "a"})
        self.assertEqual((await self.store.get_object(C, b["uuid"]))["name"], "b")

    async def test_projects_only(self) -> None:
        """Projects' names are unique per owner; role groups' are not."""
        await self.fresh()
        for cls in ("role", "role"):
            await self.store.create_object(G, {"owner_uuid": ALICE, "name": "R",
                                               "group_class": cls})
        await self.store.create_object(G, {"owner_uuid": ALICE, "name": "R",
                                           "group_class": "project"})
        with self.assertRaises(NameConflict):
            await self.store.create_object(G, {"owner_uuid": ALICE, "name": "R",
                                               "group_class": "project"})


class ListTestsMixin(Base):
    """Filters, order, paging, select and trash, with the same answers on both engines."""

    async def populate(self) -> None:
        await self.fresh()
        specs = [
            ("apple", {"color": "red", "n": 3, "ok": True}, 1, None),
            ("Banana", {"color": "yellow", "n": 10, "ok": False}, 2, None),
            ("cherry_pie", {"color": "Red", "n": "3"}, 3, None),
            ("date%", {"n": 2.5, "none": None}, 4, None),
            ("trashed", {"color": "red"}, 5, to_api_time(T0 - 1)),
            ("éclair", {}, None, None),
        ]
        for name, props, replication, trash_at in specs:
            await self.coll(name=name, properties=props, replication_desired=replication,
                            trash_at=trash_at, portable_data_hash=PDH if name == "apple" else
                            "d41d8cd98f00b204e9800998ecf8427e+0")
            self.clock.advance(10)

    async def check(self, filters: list[Any], expected: list[str], **params: Any) -> None:
        got = await self.names(filters=filters, **params)
        self.assertEqual(got, expected, filters)

    async def test_comparisons(self) -> None:
        await self.populate()
        await self.check([["name", "=", "apple"]], ["apple"])
        await self.check([["name", "!=", "apple"]], ["Banana", "cherry_pie", "date%", "éclair"])
        await self.check([["replication_desired", "<", 3]], ["Banana", "apple"])
        await self.check([["replication_desired", "<=", 3]], ["Banana", "apple", "cherry_pie"])
        await self.check([["replication_desired", ">", 2]], ["cherry_pie", "date%"])
        await self.check([["replication_desired", ">=", 2.5]], ["cherry_pie", "date%"])
        await self.check([["replication_desired", "=", None]], ["éclair"])
        await self.check([["replication_desired", "!=", None]],
                         ["Banana", "apple", "cherry_pie", "date%"])
        # != keeps rows where the attribute is null, as Arvados does.
        await self.check([["replication_desired", "!=", 1]],
                         ["Banana", "cherry_pie", "date%", "éclair"])

    async def test_in(self) -> None:
        await self.populate()
        await self.check([["name", "in", ["apple", "date%", "nope"]]], ["apple", "date%"])
        await self.check([["name", "in", []]], [])
        await self.check([["replication_desired", "not in", [1, 2]]],
                         ["cherry_pie", "date%", "éclair"])
        await self.check([["name", "not in", []]],
                         ["Banana", "apple", "cherry_pie", "date%", "éclair"])

    async def test_like(self) -> None:
        """like is case-sensitive, ilike is not, on both engines; escapes work."""
        await self.populate()
        await self.check([["name", "like", "%an%"]], ["Banana"])
        await self.check([["name", "like", "b%"]], [])
        await self.check([["name", "ilike", "b%"]], ["Banana"])
        await self.check([["name", "like", "cherry_p_e"]], ["cherry_pie"])
        await self.check([["name", "like", "cherry\\_%"]], ["cherry_pie"])
        await self.check([["name", "like", "%\\%"]], ["date%"])
        await self.check([["name", "like", "é%"]], ["éclair"])
        await self.check([["name", "not like", "%a%"]], ["cherry_pie"])
        await self.check([["name", "not ilike", "%A%"]], ["cherry_pie"])
        await self.check([["name", "like", "[ab]%"]], [])

    async def test_times(self) -> None:
        """Time operands compare as times, whatever their textual form."""
        await self.populate()
        await self.check([["created_at", "<", to_api_time(T0 + 10)]], ["apple"])
        await self.check([["created_at", "<=", "2023-11-14T22:13:30Z"]], ["Banana", "apple"])
        await self.check([["created_at", "=", "2023-11-14T23:13:40+01:00"]], ["cherry_pie"])
        await self.check([["created_at", ">=", to_api_time(T0 + 30)]], ["date%", "éclair"])
        await self.check([["created_at", "!=", to_api_time(T0)]],
                         ["Banana", "cherry_pie", "date%", "éclair"])
        await self.check([["trash_at", "=", None]],
                         ["Banana", "apple", "cherry_pie", "date%", "éclair"])

    async def test_is_a(self) -> None:
        await self.populate()
        all_live = ["Banana", "apple", "cherry_pie", "date%", "éclair"]
        await self.check([["uuid", "is_a", "arvados#collection"]], all_live)
        await self.check([["uuid", "is_a", ["arvados#group", "arvados#collection"]]], all_live)
        await self.check([["uuid", "is_a", "arvados#group"]], [])
        await self.check([["owner_uuid", "is_a", "arvados#user"]], all_live)

    async def test_properties(self) -> None:
        """properties.<key> filters compare JSON values with their JSON type."""
        await self.populate()
        await self.check([["properties.color", "=", "red"]], ["apple"])
        await self.check([["properties.color", "!=", "red"]],
                         ["Banana", "cherry_pie", "date%", "éclair"])
        await self.check([["properties.n", "=", 3]], ["apple"])
        await self.check([["properties.n", "=", "3"]], ["cherry_pie"])
        await self.check([["properties.n", ">", 2]], ["Banana", "apple", "date%"])
        await self.check([["properties.n", "<", 3]], ["date%"])
        await self.check([["properties.ok", "=", True]], ["apple"])
        await self.check([["properties.ok", "=", False]], ["Banana"])
        await self.check([["properties.none", "=", None]], ["date%"])
        await self.check([["properties.color", "exists", True]],
                         ["Banana", "apple", "cherry_pie"])
        await self.check([["properties.none", "exists", True]], ["date%"])
        await self.check([["properties.color", "exists", False]], ["date%", "éclair"])
        await self.check([["properties", "exists", "ok"]], ["Banana", "apple"])
        await self.check([["properties.color", "ilike", "r%"]], ["apple", "cherry_pie"])
        await self.check([["properties.color", "like", "r%"]], ["apple"])
        await self.check([["properties.color", "in", ["red", "yellow"]]], ["Banana", "apple"])
        await self.check([["properties.color", "not in", ["red"]]],
                         ["Banana", "cherry_pie", "date%", "éclair"])
        await self.check([["properties.n", "in", [10, "3"]]], ["Banana", "cherry_pie"])

    async def test_where_and_combination(self) -> None:
        await self.populate()
        await self.check([["replication_desired", ">", 1]], ["cherry_pie"],
                         where={"properties.color": "Red"})
        got = await self.names(where='{"name": ["apple", "Banana"]}')
        self.assertEqual(got, ["Banana", "apple"])

    async def test_order(self) -> None:
        """Order as a string or an array; NULLs last ascending, first descending."""
        await self.populate()
        self.assertEqual(await self.names(order="name desc"),
                         ["éclair", "date%", "cherry_pie", "apple", "Banana"])
        self.assertEqual(await self.names(order='["replication_desired desc", "name"]'),
                         ["éclair", "date%", "cherry_pie", "Banana", "apple"])
        self.assertEqual(await self.names(order=["replication_desired"]),
                         ["apple", "Banana", "cherry_pie", "date%", "éclair"])
        items, _ = await self.store.list_objects(C, parse_list_query(C, {}), readable=None)
        self.assertEqual([i["name"] for i in items],  # default: newest modified first
                         ["éclair", "date%", "cherry_pie", "Banana", "apple"])

    async def test_paging_and_count(self) -> None:
        """limit/offset page through a total order; limit 0 still counts; count=none skips it."""
        await self.populate()
        items, n = await self.store.list_objects(
            C, parse_list_query(C, {"limit": "0"}), readable=None)
        self.assertEqual((items, n), ([], 5))
        pages = []
        for offset in range(0, 6, 2):
            items, n = await self.store.list_objects(
                C, parse_list_query(C, {"limit": 2, "offset": offset, "order": "name"}),
                readable=None)
            self.assertEqual(n, 5)
            pages.append([i["name"] for i in items])
        self.assertEqual(pages, [["Banana", "apple"], ["cherry_pie", "date%"], ["éclair"]])
        items, n = await self.store.list_objects(
            C, parse_list_query(C, {"count": "none", "limit": 1}), readable=None)
        self.assertEqual((len(items), n), (1, None))

    async def test_select(self) -> None:
        """select limits the keys of each item; uuid is always there."""
        await self.populate()
        items, _ = await self.store.list_objects(
            C, parse_list_query(C, {"select": '["name", "is_trashed"]', "limit": 1}),
            readable=None)
        self.assertEqual(set(items[0]), {"uuid", "name", "is_trashed"})
        self.assertIs(items[0]["is_trashed"], False)

    async def test_include_trash(self) -> None:
        """Trashed rows hide unless include_trash; is_trashed follows the store clock."""
        await self.populate()
        self.assertNotIn("trashed", await self.names())
        self.assertIn("trashed", await self.names(include_trash="true"))
        await self.check([["is_trashed", "=", True]], ["trashed"], include_trash=True)
        # A future trash_at takes effect when the clock reaches it.
        c = await self.coll(name="later", trash_at=to_api_time(self.clock.seconds() + 60))
        self.assertIn("later", await self.names())
        self.clock.advance(60)
        self.assertNotIn("later", await self.names())
        self.assertTrue((await self.store.get_object(C, c["uuid"]))["is_trashed"])

    async def test_readable(self) -> None:
        """With a readable set, a row shows iff its uuid or owner is in it (links: or tail)."""
        await self.populate()
        mine = await self.coll(name="bob's", owner_uuid=BOB)
        self.assertEqual(await self.names(readable=frozenset({BOB})), ["bob's"])
        self.assertEqual(await self.names(readable=frozenset({mine["uuid"]})), ["bob's"])
        self.assertEqual(await self.names(readable=frozenset()), [])
        link = await self.store.create_object(L, {
            "owner_uuid": ROOT, "link_class": "permission", "name": "can_read",
            "tail_uuid": BOB, "head_uuid": mine["uuid"]})
        items, _ = await self.store.list_objects(L, parse_list_query(L, {}),
                                                 readable=frozenset({BOB}))
        self.assertEqual([i["uuid"] for i in items], [link["uuid"]])

    async def test_filters_built_in_code(self) -> None:
        """A Filter made by the API (not parsed) with a time string or kind name works too."""
        await self.populate()
        query = ListQuery(filters=(Filter("created_at", "<", to_api_time(T0 + 10)),
                                   Filter("uuid", "is_a", ["arvados#collection"])))
        items, n = await self.store.list_objects(C, query, readable=None)
        self.assertEqual(([i["name"] for i in items], n), (["apple"], 1))

    async def test_huge_lists(self) -> None:
        """Tens of thousands of readable uuids or in-operands work (no SQL parameter limit)."""
        await self.populate()
        many = frozenset(f"{CLUSTER}-j7d0g-{i:015d}" for i in range(40_000)) | {ALICE}
        self.assertEqual(len(await self.names(readable=many)), 5)
        names = [f"n{i}" for i in range(40_000)] + ["apple"]
        await self.check([["name", "in", names]], ["apple"])

    async def test_everything_parsed_runs(self) -> None:
        """Every filter and order parse_list_query accepts runs on this engine.

        A matrix of every attribute x operator x a spread of operands, for
        each kind: whatever parses must list without a database error.
        """
        await self.populate()
        operands: list[Any] = [None, "x", "a%", 1, 2.5, True, [], ["x"], [1, 2.5], [True],
                               "2023-11-14T22:13:20Z", ["2023-11-14T22:13:20Z"],
                               "arvados#collection", ["arvados#group"]]
        ops = ["=", "!=", "<", "<=", ">", ">=", "like", "ilike", "not like", "not ilike",
               "in", "not in", "is_a", "exists"]
        ran = 0
        for kind in KINDS.values():
            names = [*kind.names, "properties.color"] if kind.has("properties") \
                else list(kind.names)
            for name in names:
                for op in ops:
                    for operand in operands:
                        try:
                            q = parse_list_query(kind, {"filters": [[name, op, operand]],
                                                        "order": f"{name} desc"
                                                        if "." not in name else "uuid"})
                        except QueryError:
                            continue
                        await self.store.list_objects(kind, q, readable=frozenset({ALICE}))
                        ran += 1
        self.assertGreater(ran, 500)

    async def test_find_by_pdh(self) -> None:
        """find_collections_by_pdh: live, readable, newest first."""
        await self.populate()
        self.clock.advance(10)
        bobs = await self.coll(name="bob copy", owner_uuid=BOB, portable_data_hash=PDH)
        await self.coll(name="gone", portable_data_hash=PDH, trash_at=to_api_time(T0))
        found = await self.store.find_collections_by_pdh(PDH, readable=None)
        self.assertEqual([c["name"] for c in found], ["bob copy", "apple"])
        found = await self.store.find_collections_by_pdh(PDH, readable=frozenset({ALICE}))
        self.assertEqual([c["name"] for c in found], ["apple"])
        found = await self.store.find_collections_by_pdh(PDH, readable=frozenset({BOB}))
        self.assertEqual([c["uuid"] for c in found], [bobs["uuid"]])
        self.assertEqual(await self.store.find_collections_by_pdh(
            "0" * 32 + "+1", readable=None), [])


class ConcurrentNameTestsMixin(Base):
    """Uniqueness holds when creators race (PostgreSQL runs them on parallel connections)."""

    async def test_racing_creates(self) -> None:
        await self.fresh()
        # Open every pooled connection first, so the creates below really overlap.
        await DeferredList([Deferred.fromCoroutine(self.store.ping()) for _ in range(8)])
        for round_ in range(5):
            attempts = [Deferred.fromCoroutine(self.store.create_object(
                C, {"owner_uuid": ALICE, "name": f"race {round_}"})) for _ in range(8)]
            results = await DeferredList(attempts, consumeErrors=True)
            ok = [r for success, r in results if success]
            failed = [r for success, r in results if not success]
            self.assertEqual(len(ok), 1, [f.value for f in failed])
            for f in failed:
                self.assertIsInstance(f.value, NameConflict)


class PermissionTestsMixin(Base):
    """The permission closure the API's read/write checks rest on."""

    async def group(self, owner: str, name: str, cls: str = "project") -> str:
        g = await self.store.create_object(G, {"owner_uuid": owner, "name": name,
                                               "group_class": cls})
        return str(g["uuid"])

    async def link(self, tail: str, head: str, level: str) -> None:
        await self.store.create_object(L, {"owner_uuid": ROOT, "link_class": "permission",
                                           "name": level, "tail_uuid": tail, "head_uuid": head})

    async def test_owned_tree(self) -> None:
        """The user manages itself and every project down its ownership tree."""
        await self.fresh()
        p1 = await self.group(ALICE, "p1")
        p2 = await self.group(p1, "p2")
        p3 = await self.group(p2, "p3")
        other = await self.group(BOB, "other")
        levels = await self.store.permission_levels(ALICE)
        self.assertEqual(levels, {ALICE: 3, p1: 3, p2: 3, p3: 3})
        self.assertNotIn(other, levels)

    async def test_links_and_roles(self) -> None:
        """Shares to the user or to a role it belongs to; the level is the path's minimum."""
        await self.fresh()
        shared = await self.group(BOB, "shared")
        sub = await self.group(shared, "sub")
        role = await self.group(ROOT, "team", "role")
        team_project = await self.group(BOB, "team project")
        write_project = await self.group(BOB, "write")
        await self.link(ALICE, shared, "can_read")
        await self.link(ALICE, role, "can_write")       # Alice is a member of the role
        await self.link(role, team_project, "can_manage")
        await self.link(role, write_project, "can_read")
        await self.link(ALICE, write_project, "can_write")  # best path wins
        await self.store.create_object(L, {"owner_uuid": ROOT, "link_class": "tag",
                                           "name": "can_manage", "tail_uuid": ALICE,
                                           "head_uuid": await self.group(BOB, "tagged")})
        levels = await self.store.permission_levels(ALICE)
        self.assertEqual(levels[shared], 1)
        self.assertEqual(levels[sub], 1)
        self.assertEqual(levels[role], 2)
        self.assertEqual(levels[team_project], 2)  # min(can_write membership, can_manage)
        self.assertEqual(levels[write_project], 2)
        self.assertEqual(len(levels), 6)  # nothing via the tag link

    async def test_all_users_seed(self) -> None:
        """Seeding the All users group gives what is shared with it, at most at its level."""
        await self.fresh()
        await self.store.ensure_system_records(system_root_token="", anonymous_token="")
        all_users = ids.all_users_group_uuid(CLUSTER)
        public = await self.group(BOB, "public")
        await self.link(all_users, public, "can_manage")
        self.assertNotIn(public, await self.store.permission_levels(ALICE))
        levels = await self.store.permission_levels(ALICE, also={all_users: 1})
        self.assertEqual((levels[all_users], levels[public]), (1, 1))

    async def test_cycle_terminates(self) -> None:
        """Cycles of links and ownership reach a fixpoint."""
        await self.fresh()
        a = await self.group(BOB, "a", "role")
        b = await self.group(a, "b", "role")
        await self.link(b, a, "can_manage")
        await self.link(ALICE, b, "can_write")
        levels = await self.store.permission_levels(ALICE)
        self.assertEqual((levels[a], levels[b]), (2, 2))


class SQLiteCrudTests(SQLiteEngine, CrudTestsMixin, TestCase):
    pass


class PostgreSQLCrudTests(PostgreSQLEngine, CrudTestsMixin, TestCase):
    pass


class SQLiteNameTests(SQLiteEngine, NameTestsMixin, TestCase):
    pass


class PostgreSQLNameTests(PostgreSQLEngine, NameTestsMixin, TestCase):
    pass


class SQLiteListTests(SQLiteEngine, ListTestsMixin, TestCase):
    pass


class PostgreSQLListTests(PostgreSQLEngine, ListTestsMixin, TestCase):
    pass


class SQLitePermissionTests(SQLiteEngine, PermissionTestsMixin, TestCase):
    pass


class PostgreSQLPermissionTests(PostgreSQLEngine, PermissionTestsMixin, TestCase):
    pass


class SQLiteConcurrentNameTests(SQLiteEngine, ConcurrentNameTestsMixin, TestCase):
    pass


class PostgreSQLConcurrentNameTests(PostgreSQLEngine, ConcurrentNameTestsMixin, TestCase):
    pass
