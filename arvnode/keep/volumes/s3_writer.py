"""Uploads to an S3 volume: one streamed PUT per block, the last byte held
back until commit (see :mod:`arvnode.keep.volumes.s3` for why).

Kept apart from the volume because the writer is a small state machine of
its own: attempts, a replay buffer for retries, acknowledgements that are
the keepproxy's backpressure, and a stall timer.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from arvnode.keep.volume import IBlockWriter, VolumeError
from arvnode.keep.volumes.s3_client import (
    S3Error,
    content_md5,
    etag_md5,
    failure_to_error,
    is_cancellation,
    read_small,
    status_error,
)

if TYPE_CHECKING:
    from arvnode.keep.volumes.s3 import S3Volume

__all__ = ["S3BlockWriter"]


@implementer(IBodyProducer)
class _Body:
    """The body of one PUT attempt; all state lives in the writer."""

    def __init__(self, writer: "S3BlockWriter", length: int) -> None:
        self.length = length
        self._writer = writer
        self.consumer: IConsumer | None = None
        self.done: Deferred[None] = Deferred()
        self.stopped = False

    def startProducing(self, consumer: IConsumer) -> "Deferred[None]":
        self.consumer = consumer
        self._writer._producing(self)
        return self.done

    def pauseProducing(self) -> None:
        self._writer._pause(self)

    def resumeProducing(self) -> None:
        self._writer._resume(self)

    def stopProducing(self) -> None:
        # Agent stops us when the bucket answered early or the connection
        # broke; the request's Deferred says which. ``done`` never fires now.
        self.stopped = True


class _Attempt:
    def __init__(self, body: _Body | None) -> None:
        self.body = body
        self.request: Deferred[IResponse] | None = None
        self.body_sent = False  # the whole body, tail included, went out
        self.timed_out = False
        self.answered = False  # the request's Deferred fired

    def drop(self, reason: Exception) -> None:
        """Abort the request so the bucket stores nothing.

        Failing the body makes Agent abort the connection, wherever we are
        (even re-entrantly inside ``startProducing``, where cancelling the
        request Deferred would be lost); before the body started, cancelling
        the request stops the connection attempt instead.
        """
        if self.answered or self.request is None:
            return
        body = self.body
        if body is not None and body.consumer is not None and not body.stopped and not body.done.called:
            body.stopped = True
            body.done.errback(Failure(reason))
        else:
            self.request.cancel()


@implementer(IBlockWriter)
class S3BlockWriter:
    """One block being uploaded (see the module docstring).

    States: ``open`` (taking writes), ``committing`` (tail sent, waiting for
    the bucket), ``committed``, ``aborted``, ``failed``.
    """

    log = Logger()

    def __init__(self, volume: S3Volume, hash: str, size: int, key: str, *, present: bool) -> None:
        self._vol = volume
        self._client = volume.client
        self.hash = hash
        self.size = size
        self.key = key
        self._present = present  # already stored with a matching md5: upload nothing
        self._what = volume._what("PUT", key)
        self._queue: deque[bytes] = deque()
        self._acks: list[Deferred[None]] = []
        self._unacked = 0
        self._replay: list[bytes] | None = []
        self._replay_len = 0
        self._received = 0
        self._ever_sent = False
        self._tail = b""
        self._attempt: _Attempt | None = None
        self._attempts = 0
        self._retry_pending = False  # a failed attempt's backoff is running
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._state = "open"
        self._error: S3Error | None = None
        self._committed: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<S3BlockWriter {self.key} {self._state} {self._received}/{self.size}>"

    @property
    def held(self) -> int:
        """Body bytes this writer keeps referenced now."""
        body = self._replay_len if self._replay is not None else self._unacked
        return body + len(self._tail)

    # -- IBlockWriter ----------------------------------------------------------------

    def write(self, data: bytes) -> "Deferred[None]":
        if self._state != "open":
            return fail(self._error or VolumeError(f"{self._what}: write to a {self._state} writer"))
        chunk = bytes(data)  # the caller may reuse its buffer
        n = len(chunk)
        if n == 0:
            return succeed(None)
        if self._received + n > self.size:
            err = S3Error(f"{self._what}: more than the declared {self.size} bytes")
            self._fail(err)
            return fail(err)
        self._received += n
        if self._present:
            return succeed(None)
        if self._received == self.size:
            # The last byte waits for commit(): until then the bucket cannot
            # complete the object, whatever it has received.
            chunk, self._tail = chunk[:-1], chunk[-1:]
        if chunk:
            self._queue.append(chunk)
            if self._replay is not None:
                self._replay.append(chunk)
                self._replay_len += len(chunk)
                if self._replay_len > self._vol.replay_limit:
                    self._replay, self._replay_len = None, 0
        d: Deferred[None] = Deferred()
        self._acks.append(d)
        self._unacked += n
        self._vol.stats.note_writer(self.held)
        self._go()
        return d

    def commit(self) -> "Deferred[None]":
        if self._state == "committed":
            return succeed(None)
        if self._state != "open":
            return fail(self._error or VolumeError(f"{self._what}: commit of a {self._state} writer"))
        if self._received != self.size:
            err = S3Error(f"{self._what}: wrote {self._received} bytes, declared {self.size}")
            self._fail(err)
            return fail(err)
        if self._present:
            # Already stored: refresh its LastModified (its mtime), as
            # keepstore touches a block written again, so a block PUT again
            # now is not trashed as old (arvnode/keep/trash.py). Gone since
            # the HEAD (trashed meanwhile): fail, and the client's retry
            # uploads it.
            self._state = "committed"

            def touched(found: bool) -> None:
                if not found:
                    raise S3Error(f"{self._what}: the stored copy vanished before commit")

            def failed(f: Failure) -> Failure:
                self._state = "failed"
                return f

            return self._vol.touch(self.hash).addCallback(touched).addErrback(failed)
        self._state = "committing"
        self._committed = Deferred()
        if self._tail:
            self._queue.append(self._tail)
        self._go()
        return self._committed

    def abort(self) -> "Deferred[None]":
        """Drop the connection mid-body: the bucket stores nothing."""
        if self._state in ("committed", "aborted", "failed"):
            return succeed(None)
        if self._state == "committing" and self._attempt is not None and self._attempt.body_sent:
            # The whole body is out; the object may exist. Nothing to undo:
            # it is the block whose md5 was checked before commit.
            return succeed(None)
        self._fail(VolumeError(f"{self._what}: upload aborted"), state="aborted")
        return succeed(None)

    # -- attempts ----------------------------------------------------------------------

    def _go(self) -> None:
        """Send what is queued: start the first attempt, or feed the current
        one. During a retry's backoff nothing happens: :meth:`_retry` rebuilds
        the queue from the replay buffer, new data included."""
        if self._retry_pending:
            return
        if self._attempt is None:
            self._start_attempt()
        else:
            self._pump()

    def _start_attempt(self) -> None:
        self._attempts += 1
        body = _Body(self, self.size) if self.size else None
        att = _Attempt(body)
        # The empty block's attempt starts at commit and has nothing to send.
        att.body_sent = body is None
        self._attempt = att
        self._paused = False
        headers = {"Content-Length": str(self.size), "Content-MD5": content_md5(self.hash)}
        # No header timeout: a 64 MiB body takes its time. _arm() watches
        # for a bucket that stops taking data or does not answer.
        att.request = self._client.send("PUT", self.key, headers=headers, body=body, timeout=0)
        self._arm()
        Deferred.fromCoroutine(self._await_answer(att)).addErrback(
            lambda f: self.log.failure("{what}: upload bookkeeping failed", f, what=self._what)
        )

    async def _await_answer(self, att: _Attempt) -> None:
        assert att.request is not None
        error: S3Error | None
        try:
            response = await att.request
        except Exception:
            att.answered = True
            f = Failure()
            if att is not self._attempt:
                return  # aborted: we dropped it ourselves
            if att.timed_out:
                error = S3Error(f"{self._what}: the bucket stopped responding", retryable=True)
            elif is_cancellation(f):
                return
            else:
                try:
                    error = failure_to_error(f, self._what)
                except Exception as e:  # not a network failure: a bug somewhere
                    error = S3Error(f"{self._what}: {e}")
                    self.log.failure("{what}: unexpected upload failure", f, what=self._what)
        else:
            att.answered = True
            try:
                body = await read_small(response)
            except Exception:
                body = b""
            if att is not self._attempt:
                return
            if response.code == 200 and att.body_sent:
                self._succeeded(response)
                return
            if response.code == 200:
                error = S3Error(f"{self._what}: the bucket answered before the body was complete")
            else:
                error = status_error(self._what, response.code, body)
        self._attempt_failed(att, error)

    def _attempt_failed(self, att: _Attempt, error: S3Error) -> None:
        self._attempt = None
        self._disarm()
        if self._state not in ("open", "committing"):
            return
        can_replay = self._replay is not None or not self._ever_sent
        if error.retryable and can_replay and self._attempts < self._client.max_attempts:
            self._vol.stats.retries += 1
            self.log.info(
                "{error} (attempt {n} of {total}); retrying",
                n=self._attempts, total=self._client.max_attempts, error=str(error),
            )
            self._retry_pending = True
            self._client.backoff(self._attempts).addCallback(lambda _: self._retry())
            return
        if error.retryable and not can_replay:
            error = S3Error(f"{error} (after part of the body was sent; the client may retry)")
        self._fail(error)

    def _retry(self) -> None:
        self._retry_pending = False
        if self._state not in ("open", "committing") or self._attempt is not None:
            return
        if self._replay is not None:
            self._queue = deque(self._replay)
            if self._state == "committing" and self._tail:
                self._queue.append(self._tail)
        self._start_attempt()

    def _succeeded(self, response: IResponse) -> None:
        self._attempt = None
        self._disarm()
        etag = etag_md5(response)
        if etag is not None and etag != self.hash:
            # Only a plain single-part md5 ETag says anything; SSE-KMS and
            # the like give other values, so a mismatch is only logged.
            self.log.warn("{what}: ETag {etag} is not the block's md5", what=self._what, etag=etag)
        self._state = "committed"
        self._release()
        self._vol._writers.discard(self)
        d, self._committed = self._committed, None
        if d is not None:
            d.callback(None)

    def _fail(self, error: VolumeError, state: str = "failed") -> None:
        if self._state in ("committed", "aborted", "failed"):
            return
        self._state = state
        self._error = error if isinstance(error, S3Error) else S3Error(str(error))
        att, self._attempt = self._attempt, None
        self._disarm()
        self._release()
        self._vol._writers.discard(self)
        if att is not None:
            att.drop(self._error)
        acks, self._acks = self._acks, []
        for d in acks:
            d.errback(Failure(self._error))
        committed, self._committed = self._committed, None
        if committed is not None:
            committed.errback(Failure(self._error))

    def _release(self) -> None:
        self._queue.clear()
        self._replay, self._replay_len = None, 0
        self._tail = b""
        self._unacked = 0

    # -- producing ---------------------------------------------------------------------

    def _producing(self, body: _Body) -> None:
        if self._attempt is None or self._attempt.body is not body:
            return
        self._pump()

    def _pause(self, body: _Body) -> None:
        if self._attempt is not None and self._attempt.body is body:
            self._paused = True

    def _resume(self, body: _Body) -> None:
        if self._attempt is not None and self._attempt.body is body and self._paused:
            self._paused = False
            self._arm()
            self._pump()

    def _pump(self) -> None:
        att = self._attempt
        if att is None:
            return
        if att.body is None:  # the empty block: nothing to stream
            return
        body = att.body
        if body.consumer is None or body.stopped:
            return
        while self._queue and not self._paused:
            chunk = self._queue.popleft()
            self._ever_sent = True
            try:
                body.consumer.write(chunk)  # may pause us at once
            except Exception:
                self._fail(S3Error(f"{self._what}: sending failed"))
                return
            if self._attempt is not att:  # failed re-entrantly
                return
        self._arm()
        if self._queue or self._paused:
            return
        if self._acks:
            acks, self._acks = self._acks, []
            self._unacked = 0
            for d in acks:
                d.callback(None)  # the next batch may arrive re-entrantly
            if self._attempt is not att:
                return
            self._arm()
        if (
            self._state == "committing"
            and not att.body_sent
            and not self._queue
            and not self._paused
        ):
            att.body_sent = True
            self._arm()
            body.done.callback(None)

    # -- stall watch -------------------------------------------------------------------

    def _waiting_on_bucket(self) -> bool:
        return self._attempt is not None and (bool(self._acks) or self._state == "committing")

    def _arm(self) -> None:
        """(Re)start the stall timer while the bucket owes us progress."""
        if not self._waiting_on_bucket():
            self._disarm()
        elif self._timer is not None and self._timer.active():
            self._timer.reset(self._vol.params.read_timeout)
        else:
            self._timer = self._vol.clock.callLater(self._vol.params.read_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        att = self._attempt
        if att is None or att.answered:
            return
        att.timed_out = True
        att.drop(S3Error(f"{self._what}: the bucket stopped responding"))
