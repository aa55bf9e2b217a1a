"""The durable directory volume: blocks as files, like Arvados' unix volume.

Why it looks the way it does:

* **Never a partial block under its final name.** A write goes to
  ``<root>/<xxx>/<hash>.tmp-<random>`` (``O_EXCL``), and only ``commit`` makes it
  visible, after ``fsync`` of the file, an atomic ``rename`` and ``fsync`` of the
  directory (DESIGN.md §3, "Durability before acknowledgement"). A crash leaves
  at worst ``.tmp-`` files, which :meth:`DirectoryVolume.start` removes.
* **The reactor never touches the disk.** Every open, write, fsync, rename,
  stat, read and listdir runs on a caller-owned
  :class:`~twisted.python.threadpool.ThreadPool` through ``deferToThreadPool``.
* **Early writeback and drop-behind** (spec/put-path-measurements.md): every
  ~4 MiB the writer calls ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on what it
  just wrote and ``posix_fadvise(DONTNEED)`` on the range started one step
  before. That cut the final fsync from ~140 ms to a few ms per 64 MiB block and
  made page-cache cost independent of the machine's memory history. Both calls
  are advisory: where they are missing or fail, the writer carries on silently
  and the final fsync does the work.
* **Streaming reads.** A reader is a push producer
  (:class:`~arvnode.keep.volumes._filereader.ThreadedFileReader`).
* **Full is its own error.** ENOSPC/EDQUOT become :class:`VolumeFull` (the
  keepstore's 507 when every writable volume is full) and the temp file is
  removed at once. Since a block streams to the volume it was opened on and
  cannot move to another mid-body, ``open_write`` also refuses (VolumeFull)
  a block larger than the space ``statvfs`` reports available, as Arvados'
  unix volume checks before each write: the caller then opens the next
  volume instead of failing half-way.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import math
import os
import random
import re
import socket
import stat as statmod
import threading
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from arvnode.keep.trash import TrashPolicy
from arvnode.keep.volume import (
    IBlockReader,
    IBlockWriter,
    ITrashedIndex,
    IVolume,
    VolumeError,
    VolumeFull,
)
from arvnode.keep.volumes._filereader import ThreadedFileReader
from arvnode.keep.volumes._pooljobs import Serial, detached

_T = TypeVar("_T")

HASH_RE = re.compile(r"^[0-9a-f]{32}$")
#: Names of block files and their subdirectories (first three hex digits).
_SUBDIR_RE = re.compile(r"^[0-9a-f]{3}$")
#: Marker of an unfinished write; ``<hash>.tmp-<16 hex>``.
TMP_MARKER = ".tmp-"
#: A trashed block: ``<hash>.trash.<deadline>``, the deadline (Unix seconds)
#: being when its lifetime ends -- Arvados' unix volume names them so too.
TRASH_RE = re.compile(r"^([0-9a-f]{32})\.trash\.([0-9]+)$")

#: Start writeback (and drop the range before) every this many bytes written.
WRITEBACK_INTERVAL = 4 << 20
DEFAULT_READ_CHUNK = 1 << 20

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>; os has no sync_file_range wrapper
_FULL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None
)

Buffer = bytes | bytearray | memoryview


class _Writeback:
    """``sync_file_range`` and ``posix_fadvise(DONTNEED)``, or nothing.

    Python's :mod:`os` has no ``sync_file_range``, so it is looked up in libc
    once per volume. Every failure is ignored: these calls only move work
    earlier, and the final ``fsync`` reports real I/O errors.
    """

    def __init__(self) -> None:
        self._sync_file_range: Callable[[int, int, int, int], int] | None = None
        sfr = getattr(os, "sync_file_range", None)
        if sfr is not None:  # pragma: no cover - not in CPython 3.11/3.12
            self._sync_file_range = lambda fd, off, n, flags: sfr(fd, off, n, flags) or 0
            return
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fn = libc.sync_file_range
        except (OSError, AttributeError):  # pragma: no cover - non-Linux
            return
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        fn.restype = ctypes.c_int
        self._sync_file_range = fn

    def start(self, fd: int, offset: int, length: int) -> None:
        if self._sync_file_range is not None and length > 0:
            self._sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    @staticmethod
    def drop(fd: int, offset: int, length: int) -> None:
        """Drop cached pages of ``[offset, offset+length)``; length 0 = to EOF."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or length < 0:  # pragma: no cover - non-POSIX
            return
        try:
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def _errno_text(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


@implementer(IVolume, ITrashedIndex)
class DirectoryVolume:
    """A volume whose blocks are files under ``root`` (see module docstring).

    ``threadpool`` belongs to the caller, who starts and stops it; size it
    small (2 threads did best in the measurements). ``commit_threadpool``, if
    given, runs the fsync/rename/directory-fsync of :meth:`BlockWriter.commit`
    so a slow fsync does not hold up other uploads' batch writes (the
    measurements used a separate 4-thread pool); by default it is
    ``threadpool``.
    """

    log = Logger()

    def __init__(
        self,
        uuid: str,
        root: str,
        *,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        replication: int = 1,
        read_only: bool = False,
        storage_classes: Iterable[str] = ("default",),
        rng: random.Random | None = None,
        read_chunk: int = DEFAULT_READ_CHUNK,
        commit_threadpool: ThreadPool | None = None,
        clock: IReactorTime | None = None,
        trash_policy: TrashPolicy | None = None,
    ) -> None:
        if read_chunk <= 0:
            raise ValueError(f"read_chunk must be positive, not {read_chunk}")
        if replication < 1:
            raise ValueError(f"replication must be at least 1, not {replication}")
        self.uuid = uuid
        self.root = os.path.abspath(root)
        self.replication = replication
        self.read_only = read_only
        self.storage_classes: tuple[str, ...] = tuple(storage_classes)
        self.read_chunk = read_chunk
        self._reactor = reactor
        self._pool = threadpool
        self._commit_pool = commit_threadpool if commit_threadpool is not None else threadpool
        self._rng = rng if rng is not None else random.SystemRandom()
        self._writeback = _Writeback()
        self._writers: set[BlockWriter] = set()
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self.trash_policy = trash_policy if trash_policy is not None else TrashPolicy()
        # Held (on pool threads) around every check-then-rename of a committed
        # block name, with the subdirectory's flock (:meth:`_names_locked`).
        self._names_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<DirectoryVolume {self.uuid}>"

    # -- helpers -------------------------------------------------------------

    def block_path(self, hash: str) -> str:
        """Absolute path of the committed block ``hash`` (it may not exist)."""
        return os.path.join(self.root, hash[:3], hash)

    def _rel(self, path: str) -> str:
        rel = os.path.relpath(path, self.root)
        return "." if rel == "." else rel

    def _error(self, op: str, path: str, exc: OSError) -> VolumeError:
        """Map ``exc`` to VolumeFull/VolumeError, naming the path relative to root."""
        cls = VolumeFull if exc.errno in _FULL_ERRNOS else VolumeError
        return cls(f"volume {self.uuid}: {op} {self._rel(path)}: {_errno_text(exc)}")

    def _run(self, f: Callable[..., _T], *args: object) -> "Deferred[_T]":
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _run_commit(self, f: Callable[..., _T], *args: object) -> "Deferred[_T]":
        return deferToThreadPool(self._reactor, self._commit_pool, f, *args)

    @staticmethod
    def _bad_hash(hash: str) -> "Deferred[_T] | None":
        if isinstance(hash, str) and HASH_RE.match(hash):
            return None
        return fail(ValueError(f"not a block hash: {hash!r}"))

    @contextlib.contextmanager
    def _names_locked(self, subdir: str) -> Iterator[bool]:
        """Hold while checking then renaming a committed block name in ``subdir``.

        Why: a commit of the same hash ("exists: refresh its mtime") and a
        trash ("mtime still old: rename") must never interleave, or an
        acknowledged PUT ends up in the trash. The thread lock covers this
        process; the flock on the subdirectory covers another process on
        the same root (``arvnode keep balance`` beside the node). Where the
        filesystem has no flock for a directory (some NFS), only the thread
        lock is held. Yields False (nothing to lock: no block there) if
        ``subdir`` does not exist.
        """
        with self._names_lock:
            fd, present = None, True
            try:
                fd = os.open(subdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except FileNotFoundError:
                present = False
            except OSError:
                pass  # no flock here; the stat or rename that follows reports real errors
            try:
                yield present
            finally:
                if fd is not None:
                    os.close(fd)  # releases the flock

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "Deferred[None]":
        """Create ``root`` if missing and remove leftover temp files.

        A read-only volume is not modified: its root must exist already.
        """
        return self._run(self._start_blocking).addCallback(self._started)

    def _started(self, removed: int) -> None:
        self.log.info(
            "volume {uuid} started: removed {removed} leftover temp file(s)",
            uuid=self.uuid,
            removed=removed,
        )

    def _start_blocking(self) -> int:
        if self.read_only:
            try:
                st = os.stat(self.root)
            except OSError as e:
                raise self._error("stat", self.root, e) from e
            if not statmod.S_ISDIR(st.st_mode):
                raise VolumeError(f"volume {self.uuid}: root is not a directory")
            return 0
        self._makedirs_private(self.root)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise VolumeError(f"volume {self.uuid}: root is not writable")
        return self._remove_leftovers()

    def _makedirs_private(self, path: str) -> None:
        """Like ``os.makedirs`` but every directory it creates is mode 0700."""
        missing: list[str] = []
        cur = path
        while True:
            try:
                st = os.stat(cur)
            except FileNotFoundError:
                missing.append(cur)
                parent = os.path.dirname(cur)
                if parent == cur:  # pragma: no cover - "/" missing
                    break
                cur = parent
                continue
            except OSError as e:
                raise self._error("stat", cur, e) from e
            if not statmod.S_ISDIR(st.st_mode):
                raise VolumeError(f"volume {self.uuid}: {self._rel(cur)} is not a directory")
            break
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise self._error("mkdir", d, e) from e

    def _remove_leftovers(self) -> int:
        removed = 0
        dirs = [self.root]
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    if TMP_MARKER in entry.name and entry.is_file(follow_symlinks=False):
                        removed += self._unlink_leftover(entry.path)
                    elif _SUBDIR_RE.match(entry.name) and entry.is_dir(follow_symlinks=False):
                        dirs.append(entry.path)
            for d in dirs[1:]:
                with os.scandir(d) as it:
                    for entry in it:
                        if TMP_MARKER in entry.name and entry.is_file(follow_symlinks=False):
                            removed += self._unlink_leftover(entry.path)
        except OSError as e:
            raise self._error("scan", getattr(e, "filename", None) or self.root, e) from e
        return removed

    def _unlink_leftover(self, path: str) -> int:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise self._error("unlink", path, e) from e
        return 1

    def stop(self) -> "Deferred[None]":
        """Abort writes still open, so a clean shutdown leaves no temp files.

        The thread pool is the caller's and stays running.
        """
        writers = list(self._writers)
        if not writers:
            return succeed(None)
        d = gatherResults([w.abort() for w in writers], consumeErrors=True)
        return d.addCallback(lambda _: None)

    # -- writes --------------------------------------------------------------

    def open_write(self, hash: str, size: int, *, request_id: str = "") -> "Deferred[IBlockWriter]":
        """Create ``<root>/<xxx>/<hash>.tmp-<random>`` and return its writer.

        ``request_id`` is not needed by a local disk."""
        bad: Deferred[IBlockWriter] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        if size < 0:
            return fail(ValueError(f"negative block size {size}"))
        if self.read_only:
            return fail(VolumeError(f"volume {self.uuid} is read-only"))
        tmp = f"{self.block_path(hash)}{TMP_MARKER}{self._rng.getrandbits(64):016x}"
        d = self._run(self._create_temp, tmp, size)

        def made(fd: int) -> IBlockWriter:
            writer = BlockWriter(self, hash, size, tmp, fd)
            self._writers.add(writer)
            return writer

        def orphaned(writer: IBlockWriter) -> None:
            writer.abort().addErrback(
                lambda f: self.log.failure("discarding an orphaned temp file failed", f)
            )

        return detached(d.addCallback(made), self.log, orphaned)

    def open_spool(self, size: int) -> "Deferred[IBlockWriter]":
        """A write whose hash is not known yet (``POST /``): ``<root>/post.tmp-<random>``.

        Commit it with ``commit_as(hash)`` once the md5 is known; until then
        it is a temp file like any other (removed by abort, and at start
        after a crash).
        """
        if size < 0:
            return fail(ValueError(f"negative block size {size}"))
        if self.read_only:
            return fail(VolumeError(f"volume {self.uuid} is read-only"))
        tmp = os.path.join(self.root, f"post{TMP_MARKER}{self._rng.getrandbits(64):016x}")
        d = self._run(self._create_temp, tmp, size)

        def made(fd: int) -> IBlockWriter:
            writer = BlockWriter(self, None, size, tmp, fd)
            self._writers.add(writer)
            return writer

        def orphaned(writer: IBlockWriter) -> None:
            writer.abort().addErrback(
                lambda f: self.log.failure("discarding an orphaned temp file failed", f)
            )

        return detached(d.addCallback(made), self.log, orphaned)

    def _ensure_subdir(self, subdir: str) -> None:
        try:
            os.mkdir(subdir, 0o700)
        except FileExistsError:
            return
        # The new directory entry must survive a crash like the block.
        self._fsync_dir(self.root)

    def _check_space(self, size: int) -> None:
        """VolumeFull when ``size`` bytes do not fit in the space available
        to unprivileged users (``df``'s "Avail"; root's reserve is left to
        the system). If statvfs fails, the write itself will tell."""
        if size <= 0:
            return
        try:
            st = os.statvfs(self.root)
        except OSError:
            return
        avail = st.f_bavail * st.f_frsize
        if avail < size:
            raise VolumeFull(
                f"volume {self.uuid}: no space for a {size}-byte block"
                f" ({avail} bytes available)"
            )

    def _create_temp(self, tmp: str, size: int) -> int:
        self._check_space(size)
        subdir = os.path.dirname(tmp)
        try:
            try:
                os.mkdir(subdir, 0o700)
            except FileExistsError:
                pass
            else:
                # The new directory entry must survive a crash like the block.
                self._fsync_dir(self.root)
        except OSError as e:
            raise self._error("mkdir", subdir, e) from e
        try:
            return os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise self._error("create", tmp, e) from e

    # -- reads ---------------------------------------------------------------

    def open_read(self, hash: str, *, request_id: str = "") -> "Deferred[IBlockReader | None]":
        """Open the block, or None if it is not here."""
        bad: Deferred[IBlockReader | None] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        path = self.block_path(hash)

        def opened(res: tuple[int, int] | None) -> IBlockReader | None:
            if res is None:
                return None
            fd, size = res
            return ThreadedFileReader(
                fd,
                size,
                run=self._run,
                read_chunk=self.read_chunk,
                name=self._rel(path),
                error=lambda op, e: self._error(op, path, e),
            )

        def orphaned(reader: IBlockReader | None) -> None:
            if reader is not None:
                reader.close()

        d = self._run(self._open_blocking, path).addCallback(opened)
        return detached(d, self.log, orphaned)

    def _open_blocking(self, path: str) -> tuple[int, int] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error("open", path, e) from e
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            return fd, st.st_size
        except OSError as e:
            os.close(fd)
            raise self._error("stat", path, e) from e

    def stat(self, hash: str, *, request_id: str = "") -> "Deferred[int | None]":
        """Size of the committed block, or None."""
        bad: Deferred[int | None] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        return self._run(self._stat_blocking, self.block_path(hash))

    def _stat_blocking(self, path: str) -> int | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error("stat", path, e) from e
        return st.st_size if statmod.S_ISREG(st.st_mode) else None

    def index(self, prefix: str) -> "Deferred[Sequence[tuple[str, int, int]]]":
        """``(hash, size, mtime_ns)`` of committed blocks starting with ``prefix``,
        sorted by hash. Temp files are never listed."""
        return self._run(self._index_blocking, prefix)

    def _index_blocking(self, prefix: str) -> list[tuple[str, int, int]]:
        want_dir = prefix[:3]
        out: list[tuple[str, int, int]] = []
        try:
            with os.scandir(self.root) as it:
                subdirs = sorted(
                    e.path
                    for e in it
                    if _SUBDIR_RE.match(e.name)
                    and e.name.startswith(want_dir)
                    and e.is_dir()
                )
        except OSError as e:
            raise self._error("list", self.root, e) from e
        for d in subdirs:
            try:
                with os.scandir(d) as it:
                    entries = [e for e in it if HASH_RE.match(e.name) and e.name.startswith(prefix)]
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._error("list", d, e) from e
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted since the listing
                except OSError as e:
                    raise self._error("stat", entry.path, e) from e
                if statmod.S_ISREG(st.st_mode):
                    out.append((entry.name, st.st_size, st.st_mtime_ns))
        out.sort()
        return out

    # -- trash ---------------------------------------------------------------
    #
    # A trashed block is renamed, in its own subdirectory, to
    # ``<hash>.trash.<deadline>`` (Arvados' unix volume convention): one
    # atomic rename on the same filesystem, then an fsync of the directory,
    # so after a crash the block is under exactly one of its two names and
    # whole. Names other than ``<hash>`` are invisible to index, open_read
    # and stat; start() removes only ``.tmp-`` files, never trash.

    @property
    def device_id(self) -> str:
        """What keepstore's ``/mounts`` reports (Arvados: host and path)."""
        return f"{socket.gethostname()}:{self.root}"

    def trash(self, hash: str, mtime_ns: int | None = None) -> "Deferred[bool]":
        bad: Deferred[bool] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        if self.read_only or not self.trash_policy.enabled:
            return succeed(False)
        return self._run(self._trash_blocking, hash, mtime_ns, self._clock.seconds())

    def _trash_blocking(self, hash: str, mtime_ns: int | None, now: float) -> bool:
        path = self.block_path(hash)
        policy = self.trash_policy
        with self._names_locked(os.path.dirname(path)) as present:
            if not present:
                return False
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._error("stat", path, e) from e
            if not statmod.S_ISREG(st.st_mode):
                return False
            if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
                return False
            if policy.too_new(st.st_mtime_ns, now):
                return False
            try:
                if policy.lifetime <= 0:
                    os.unlink(path)
                else:
                    deadline = math.ceil(now + policy.lifetime)
                    os.rename(path, f"{path}.trash.{deadline}")
            except OSError as e:
                raise self._error("trash", path, e) from e
        try:
            self._fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise self._error("fsync", os.path.dirname(path), e) from e
        return True

    def _trashed(self, hash: str) -> list[tuple[int, str]]:
        """``(deadline, path)`` of the trashed copies of ``hash``."""
        subdir = os.path.dirname(self.block_path(hash))
        out = []
        try:
            with os.scandir(subdir) as it:
                for entry in it:
                    m = TRASH_RE.match(entry.name)
                    if m and m.group(1) == hash:
                        out.append((int(m.group(2)), entry.path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error("list", subdir, e) from e
        return out

    def untrash(self, hash: str) -> "Deferred[bool]":
        bad: Deferred[bool] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        if self.read_only:
            return succeed(False)
        return self._run(self._untrash_blocking, hash)

    def _untrash_blocking(self, hash: str) -> bool:
        path = self.block_path(hash)
        with self._names_locked(os.path.dirname(path)) as present:
            copies = sorted(self._trashed(hash), reverse=True) if present else []
            if not copies:
                return False
            if self._stat_blocking(path) is not None:
                # Written again since: the live copy (and its newer mtime)
                # stays; the trashed one expires on its own.
                return True
            for _, trashed in copies:
                try:
                    os.rename(trashed, path)
                except FileNotFoundError:
                    continue  # emptied meanwhile: try an older copy
                except OSError as e:
                    raise self._error("untrash", trashed, e) from e
                break
            else:
                return False
        self._fsync_dir(os.path.dirname(path))
        return True

    def empty_trash(self, now: float) -> "Deferred[int]":
        """One pool job per subdirectory, so reads and writes interleave."""
        if self.read_only:
            return succeed(0)
        return Deferred.fromCoroutine(self._empty_trash(now))

    async def _empty_trash(self, now: float) -> int:
        subdirs = await self._run(self._subdirs)
        total = 0
        for d in subdirs:
            total += await self._run(self._empty_subdir, d, now)
        return total

    def trashed_index(self, prefix: str) -> "Deferred[Sequence[str]]":
        """Hashes starting with ``prefix`` with a trashed copy here; one
        pool job per subdirectory (as :meth:`empty_trash`), so reads and
        writes interleave with a big listing."""
        if not re.fullmatch(r"[0-9a-f]{0,32}", prefix or ""):
            return fail(ValueError(f"not a hash prefix: {prefix!r}"))
        return Deferred.fromCoroutine(self._trashed_index(prefix or ""))

    async def _trashed_index(self, prefix: str) -> list[str]:
        want = prefix[:3]
        found: set[str] = set()
        for d in await self._run(self._subdirs):
            if os.path.basename(d).startswith(want):
                found.update(await self._run(self._trashed_in_subdir, d, prefix))
        return sorted(found)

    def _trashed_in_subdir(self, subdir: str, prefix: str) -> list[str]:
        try:
            with os.scandir(subdir) as it:
                return [m.group(1) for e in it
                        if (m := TRASH_RE.match(e.name)) is not None
                        and m.group(1).startswith(prefix)]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error("list", subdir, e) from e

    def _subdirs(self) -> list[str]:
        try:
            with os.scandir(self.root) as it:
                return sorted(e.path for e in it if _SUBDIR_RE.match(e.name) and e.is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._error("list", self.root, e) from e

    def _empty_subdir(self, subdir: str, now: float) -> int:
        removed = 0
        try:
            with os.scandir(subdir) as it:
                expired = [
                    e.path for e in it
                    if (m := TRASH_RE.match(e.name)) is not None and int(m.group(2)) <= now
                ]
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise self._error("list", subdir, e) from e
        for path in expired:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._error("unlink", path, e) from e
        if removed:
            self._fsync_dir(subdir)
        return removed

    def touch(self, hash: str) -> "Deferred[bool]":
        bad: Deferred[bool] | None = self._bad_hash(hash)
        if bad is not None:
            return bad
        if self.read_only:
            return succeed(False)
        return self._run(self._touch_blocking, self.block_path(hash))

    def _touch_blocking(self, path: str) -> bool:
        with self._names_locked(os.path.dirname(path)) as present:
            if not present:
                return False
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._error("touch", path, e) from e
        return True


@implementer(IBlockWriter)
class BlockWriter:
    """One temp file being written.

    Operations are serialised (:class:`~arvnode.keep.volumes._pooljobs.Serial`), so the descriptor is only
    ever used by one pool thread at a time and ``abort`` during a write waits
    for that write before closing, even if the caller cancelled the write's
    Deferred. ``write`` does not keep ``data`` after its Deferred fired: the
    caller may refill the same buffer (the ``recv_into`` design of the
    measurements; :data:`reusable_buffers` says so to the upload pipeline).
    A writer from :meth:`DirectoryVolume.open_spool` has no hash until
    :meth:`commit_as`. A failed write removes the temp file at once (freeing the
    space on ENOSPC); ``abort`` is then a no-op.
    """

    log = Logger()
    #: ``write`` is done with its data when its Deferred fires.
    reusable_buffers = True

    def __init__(
        self, volume: DirectoryVolume, hash: str | None, size: int, tmp: str, fd: int
    ) -> None:
        self._vol = volume
        self.hash = hash
        self.size = size
        self._tmp = tmp
        self._fd: int | None = fd  # None once closed (committed, aborted, failed)
        self._written = 0
        self._wb_start = 0  # first byte not yet handed to sync_file_range
        self._drop_start = 0  # first byte not yet dropped from the page cache
        self._serial = Serial(self.log)
        self._aborting = False
        self._state = "open"  # open | committed | aborted | failed

    def __repr__(self) -> str:
        return f"<BlockWriter {self.hash} {self._state} {self._written}/{self.size}>"

    # -- write ---------------------------------------------------------------

    def write(self, data: Buffer) -> "Deferred[None]":
        return self._serial.run(lambda: self._write(data))

    def _write(self, data: Buffer) -> "Deferred[None]":
        if self._aborting or self._state != "open":
            return fail(VolumeError(f"write to a {self._state_word()} block writer"))
        n = memoryview(data).nbytes
        if n == 0:
            return succeed(None)
        if self._written + n > self.size:
            return self._discard_then_fail(
                f"block {self.hash}: more than the declared {self.size} bytes"
            )
        return self._vol._run(self._write_blocking, data).addErrback(self._failed)

    def _write_blocking(self, data: Buffer) -> None:
        fd = self._fd
        assert fd is not None
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
                self._written += n
        except OSError as e:
            self._discard_quietly()
            raise self._vol._error("write", self._tmp, e) from e
        finally:
            view.release()
        if self._written - self._wb_start >= WRITEBACK_INTERVAL:
            self._vol._writeback.start(fd, self._wb_start, self._written - self._wb_start)
            if self._wb_start > self._drop_start:
                _Writeback.drop(fd, self._drop_start, self._wb_start - self._drop_start)
                self._drop_start = self._wb_start
            self._wb_start = self._written

    def _failed(self, f: Failure) -> Failure:
        # The blocking side already closed and unlinked the temp file.
        if self._fd is None:
            self._state = "failed"
            self._vol._writers.discard(self)
        return f

    def _discard_then_fail(self, msg: str) -> "Deferred[None]":
        """Give up on this block: remove the temp file, then fail with ``msg``."""
        self._state = "failed"
        self._vol._writers.discard(self)

        def report(result: object) -> Failure:
            if isinstance(result, Failure):
                self.log.failure("discarding {tmp} failed", result, tmp=self._rel_tmp())
            return Failure(VolumeError(msg))

        return self._vol._run(self._discard_blocking).addBoth(report)

    # -- commit --------------------------------------------------------------

    def commit(self) -> "Deferred[None]":
        return self._serial.run(self._commit)

    def commit_as(self, hash: str) -> "Deferred[None]":
        """Commit a spooled write (``open_spool``) as block ``hash``."""
        bad: Deferred[None] | None = self._vol._bad_hash(hash)
        if bad is not None:
            return bad

        def run() -> "Deferred[None]":
            if self.hash is not None and self.hash != hash:
                return fail(VolumeError(f"writer for {self.hash} cannot commit {hash}"))
            self.hash = hash
            return self._commit()

        return self._serial.run(run)

    def _commit(self) -> "Deferred[None]":
        if self._state == "committed":
            return succeed(None)
        if self._aborting or self._state != "open":
            return fail(VolumeError(f"commit of a {self._state_word()} block writer"))
        if self.hash is None:
            return fail(VolumeError("a spooled write needs commit_as(hash)"))
        if self._written != self.size:
            return self._discard_then_fail(
                f"block {self.hash}: wrote {self._written} bytes, declared {self.size}"
            )

        def done(_: None) -> None:
            self._state = "committed"
            self._vol._writers.discard(self)

        return self._vol._run_commit(self._commit_blocking).addCallbacks(done, self._failed)

    def _commit_blocking(self) -> None:
        fd = self._fd
        assert fd is not None and self.hash is not None
        final = self._vol.block_path(self.hash)
        op, path = "fsync", self._tmp
        try:
            os.fsync(fd)
            if os.path.dirname(self._tmp) != os.path.dirname(final):
                op, path = "mkdir", os.path.dirname(final)
                self._vol._ensure_subdir(path)
                op, path = "fsync", self._tmp
            _Writeback.drop(fd, 0, 0)
            self._fd = None
            os.close(fd)
            op, path = "rename", final
            with self._vol._names_locked(os.path.dirname(final)):
                if self._same_block_exists(final):
                    # Keep the existing copy (its inode may be open by readers)
                    # and refresh its mtime, as keepstore's Touch does.
                    os.unlink(self._tmp)
                    os.utime(final)
                else:
                    os.rename(self._tmp, final)
            op, path = "fsync", os.path.dirname(final)
            self._vol._fsync_dir(path)
        except OSError as e:
            self._discard_quietly()
            raise self._vol._error(op, path, e) from e

    def _same_block_exists(self, final: str) -> bool:
        try:
            st = os.stat(final)
        except FileNotFoundError:
            return False
        return statmod.S_ISREG(st.st_mode) and st.st_size == self.size

    # -- abort ---------------------------------------------------------------

    def abort(self) -> "Deferred[None]":
        if self._state != "open":
            return succeed(None)
        self._aborting = True  # queued writes now fail at once
        return self._serial.run(self._abort)

    def _abort(self) -> "Deferred[None]":
        if self._state != "open":
            return succeed(None)
        self._state = "aborted"
        self._vol._writers.discard(self)
        return self._vol._run(self._discard_blocking)

    def _discard_blocking(self) -> None:
        """Close and unlink the temp file; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._vol._error("unlink", self._tmp, e) from e

    def _discard_quietly(self) -> None:
        """Discard on an error path: the first error is the one to report."""
        try:
            self._discard_blocking()
        except VolumeError:
            pass

    def _state_word(self) -> str:
        return "aborted" if self._aborting and self._state == "open" else self._state

    def _rel_tmp(self) -> str:
        return self._vol._rel(self._tmp)
