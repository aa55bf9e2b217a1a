"""Errors the metadata store raises, whatever the engine underneath.

Callers (the API, the token checker, the admin commands) must be able to
tell "no such record" (404), "already exists" (409) and "the database is
down" (503) apart without knowing whether SQLite or PostgreSQL answered, so
both engines' DB-API exceptions are mapped onto this small hierarchy in one
place (:mod:`arvnode.store._dialect`).
"""
from __future__ import annotations


class StoreError(Exception):
    """Any failure of the metadata store."""


class NotFound(StoreError):
    """The record named by the caller does not exist."""


class Conflict(StoreError):
    """A unique constraint was violated (duplicate uuid, username, token secret)."""


class StoreUnavailable(StoreError):
    """The database could not be reached or used (connection refused, lost, locked)."""
