"""Federation in the controller: which requests go to another cluster, and how.

Why a layer of its own: the local handlers only know this cluster's store;
a record whose UUID prefix (or a ``cluster_id`` parameter) names a remote in
``RemoteClusters`` with ``Proxy: true`` lives elsewhere, and the client
must not notice (spec arvados-wire.md §7.2-7.4, sdk-notes §6):

* **Relay** (:meth:`Federation.relay`): every method on every resource of a
  remote UUID, even resources this node does not implement, goes out
  through :class:`arvnode.remote.forward.Forwarder` (salted token, hop
  headers, ``Via``, streamed both ways).
* **Collection by remote UUID** (:meth:`Federation.collection_get`): fetched
  and its manifest rewritten ``+A`` → ``+R<cluster>-`` so the SDK reads the
  blocks through our keepproxy, which fetches them from that cluster.
* **Collection by PDH** (:meth:`Federation.collection_by_pdh`): this
  cluster first, then every Proxy remote in parallel (at most
  ``API.MaxRequestAmplification`` at a time), accepting only an answer
  whose manifest hashes to the PDH.
* **Federated list** (:meth:`Federation.list`): ``uuid =``/``uuid in``
  filters naming several clusters fan out per cluster and the pages merge.

Loops: a request that already passed through a controller (``Via``) or that
carries ``forwarded_for`` is served locally, never sent on. Unknown
prefixes and ``Proxy: false`` remotes are served locally (usually 404), as
Arvados does.

Failures name the cluster: unreachable or 5xx → 502, no answer in time →
504; a remote 4xx on a single-record call passes through with its body.
Deadlines are a little shorter than ``API.RequestTimeout`` so the client
gets the 504 naming the remote, not our own generic timeout.
"""
from __future__ import annotations

import builtins
import json
from typing import Any, Awaitable, Callable, Coroutine, Iterable
from urllib.parse import urlencode, quote

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from arvnode import ids
from arvnode.api import params as P
from arvnode.http.resource import HTTPError
from arvnode.keep.manifest import ManifestError, portable_data_hash, rewrite_remote
from arvnode.remote.client import (
    RemoteClient, RemoteError, RemoteHTTPError, RemoteTimeout, RemoteUnreachable, remote_errors,
)
from arvnode.remote.forward import VIA_CONTROLLER, Forwarder, came_through_controller, outgoing_token
from arvnode.store.errors import NotFound

__all__ = ["Federation", "uuid_filter_set"]

# Paths that are always this cluster's business, whatever cluster_id says.
_LOCAL_ACTIONS = frozenset({"current", "merge", "batch_update", "authenticate", "accessible"})
# GET/HEAD parameters longer than this go in a POST body with
# X-Http-Method-Override: GET (as Arvados' rpc client does).
_MAX_QUERY = 1000


def uuid_filter_set(filters: Any) -> tuple[set[str] | None, bool]:
    """(UUIDs named by ``uuid =``/``uuid in`` filters, or None if there are
    none; whether every filter is such a filter). Several uuid filters
    intersect; non-string elements are ignored (spec 7.2)."""
    if not isinstance(filters, list):
        return None, not filters
    found: set[str] | None = None
    only_uuid = True
    for f in filters:
        if not (isinstance(f, list) and len(f) == 3 and f[0] == "uuid" and f[1] in ("=", "in")):
            only_uuid = False
            continue
        operand = f[2]
        values = {operand} if f[1] == "=" else set(operand) if isinstance(operand, list) else set()
        these = {v for v in values if isinstance(v, str)}
        found = these if found is None else found & these
    return found, only_uuid


def _encode(params: dict[str, Any]) -> str:
    """Parameters as a form/query string, non-strings as JSON (Arvados' rpc)."""
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        pairs.append((key, value if isinstance(value, str) else json.dumps(value)))
    return urlencode(pairs)


@attrs.define
class _Answer:
    cluster: str
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RemoteUnreachable(self.cluster, "the answer is not JSON") from e


class Federation:
    """Routing decisions and cross-cluster calls for one controller."""

    log = Logger()

    def __init__(self, *, forwarder: Forwarder, client: RemoteClient, config: Any,
                 timeout: float | None = None) -> None:
        self.forwarder = forwarder
        self.client = client
        self.cluster_id = str(config.cluster_id)
        self.max_amplification = max(1, int(config.api.max_request_amplification))
        self.max_items = int(config.api.max_items_per_response)
        self.timeout = timeout if timeout is not None else float(config.api.request_timeout) * 0.9
        self._remotes = sorted(
            cid for cid in config.remote_clusters
            if cid != "*" and cid != self.cluster_id and forwarder.may_forward(cid))

    # -- routing -----------------------------------------------------------------

    def usable(self, cluster: str | None) -> bool:
        """True if records of ``cluster`` are served by forwarding there."""
        return bool(cluster and cluster != self.cluster_id and self.forwarder.may_forward(cluster))

    def path_target(self, request: Any, rest: list[str]) -> str | None:
        """The remote named by the UUID in ``/arvados/v1/<res>/<uuid>[/...]``."""
        if came_through_controller(request.requestHeaders):
            return None
        if rest[:1] == ["users"] and self.forwarder.login_cluster:
            return None  # LoginCluster user records: users.py forwards and mirrors them
        if len(rest) >= 2 and ids.UUID_RE.match(rest[1]) and self.usable(rest[1][:5]):
            return rest[1][:5]
        return None

    def param_target(self, request: Any, method: str, rest: list[str],
                     params: dict[str, Any]) -> str | None:
        """The remote named by ``cluster_id`` on create/list (and collection
        actions such as ``groups/contents``)."""
        if came_through_controller(request.requestHeaders) or params.get("forwarded_for"):
            return None
        if not rest or len(rest) > 2 or (len(rest) == 2 and (
                ids.UUID_RE.match(rest[1]) or rest[1] in _LOCAL_ACTIONS)):
            return None
        if len(rest) == 1 and method not in ("GET", "HEAD", "POST"):
            return None
        cluster = params.get("cluster_id")
        if isinstance(cluster, str) and self.usable(cluster):
            return cluster
        return None

    # -- the generic relay ---------------------------------------------------------

    async def relay(self, request: Any, cluster: str, token: str | None, v2_form: str | None) -> None:
        """Send the request as it came to ``cluster`` and stream the answer back."""
        await self.forwarder.forward(request, cluster, token, v2_form=v2_form)

    # -- calls we make ourselves ------------------------------------------------------

    def _headers(self, request: Any, cluster: str, token: str | None,
                 v2_form: str | None) -> Headers:
        send = outgoing_token(
            token, cluster, local_cluster=self.cluster_id,
            login_cluster=self.forwarder.login_cluster,
            anonymous_token_uuid=ids.anonymous_token_uuid(self.cluster_id), v2_form=v2_form)
        h = Headers({b"Authorization": [b"Bearer " + send.encode("utf-8")],
                     b"Accept": [b"application/json"],
                     b"Via": [b"HTTP/1.1 " + VIA_CONTROLLER]})
        rid = getattr(request, "request_id", None) or \
            (request.requestHeaders.getRawHeaders(b"x-request-id") or [None])[0]
        if rid:
            h.setRawHeaders(b"X-Request-Id", [rid.encode("latin-1") if isinstance(rid, str) else rid])
        peer = request.getClientAddress()
        host = str(getattr(peer, "host", "") or "")
        if host:
            h.setRawHeaders(b"X-Forwarded-For", [host.encode("latin-1")])
        return h

    async def call(self, request: Any, cluster: str, path: str, params: dict[str, Any],
                   token: str | None, v2_form: str | None) -> _Answer:
        """GET ``path`` on ``cluster`` with ``params``; any status is returned.

        Transport failures raise :class:`RemoteUnreachable` / :class:`RemoteTimeout`.
        """
        headers = self._headers(request, cluster, token, v2_form)
        encoded = _encode(params)
        base = self.client.base_url(cluster)
        if len(encoded) <= _MAX_QUERY:
            method, url, body = "GET", base + path + ("?" + encoded if encoded else ""), None
        else:
            method, url, body = "POST", base + path, encoded.encode("utf-8")
            headers.setRawHeaders(b"Content-Type", [b"application/x-www-form-urlencoded"])
            headers.setRawHeaders(b"X-Http-Method-Override", [b"GET"])
        response = await self.client.request(cluster, method, url, headers=headers, body=body,
                                              timeout=self.timeout)
        data = await self.client.read_body(cluster, response, timeout=self.timeout)
        return _Answer(cluster, response.code, data)

    def _forward_params(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in params.items() if k not in ("api_token", "_method", "cluster_id")}
        prev = params.get("forwarded_for")
        out["forwarded_for"] = self.cluster_id + "-" + (prev if isinstance(prev, str) else "")
        return out

    # -- collections -------------------------------------------------------------

    async def collection_get(self, request: Any, cluster: str, uuid: str, params: dict[str, Any],
                             token: str | None, v2_form: str | None) -> Any:
        """A remote collection by UUID, its manifest rewritten to ``+R<cluster>-``."""
        out = {k: v for k, v in params.items() if k not in ("api_token", "_method")}
        try:
            answer = await self.call(request, cluster, f"/arvados/v1/collections/{quote(uuid)}",
                                     out, token, v2_form)
        except RemoteTimeout as e:
            raise HTTPError(504, e.message) from e
        except RemoteError as e:
            raise HTTPError(502, e.message) from e
        if answer.status >= 500:
            raise HTTPError(502, RemoteHTTPError(answer.status, answer.body, cluster=cluster).message)
        if answer.status >= 300:
            errors = remote_errors(answer.body) or [
                RemoteHTTPError(answer.status, answer.body, cluster=cluster).message]
            raise HTTPError(answer.status, "; ".join(errors))
        try:
            record = answer.json()
        except RemoteUnreachable as e:
            raise HTTPError(502, e.message) from e
        return self._rewrite(record, cluster)

    def _rewrite(self, record: Any, cluster: str) -> Any:
        if isinstance(record, dict) and isinstance(record.get("manifest_text"), str) \
                and record["manifest_text"]:
            try:
                record["manifest_text"] = rewrite_remote(record["manifest_text"], cluster)
            except ManifestError as e:
                raise HTTPError(502, f"remote cluster {cluster} sent an invalid manifest: {e}") from e
        return record

    async def collection_by_pdh(self, ctx: Any, local: Callable[[], Awaitable[Any]],
                                pdh: str, token: str | None, v2_form: str | None) -> Any:
        """This cluster first; on 404 every Proxy remote, first verified answer wins."""
        try:
            return await local()
        except NotFound:
            if ctx.params.get("forwarded_for") or not self._remotes:
                raise
        except HTTPError as e:
            if e.status != 404 or ctx.params.get("forwarded_for") or not self._remotes:
                raise
        params = self._forward_params(ctx.params)
        path = f"/arvados/v1/collections/{quote(pdh)}"
        limiter = DeferredSemaphore(self.max_amplification)
        failures: list[tuple[int, str]] = []

        async def ask(cluster: str) -> Any:
            await limiter.acquire()
            try:
                answer = await self.call(ctx.request, cluster, path, params, token, v2_form)
            finally:
                limiter.release()
            if answer.status != 200:
                raise RemoteHTTPError(answer.status, answer.body, cluster=cluster)
            record = answer.json()
            text = record.get("manifest_text") if isinstance(record, dict) else None
            if isinstance(text, str):
                got = portable_data_hash(text)
                if got != pdh and not pdh.startswith(got + "+"):
                    raise RemoteHTTPError(502, json.dumps({"errors": [
                        f"bad portable data hash {got} received from remote {cluster} "
                        f"(expected {pdh})"]}).encode(), cluster=cluster)
            return self._rewrite(record, cluster)

        def failed(e: BaseException, cluster: str) -> None:
            if isinstance(e, RemoteHTTPError):
                failures.append((e.status, e.message))
            elif isinstance(e, RemoteError):
                failures.append((502, e.message))
            elif isinstance(e, HTTPError):
                failures.append((e.status, e.message))
            else:
                self.log.failure("PDH lookup at {cluster}", cluster=cluster)
                failures.append((500, f"remote cluster {cluster}: internal error"))

        winner = await _first_success({c: ask(c) for c in self._remotes}, failed)
        if winner is not None:
            return winner
        statuses = [s for s, _ in failures]
        messages = [m for _, m in failures]
        if all(s == 404 for s in statuses):
            raise HTTPError(404, f"collection {pdh} not found on this cluster or any remote "
                                 f"({'; '.join(messages)})")
        if any(s >= 500 or s == 429 for s in statuses):
            raise HTTPError(502, "; ".join(messages))
        raise HTTPError(422, "; ".join(messages))

    # -- federated list ------------------------------------------------------------

    async def list(self, ctx: Any, local: Callable[[Any], Awaitable[Any]], resource: str,
                   kind: str, token: str | None, v2_form: str | None) -> Any:
        """A list whose uuid filters name other clusters: one batch per cluster, merged.

        ``local(ctx)`` runs the local list handler (with changed params).
        """
        params = ctx.params
        if P.boolean(params, "bypass_federation") or params.get("forwarded_for"):
            return await local(ctx)
        if resource in ("users", "api_client_authorizations") and self.forwarder.login_cluster:
            return await local(ctx)  # the LoginCluster is the authority (users.py), spec 7.2
        uuids, only_uuid = uuid_filter_set(P.json_value(params, "filters"))
        if not uuids:
            return await local(ctx)
        by_cluster: dict[str, list[str]] = {}
        for u in sorted(uuids):
            by_cluster.setdefault(u[:5], []).append(u)
        if set(by_cluster) <= {self.cluster_id}:
            return await local(ctx)
        self._check_list(params, only_uuid, len(uuids))
        select = P.select_list(params)
        if select is not None and "uuid" not in select:
            select = ["uuid"] + select
        limiter = DeferredSemaphore(self.max_amplification)
        path = f"/arvados/v1/{resource}"

        async def one_cluster(cluster: str, wanted: list[str]) -> list[dict[str, Any]]:
            if cluster != self.cluster_id and not self.usable(cluster):
                raise HTTPError(404, f"no proxy available for cluster {cluster}")
            found: dict[str, dict[str, Any]] = {}
            missing = list(wanted)
            while missing:
                batch = {"filters": [["uuid", "in", missing]], "count": "none",
                         "limit": len(missing), "offset": 0}
                if select is not None:
                    batch["select"] = select
                await limiter.acquire()
                try:
                    items = await self._list_page(ctx, local, cluster, path, batch, token, v2_form)
                finally:
                    limiter.release()
                if not items:
                    break
                progress = False
                for item in items:
                    u = item.get("uuid") if isinstance(item, dict) else None
                    if u in missing and u not in found:
                        found[u] = item
                        progress = True
                if not progress:
                    raise HTTPError(502, f"cluster {cluster} made no progress listing {resource}")
                missing = [u for u in missing if u not in found]
            return list(found.values())

        results = await _all_or_first_error(
            [one_cluster(c, us) for c, us in sorted(by_cluster.items())])
        merged = [item for part in results for item in part]
        if sum(1 for part in results if part) > 1:
            merged.sort(key=lambda r: str(r.get("modified_at") or ""), reverse=True)
        return {"kind": kind + "List", "etag": "", "self_link": "", "offset": 0,
                "limit": len(uuids), "items": merged}

    async def _list_page(self, ctx: Any, local: Callable[[Any], Awaitable[Any]], cluster: str,
                         path: str, batch: dict[str, Any], token: str | None,
                         v2_form: str | None) -> builtins.list[Any]:  # not self.list
        if cluster == self.cluster_id:
            page = await local(attrs.evolve(ctx, params=dict(batch)))
            return list(page.get("items", []))
        params = dict(batch)
        prev = ctx.params.get("forwarded_for")
        params["forwarded_for"] = self.cluster_id + "-" + (prev if isinstance(prev, str) else "")
        try:
            answer = await self.call(ctx.request, cluster, path, params, token, v2_form)
        except RemoteTimeout as e:
            raise HTTPError(504, e.message) from e
        except RemoteError as e:
            raise HTTPError(502, e.message) from e
        if answer.status != 200:
            raise HTTPError(502, RemoteHTTPError(answer.status, answer.body, cluster=cluster).message)
        try:
            body = answer.json()
        except RemoteUnreachable as e:
            raise HTTPError(502, e.message) from e
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise HTTPError(502, f"remote cluster {cluster} answered a list without items")
        return items

    def _check_list(self, params: dict[str, Any], only_uuid: bool, n: int) -> None:
        """400 unless the request is one a federated list can answer exactly (spec 7.2)."""
        prefix = "cannot execute federated list query"
        if not only_uuid:
            raise HTTPError(400, f"{prefix} with filters other than 'uuid = ...' and 'uuid in [...]'")
        count = params.get("count")
        if count != "none":
            raise HTTPError(400, f'{prefix} unless count=="none"')
        limit = params.get("limit")
        if limit not in (None, ""):
            try:
                value = int(limit)
            except (TypeError, ValueError) as e:
                raise HTTPError(400, f"limit must be an integer, not {limit!r}") from e
            if 0 <= value < n:
                raise HTTPError(400, f"{prefix} with limit ({value}) < number of uuids ({n})")
        offset = params.get("offset")
        if offset not in (None, "", 0, "0"):
            raise HTTPError(400, f"{prefix} with offset ({offset}) > 0")
        order = P.json_value(params, "order")
        if order not in (None, "", []):
            raise HTTPError(400, f"{prefix} with order ({order})")
        if n > self.max_items:
            raise HTTPError(400, f"{prefix} with {n} uuids (max {self.max_items})")


async def _all_or_first_error(coros: Iterable[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run concurrently; the results in order, or the first error (the rest cancelled)."""
    ds = [Deferred.fromCoroutine(c) for c in coros]
    done: Deferred[list[Any]] = Deferred()
    results: list[Any] = [None] * len(ds)
    remaining = [len(ds)]

    def ok(value: Any, i: int) -> None:
        results[i] = value
        remaining[0] -= 1
        if remaining[0] == 0 and not done.called:
            done.callback(results)

    def bad(failure: Any) -> None:
        if not done.called:
            done.errback(failure)
        # Later failures (mostly the cancellations below) are already answered.

    for i, d in enumerate(ds):
        d.addCallbacks(ok, bad, callbackArgs=(i,))
    if not ds:
        return []
    try:
        return await done
    finally:
        for d in ds:
            if not d.called:
                d.cancel()


async def _first_success(coros: dict[str, Coroutine[Any, Any, Any]],
                         failed: Callable[[BaseException, str], None]) -> Any:
    """The first successful result (others cancelled), or None if all failed."""
    ds = {c: Deferred.fromCoroutine(co) for c, co in coros.items()}
    done: Deferred[Any] = Deferred()
    remaining = [len(ds)]

    def ok(value: Any) -> None:
        if not done.called:
            done.callback(value)

    def bad(failure: Any, cluster: str) -> None:
        if not done.called and not failure.check(CancelledError):
            failed(failure.value, cluster)
        remaining[0] -= 1
        if remaining[0] == 0 and not done.called:
            done.callback(None)

    for cluster, d in ds.items():
        d.addCallbacks(ok, bad, errbackArgs=(cluster,))
    if not ds:
        return None
    try:
        return await done
    finally:
        for d in ds.values():
            if not d.called:
                d.cancel()
