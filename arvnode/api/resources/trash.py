"""Trash, untrash and delete-into-trash, shared by collections and projects.

Arvados never deletes a collection or a project at once: DELETE and
``trash`` set ``trash_at`` (now) and ``delete_at`` (now + the trash
lifetime); until ``delete_at`` the item can be brought back with
``untrash``. Trashed items are hidden from get and list unless
``include_trash=true``.
"""
from __future__ import annotations

from typing import Any

from arvnode.api.permissions import WRITE
from arvnode.api.resources.base import Ctx
from arvnode.http.resource import HTTPError
from arvnode.store.kinds import from_api_time, to_api_time

# Arvados' Collections.DefaultTrashLifetime (336h).
DEFAULT_TRASH_LIFETIME = 14 * 24 * 3600.0


class Trashable:
    """Mixin for an :class:`ObjectResource` whose kind has trash_at/delete_at.

    Its methods use the ObjectResource it is mixed into (fetch, store,
    present, after_write).
    """

    fetch: Any
    store: Any
    kind: Any
    present: Any
    after_write: Any
    singular: str

    member_actions = {"trash": ("POST",), "untrash": ("POST",)}

    def _trash_defaults(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        """A trash_at without delete_at gets Arvados' default trash lifetime."""
        trash_at = values.get("trash_at")
        if trash_at is not None and values.get("delete_at") is None:
            if not isinstance(trash_at, str):
                raise HTTPError(422, "trash_at must be a time string like 2026-01-02T03:04:05Z")
            values["delete_at"] = to_api_time(from_api_time(trash_at) + DEFAULT_TRASH_LIFETIME)
        return values

    # -- operations ----------------------------------------------------------------

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        """DELETE moves to the trash (Arvados); delete_at is when it goes for good."""
        return await self.trash(ctx, uuid)

    async def trash(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, WRITE, include_trash=True)
        if not record.get("is_trashed"):
            now = ctx.now
            record = await self.store.update_object(
                self.kind, uuid,
                {"trash_at": to_api_time(now), "delete_at": to_api_time(now + DEFAULT_TRASH_LIFETIME)},
                actor_uuid=ctx.user_uuid)
            await self.after_write(ctx, record)
        return self.present(ctx, record)

    async def untrash(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, WRITE, include_trash=True)
        if not record.get("is_trashed") and record.get("trash_at") is None:
            raise HTTPError(422, f"{self.singular} {uuid} is not in the trash")
        record = await self.store.update_object(
            self.kind, uuid, {"trash_at": None, "delete_at": None}, actor_uuid=ctx.user_uuid,
            ensure_unique_name=ctx.flag("ensure_unique_name"))
        await self.after_write(ctx, record)
        return self.present(ctx, record)


