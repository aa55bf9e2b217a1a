"""Trash, untrash and delete-into-trash, shared by collections and projects.

Arvados never deletes a collection or a project at once: DELETE and
``trash`` set ``trash_at`` (now) and ``delete_at`` (now + the trash
lifetime); until ``delete_at`` the item can be brought back with
``untrash``; after it, it is gone (the store hides it at once, the
trash sweeper removes the row). Trashed items are hidden from get and
list unless ``include_trash=true``.

A trashed project takes what it holds with it (the store marks those
records ``is_trashed`` and leaves the project out of the caller's
permission levels, so it grants nothing through ownership). To reach such
records at all, ``include_trash=true`` requests are checked against
levels computed *with* the trash (:func:`trash_access`), never cached, so
the everyday cached levels stay trash-free.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

from arvnode.api.permissions import READ, WRITE, Access, LevelsCache
from arvnode.api.resources.base import Ctx
from arvnode.http.resource import HTTPError
from arvnode.store.kinds import from_api_time, to_api_time

# Arvados' Collections.DefaultTrashLifetime (336h).
DEFAULT_TRASH_LIFETIME = 14 * 24 * 3600.0


class _LevelsWithTrash:
    """The store as :class:`Access` sees it, with trashed projects still in the levels."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def permission_levels(self, user_uuid: str, *, also: Mapping[str, int] = {}
                                ) -> dict[str, int]:
        levels: dict[str, int] = await self._store.permission_levels(
            user_uuid, also=also, include_trash=True)
        return levels


def trash_access(ctx: Ctx) -> Access:
    """The caller's permissions counting trashed projects (for include_trash requests)."""
    return Access(_LevelsWithTrash(ctx.deps.store), ctx.identity, ctx.deps.cluster_id,
                  LevelsCache(ctx.deps.clock, ttl=0))


def own_trash(record: Mapping[str, Any], now: float) -> bool:
    """True when the record's own trash_at has passed (not just a project above it)."""
    trash_at = record.get("trash_at")
    return trash_at is not None and from_api_time(trash_at) <= now


class Trashable:
    """Mixin for an :class:`ObjectResource` whose kind has trash_at/delete_at.

    Mixed in before ObjectResource: its ``fetch`` and ``readable`` handle
    ``include_trash`` and hand everything else to ObjectResource's.
    """

    store: Any
    kind: Any
    resource: ClassVar[str]
    present: Any
    after_write: Any
    singular: ClassVar[str]

    member_actions: ClassVar[Mapping[str, tuple[str, ...]]] = {"trash": ("POST",), "untrash": ("POST",)}

    def _trash_defaults(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        """A trash_at without delete_at gets Arvados' default trash lifetime."""
        trash_at = values.get("trash_at")
        if trash_at is not None and values.get("delete_at") is None:
            if not isinstance(trash_at, str):
                raise HTTPError(422, "trash_at must be a time string like 2026-01-02T03:04:05Z")
            values["delete_at"] = to_api_time(from_api_time(trash_at) + DEFAULT_TRASH_LIFETIME)
        return values

    # -- permission checks that see the trash -----------------------------------

    async def fetch(self, ctx: Ctx, uuid: str, level: int = READ,
                    include_trash: bool = False) -> dict[str, Any]:
        if not include_trash:
            return await super().fetch(ctx, uuid, level)  # type: ignore[misc, no-any-return]
        record = await self.store.get_object(self.kind, uuid)
        await trash_access(ctx).require(record, self.resource, level)
        return record  # type: ignore[no-any-return]

    async def readable(self, ctx: Ctx) -> frozenset[str] | None:
        if ctx.flag("include_trash") and not ctx.access.is_admin:
            return await trash_access(ctx).readable()
        return await super().readable(ctx)  # type: ignore[misc, no-any-return]

    # -- operations ----------------------------------------------------------------

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        """DELETE moves to the trash (Arvados); delete_at is when it goes for good."""
        return await self.trash(ctx, uuid)

    async def trash(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, WRITE, include_trash=True)
        if not own_trash(record, ctx.now):
            now = ctx.now
            record = await self.store.update_object(
                self.kind, uuid,
                {"trash_at": to_api_time(now), "delete_at": to_api_time(now + DEFAULT_TRASH_LIFETIME)},
                actor_uuid=ctx.user_uuid)
            await self.after_write(ctx, record)
        return self.present(ctx, record)

    async def untrash(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, WRITE, include_trash=True)
        if record.get("trash_at") is None:
            if record.get("is_trashed"):
                raise HTTPError(422, f"{self.singular} {uuid} is not in the trash itself: a "
                                     "project above it is; untrash that project to bring it back")
            raise HTTPError(422, f"{self.singular} {uuid} is not in the trash")
        record = await self.store.update_object(
            self.kind, uuid, {"trash_at": None, "delete_at": None}, actor_uuid=ctx.user_uuid,
            ensure_unique_name=ctx.flag("ensure_unique_name"))
        await self.after_write(ctx, record)
        return self.present(ctx, record)


