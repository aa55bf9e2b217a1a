"""The volume seam: where blocks rest.

Every backend (directory, S3 bucket, upstream keepstore) implements
:class:`IVolume`. The interface is built for streaming so the keepproxy never
holds a whole block: a write is opened, fed batches (each ``write`` returns a
Deferred that fires when the volume has taken the batch, which is the
backpressure signal), then committed or aborted; a read is a push producer
attached to a consumer.

All hashes passed here are 32 lowercase hex characters, already validated.

``open_write``, ``open_read`` and ``stat`` take an optional keyword
``request_id``: the ``X-Request-Id`` of the client request being served. A
volume that calls another service with it (the upstream keepstore) forwards
it, so one id follows a block through every access log (spec §4.2); directory
and S3 volumes ignore it. It is a keyword with a default so a caller without a
request (start-up, federation copies) need not invent one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IConsumer


class VolumeError(Exception):
    """The volume could not do what was asked (I/O error, bucket down ...).

    The keepproxy maps this to a 5xx (503 for writes, 502 for reads); it is
    never a client error.
    """


class VolumeFull(VolumeError):
    """No space left (ENOSPC/EDQUOT, or an upstream keepstore's 507).

    Told apart from other failures because a keepstore whose every
    writable volume is full answers 507 ``insufficient storage`` (spec §5.2),
    which keepproxies do not retry against that server.
    """


class CorruptBlock(VolumeError):
    """Stored data does not match its hash."""


class IBlockWriter(Interface):
    """One in-progress block write. Nothing is readable until :meth:`commit`."""

    def write(data: bytes) -> "Deferred[None]":
        """Append ``data``. The Deferred fires once the volume has taken it
        (it may still be in a buffer); callers send the next batch only
        after it fired, which is the flow control. Errbacks with
        :class:`VolumeError`."""

    def commit() -> "Deferred[None]":
        """Make the block durable under its final name (fsync, rename,
        directory fsync, or the bucket's final PUT). Fires when durable."""

    def abort() -> "Deferred[None]":
        """Discard everything written. Safe to call at any time, more than
        once, and after a failed write or commit."""


class IBlockReader(Interface):
    """An open stored block."""

    size = Attribute("Size of the stored block in bytes (int).")

    def produce(consumer: "IConsumer") -> "Deferred[None]":
        """Register as a streaming (push) producer on ``consumer`` and write
        the block to it in chunks, honouring pauseProducing/resumeProducing.
        Fires after the last byte was written and the producer unregistered;
        errbacks (after unregistering) on I/O error. ``stopProducing`` from
        the consumer stops reading and errbacks the Deferred."""

    def close() -> None:
        """Release resources without producing (e.g. HEAD)."""


class IVolume(Interface):
    uuid = Attribute("Arvados volume UUID, e.g. 'zzzzz-nyw5e-000000000000000'.")
    replication = Attribute("How many copies one write to this volume counts for (int).")
    read_only = Attribute("True if the volume takes no writes.")
    storage_classes = Attribute("Tuple of storage class names this volume serves.")

    def start() -> "Deferred[None]":
        """Prepare the volume (create dirs, clean leftovers of a crash)."""

    def stop() -> "Deferred[None]":
        """Release pools and connections."""

    def open_write(hash: str, size: int, *, request_id: str = "") -> "Deferred[IBlockWriter]":
        """Begin writing the block ``hash`` of ``size`` bytes. Errbacks with
        :class:`VolumeFull` when the volume has no room for it."""

    def open_read(hash: str, *, request_id: str = "") -> "Deferred[IBlockReader | None]":
        """Open the block for reading, or None if this volume lacks it."""

    def stat(hash: str, *, request_id: str = "") -> "Deferred[int | None]":
        """The stored size of ``hash``, or None if absent. Cheap."""

    def index(prefix: str) -> "Deferred[Sequence[tuple[str, int, int]]]":
        """``(hash, size, mtime_ns)`` of every block whose hash starts with
        ``prefix``, for ``/index``."""

    # -- trash (arvnode/keep/trash.py; docs contract: block trash & GC) -------

    def trash(hash: str, mtime_ns: "int | None" = None) -> "Deferred[bool]":
        """Move the block to this volume's trash, recoverable until
        ``Collections.BlobTrashLifetime`` has passed (lifetime 0: delete it,
        where the volume allows that). False, doing nothing, when: the block
        is absent; ``mtime_ns`` is given and differs from its stored mtime
        (written or touched since the caller looked); its mtime is within
        ``BlobSigningTTL`` of now; ``BlobTrash`` is false; the volume is
        read-only. True: trashed (an upstream keepstore: the trash request
        was accepted; it trashes asynchronously, with the same checks)."""

    def untrash(hash: str) -> "Deferred[bool]":
        """Make the newest trashed copy live again; False if there is none.
        A block that is live already stays as it is (True)."""

    def empty_trash(now: float) -> "Deferred[int]":
        """Delete for good the trashed copies whose lifetime ended by ``now``
        (seconds since the epoch); how many."""

    def touch(hash: str) -> "Deferred[bool]":
        """Set the block's mtime to now; False if it is absent."""


class ITrashedIndex(Interface):
    """The trashed blocks of a volume, for the balancer's repair step.

    Why a separate interface: a block can sit in trash while a collection
    references it (a PUT that raced an S3 trash, or a collection saved from
    locators signed before an older one was deleted); the balancer finds
    such blocks here and untrashes them. Directory and S3 volumes offer it;
    an upstream keepstore cannot (keepstore's API lists no trash), and the
    balancer skips volumes without it.
    """

    def trashed_index(prefix: str) -> "Deferred[Sequence[str]]":
        """The hashes starting with ``prefix`` that have at least one
        trashed copy on this volume (whether or not a live copy exists),
        sorted, each once."""
