#!/usr/bin/env python3
"""Requests per second and median/p99 latency of the controller's hot reads.

Why (issue 4): every arv-get/arv-ls starts with ``GET collections/<uuid>``
(a permission check, a row, and a manifest re-signed for the caller) and
arv-put with ``users/current`` (token check only). This measures both with
warm caches (token cache, permission-levels cache, page cache), the way
a busy client sees them: keep-alive HTTPS connections, one request in
flight per connection, ``--concurrency`` connections.

What one run does:

1. starts a node as a subprocess in a temp state directory, exactly as the
   README's first command (``twistd --nodaemon --pidfile= arvnode --data
   DIR``, embedded default, SQLite), unless ``--host/--token/--cacert``
   point at a running node;
2. as admin, creates a non-admin user and a token for it; as that user,
   PUTs ``--blocks`` small blocks through the keepproxy and saves one
   collection of them (so GETs do the real non-admin work: permission
   levels, signing every locator);
3. for each endpoint and each concurrency level: ``--warmup`` seconds
   untimed, then ``--duration`` seconds timed. Clients are forked
   processes (one persistent ``http.client.HTTPSConnection`` each), so the
   client's own CPU is not serialised on one GIL; they share the machine
   with the node, which the result records (load average, CPU count);
4. prints a table and writes ``bench/results/api-<time>.json``.

Run it from the repository root::

    .venv/bin/python bench/api_bench.py                       # ~1 minute
    .venv/bin/python bench/api_bench.py --concurrency 1,4,16 --duration 10
    .venv/bin/python bench/api_bench.py --host 127.0.0.1:8443 --token "$ARVADOS_API_TOKEN" \\
        --cacert arvnode-data/tls/ca.pem                      # an already running node
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

from benchlib import stop, write_results  # noqa: E402


def _ssl_context(cacert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cacert)
    return ctx


def api(host: str, ctx: ssl.SSLContext, method: str, path: str, token: str,
        body: Any = None) -> Any:
    conn = http.client.HTTPSConnection(host, context=ctx, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, "/arvados/v1/" + path, body=data, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"{method} {path}: {resp.status} {text[:300]!r}")
    return json.loads(text)


def start_node(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    log = open(workdir / "node.log", "wb")
    twistd = str(Path(sys.executable).parent / "twistd")
    proc = subprocess.Popen([twistd, "--nodaemon", "--pidfile=", "arvnode",
                             "--data", str(workdir / "data")],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
    env_file = workdir / "data" / "env.sh"
    deadline = time.time() + 60
    while not env_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("node did not start:\n" + (workdir / "node.log").read_text())
        time.sleep(0.2)
    time.sleep(0.3)
    values = {}
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            values[key] = value
    return proc, values


def setup_fixture(host: str, ctx: ssl.SSLContext, admin_token: str, blocks: int
                  ) -> tuple[str, str]:
    """(user token, collection uuid) owned by a fresh non-admin user."""
    suffix = os.urandom(4).hex()
    user = api(host, ctx, "POST", "users", admin_token,
               {"email": f"bench-{suffix}@example.com", "username": f"bench{suffix}",
                "is_active": True})
    tok = api(host, ctx, "POST", "api_client_authorizations", admin_token,
              {"owner_uuid": user["uuid"]})
    token = f"v2/{tok['uuid']}/{tok['api_token']}"
    (keep,) = api(host, ctx, "GET", "keep_services/accessible", token)["items"]
    scheme = "https" if keep["service_ssl_flag"] else "http"
    conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    kw = {"context": ctx} if scheme == "https" else {}
    locators = []
    for i in range(blocks):
        data = f"bench block {i} {suffix}\n".encode() * 100
        conn = conn_cls(keep["service_host"], keep["service_port"], timeout=60, **kw)
        conn.request("PUT", "/" + hashlib.md5(data).hexdigest(), body=data, headers={
            "Authorization": f"Bearer {token}", "X-Keep-Desired-Replicas": "1"})
        resp = conn.getresponse()
        text = resp.read().decode().strip()
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"keep PUT: {resp.status} {text}")
        locators.append((text, len(data)))
    pos, files = 0, []
    for i, (_, size) in enumerate(locators):
        files.append(f"{pos}:{size}:file{i}.txt")
        pos += size
    manifest = ". " + " ".join(l for l, _ in locators) + " " + " ".join(files) + "\n"
    coll = api(host, ctx, "POST", "collections", token,
               {"name": f"bench {suffix}", "manifest_text": manifest})
    return token, coll["uuid"]


def _client(host: str, cacert: str | None, path: str, token: str, warmup: float,
            duration: float, barrier: Any, out: Any) -> None:
    ctx = _ssl_context(cacert)
    conn = http.client.HTTPSConnection(host, context=ctx, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    latencies: list[float] = []
    errors = 0

    def one() -> float:
        nonlocal conn, errors
        t0 = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPSConnection(host, context=ctx, timeout=60)
        return time.perf_counter() - t0

    barrier.wait()
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        one()
    errors = 0
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        latencies.append(one())
    out.put({"latencies": latencies, "errors": errors,
             "elapsed": time.perf_counter() - start})
    conn.close()


def measure(host: str, cacert: str | None, path: str, token: str, concurrency: int,
            warmup: float, duration: float) -> dict[str, Any]:
    mpctx = mp.get_context("fork")
    barrier = mpctx.Barrier(concurrency)
    out = mpctx.Queue()
    procs = [mpctx.Process(target=_client, args=(host, cacert, path, token, warmup, duration,
                                                  barrier, out)) for _ in range(concurrency)]
    for p in procs:
        p.start()
    results = [out.get(timeout=warmup + duration + 120) for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["elapsed"] for r in results)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] if lat else float("nan")
    return {
        "path": path.split("?")[0],
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": sum(r["errors"] for r in results),
        "rps": len(lat) / elapsed if elapsed else 0.0,
        "median_ms": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99_ms": p99 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8",
                        help="comma-separated numbers of keep-alive connections (default 1,8)")
    parser.add_argument("--duration", type=float, default=10.0, help="timed seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per cell")
    parser.add_argument("--blocks", type=int, default=20,
                        help="locators in the benchmarked collection's manifest")
    parser.add_argument("--host", help="host:port of a running node (default: start one)")
    parser.add_argument("--token", help="an admin token of that node")
    parser.add_argument("--cacert", help="CA file for that node's certificate")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    proc = None
    tmp = None
    if args.host:
        host, admin, cacert = args.host, args.token, args.cacert
        if not admin:
            raise SystemExit("--token is required with --host")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="api-bench-")
        proc, env = start_node(Path(tmp.name))
        host, admin, cacert = (env["ARVADOS_API_HOST"], env["ARVADOS_API_TOKEN"],
                               env["SSL_CERT_FILE"])
    try:
        ctx = _ssl_context(cacert)
        token, coll = setup_fixture(host, ctx, admin, args.blocks)
        rows = []
        for path in (f"/arvados/v1/collections/{coll}?alt=json",
                     "/arvados/v1/users/current?alt=json"):
            for c in levels:
                row = measure(host, cacert, path, token, c, args.warmup, args.duration)
                rows.append(row)
                print(f"{row['path']:<55} c={c:<3} {row['rps']:8.1f} req/s  "
                      f"median {row['median_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                      f"errors {row['errors']}", flush=True)
        report = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
            "blocks_in_manifest": args.blocks,
            "node": "subprocess (embedded default, SQLite)" if proc else host,
            "rows": rows,
        }
        print(f"written {write_results(args.results, 'api', report)}")
    finally:
        stop(proc)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
