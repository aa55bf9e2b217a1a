"""A throwaway PostgreSQL database per test case.

Tests that need PostgreSQL call :func:`fresh_database` from ``setUp``: it
creates ``arvnode_test_<random>`` on the server at 127.0.0.1:5432 (user
``postgres``, trust auth; override with ``ARVNODE_TEST_PGHOST``,
``ARVNODE_TEST_PGPORT``, ``ARVNODE_TEST_PGUSER``, ``ARVNODE_TEST_PGPASSWORD``),
registers its removal as a cleanup, and returns the connection mapping in the
Arvados ``PostgreSQL.Connection`` shape.

When the server cannot be reached the test is skipped, except under CI
(``CI=true``), where a missing database is a broken pipeline and fails.
These calls block; they are test set-up, run before the test's own reactor
work, and take milliseconds.
"""
from __future__ import annotations

import os
import secrets
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase


def server_settings() -> dict[str, str]:
    """Where the test server is, in ``PostgreSQL.Connection`` keys (no dbname)."""
    settings = {
        "host": os.environ.get("ARVNODE_TEST_PGHOST", "127.0.0.1"),
        "port": os.environ.get("ARVNODE_TEST_PGPORT", "5432"),
        "user": os.environ.get("ARVNODE_TEST_PGUSER", "postgres"),
    }
    password = os.environ.get("ARVNODE_TEST_PGPASSWORD", "")
    if password:
        settings["password"] = password
    return settings


def _admin_connection() -> Any:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", connect_timeout=3, **server_settings())
    conn.autocommit = True
    return conn


def _unavailable(testcase: SynchronousTestCase, reason: str) -> None:
    if os.environ.get("CI") == "true":
        testcase.fail(f"PostgreSQL is required under CI=true: {reason}")
    raise SkipTest(f"PostgreSQL not available: {reason}")


def fresh_database(testcase: SynchronousTestCase) -> dict[str, str]:
    """Create an empty database for this test and drop it in cleanup."""
    try:
        import psycopg2
    except ImportError as e:  # pragma: no cover - psycopg2 is a dependency
        _unavailable(testcase, f"psycopg2 missing ({e})")
        raise
    try:
        admin = _admin_connection()
    except psycopg2.Error as e:
        _unavailable(testcase, str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
        raise
    name = f"arvnode_test_{secrets.token_hex(6)}"
    force = " WITH (FORCE)" if admin.server_version >= 130000 else ""
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()

    def drop() -> None:
        conn = _admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
        finally:
            conn.close()

    testcase.addCleanup(drop)
    return {**server_settings(), "dbname": name}
