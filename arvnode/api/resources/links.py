"""``/arvados/v1/links``, and permission links in particular.

A ``permission`` link ``tail_uuid --name--> head_uuid`` grants the tail
(a user or a group) ``can_read``/``can_write``/``can_manage`` on the head
(an object or a project). Only someone who can manage the head may grant
it; the grantee can see the link but not change it. Every write drops the
cached permission levels so the grant or revocation applies to the next
request.
"""
from __future__ import annotations

from typing import Any

from arvnode import ids
from arvnode.api.permissions import LEVEL_BY_NAME, MANAGE, READ, PermissionDenied
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.http.resource import HTTPError
from arvnode.store.errors import NotFound
from arvnode.store.kinds import KINDS

_PRINCIPALS = (ids.INFIX["users"], ids.INFIX["groups"])


class Links(ObjectResource):
    resource = "links"
    singular = "link"

    async def _check_permission_link(self, ctx: Ctx, values: dict[str, Any]) -> None:
        name = values.get("name")
        if name not in LEVEL_BY_NAME:
            raise HTTPError(422, f"a permission link's name must be one of "
                                 f"{', '.join(LEVEL_BY_NAME)}, not {name!r}")
        tail, head = values.get("tail_uuid"), values.get("head_uuid")
        if not isinstance(tail, str) or not ids.UUID_RE.match(tail) or tail[6:11] not in _PRINCIPALS:
            raise HTTPError(422, f"a permission link's tail_uuid must be a user or group UUID, "
                                 f"not {tail!r}")
        head_record = await self._head(head)
        if head_record is None:
            raise HTTPError(422, f"head_uuid {head!r} does not name an existing object")
        assert isinstance(head, str)  # _head found an object: head is a UUID
        head_kind = ids.RESOURCE_BY_INFIX[head[6:11]]
        level = await ctx.access.record_level(head_record, head_kind)
        if level < READ:
            raise HTTPError(422, f"head_uuid {head!r} does not name an existing object")
        if level < MANAGE:
            raise PermissionDenied(f"permission denied: you need can_manage on {head} to share it")

    async def _head(self, head: Any) -> dict[str, Any] | None:
        if not isinstance(head, str) or not ids.UUID_RE.match(head):
            return None
        kind_name = ids.RESOURCE_BY_INFIX.get(head[6:11])
        if kind_name not in KINDS:
            return None
        try:
            return await self.store.get_object(KINDS[kind_name], head)  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def prepare_create(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        if values.get("link_class") == "permission":
            await self._check_permission_link(ctx, values)
        return values

    async def prepare_update(self, ctx: Ctx, record: dict[str, Any],
                             changes: dict[str, Any]) -> dict[str, Any]:
        merged = {**record, **changes}
        if merged.get("link_class") == "permission":
            await self._check_permission_link(ctx, merged)
        return changes

    async def after_write(self, ctx: Ctx, record: dict[str, Any]) -> None:
        self.deps.levels.invalidate()
