#!/usr/bin/env python3
"""Profile the reactor thread of an in-process keepproxy taking 64 MiB PUTs.

A helper for working on the PUT path (not part of the measured bench): it
builds the real keepproxy site (``build_keepproxy_site``) over one real
directory volume in a temp dir, with pools shaped like the node's, runs
``--clients`` concurrent PUTs ``--rounds`` times from forked raw-socket
clients, and prints cProfile's top functions of the reactor thread plus the
CPU per GiB of the process and of the reactor thread.

    .venv/bin/python bench/profile_put.py --clients 1 --rounds 4
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import multiprocessing as mp
import os
import pstats
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from arvnode.auth.identity import Identity  # noqa: E402
from arvnode.keep.service import build_keepproxy_site  # noqa: E402
from arvnode.keep.volumes.directory import DirectoryVolume  # noqa: E402
from arvnode.web.metrics import NodeMetrics  # noqa: E402

MiB = 1 << 20
BLOCK = 64 * MiB
TOKEN = "v2/zzzzz-gj3su-000000000000001/benchsecret"


class Permission:
    user_download = user_upload = admin_download = admin_upload = True


async def authenticate(token: str | None) -> Identity | None:
    if token != TOKEN:
        return None
    return Identity("zzzzz-tpzed-000000000000001", TOKEN, "zzzzz-gj3su-000000000000001")


def put(port: int, prefix: bytes, base: bytes, barrier: object) -> None:
    h = hashlib.md5(prefix)
    h.update(memoryview(base)[len(prefix):])
    s = socket.create_connection(("127.0.0.1", port))
    head = (f"PUT /{h.hexdigest()} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {BLOCK}\r\n\r\n").encode()
    barrier.wait()  # type: ignore[attr-defined]
    s.sendall(head + prefix)
    s.sendall(memoryview(base)[len(prefix):])
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=8 * MiB)
    ap.add_argument("--no-profile", action="store_true", help="only the rate and CPU figures")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-put-"))
    io = ThreadPool(1, 8, "io")
    hp = ThreadPool(1, 2, "hash")
    io.start()
    hp.start()
    vol = DirectoryVolume("zzzzz-nyw5e-000000000000000", str(work / "keep"), reactor=reactor,
                          threadpool=io, rng=random.Random(1))
    site = build_keepproxy_site(
        reactor=reactor, clock=reactor, rng=random.Random(2), authenticate=authenticate,
        volumes=[vol], signing_key="k" * 40, signing_ttl=3600.0, default_replication=1,
        permission=Permission(), system_root_token="r" * 40, management_token="",
        metrics=NodeMetrics(), hash_pool=hp, upload_window=args.window,
        max_inflight_bytes=1 << 30, idle_timeout=60.0,
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1").getHost().port
    base = os.urandom(BLOCK)
    prof = cProfile.Profile()
    ctx = mp.get_context("fork")

    async def go() -> None:
        await vol.start()
        total = 0.0
        cpu0 = time.process_time()
        r0 = time.thread_time()
        for rnd in range(args.rounds):
            barrier = ctx.Barrier(args.clients)
            procs = [ctx.Process(target=put, args=(port, f"c{rnd}-{i}-".encode(), base, barrier))
                     for i in range(args.clients)]
            for p in procs:
                p.start()
            t0 = time.perf_counter()
            if not args.no_profile:
                prof.enable()
            await deferToThread(lambda: [p.join() for p in procs])
            if not args.no_profile:
                prof.disable()
            total += time.perf_counter() - t0
            for p in procs:
                assert p.exitcode == 0
        gib = args.rounds * args.clients * BLOCK / (1 << 30)
        print(f"{args.rounds * args.clients * BLOCK / total / 1e6:.0f} MB/s;"
              f" process CPU {(time.process_time() - cpu0) / gib:.2f} s/GiB;"
              f" reactor thread {(time.thread_time() - r0) / gib:.2f} s/GiB"
              f" (profiled: slower); fast path {site.fast_body_bytes / (1 << 20):.0f} MiB"
              f" in {site.fast_body_reads} reads")

    def done(_: object) -> None:
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(go()).addBoth(done))
    reactor.run()
    io.stop()
    hp.stop()
    if not args.no_profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    ensureDeferred  # re-exported for interactive use
    main()
