"""Stream an open file to a consumer without reading it on the reactor thread.

A push producer after Synapse's ``ThreadedFileSender``: the keepproxy's GET
must never hold a whole block in memory, and must stop reading the disk as
soon as a slow client's transport says ``pauseProducing``. So there is at most
one ``read_chunk`` read in flight on the thread pool, its result is written to
the consumer on the reactor thread, and no read is issued while paused.

Kept apart from the directory volume so any file-backed volume (a local cache,
a spool) can reuse it: it only needs a way to run a blocking call on a pool
and a way to turn an ``OSError`` into a :class:`VolumeError`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from arvnode.keep.volume import IBlockReader, VolumeError

#: Runs a blocking callable on a thread pool: ``run(f, *args) -> Deferred``.
RunInPool = Callable[..., "Deferred[Any]"]


@implementer(IBlockReader, IPushProducer)
class ThreadedFileReader:
    """Streams ``size`` bytes of the open descriptor ``fd`` to one consumer.

    Owns ``fd``. Every way out (end, I/O error, ``stopProducing``, a consumer
    whose ``write`` raises, ``close``) unregisters from the consumer, closes
    the descriptor once no read is using it, and fires the Deferred from
    :meth:`produce` exactly once. ``stopProducing`` errbacks it with
    :class:`~twisted.internet.error.ConnectionLost`, cancelling it with
    :class:`~twisted.internet.defer.CancelledError`; I/O errors with
    :class:`VolumeError`; a file that ends before ``size`` bytes is an error
    too, so a short block never looks complete.

    The descriptor is closed on the reactor thread: ``close(2)`` of a
    read-only regular file does not wait for the device.
    """

    log = Logger()

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        run: RunInPool,
        read_chunk: int,
        name: str,
        error: Callable[[str, OSError], VolumeError],
    ) -> None:
        self._fd: int | None = fd
        self.size = size
        self._run = run
        self._read_chunk = read_chunk
        self._name = name  # for messages: never an absolute path
        self._error = error
        self._offset = 0
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._paused = False
        self._reading = False
        self._finished = False

    def __repr__(self) -> str:
        return f"<ThreadedFileReader {self._name} {self._offset}/{self.size}>"

    def produce(self, consumer: IConsumer) -> "Deferred[None]":
        if self._consumer is not None or self._finished or self._fd is None:
            return fail(VolumeError(f"reader of {self._name} already used or closed"))
        self._consumer = consumer
        # Cancelling the Deferred stops production like stopProducing does.
        done: Deferred[None] = Deferred(lambda _: self._finish(Failure(CancelledError())))
        self._done = done
        try:
            # May call pauseProducing at once (a paused HTTPChannel does).
            consumer.registerProducer(self, True)
        except Exception:
            # E.g. the connection is gone or another producer is registered.
            self._consumer = None
            self._finish(Failure())
            return done
        self._next()
        return done

    def close(self) -> None:
        """Release the descriptor without producing; during :meth:`produce`
        it acts like ``stopProducing``."""
        if self._consumer is not None and not self._finished:
            self.stopProducing()
            return
        self._finished = True
        if not self._reading:
            self._close_fd()

    # -- IPushProducer -------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._next()

    def stopProducing(self) -> None:
        if self._finished:
            return
        self._finish(Failure(ConnectionLost(f"the consumer stopped reading {self._name}")))

    # -- internals -----------------------------------------------------------

    def _next(self) -> None:
        if self._finished or self._paused or self._reading:
            return
        if self._offset >= self.size:
            self._finish(None)
            return
        fd = self._fd
        assert fd is not None
        self._reading = True
        n = min(self._read_chunk, self.size - self._offset)
        d = self._run(self._read_blocking, fd, n, self._offset)
        d.addCallbacks(self._got, self._read_failed)
        d.addErrback(lambda f: self.log.failure("reader of {name} failed", f, name=self._name))

    def _read_blocking(self, fd: int, n: int, offset: int) -> bytes:
        try:
            return os.pread(fd, n, offset)
        except OSError as e:
            raise self._error("read", e) from e

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._finished:  # stopped while the read was in flight
            self._close_fd()
            return
        if not data:
            msg = f"read {self._name}: file ended at {self._offset} of {self.size} bytes"
            self._finish(Failure(VolumeError(msg)))
            return
        self._offset += len(data)
        assert self._consumer is not None
        try:
            # May call pauseProducing or stopProducing re-entrantly.
            self._consumer.write(data)
        except Exception:
            self._finish(Failure())
            return
        self._next()

    def _read_failed(self, f: Failure) -> None:
        self._reading = False
        if self._finished:
            self._close_fd()
            return
        self._finish(f)

    def _finish(self, result: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.unregisterProducer()
            except Exception:
                self.log.failure("unregisterProducer failed for {name}", name=self._name)
        if not self._reading:
            self._close_fd()
        done, self._done = self._done, None
        if done is not None:
            if result is None:
                done.callback(None)
            else:
                done.errback(result)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
