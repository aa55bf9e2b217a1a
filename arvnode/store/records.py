"""Immutable records handed out by the store.

Frozen attrs classes so a record read in a worker thread can be passed to
the reactor thread and cached without anyone mutating it underneath.
A token's secret is kept out of ``repr`` so that logging a record (or a
test failure printing one) never shows it.
"""
from __future__ import annotations

from typing import Any

from attrs import field, frozen


@frozen
class UserRecord:
    """A row of ``users``."""

    uuid: str
    email: str
    username: str | None
    first_name: str
    last_name: str
    is_admin: bool
    is_active: bool
    created_at: float
    modified_at: float
    prefs: dict[str, Any] = field(factory=dict, hash=False)

    @property
    def full_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p)


@frozen
class TokenRecord:
    """A row of ``api_client_authorizations``.

    Revoked tokens are deleted (as Arvados does), so there is no revoked
    state. ``expires_at`` is UTC epoch seconds, None for "never"; checking it
    is the caller's job (the store hands out expired rows as they are).
    """

    uuid: str
    user_uuid: str
    secret: str = field(repr=False)
    created_at: float
    expires_at: float | None
    scopes: tuple[str, ...] = ("all",)

    @property
    def v2(self) -> str:
        """The token in ``v2/<uuid>/<secret>`` form."""
        return f"v2/{self.uuid}/{self.secret}"
