"""Trash on an S3 volume (arvnode/keep/trash.py says why trash exists).

A trashed block is the object ``trash/<key>`` (``<key>`` being the block's
usual key, ``Prefix`` included), made by a server-side ``CopyObject``; the
live key is deleted only after the copy succeeded, so at every moment at
least one of the two objects holds the whole block. The trash time is the
copy's ``LastModified`` (S3 sets it on every copy), which ListObjectsV2
returns without a HEAD per object; ``empty_trash`` deletes the copies whose
``LastModified + BlobTrashLifetime`` has passed. This is Arvados' S3 layout
without its ``recent/`` markers: arvnode's mtime of a block is its
``LastModified``, as ``index`` reports it.

Why the mtime is read by listing and not by HEAD: a HEAD's ``Last-Modified``
has whole seconds, the listing has the milliseconds that ``index`` reports,
and a trash request's mtime must compare equal to what ``index`` said.

S3 has no lock to hold between "the mtime is still old" and "delete", so
trash checks the mtime again after the copy, just before the delete; a PUT
of the same block landing in that last instant (the writer sees the block
stored and only refreshes its mtime) is acknowledged, and its data is left
only in ``trash/``. The balancer repairs that: each pass untrashes every
referenced block it finds live on no volume but in ``trashed_index``
(:mod:`arvnode.keep.balance`); reads do not untrash.

``untrash`` copies ``trash/<key>`` back (the live copy's ``LastModified``,
its mtime, is then the time of the untrash: it is protected for another
``BlobSigningTTL``) and deletes the trash copy; ``touch`` is a copy of the
key onto itself with replaced metadata (S3 refuses a copy that changes
nothing), which refreshes ``LastModified``. Note that S3 (and moto) list
``LastModified`` in whole seconds.

``BlobTrashLifetime: 0`` trashes nothing here: Arvados deletes at once only
with the driver's ``UnsafeDelete``, which arvnode does not offer.

Kept apart from :mod:`arvnode.keep.volumes.s3` on purpose (that module is
about the block read/write path); the volume's trash methods delegate here.
"""
from __future__ import annotations

import calendar
from datetime import datetime
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web.iweb import IResponse

from arvnode.keep.trash import TrashPolicy
from arvnode.keep.volumes.s3_client import (
    ERROR_BODY_LIMIT,
    S3Error,
    child_text,
    children,
    error_code,
    parse_xml,
)

if TYPE_CHECKING:
    from arvnode.keep.volumes.s3 import S3Volume

__all__ = ["TRASH_PREFIX", "empty_trash", "touch", "trash", "trash_key", "trashed_index",
           "untrash"]

log = Logger()

TRASH_PREFIX = "trash/"
LIST_BODY_LIMIT = 16 << 20


def trash_key(vol: "S3Volume", hash: str) -> str:
    return TRASH_PREFIX + vol.params.key(hash)


def _mtime_ns(text: str | None) -> int | None:
    try:
        when = datetime.fromisoformat((text or "").strip())
    except ValueError:
        return None
    return calendar.timegm(when.utctimetuple()) * 10**9 + when.microsecond * 1000


async def _call(
    vol: "S3Volume",
    method: str,
    key: str | None,
    what: str,
    *,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    ok: Sequence[int] = (200,),
    body_limit: int = ERROR_BODY_LIMIT,
) -> tuple[IResponse, bytes]:
    """One bodyless request, retried by :meth:`S3Client.call` (5xx and
    network failures with backoff). 404 is returned; other statuses raise."""
    response, body = await vol.client.call(
        method, key, what, query=query, headers=headers, ok=ok, body_limit=body_limit)
    return response, body or b""


async def _list_one(vol: "S3Volume", key: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of the object ``key``, from a listing."""
    what = vol._what("LIST", key)
    response, body = await _call(
        vol, "GET", None, what, query={"list-type": "2", "max-keys": "1", "prefix": key},
        body_limit=LIST_BODY_LIMIT,
    )
    if response.code == 404:
        raise S3Error(f"{what}: the bucket does not exist", status=404)
    root = parse_xml(body)
    if root is None:
        raise S3Error(f"{what}: the listing is not S3 XML")
    for item in children(root, "Contents"):
        if child_text(item, "Key") != key:
            continue
        mtime = _mtime_ns(child_text(item, "LastModified"))
        try:
            size = int(child_text(item, "Size") or "")
        except ValueError:
            size = None
        if mtime is None or size is None:
            raise S3Error(f"{what}: unreadable listing entry")
        return size, mtime
    return None


async def _copy(vol: "S3Volume", source: str, dest: str, *, replace: bool = False) -> bool:
    """Server-side copy; False if ``source`` does not exist."""
    what = vol._what("COPY", f"{source} -> {dest}")
    headers = {"x-amz-copy-source": "/" + quote(f"{vol.params.bucket}/{source}", safe="/~")}
    if replace:
        # A copy onto itself must change something: S3 refuses it otherwise.
        headers["x-amz-metadata-directive"] = "REPLACE"
        headers["x-amz-meta-arvnode-touched"] = str(int(vol.clock.seconds()))
    response, body = await _call(vol, "PUT", dest, what, headers=headers)
    if response.code == 404:
        return False
    code, message = error_code(body)
    if code is not None:
        # S3 may answer a copy 200 and report the failure in the body.
        raise S3Error(f"{what}: the copy failed: {code} ({(message or '')[:200]})", code=code,
                      retryable=code in ("InternalError", "SlowDown"))
    return True


async def _delete(vol: "S3Volume", key: str) -> None:
    await _call(vol, "DELETE", key, vol._what("DELETE", key), ok=(200, 204))


def policy_of(vol: "S3Volume") -> TrashPolicy:
    return vol.trash_policy or TrashPolicy()


async def trash(vol: "S3Volume", hash: str, mtime_ns: int | None, *,
                before_delete: Callable[[], Awaitable[None]] | None = None) -> bool:
    """``before_delete`` (tests only) runs between the last mtime check and
    the DELETE: the window no lock closes on S3 (module doc)."""
    policy = policy_of(vol)
    if vol.read_only or not policy.enabled:
        return False
    key = vol.params.key(hash)
    live = await _list_one(vol, key)
    if live is None:
        return False
    _, mtime = live
    if mtime_ns is not None and mtime != mtime_ns:
        return False
    if policy.too_new(mtime, vol.clock.seconds()):
        return False
    if policy.lifetime <= 0:
        log.warn("volume {uuid}: BlobTrashLifetime is 0; S3 blocks are not deleted without"
                 " a trash period (Arvados' UnsafeDelete is not supported)", uuid=vol.uuid)
        return False
    if not await _copy(vol, key, trash_key(vol, hash)):
        return False  # deleted meanwhile
    again = await _list_one(vol, key)
    if again is None:
        return True  # deleted meanwhile; the trash copy is what is left
    if again[1] != mtime:
        return False  # written again since: keep it (the trash copy expires)
    if before_delete is not None:
        await before_delete()
    await _delete(vol, key)
    return True


async def untrash(vol: "S3Volume", hash: str) -> bool:
    if vol.read_only:
        return False
    key, tkey = vol.params.key(hash), trash_key(vol, hash)
    if await _list_one(vol, tkey) is None:
        return False
    if await _list_one(vol, key) is None:
        if not await _copy(vol, tkey, key):
            return False  # emptied meanwhile
    await _delete(vol, tkey)
    return True


async def _listing(vol: "S3Volume", list_prefix: str) -> AsyncIterator[Any]:
    """The ``Contents`` items of every ListObjectsV2 page under ``list_prefix``."""
    what = vol._what("LIST", list_prefix)
    token: str | None = None
    while True:
        query = {"list-type": "2", "max-keys": str(vol.params.index_page_size),
                 "prefix": list_prefix}
        if token:
            query["continuation-token"] = token
        response, body = await _call(vol, "GET", None, what, query=query,
                                     body_limit=LIST_BODY_LIMIT)
        if response.code == 404:
            raise S3Error(f"{what}: the bucket does not exist", status=404)
        root = parse_xml(body)
        if root is None:
            raise S3Error(f"{what}: the listing is not S3 XML")
        for item in children(root, "Contents"):
            yield item
        token = child_text(root, "NextContinuationToken")
        if (child_text(root, "IsTruncated") or "").lower() != "true" or not token:
            break


async def empty_trash(vol: "S3Volume", now: float) -> int:
    if vol.read_only:
        return 0
    lifetime_ns = int(policy_of(vol).lifetime * 1e9)
    now_ns = int(now * 1e9)
    expired: list[str] = []
    async for item in _listing(vol, TRASH_PREFIX + vol.params.prefix):
        key = child_text(item, "Key") or ""
        mtime = _mtime_ns(child_text(item, "LastModified"))
        if mtime is not None and mtime + lifetime_ns <= now_ns:
            expired.append(key)
    for key in expired:
        await _delete(vol, key)
    return len(expired)


async def trashed_index(vol: "S3Volume", prefix: str) -> list[str]:
    """Hashes starting with ``prefix`` that have a ``trash/`` copy (the
    listing :func:`empty_trash` reads, narrowed to ``prefix``)."""
    found: set[str] = set()
    async for item in _listing(vol, TRASH_PREFIX + vol.list_prefix(prefix)):
        key = child_text(item, "Key") or ""
        hash = vol.hash_of_key(key[len(TRASH_PREFIX):], prefix)
        if key.startswith(TRASH_PREFIX) and hash is not None:
            found.add(hash)
    return sorted(found)


async def touch(vol: "S3Volume", hash: str) -> bool:
    if vol.read_only:
        return False
    key = vol.params.key(hash)
    return await _copy(vol, key, key, replace=True)


def device_id(vol: "S3Volume") -> str:
    return f"s3://{vol.params.endpoint.split('://', 1)[-1]}/{vol.params.bucket}"
