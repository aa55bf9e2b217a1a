"""Build stores on either engine for tests.

:class:`StoreFactoryMixin` gives a test case ``open()``/``started()``; the
two concrete mixins decide the engine: :class:`SQLiteEngine` (a file in the
test's temp dir) and :class:`PostgreSQLEngine` (a fresh database from
:mod:`tests.pgfixture`, skipped or failed per ``CI`` when unreachable).
A test class for both engines is written once as a mixin and combined with
each of them.
"""
from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock

from arvnode.store import Store, open_store
from tests import pgfixture

CLUSTER = "zzzzz"
T0 = 1_700_000_000.0


class StoreFactoryMixin:
    """Open stores that are closed in cleanup; ``self.clock`` drives their timestamps."""

    clock: Clock
    addCleanup: Any

    def engine_settings(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def open(self, *, seed: int | None = None, **kw: Any) -> Store:
        if not hasattr(self, "clock"):
            self.clock = Clock()
            self.clock.advance(T0)
        rng = random.Random(seed) if seed is not None else random.Random()
        store = open_store(
            reactor,
            cluster_id=kw.pop("cluster_id", CLUSTER),
            clock=self.clock,
            rng=rng,
            **{**self.engine_settings(), **kw},
        )

        async def stop() -> None:
            await store.stop()

        self.addCleanup(stop)
        return store

    async def started(self, **kw: Any) -> Store:
        store = self.open(**kw)
        await store.start()
        return store


class SQLiteEngine(StoreFactoryMixin):
    """Stores on an SQLite file private to the test."""

    engine = "sqlite"
    mktemp: Any

    def engine_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_sqlite_path"):
            directory = self.mktemp()
            os.makedirs(directory)
            self._sqlite_path = os.path.join(directory, "arvnode.sqlite")
        return {"postgresql": None, "sqlite_path": self._sqlite_path}


class PostgreSQLEngine(StoreFactoryMixin):
    """Stores on a PostgreSQL database created for this test and dropped after it."""

    engine = "postgresql"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.engine_settings()  # one fresh database per test, made before the test runs

    def engine_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_pg_connection"):
            self._pg_connection = pgfixture.fresh_database(self)  # type: ignore[arg-type]
        return {"postgresql": self._pg_connection, "sqlite_path": None}
