"""Every ``/arvados/v1/...`` path, in one table, as the discovery document declares it.

Shapes (after ``/arvados/v1/``)::

    <res>                    GET list, POST create
    <res>/<action>           collection actions (users/current, keep_services/accessible,
                             groups/contents, api_client_authorizations/current)
    <res>/<uuid>             GET get, PUT/PATCH update, DELETE delete
    <res>/<uuid>/<action>    member actions (activate, unsetup, trash, untrash, contents)

HEAD is GET without a body. A known path with a method it does not take
is 405 (with ``Allow``); an unknown path is 404; a uuid of the wrong type
for the resource is 422 naming the expected type.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from attrs import frozen

from arvnode.api.resources.base import ObjectResource
from arvnode.http.resource import HTTPError

_OPS_BY_METHOD = {
    (False, "GET"): "list", (False, "POST"): "create",
    (True, "GET"): "get", (True, "PUT"): "update", (True, "PATCH"): "update",
    (True, "DELETE"): "delete",
}


@frozen
class Route:
    """A matched request: which resource, which operation, which uuid."""

    resource: ObjectResource
    operation: str
    uuid: str | None = None
    public: bool = False

    def call(self, ctx: Any) -> Awaitable[Any]:
        fn: Callable[..., Awaitable[Any]] = getattr(self.resource, self.operation)
        return fn(ctx) if self.uuid is None else fn(ctx, self.uuid)


def _allowed(methods: list[str]) -> dict[str, str]:
    present = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
    return {"Allow": ", ".join(present)}


class Router:
    def __init__(self, resources: Mapping[str, ObjectResource]) -> None:
        self._resources = dict(resources)

    @property
    def resources(self) -> Mapping[str, ObjectResource]:
        return self._resources

    def match(self, method: str, segments: list[str]) -> Route:
        """``segments`` are the path parts after ``arvados/v1``, already unquoted."""
        if method == "HEAD":
            method = "GET"
        path = "/arvados/v1/" + "/".join(segments)
        if not segments or segments[0] not in self._resources:
            raise HTTPError(404, f"Path not found: {path}")
        res = self._resources[segments[0]]
        rest = segments[1:]
        if len(rest) == 0:
            return self._crud(res, method, None, path)
        if len(rest) == 1:
            name = rest[0]
            if name in res.collection_actions:
                return self._action(res, res.collection_actions[name], name, None, method, path)
            return self._crud(res, method, res.check_uuid(name), path)
        if len(rest) == 2:
            uuid, name = rest
            if name in res.member_actions:
                res.check_uuid(uuid, name)
                return self._action(res, res.member_actions[name], name, uuid, method, path)
        raise HTTPError(404, f"Path not found: {path}")

    def _crud(self, res: ObjectResource, method: str, uuid: str | None, path: str) -> Route:
        op = _OPS_BY_METHOD.get((uuid is not None, method))
        if op is None or op not in res.operations:
            methods = [m for (member, m), o in _OPS_BY_METHOD.items()
                       if member == (uuid is not None) and o in res.operations]
            raise HTTPError(405, f"method {method} is not allowed on {path}", _allowed(methods))
        return Route(res, op, uuid)

    def _action(self, res: ObjectResource, methods: tuple[str, ...], name: str,
                uuid: str | None, method: str, path: str) -> Route:
        if method not in methods:
            raise HTTPError(405, f"method {method} is not allowed on {path}",
                            _allowed(list(methods)))
        return Route(res, name, uuid, public=name in res.public_actions)
