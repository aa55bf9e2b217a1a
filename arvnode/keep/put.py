"""Keep uploads at header time: decide before the body, then answer.

Why a module of its own: this is the moment DESIGN.md §2 cares most about —
locator syntax, ``Content-Length`` (411/400/413), the token and upload
permission (403), the global in-flight budget (503 + ``Retry-After``) and the
choice of volumes are all settled while the client is still waiting for
``100 Continue``, so a refused upload never sends its body. Once accepted,
the body goes to an :class:`~arvnode.keep.upload.UploadPipeline`, and this
module turns its outcome into the keepproxy's answer (signed locator,
``X-Keep-Replicas-Stored``, ``X-Keep-Storage-Classes-Confirmed``).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from arvnode.http.streaming import BodySink, StreamingRequest, plain_error
from arvnode.keep.locator import MAX_BLOCK_SIZE, LocatorError, parse_locator, sign_locator
from arvnode.keep.rendezvous import sort_services
from arvnode.keep.upload import (
    BufferPool,
    HashMismatch,
    NoReplicas,
    Replica,
    UploadPipeline,
    UploadResult,
    abort_quietly,
    all_full,
    confirmed_classes,
    open_replicas,
)
from arvnode.keep.wire import FORBIDDEN, HASH_PATH_RE, KeepError, format_classes, requested_classes

if TYPE_CHECKING:
    from arvnode.keep.proxy import KeepProxy

__all__ = ["Uploads"]


class Uploads:
    """PUT ``/<md5>[+size]`` and POST ``/`` for one :class:`KeepProxy`."""

    #: The shared batch buffers hold this many upload windows in all (the
    #: node's upload memory, whatever the number of uploads; at the default
    #: 8 MiB window, 8 buffers of 4 MiB). Enough to keep the hash and write
    #: pools busy; never more than the in-flight budget.
    BUFFER_WINDOWS = 4

    def __init__(self, proxy: "KeepProxy") -> None:
        self._p = proxy
        batch = proxy.batch_size
        total = min(self.BUFFER_WINDOWS * 2 * batch, max(proxy.budget.limit, 2 * batch))
        self.buffers = BufferPool(batch, total // batch)

    def header_hook(self, request: StreamingRequest) -> Awaitable[BodySink | None] | None:
        """The streaming seam's hook: uploads are ours, the rest is stock."""
        if request.method in (b"PUT", b"POST"):
            return self._upload_headers(request)
        return None

    async def _upload_headers(self, request: StreamingRequest) -> BodySink | None:
        try:
            return await self._accept_upload(request)
        except KeepError as e:
            self._p.send_error(request, e.code, e.message, e.headers)
            return None

    async def _accept_upload(self, request: StreamingRequest) -> BodySink:
        self._p.common_headers(request)
        self._p.loop_check(request)
        expected: str | None
        if request.method == b"PUT":
            if not HASH_PATH_RE.match(request.path):
                raise KeepError(400, "Bad request: PUT needs /<md5 hash>[+<size>]")
            try:
                locator = parse_locator(request.path[1:].decode("ascii"))
            except (LocatorError, UnicodeDecodeError) as e:
                raise KeepError(400, f"invalid locator: {e}") from e
            expected = locator.hash
            size_hint = locator.size
        else:
            if request.path != b"/":
                raise KeepError(400, "Bad request: POST is only accepted at /")
            expected, size_hint = None, None
        # Content-Length: present, a decimal number, within the block size.
        if (
            request.content_length_invalid
            or request.getHeader(b"content-length") is None
            or request.declared_length is None
        ):
            raise KeepError(411, "Length Required: a decimal Content-Length header is required")
        length = request.declared_length
        if size_hint is not None and size_hint != length:
            raise KeepError(400, "Locator size hint does not match Content-Length header")
        if length > MAX_BLOCK_SIZE:
            raise KeepError(413, f"Exceeded maximum block size ({MAX_BLOCK_SIZE})")
        token, identity = await self._p.identify(request)
        if not self._p.may_upload(identity):
            raise KeepError(403, FORBIDDEN)
        desired = self._desired_replicas(request)
        classes = self._requested_classes(request)
        if not self._p.budget.try_acquire(length):
            raise KeepError(
                503,
                "too many uploads in flight; try again",
                {"Retry-After": "1", "X-Keep-Replicas-Stored": "0"},
            )
        release = _Once(lambda: self._p.budget.release(length))
        request.notifyFinish().addBoth(lambda _: release())
        open_errors: list[BaseException] = []

        async def open_for(digest: str) -> list[Replica]:
            ordered = sort_services(digest, self._p.volumes, key=lambda v: v.uuid)
            return await open_replicas(
                digest, length, ordered, desired, classes, self._p.log,
                request_id=request.request_id, errors=open_errors,
            )

        async def open_spools() -> list[Replica]:
            # POST: the hash (and so the rendezvous order) is unknown; spread
            # by request id. GET tries every volume, so placement only
            # affects which one answers first.
            key = hashlib.md5(request.request_id.encode()).hexdigest()
            ordered = sort_services(key, self._p.volumes, key=lambda v: v.uuid)
            return await open_replicas(
                "", length, ordered, desired, classes, self._p.log,
                opener=lambda v: v.open_spool(length),  # type: ignore[attr-defined]
                errors=open_errors,
            )

        try:
            replicas: list[Replica] | None = None
            spool = expected is None and all(
                callable(getattr(v, "open_spool", None))
                for v in self._p.volumes
                if not v.read_only
            )
            if expected is not None or spool:
                replicas = await (open_for(expected) if expected is not None else open_spools())
                if not replicas:
                    raise self._no_volume_error(classes, open_errors)
                if request.gone:
                    for r in replicas:
                        abort_quietly(r.writer)
                    raise CancelledError("client went away")
            pipeline = UploadPipeline(
                request=request,
                reactor=self._p.reactor,
                hash_pool=self._p.hash_pool,
                batch_size=self._p.batch_size,
                length=length,
                expected_hash=expected,
                replicas=replicas,
                open_later=open_for if replicas is None else None,
                stats=self._p.upload_stats,
                buffers=self.buffers,
            )
        except BaseException:
            release()
            raise
        pipeline.done.addBoth(self._upload_done, request, token, desired, classes, expected, length)
        pipeline.done.addErrback(lambda f: self._p.log.failure("answering an upload failed", f))
        return pipeline

    def _no_volume_error(self, classes: list[str], errors: list[BaseException]) -> KeepError:
        """503, as Arvados' keepproxy answers when it runs out of servers
        (spec §4.5, §4.7), also when every one was full (507): the message
        says which and why."""
        served = {c for v in self._p.volumes if not v.read_only for c in v.storage_classes}
        missing = [c for c in classes if c not in served]
        if missing:
            reason = f"no writable volume serves storage class {', '.join(missing)}"
        else:
            what = (
                "every writable volume is full"
                if all_full(errors)
                else "no writable volume could take the block"
            )
            reason = str(NoReplicas.because(what, errors))
        return KeepError(
            503,
            f"Could not write sufficient replicas: {reason}",
            {
                "X-Keep-Replicas-Stored": "0",
                "X-Keep-Storage-Classes-Confirmed": format_classes(confirmed_classes([], classes)),
            },
        )

    def _desired_replicas(self, request: Any) -> int:
        raw = request.getHeader(b"x-keep-desired-replicas")
        if raw is not None:
            try:
                n = int(raw.strip())
            except ValueError:
                n = 0  # unparsable: ignored, as Arvados does
            if n > 0:
                return n
        return self._p.default_replication

    def _requested_classes(self, request: Any) -> list[str]:
        return requested_classes(request) or list(self._p.default_classes)

    def _upload_done(
        self,
        result: UploadResult | Failure,
        request: StreamingRequest,
        token: str,
        desired: int,
        classes: list[str],
        expected: str | None,
        length: int,
    ) -> None:
        name = f"{expected}+{length}" if expected else f"(POST)+{length}"
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, HashMismatch):
                outcome, code, msg = "hash-mismatch", 422, str(error)
            elif isinstance(error, NoReplicas):
                outcome, code, msg = "no-replicas", 503, f"Could not write sufficient replicas: {error}"
            else:
                outcome, code, msg = "aborted", 0, str(error)
            self._p.audit_transfer(request, "put", name, nbytes=request.bytes_in, outcome=outcome, replicas=0)
            if code and not request.gone:
                headers = {"X-Keep-Replicas-Stored": "0"}
                if code == 503:
                    headers["X-Keep-Storage-Classes-Confirmed"] = format_classes(
                        confirmed_classes([], classes)
                    )
                self._p.send_error(request, code, msg, headers)
            return
        self._p.metrics.bytes.labels(direction="in").inc(result.size)
        for v in result.committed:
            self._p.bad_replicas.discard(v.uuid, result.hash)
        stored = result.replicas
        confirmed = confirmed_classes(result.committed, classes)
        ok = stored >= desired and all(confirmed[c] >= desired for c in classes)
        name = f"{result.hash}+{result.size}"
        self._p.audit_transfer(
            request,
            "put",
            name,
            nbytes=result.size,
            outcome="ok" if ok else "short",
            replicas=stored,
            classes=confirmed,
        )
        if request.gone:
            return
        self._p.common_headers(request)
        request.setHeader(b"X-Keep-Replicas-Stored", str(stored).encode())
        request.setHeader(b"X-Keep-Storage-Classes-Confirmed", format_classes(confirmed).encode())
        if not ok:
            want = f"{desired} replicas" + (f" in classes {', '.join(classes)}" if classes else "")
            plain_error(
                request,
                503,
                f"Could not write sufficient replicas: wanted {want},"
                f" stored {stored} ({format_classes(confirmed) or 'no class'})",
            )
            return
        body = sign_locator(name, token, self._p.signing_key, self._p.signing_ttl, self._p.now()).encode()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()

    # -- everything else (render time) -------------------------------------------


class _Once:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()
