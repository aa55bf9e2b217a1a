"""The S3 volume: blocks as objects in one bucket (AWS S3, R2, Wasabi, Ceph
RGW, MinIO, GCS's interoperability API), each volume with its own bucket and
credentials.

Why it works the way it does:

* **A block appears under its final key only once its md5 matched.** The
  upload goes straight to the final key with ``Content-MD5`` taken from the
  locator (a real bucket refuses a mismatching body), and the writer holds
  back the block's *last byte* until :meth:`S3BlockWriter.commit`, which the
  keepproxy calls only after its own md5 of the stream matched. S3 stores
  nothing for a request whose body never completed, so ``abort`` (dropping
  the connection) leaves nothing behind, and no temporary object needs a
  server-side copy (64 MiB more work for the bucket) or a cleanup.
* **Bounded memory.** A write's Deferred fires only when the transport has
  flushed it (the producer is not paused), so the keepproxy's next batch waits
  for the bucket: one batch in flight per upload. Small blocks (up to
  ``replay_limit``) are also kept until the bucket answered, so a 5xx or a
  dropped connection can be retried in full; bigger ones are retried only if
  nothing was sent yet, and otherwise fail, so the client retries the PUT.
* **GET streams** with backpressure: the reader is a push producer whose
  pause/resume pause the S3 connection itself.
* Missing blocks are ``None``; every failure is a :class:`VolumeError`
  (:class:`S3Error`), which the keepproxy answers with 502/503, never 500.

Requests are signed and sent by :mod:`~arvnode.keep.volumes.s3_client`; the
upload and download state machines are :mod:`~arvnode.keep.volumes.s3_writer`
and :mod:`~arvnode.keep.volumes.s3_reader`; DriverParameters are checked by
:mod:`~arvnode.keep.volumes.s3_params`.
"""
from __future__ import annotations

import calendar
import random
import re
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from arvnode.keep.volume import IBlockReader, IBlockWriter, ITrashedIndex, IVolume, VolumeError
from arvnode.keep.volumes import s3trash
from arvnode.keep.volumes.s3_client import (
    HASH_RE,
    S3Client,
    S3Error,
    S3Stats,
    child_text,
    children,
    content_length,
    error_code,
    etag_md5,
    parse_xml,
)
from arvnode.keep.volumes.s3_params import S3Parameters
from arvnode.keep.volumes.s3_reader import S3BlockReader
from arvnode.keep.volumes.s3_writer import S3BlockWriter

__all__ = ["S3Volume", "S3BlockWriter", "S3BlockReader"]

#: Blocks up to this size are kept until the bucket answered (full retries).
DEFAULT_REPLAY_LIMIT = 1 << 20
LIST_BODY_LIMIT = 16 << 20


@implementer(IVolume, ITrashedIndex)
class S3Volume:
    """One bucket (see module docstring). ``reactor`` is the network,
    ``clock`` the timers, ``rng`` the backoff jitter."""

    log = Logger()

    def __init__(
        self,
        uuid: str,
        params: S3Parameters,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        rng: random.Random | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
        replication: int = 1,
        read_only: bool = False,
        storage_classes: Iterable[str] = ("default",),
        max_attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        replay_limit: int = DEFAULT_REPLAY_LIMIT,
        threadpool: Any = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``tls_policy`` defaults to verifying with the system's CAs, or
        with ``ArvNodeCACertificate``'s alone when given (the parameter wins
        over ``tls_policy``: it is this bucket's own). ``threadpool`` runs
        credential loads (the node's io pool); ``environ`` is read for role
        credentials (default ``os.environ``)."""
        if replication < 1:
            raise ValueError(f"replication must be at least 1, not {replication}")
        if params.ca_file or tls_policy is None:
            from arvnode.tls import TLSConfigError, client_policy

            try:
                tls_policy = client_policy(insecure=False, ca_file=params.ca_file or None)
            except (TLSConfigError, ValueError) as e:
                raise ValueError(
                    f"Volumes.{uuid}.DriverParameters.ArvNodeCACertificate: no usable PEM CA"
                    f" certificate in {params.ca_file!r} ({e})"
                ) from None
        self.uuid = uuid
        self.params = params
        self.replication = replication
        self.read_only = read_only
        self.storage_classes: tuple[str, ...] = tuple(storage_classes)
        self.stats = S3Stats()
        self.replay_limit = replay_limit
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.client = S3Client(
            params,
            reactor=reactor,
            clock=self.clock,
            rng=rng if rng is not None else random.SystemRandom(),
            tls_policy=tls_policy,
            stats=self.stats,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            threadpool=threadpool,
            name=uuid,
            environ=environ,
        )
        self._writers: set[S3BlockWriter] = set()

    def __repr__(self) -> str:
        return f"<S3Volume {self.uuid} bucket {self.params.bucket}>"

    def _what(self, op: str, key: str | None) -> str:
        target = self.params.bucket if key is None else f"{self.params.bucket}/{key}"
        return f"volume {self.uuid}: {op} {target}"

    @staticmethod
    def _bad_hash(hash: str) -> "Deferred[Any] | None":
        if isinstance(hash, str) and HASH_RE.match(hash):
            return None
        return fail(ValueError(f"not a block hash: {hash!r}"))

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> "Deferred[None]":
        """Nothing to prepare: a bucket (or a metadata service) that is down
        now may be up later, and the node should serve its other volumes
        meanwhile; role credentials are loaded by the first request."""
        self.log.info(
            "volume {uuid}: S3 bucket {bucket} at {endpoint} ({style}, prefix {prefix!r},"
            " credentials: {source}{ca})",
            uuid=self.uuid, bucket=self.params.bucket, endpoint=self.params.endpoint,
            style="path style" if self.params.use_path_style else "virtual-host style",
            prefix=self.params.prefix, source=self.client.credentials.source,
            ca=f", CA {self.params.ca_file}" if self.params.ca_file else "",
        )
        return succeed(None)

    def stop(self) -> "Deferred[None]":
        """Abort open uploads (the bucket keeps nothing of them) and close
        idle connections."""
        for writer in list(self._writers):
            writer.abort()
        return self.client.close().addCallback(lambda _: None)

    # -- writes ------------------------------------------------------------------

    def open_write(self, hash: str, size: int, *, request_id: str = "") -> "Deferred[IBlockWriter]":
        """A writer for ``hash``, after a HEAD of its key: that finds a bucket
        that refuses or is down before the client sends its body, and a block
        already stored with a matching md5 ETag is not uploaded again."""
        bad = self._bad_hash(hash)
        if bad is not None:
            return bad
        if size < 0:
            return fail(ValueError(f"negative block size {size}"))
        if self.read_only:
            return fail(VolumeError(f"volume {self.uuid} is read-only"))
        return Deferred.fromCoroutine(self._open_write(hash, size))

    async def _open_write(self, hash: str, size: int) -> IBlockWriter:
        key = self.params.key(hash)
        response, _ = await self.client.call("HEAD", key, self._what("HEAD", key))
        present = (
            response.code == 200
            and content_length(response) == size
            and etag_md5(response) == hash
        )
        writer = S3BlockWriter(self, hash, size, key, present=present)
        if not present:
            self._writers.add(writer)
        return writer

    # -- reads -------------------------------------------------------------------

    def open_read(self, hash: str, *, request_id: str = "") -> "Deferred[IBlockReader | None]":
        """Start the GET (retried until its headers arrive); None on 404."""
        bad = self._bad_hash(hash)
        if bad is not None:
            return bad
        return Deferred.fromCoroutine(self._open_read(hash))

    async def _open_read(self, hash: str) -> IBlockReader | None:
        key = self.params.key(hash)
        what = self._what("GET", key)
        response, body = await self.client.call("GET", key, what, keep_open=True)
        if response.code == 404:
            code, _ = error_code(body or b"")
            if code == "NoSuchBucket":
                raise S3Error(f"{what}: the bucket does not exist", status=404, code=code)
            return None
        size = response.length if isinstance(response.length, int) else content_length(response)
        if size is None:
            response.deliverBody(_Discard())
            raise S3Error(f"{what}: answer without a Content-Length")
        return S3BlockReader(
            response, size, name=f"{self.params.bucket}/{key}", clock=self.clock,
            read_timeout=self.params.read_timeout, stats=self.stats,
        )

    def stat(self, hash: str, *, request_id: str = "") -> "Deferred[int | None]":
        """HEAD: the stored size, or None when the key is missing."""
        bad = self._bad_hash(hash)
        if bad is not None:
            return bad
        return Deferred.fromCoroutine(self._stat(hash))

    async def _stat(self, hash: str) -> int | None:
        key = self.params.key(hash)
        what = self._what("HEAD", key)
        response, _ = await self.client.call("HEAD", key, what)
        if response.code == 404:
            return None
        size = content_length(response)
        if size is None:
            raise S3Error(f"{what}: answer without a Content-Length")
        return size

    def index(self, prefix: str) -> "Deferred[Sequence[tuple[str, int, int]]]":
        """``(hash, size, mtime_ns)`` of the blocks whose hash starts with
        ``prefix``, by ListObjectsV2 pages; other objects in the bucket (and
        keys outside ``Prefix``) are not listed."""
        if not re.fullmatch(r"[0-9a-f]{0,32}", prefix or ""):
            return fail(ValueError(f"not a hash prefix: {prefix!r}"))
        return Deferred.fromCoroutine(self._index(prefix or ""))

    def list_prefix(self, prefix: str) -> str:
        """The key prefix under which the blocks whose hash starts with
        ``prefix`` are (``PrefixLength`` directories included)."""
        p = self.params
        if p.prefix_length and len(prefix) >= p.prefix_length:
            return f"{p.prefix}{prefix[: p.prefix_length]}/{prefix}"
        return f"{p.prefix}{prefix}"

    def hash_of_key(self, key: str, prefix: str = "") -> str | None:
        """The block hash a key holds (None: not a block key of this volume,
        or not starting with ``prefix``)."""
        p = self.params
        if not key.startswith(p.prefix):
            return None
        rest = key[len(p.prefix):]
        if p.prefix_length:
            head, _, hash = rest.partition("/")
            if head != hash[: p.prefix_length]:
                return None
        else:
            hash = rest
        if not HASH_RE.match(hash) or not hash.startswith(prefix):
            return None
        return hash

    async def _index(self, prefix: str) -> list[tuple[str, int, int]]:
        p = self.params
        list_prefix = self.list_prefix(prefix)
        out: list[tuple[str, int, int]] = []
        token: str | None = None
        what = self._what("LIST", None)
        while True:
            query = {"list-type": "2", "max-keys": str(p.index_page_size), "prefix": list_prefix}
            if token:
                query["continuation-token"] = token
            response, body = await self.client.call(
                "GET", None, what, query=query, body_limit=LIST_BODY_LIMIT
            )
            if response.code == 404:
                raise S3Error(f"{what}: the bucket does not exist", status=404)
            root = parse_xml(body or b"")
            if root is None:
                raise S3Error(f"{what}: the listing is not S3 XML")
            for item in children(root, "Contents"):
                entry = self._index_entry(item, prefix)
                if entry is not None:
                    out.append(entry)
            token = child_text(root, "NextContinuationToken")
            if (child_text(root, "IsTruncated") or "").lower() != "true" or not token:
                break
        out.sort()
        return out

    def _index_entry(self, item: Any, prefix: str) -> tuple[str, int, int] | None:
        hash = self.hash_of_key(child_text(item, "Key") or "", prefix)
        if hash is None:
            return None
        try:
            size = int(child_text(item, "Size") or "")
            when = datetime.fromisoformat((child_text(item, "LastModified") or "").strip())
        except ValueError:
            return None
        mtime_ns = calendar.timegm(when.utctimetuple()) * 10**9 + when.microsecond * 1000
        return hash, size, mtime_ns

    # -- trash (delegates to arvnode/keep/volumes/s3trash.py) ----------------------

    #: A TrashPolicy, set by build_volume from Collections.BlobTrash*
    #: (None: Arvados' defaults).
    trash_policy: Any = None

    @property
    def device_id(self) -> str:
        return s3trash.device_id(self)

    def trash(self, hash: str, mtime_ns: int | None = None) -> "Deferred[bool]":
        return self._bad_hash(hash) or Deferred.fromCoroutine(s3trash.trash(self, hash, mtime_ns))

    def untrash(self, hash: str) -> "Deferred[bool]":
        return self._bad_hash(hash) or Deferred.fromCoroutine(s3trash.untrash(self, hash))

    def empty_trash(self, now: float) -> "Deferred[int]":
        return Deferred.fromCoroutine(s3trash.empty_trash(self, now))

    def touch(self, hash: str) -> "Deferred[bool]":
        return self._bad_hash(hash) or Deferred.fromCoroutine(s3trash.touch(self, hash))

    def trashed_index(self, prefix: str) -> "Deferred[Sequence[str]]":
        """Hashes starting with ``prefix`` with a copy under ``trash/``."""
        if not re.fullmatch(r"[0-9a-f]{0,32}", prefix or ""):
            return fail(ValueError(f"not a hash prefix: {prefix!r}"))
        return Deferred.fromCoroutine(s3trash.trashed_index(self, prefix or ""))


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pass
