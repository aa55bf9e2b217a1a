"""``/arvados/v1/groups``: projects and roles, plus ``contents``.

Projects own collections, workflows and sub-projects; roles are the
principals permission links point at. Any change here can change who may
see what, so every write drops the cached permission levels.

``contents`` lists what a project (or a user's home) owns across kinds in
Arvados' shape: ``items`` (groups first, then collections, then workflows,
each page cut across the kinds in that order), ``items_available`` and
``included`` (the owners, when ``include=["owner_uuid"]``).
"""
from __future__ import annotations

import json
from typing import Any

import attrs

from arvnode import ids
from arvnode.api import params as P
from arvnode.api.permissions import MANAGE, READ, PermissionDenied
from arvnode.api.render import render
from arvnode.api.resources.base import Ctx, ObjectResource
from arvnode.api.resources.trash import Trashable
from arvnode.http.resource import HTTPError
from arvnode.store.errors import NotFound
from arvnode.store.kinds import KINDS
from arvnode.store.query import Filter, QueryError, parse_list_query

_CONTENT_KINDS = ("groups", "collections", "workflows")
_CONTENT_GROUP_CLASSES = ("project", "filter")
# container_uuid is Arvados' other choice (container requests); none exist here.
_INCLUDABLE = frozenset({"owner_uuid", "container_uuid"})


class Groups(Trashable, ObjectResource):
    resource = "groups"
    singular = "group"
    filesystem_names = True
    collection_actions = {"contents": ("GET",)}
    member_actions = {"trash": ("POST",), "untrash": ("POST",), "contents": ("GET",)}
    extra_member_infixes = frozenset({ids.INFIX["users"]})

    async def prepare_create(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        values.setdefault("group_class", "project")
        if values.get("group_class") is None:
            values["group_class"] = "project"
        if values["group_class"] != "project":
            # Trash applies to projects only; a role is deleted outright.
            for key in ("trash_at", "delete_at"):
                if values.get(key) is not None:
                    raise HTTPError(422, f"{key} applies to projects only, not to a "
                                         f"{values['group_class']!r} group")
        return self._trash_defaults(ctx, values)

    async def prepare_update(self, ctx: Ctx, record: dict[str, Any],
                             changes: dict[str, Any]) -> dict[str, Any]:
        if "group_class" in changes and changes["group_class"] != record.get("group_class"):
            raise HTTPError(422, "group_class cannot be changed")
        return self._trash_defaults(ctx, changes)

    async def after_write(self, ctx: Ctx, record: dict[str, Any]) -> None:
        self.deps.levels.invalidate()

    async def delete(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        record = await self.fetch(ctx, uuid, MANAGE, include_trash=True)
        if record.get("group_class") == "project":
            return await self.trash(ctx, uuid)
        gone = await self.store.delete_object(self.kind, uuid)
        await self.after_write(ctx, gone)
        return self.present(ctx, gone)

    # -- contents -------------------------------------------------------------

    async def contents(self, ctx: Ctx, uuid: str | None = None) -> dict[str, Any]:
        """Arvados' ``groups/contents``: what a project or user owns, across kinds.

        ``uuid`` (path or parameter) limits the listing to what it owns,
        with ``recursive=true`` also what its sub-projects own, at any
        depth; without it every readable project, collection and workflow
        is listed, and ``exclude_home_project=true`` keeps only what is
        shared with the caller (owned by another user, or by a project the
        caller cannot read, or by a role), as Arvados' "Shared with me".
        ``include=["owner_uuid"]`` adds the readable owners of the page's
        items under ``included``. Trashed projects answer 404 and trashed
        items are left out unless ``include_trash=true``.
        """
        uuid = uuid or ctx.params.get("uuid") or None
        include_trash = ctx.flag("include_trash")
        exclude_home = ctx.flag("exclude_home_project")
        include = _include_param(ctx)
        scope: list[Filter] = []
        if uuid is not None:
            if not isinstance(uuid, str):
                raise HTTPError(422, "uuid must be a string")
            if exclude_home:
                raise HTTPError(422, "exclude_home_project cannot be used with a parent uuid: "
                                     "it lists what is shared with you outside any one project")
            self.check_uuid(uuid, "contents")
            if uuid[6:11] == self.kind.infix:
                await self.fetch(ctx, uuid, READ, include_trash=include_trash)
            else:
                owner_kind = KINDS[ids.RESOURCE_BY_INFIX[uuid[6:11]]]
                owner = await self.store.get_object(owner_kind, uuid)
                await ctx.access.require(owner, owner_kind.name, READ)
            owners = [uuid]
            if ctx.flag("recursive"):
                owners += await self.store.descendant_projects(uuid)
            scope.append(Filter("owner_uuid", "in", tuple(owners)))
        readable = await self.readable(ctx)
        if exclude_home:
            scope.append(await self._not_home(ctx, readable))
        queries = self._per_kind_queries(ctx, scope)
        limit = queries[0][1].limit
        offset = queries[0][1].offset
        items: list[dict[str, Any]] = []
        available = 0
        count_none = all(q.count == "none" for _, q in queries)
        for kind_name, query in queries:
            kind = KINDS[kind_name]
            # How many of this kind match, to place the page across kinds.
            _, n = await self.store.list_objects(
                kind, attrs.evolve(query, limit=0, offset=0, count="exact"), readable=readable)
            n = n or 0
            available += n
            if offset >= n:
                offset -= n
                continue
            take = limit - len(items)
            if take > 0:
                rows, _ = await self.store.list_objects(
                    kind, attrs.evolve(query, limit=take, offset=offset, count="none"),
                    readable=readable)
                resource = self._resources[kind_name]
                wanted = list(query.select) if query.select is not None else None
                items.extend(resource.present(ctx, r, wanted) for r in rows)
            offset = 0
        body: dict[str, Any] = {
            "kind": "arvados#objectList",
            "etag": "",
            "self_link": "",
            "offset": queries[0][1].offset,
            "limit": limit,
            "items": items,
        }
        if not count_none:
            body["items_available"] = available
        if include:
            body["included"] = await self._included(ctx, items) if "owner_uuid" in include else []
        return body

    @property
    def _resources(self) -> dict[str, ObjectResource]:
        return self.deps.resources

    async def _not_home(self, ctx: Ctx, readable: frozenset[str] | None) -> Filter:
        """The filter behind exclude_home_project: leave out what the caller owns and
        what sits in a project the caller can read (Arvados' rule)."""
        projects = await self.store.project_uuids(readable)
        home = set(projects)
        if ctx.user_uuid:
            home.add(ctx.user_uuid)
        return Filter("owner_uuid", "not in", tuple(sorted(home)))

    def _per_kind_queries(self, ctx: Ctx, scope: list[Filter]) -> list[tuple[str, Any]]:
        """One ListQuery per kind from the request's filters, plus ``scope``.

        A filter naming ``<table>.<attr>`` applies to that table only; a
        filter on an attribute some kinds lack excludes those kinds; one no
        kind has is a 422. Groups are projects (and filter groups) only:
        roles are principals, not contents.
        """
        raw_filters = P.json_value(ctx.params, "filters", [])
        if raw_filters is None:
            raw_filters = []
        if not isinstance(raw_filters, list):
            raise QueryError("filters must be a JSON array of [attribute, operator, operand]")
        base = dict(ctx.params)
        for key in ("filters", "where", "uuid", "include", "recursive", "exclude_home_project"):
            base.pop(key, None)
        queries: list[tuple[str, Any]] = []
        errors: list[str] = []
        for kind_name in _CONTENT_KINDS:
            kind = KINDS[kind_name]
            mine = []
            applicable = True
            for f in raw_filters:
                if isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and "." in f[0]:
                    table, _, attr = f[0].partition(".")
                    if table in KINDS:
                        if table != kind_name:
                            continue
                        f = [attr, f[1], f[2]]
                mine.append(f)
            params = dict(base, filters=json.dumps(mine))
            order = P.json_value(ctx.params, "order")
            if order is not None:
                params["order"] = json.dumps(_order_for(kind_name, order))
            select = P.json_value(ctx.params, "select")
            if isinstance(select, list):
                params["select"] = json.dumps([s for s in select if kind.has(s)])
            try:
                query = parse_list_query(kind, params,
                                         max_limit=self.deps.config.api.max_items_per_response)
            except QueryError as e:
                if "unknown attribute" in str(e):
                    errors.append(str(e))
                    applicable = False
                else:
                    raise
            if not applicable:
                continue
            extra = list(scope)
            if kind_name == "groups":
                extra.append(Filter("group_class", "in", _CONTENT_GROUP_CLASSES))
            queries.append((kind_name, attrs.evolve(query, filters=query.filters + tuple(extra))))
        if not queries:
            raise QueryError("; ".join(errors) or "no kind matches these filters")
        return queries

    async def _included(self, ctx: Ctx, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The owners (users, projects) of ``items`` that the caller can read."""
        seen: dict[str, dict[str, Any]] = {}
        wanted = {i.get("owner_uuid") for i in items if i.get("owner_uuid")}
        for uuid in sorted(u for u in wanted if isinstance(u, str)):
            infix = uuid[6:11] if ids.UUID_RE.match(uuid) else ""
            kind_name = ids.RESOURCE_BY_INFIX.get(infix)
            if kind_name not in ("groups", "users"):
                continue
            try:
                record = await self.store.get_object(KINDS[kind_name], uuid)
                if record.get("is_trashed"):
                    continue
                await ctx.access.require(record, kind_name, READ)
            except (NotFound, PermissionDenied):  # unreadable or gone: just not included
                continue
            resource = self._resources.get(kind_name)
            seen[uuid] = (resource.present(ctx, record) if resource is not None
                          else render(KINDS[kind_name].kind, kind_name, record))
        return list(seen.values())


def _include_param(ctx: Ctx) -> list[str]:
    """``include`` as a list: ``owner_uuid``, ``["owner_uuid"]`` or nothing."""
    include = P.json_value(ctx.params, "include")
    if include is None or include == "":
        return []
    if isinstance(include, str):
        include = [p.strip() for p in include.split(",") if p.strip()]
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise HTTPError(422, "include must be a JSON array of attribute names, e.g. [\"owner_uuid\"]")
    unknown = sorted(set(include) - _INCLUDABLE)
    if unknown:
        raise HTTPError(422, f"include accepts only {', '.join(sorted(_INCLUDABLE))}, "
                             f"not {', '.join(unknown)}")
    return include


def _order_for(kind_name: str, order: Any) -> list[str]:
    """Keep the order clauses that apply to ``kind_name`` (``table.attr`` or plain)."""
    clauses = order if isinstance(order, list) else [p for p in str(order).split(",")]
    kept = []
    kind = KINDS[kind_name]
    for clause in clauses:
        if not isinstance(clause, str):
            continue
        words = clause.strip().split()
        if not words:
            continue
        name = words[0]
        if "." in name:
            table, _, attr = name.partition(".")
            if table != kind_name:
                continue
            name = attr
        if kind.has(name):
            kept.append(" ".join([name, *words[1:]]))
    return kept
