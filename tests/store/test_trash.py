# -*- test-case-name: tests.store.test_trash -*-
"""Trash inheritance, delete-after-trash and the trash sweeper, on SQLite and PostgreSQL.

What a user notices: whatever sits in a trashed project disappears with it
(list, get, lookup by PDH, access through the project) and comes back when
the project is untrashed; once a delete_at has passed the records are gone
for good, whether or not the sweeper has run yet, and the sweeper then
removes the rows and the links pointing at them. The store clock is a
task.Clock, so time-based transitions are exact.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from arvnode import ids
from arvnode.store import KINDS, NotFound, Store, parse_list_query, to_api_time
from arvnode.store.sweeper import SERVICE_NAME, TrashSweeper
from tests.store.helpers import CLUSTER, PostgreSQLEngine, SQLiteEngine, StoreFactoryMixin

C = KINDS["collections"]
G = KINDS["groups"]
L = KINDS["links"]
W = KINDS["workflows"]

ALICE = f"{CLUSTER}-tpzed-aaaaaaaaaaaaaaa"
BOB = f"{CLUSTER}-tpzed-bbbbbbbbbbbbbbb"
ROOT = ids.system_user_uuid(CLUSTER)
PDH = "acbd18db4cc2f85cedef654fccc4a4d8+3"
MANIFEST = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo.txt\n"


class Base(StoreFactoryMixin):
    store: Store

    async def fresh(self) -> Store:
        self.store = await self.started()
        return self.store

    def at(self, delta: float) -> str:
        return to_api_time(self.clock.seconds() + delta)  # type: ignore[return-value]

    async def project(self, owner: str, name: str) -> str:
        g = await self.store.create_object(G, {"owner_uuid": owner, "name": name,
                                               "group_class": "project"})
        return str(g["uuid"])

    async def coll(self, owner: str, name: str, **values: Any) -> str:
        c = await self.store.create_object(C, {"owner_uuid": owner, "name": name,
                                               "manifest_text": MANIFEST,
                                               "portable_data_hash": PDH, **values})
        return str(c["uuid"])

    async def trash(self, uuid: str, kind: Any = G, delete_after: float = 3600.0) -> None:
        await self.store.update_object(kind, uuid, {"trash_at": self.at(0),
                                                    "delete_at": self.at(delete_after)})

    async def untrash(self, uuid: str, kind: Any = G) -> None:
        await self.store.update_object(kind, uuid, {"trash_at": None, "delete_at": None})

    async def names(self, kind: Any, readable: frozenset[str] | None = None,
                    **params: Any) -> list[str]:
        params.setdefault("order", "name")
        items, n = await self.store.list_objects(kind, parse_list_query(kind, params),
                                                 readable=readable)
        self.assertEqual(n, len(items))
        return [i["name"] for i in items]

    async def readable(self, user: str, **kw: Any) -> frozenset[str]:
        levels = await self.store.permission_levels(user, **kw)
        return frozenset(k for k, v in levels.items() if v >= 1)

    async def tree(self) -> dict[str, str]:
        """Alice: P > (Sub > deep, inP, wf), and 'outside' in her home."""
        await self.fresh()
        p = await self.project(ALICE, "P")
        sub = await self.project(p, "Sub")
        uuids = {
            "P": p, "Sub": sub,
            "inP": await self.coll(p, "inP"),
            "deep": await self.coll(sub, "deep"),
            "outside": await self.coll(ALICE, "outside"),
        }
        wf = await self.store.create_object(W, {"owner_uuid": p, "name": "wf"})
        uuids["wf"] = wf["uuid"]
        return uuids


class InheritanceTestsMixin(Base):
    async def test_trashed_project_hides_what_it_holds(self) -> None:
        """Trashing a project hides its sub-projects, collections and workflows from
        lists (admin and permission-filtered), PDH lookups and is_trashed says so;
        untrashing brings every one of them back."""
        u = await self.tree()
        await self.trash(u["P"])
        mine = await self.readable(ALICE)
        for readable in (None, mine):
            self.assertEqual(await self.names(C, readable), ["outside"])
            self.assertEqual(await self.names(G, readable, filters='[["group_class","=","project"]]'),
                             [])
            self.assertEqual(await self.names(W, readable), [])
        self.assertEqual([c["name"] for c in await self.store.find_collections_by_pdh(
            PDH, readable=None)], ["outside"])
        # Still there for include_trash, marked trashed (inherited or their own).
        self.assertEqual(await self.names(C, include_trash="true"), ["deep", "inP", "outside"])
        self.assertEqual(await self.names(C, include_trash="true",
                                          filters='[["is_trashed","=",true]]'), ["deep", "inP"])
        items, _ = await self.store.list_objects(
            G, parse_list_query(G, {"include_trash": "true", "select": '["name","is_trashed"]',
                                    "filters": '[["group_class","=","project"]]',
                                    "order": "name"}), readable=None)
        self.assertEqual([(i["name"], i["is_trashed"]) for i in items],
                         [("P", True), ("Sub", True)])
        for key in ("inP", "deep", "Sub"):
            record = await self.store.get_object(C if key != "Sub" else G, u[key])
            self.assertTrue(record["is_trashed"], key)
            self.assertIsNone(record["trash_at"], key)  # its own trash_at is untouched
        self.assertFalse((await self.store.get_object(C, u["outside"]))["is_trashed"])

        await self.untrash(u["P"])
        self.assertEqual(await self.names(C, await self.readable(ALICE)),
                         ["deep", "inP", "outside"])
        self.assertEqual(await self.names(W), ["wf"])
        self.assertFalse((await self.store.get_object(C, u["deep"]))["is_trashed"])
        self.assertEqual(len(await self.store.find_collections_by_pdh(PDH, readable=None)), 3)

    async def test_trashed_project_grants_nothing_through_ownership(self) -> None:
        """A trashed project (own or shared) and everything below it leave the
        permission closure; include_trash=True keeps them (to untrash them)."""
        u = await self.tree()
        shared = await self.project(BOB, "shared")
        below = await self.project(shared, "below")
        await self.store.create_object(L, {"owner_uuid": ROOT, "link_class": "permission",
                                           "name": "can_write", "tail_uuid": ALICE,
                                           "head_uuid": shared})
        before = await self.store.permission_levels(ALICE)
        self.assertEqual((before[u["P"]], before[u["Sub"]], before[shared], before[below]),
                         (3, 3, 2, 2))
        await self.trash(u["Sub"])
        await self.trash(shared)
        after = await self.store.permission_levels(ALICE)
        self.assertIn(u["P"], after)
        for gone in (u["Sub"], shared, below):
            self.assertNotIn(gone, after)
        with_trash = await self.store.permission_levels(ALICE, include_trash=True)
        self.assertEqual(with_trash, before)
        # Bob's collection inside his trashed project: hidden for Alice too.
        await self.coll(below, "bob's")
        self.assertEqual(await self.names(C, await self.readable(ALICE)), ["inP", "outside"])

    async def test_future_trash_at_takes_effect_on_time(self) -> None:
        """A project's trash_at in the future hides its contents when the clock passes it."""
        u = await self.tree()
        await self.store.update_object(G, u["P"], {"trash_at": self.at(60),
                                                   "delete_at": self.at(600)})
        self.assertEqual(await self.names(C), ["deep", "inP", "outside"])
        self.clock.advance(60)
        self.assertEqual(await self.names(C), ["outside"])
        self.assertTrue((await self.store.get_object(C, u["deep"]))["is_trashed"])

    async def test_ownership_cycle_terminates(self) -> None:
        """Groups owning each other in a cycle, one trashed: reads still finish."""
        await self.fresh()
        a = await self.project(ALICE, "a")
        b = await self.project(a, "b")
        await self.store.update_object(G, a, {"owner_uuid": b})
        await self.coll(b, "in b")
        await self.trash(b)
        self.assertEqual(await self.names(C), [])
        self.assertTrue((await self.store.get_object(G, a))["is_trashed"])
        self.assertNotIn(a, await self.store.permission_levels(ALICE))

    async def test_descendants_and_projects(self) -> None:
        """descendant_projects walks sub-projects at any depth; project_uuids tells projects
        from roles."""
        u = await self.tree()
        deeper = await self.project(u["Sub"], "deeper")
        role = await self.store.create_object(G, {"owner_uuid": ROOT, "name": "r",
                                                  "group_class": "role"})
        self.assertEqual(await self.store.descendant_projects(ALICE),
                         sorted([u["P"], u["Sub"], deeper]))
        self.assertEqual(await self.store.descendant_projects(u["Sub"]), [deeper])
        self.assertEqual(await self.store.project_uuids([u["P"], role["uuid"], ALICE]),
                         {u["P"]})
        self.assertIn(u["Sub"], await self.store.project_uuids())


class DeleteTestsMixin(Base):
    async def test_past_delete_at_is_gone_before_any_sweep(self) -> None:
        """After delete_at a trashed collection is NotFound and unlisted even with
        include_trash; a project past delete_at takes its contents with it."""
        u = await self.tree()
        await self.trash(u["outside"], C, delete_after=10)
        self.assertEqual(await self.names(C, include_trash="true"), ["deep", "inP", "outside"])
        self.clock.advance(10)
        self.assertEqual(await self.names(C, include_trash="true"), ["deep", "inP"])
        with self.assertRaises(NotFound):
            await self.store.get_object(C, u["outside"])
        await self.trash(u["P"], delete_after=5)
        self.clock.advance(5)
        self.assertEqual(await self.names(C, include_trash="true"), [])
        self.assertEqual(await self.names(W), [])
        for kind, key in ((G, "P"), (G, "Sub"), (C, "deep"), (W, "wf")):
            with self.assertRaises(NotFound, msg=key):
                await self.store.get_object(kind, u[key])
        self.assertNotIn(u["P"], await self.store.permission_levels(ALICE, include_trash=True))

    async def test_purge_removes_rows_and_links(self) -> None:
        """purge_deleted removes what is past delete_at (and a deleted project's whole
        subtree), drops links to and from those records, and leaves the rest alone."""
        u = await self.tree()
        keep = await self.coll(ALICE, "keep", trash_at=self.at(0), delete_at=self.at(999))
        link = await self.store.create_object(L, {
            "owner_uuid": ROOT, "link_class": "permission", "name": "can_read",
            "tail_uuid": BOB, "head_uuid": u["deep"]})
        other_link = await self.store.create_object(L, {
            "owner_uuid": ROOT, "link_class": "permission", "name": "can_read",
            "tail_uuid": BOB, "head_uuid": keep})
        self.assertEqual(await self.store.purge_deleted(),
                         {"collections": 0, "groups": 0, "workflows": 0, "links": 0})
        await self.trash(u["outside"], C, delete_after=10)
        await self.trash(u["P"], delete_after=10)
        self.clock.advance(10)
        counts = await self.store.purge_deleted()
        self.assertEqual(counts, {"collections": 3, "groups": 2, "workflows": 1, "links": 1})
        # The rows are really gone: even a direct update cannot find them.
        for kind, key in ((C, "outside"), (C, "deep"), (G, "Sub"), (W, "wf")):
            with self.assertRaises(NotFound, msg=key):
                await self.store.update_object(kind, u[key], {"name": "back"})
        with self.assertRaises(NotFound):
            await self.store.get_object(L, link["uuid"])
        await self.store.get_object(L, other_link["uuid"])
        self.assertTrue((await self.store.get_object(C, keep))["is_trashed"])
        self.assertEqual(await self.store.purge_deleted(),
                         {"collections": 0, "groups": 0, "workflows": 0, "links": 0})


class SweeperTestsMixin(Base):
    async def test_sweeps_on_the_clock(self) -> None:
        """The named service purges every interval on its injected clock, not before."""
        u = await self.tree()
        await self.trash(u["outside"], C, delete_after=30)
        sweeper = TrashSweeper(self.store, clock=self.clock, interval=60)
        self.assertEqual(sweeper.name, SERVICE_NAME)
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        self.clock.advance(30)
        self.assertEqual(sweeper.rounds, 0)
        # Hidden already (read-time rule), even though no round ran.
        self.assertEqual(await self.names(C, include_trash="true"), ["deep", "inP"])
        self.clock.advance(30)
        await sweeper.idle()
        self.assertEqual(sweeper.rounds, 1)
        self.assertEqual(sweeper.last, {"collections": 1, "groups": 0, "workflows": 0,
                                        "links": 0})
        with self.assertRaises(NotFound):
            await self.store.update_object(C, u["outside"], {"name": "x"})
        self.clock.advance(60)
        await sweeper.idle()
        self.assertEqual((sweeper.rounds, sweeper.deleted), (2, 1))

    async def test_failed_round_does_not_stop_the_loop(self) -> None:
        """A round that fails is logged; the next interval runs another one."""
        await self.fresh()
        calls: list[int] = []

        class Flaky:
            async def purge_deleted(inner) -> dict[str, int]:  # noqa: N805
                calls.append(1)
                if len(calls) == 1:
                    raise RuntimeError("database went away")
                return await self.store.purge_deleted()

        sweeper = TrashSweeper(Flaky(), clock=self.clock, interval=60)
        sweeper.startService()
        self.addCleanup(sweeper.stopService)
        self.clock.advance(60)
        await sweeper.idle()
        self.assertEqual(sweeper.failures, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # type: ignore[attr-defined]
        self.clock.advance(60)
        await sweeper.idle()
        self.assertEqual((sweeper.rounds, sweeper.failures), (2, 1))

    async def test_stop_waits_for_the_round_in_flight(self) -> None:
        """stopService returns a Deferred that fires only after the running round ends,
        and no round starts after it."""
        await self.fresh()
        gate: Deferred[None] = Deferred()

        class Slow:
            async def purge_deleted(inner) -> dict[str, int]:  # noqa: N805
                await gate
                return {"collections": 0, "groups": 0, "workflows": 0, "links": 0}

        sweeper = TrashSweeper(Slow(), clock=self.clock, interval=60)
        sweeper.startService()
        self.clock.advance(60)
        self.clock.advance(60)  # still running: no second round piles up
        self.assertEqual(sweeper.rounds, 1)
        stopped = sweeper.stopService()
        self.assertFalse(stopped.called)
        gate.callback(None)
        await stopped
        self.clock.advance(600)
        self.assertEqual(sweeper.rounds, 1)


class SQLiteInheritanceTests(SQLiteEngine, InheritanceTestsMixin, TestCase):
    pass


class PostgreSQLInheritanceTests(PostgreSQLEngine, InheritanceTestsMixin, TestCase):
    pass


class SQLiteDeleteTests(SQLiteEngine, DeleteTestsMixin, TestCase):
    pass


class PostgreSQLDeleteTests(PostgreSQLEngine, DeleteTestsMixin, TestCase):
    pass


class SQLiteSweeperTests(SQLiteEngine, SweeperTestsMixin, TestCase):
    pass


class PostgreSQLSweeperTests(PostgreSQLEngine, SweeperTestsMixin, TestCase):
    pass
