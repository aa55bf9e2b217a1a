#!/usr/bin/env python3
"""Keep PUT/GET throughput of arvnode's keepproxy vs nginx, in one run on one machine.

Why this exists (issue 7, DESIGN.md §3): md5 is the work every stored byte
must go through, so the figures are ratios to the single-core
``hashlib.md5`` rate measured in the same run, and to nginx serving the same
directory (it hashes nothing). What one run does:

1. measures single-core md5 on 64 KiB updates (start and end of the run);
2. starts a real node as a subprocess (``twistd -n arvnode --config ...`` on a
   config made by ``arvnode init``: plain-HTTP keepproxy, one directory volume)
   and nginx (WebDAV ``PUT`` with the Arvados install page's settings, i.e.
   ``client_max_body_size 64m`` and the default body buffer, and a second
   server with ``client_body_buffer_size 1m``; static files for ``GET``),
   both on the same directory;
3. peak RSS of the node during 16 concurrent 64 MiB uploads vs its idle RSS
   (``/proc/<pid>/status`` VmHWM, and VmRSS sampled every 10 ms);
4. ``--reps`` rounds of 64 MiB PUTs and GETs with 1 and 8 concurrent clients
   against each server. Clients are forked processes with raw sockets
   (bodies sent from one shared buffer, responses received into a reused
   buffer), so the client costs little CPU; they meet at a barrier, and
   throughput = n x 64 MiB / (last finish - first start). GETs read files
   already in the page cache (warmed untimed) for both servers.

It prints a table (medians over the rounds; "x md5" pairs each trial with an
md5 measurement taken just before it) and writes everything, with
the machine's load average, to ``bench/results/keep-<time>.json``.

Run it (needs the project venv; installs nginx-light with apt-get if
missing and allowed, else pass ``--no-nginx``)::

    .venv/bin/python bench/keep_bench.py             # 5 rounds, about 40 s
    .venv/bin/python bench/keep_bench.py --reps 15   # steadier medians
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
BLOCK = 64 * MiB
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from benchlib import free_port, md5_rate, node_env, proc_cpu, stop, wait_port  # noqa: E402


# -- md5 -------------------------------------------------------------------------


# -- processes ---------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def start_node(work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int, str, Path]:
    import yaml

    bindir = Path(sys.executable).parent
    data = work / "node"
    subprocess.run(
        [str(bindir / "arvnode"), "init", "--data", str(data)],
        check=True, stdout=subprocess.DEVNULL, env=node_env(),
    )
    cfg_path = data / "config.yml"
    cfg = yaml.safe_load(cfg_path.read_text())
    (cluster_id, cluster), = cfg["Clusters"].items()
    kp_port, api_port = free_port(), free_port()
    kp = f"http://127.0.0.1:{kp_port}/"
    api = f"https://127.0.0.1:{api_port}/"
    cluster["Services"]["Controller"] = {"ExternalURL": api, "InternalURLs": {api: {}}}
    cluster["Services"]["Keepproxy"] = {"ExternalURL": kp, "InternalURLs": {kp: {}}}
    arv = cluster.setdefault("ArvNode", {})
    settings = arv.setdefault("Keepproxy", {})
    if args.upload_window:
        settings["UploadWindow"] = args.upload_window
    # Admit all 16 uploads of the RSS trial at once: memory must then be
    # bounded by streaming, not by refusing uploads.
    settings["MaxInflightBytes"] = 16 * BLOCK
    cfg_path.write_text(yaml.safe_dump(cfg))
    token = (data / "admin-token").read_text().strip()
    (volume,) = cluster["Volumes"].values()
    root = Path(volume["DriverParameters"]["Root"])
    log = work / "node.log"
    proc = subprocess.Popen(
        [str(bindir / "twistd"), "--nodaemon", "--pidfile=", "--logfile", str(log),
         "arvnode", "--config", str(cfg_path)],
        cwd=str(work), stdout=subprocess.DEVNULL, stderr=open(work / "node.stderr", "wb"),
        env=node_env(),
    )
    wait_port(kp_port, proc, "arvnode", log, timeout=60)
    return proc, kp_port, token, root


NGINX_CONF = """
worker_processes auto;
pid {work}/nginx.pid;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/nginx-body;
    client_max_body_size 64m;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    # The Arvados keepproxy install page's settings: 64m bodies, default buffer.
    server {{
        listen 127.0.0.1:{seed};
        root {root};
        location / {{ dav_methods PUT; create_full_put_path on; dav_access user:rw; }}
    }}
    # The same with 1 MiB body buffers.
    server {{
        listen 127.0.0.1:{big};
        root {root};
        client_body_buffer_size 1m;
        location / {{ dav_methods PUT; create_full_put_path on; dav_access user:rw; }}
    }}
}}
"""


def ensure_nginx() -> str | None:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx missing: apt-get install -y nginx-light", flush=True)
        r = subprocess.run(["apt-get", "install", "-y", "nginx-light"], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "nginx-light"], capture_output=True)
        return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    return None


def start_nginx(nginx: str, work: Path, root: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    seed, big = free_port(), free_port()
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, user=user, seed=seed, big=big, root=root))
    log = work / "nginx-error.log"
    proc = subprocess.Popen(
        [nginx, "-p", str(work), "-c", str(conf), "-e", str(log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=open(work / "nginx.stderr", "wb"),
    )
    wait_port(seed, proc, "nginx", log, timeout=60)
    wait_port(big, proc, "nginx", log, timeout=60)
    return proc, seed, big


# -- the load client ---------------------------------------------------------------


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError(f"connection closed before the response head: {buf[:200]!r}")
        buf += got
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def read_body(sock: socket.socket, headers: dict[str, str], rest: bytes, into: bytearray | None) -> tuple[int, bytes]:
    length = int(headers.get("content-length", "0"))
    got = len(rest)
    if into is None:
        body = bytearray(rest)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return len(body), bytes(body)
    view = memoryview(into)
    while got < length:
        n = sock.recv_into(view, min(len(view), length - got))
        if not n:
            break
        got += n
    return got, rest[:200]


def client(kind: str, port: int, path: str, token: str, prefix: bytes, base: bytes,
           barrier: Any, out: Any, idx: int) -> None:
    """One PUT or GET of a 64 MiB block; reports (idx, start, end, status, info)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        if kind == "put":
            head = (f"PUT {path} HTTP/1.1\r\nHost: bench\r\n{auth}"
                    f"Content-Length: {BLOCK}\r\n\r\n").encode()
        else:
            head = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
        sink = bytearray(4 * MiB)
        barrier.wait()
        t0 = time.perf_counter()
        if kind == "put":
            sock.sendall(head + prefix)
            sock.sendall(memoryview(base)[len(prefix):])
            status, headers, rest = read_head(sock)
            n, body = read_body(sock, headers, rest, None)
        else:
            sock.sendall(head)
            status, headers, rest = read_head(sock)
            n, body = read_body(sock, headers, rest, sink)
            if n != BLOCK:
                status = -status
        t1 = time.perf_counter()
        sock.close()
        out.put((idx, t0, t1, status, body.decode("latin-1", "replace")))
    except Exception as e:  # reported, never hangs the parent
        try:
            barrier.abort()
        except Exception:
            pass
        out.put((idx, 0.0, 0.0, -1, f"{type(e).__name__}: {e}"))


def trial(kind: str, port: int, paths: list[str], token: str, prefixes: list[bytes],
          base: bytes, pid: int | None = None, sample_rss: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    n = len(paths)
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(kind, port, paths[i], token, prefixes[i], base, barrier, out, i))
        for i in range(n)
    ]
    samples: list[int] = []
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            try:
                samples.append(proc_status(pid)["VmRSS"])  # type: ignore[arg-type]
            except (OSError, KeyError):
                pass
            time.sleep(0.01)

    sampler_thread = threading.Thread(target=sampler, daemon=True) if sample_rss and pid else None
    # md5 right before the trial: the ratio is paired in time, so load from
    # other processes that comes and goes during a run shifts both alike.
    md5_now = md5_rate(memoryview(base), passes=1)
    load = os.getloadavg()[0]
    cpu0 = proc_cpu(pid) if pid else 0.0
    reactor0 = proc_cpu(pid, pid) if pid else 0.0  # the main thread runs the reactor
    if sampler_thread:
        sampler_thread.start()
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    cpu1 = proc_cpu(pid) if pid else 0.0
    reactor1 = proc_cpu(pid, pid) if pid else 0.0
    if sampler_thread:
        stop_sampling.set()
        sampler_thread.join()
    results.sort()
    bad = [r for r in results if not (200 <= r[3] < 300)]
    if bad:
        raise SystemExit(f"{kind} to port {port} failed: {bad[:3]}")
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    rate = n * BLOCK / (end - start)
    info: dict[str, Any] = {
        "clients": n, "seconds": end - start, "bytes_per_s": rate,
        "md5_bytes_per_s": md5_now, "ratio_md5": rate / md5_now, "load": load,
        "bodies": [r[4] for r in results],
    }
    if pid:
        info["server_cpu_s_per_gib"] = (cpu1 - cpu0) / (n * BLOCK / (1 << 30))
        info["reactor_cpu_s_per_gib"] = (reactor1 - reactor0) / (n * BLOCK / (1 << 30))
    if samples:
        info["rss_max_sampled"] = max(samples)
    return info


# -- the run -----------------------------------------------------------------------


def block_paths(root: Path) -> list[Path]:
    return [p for p in root.glob("[0-9a-f][0-9a-f][0-9a-f]/*") if p.is_file()]


def clean(root: Path) -> None:
    for p in block_paths(root):
        p.unlink()


def warm(files: list[Path]) -> None:
    for p in files:
        with open(p, "rb") as f:
            while f.read(8 * MiB):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="rounds of every case (median reported)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    ap.add_argument("--upload-window", type=int, default=0,
                    help="ArvNode.Keepproxy.UploadWindow in bytes (default: the node's default)")
    ap.add_argument("--only", default="",
                    help="run only the cases whose name contains this (e.g. 'arvnode'); skips RSS unless it matches 'rss'")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/keep-<time>.json)")
    args = ap.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="keep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"work dir {work}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f};"
          f" {os.cpu_count()} CPUs", flush=True)
    base = os.urandom(BLOCK)
    md5_start = md5_rate(memoryview(base))
    print(f"md5 single core (64 KiB updates): {md5_start / 1e6:.0f} MB/s", flush=True)
    nclients = 16
    prefixes = [f"keep-bench-client-{i:04d}".encode() for i in range(nclients)]
    hashes = []
    for p in prefixes:
        h = hashlib.md5(p)
        h.update(memoryview(base)[len(p):])
        hashes.append(h.hexdigest())

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "uname": " ".join(os.uname())},
        "md5_bytes_per_s": {"start": md5_start},
        "node": {"upload_window": args.upload_window or "default", "max_inflight_bytes": 16 * BLOCK},
        "cases": {},
    }
    node, kp_port, token, root = start_node(work, args)
    procs = [node]
    try:
        nginx = None if args.no_nginx else ensure_nginx()
        if nginx is None and not args.no_nginx:
            print("nginx not found and cannot install it (need root + apt-get):"
                  " install nginx-light, or run with --no-nginx", flush=True)
        ng_seed = ng_big = 0
        if nginx:
            ngp, ng_seed, ng_big = start_nginx(nginx, work, root)
            procs.append(ngp)

        cases: dict[str, list[dict[str, Any]]] = {}

        def want(name: str) -> bool:
            return not args.only or args.only in name

        def run(name: str, *targs: Any, **kw: Any) -> dict[str, Any] | None:
            if not want(name):
                return None
            info = trial(*targs, **kw)
            cases.setdefault(name, []).append(info)
            print(f"  {name:24s} {info['bytes_per_s'] / 1e6:7.0f} MB/s", flush=True)
            return info

        # Idle RSS: after one tiny upload (modules loaded, nothing held).
        tiny = b"warm-up"
        with socket.create_connection(("127.0.0.1", kp_port)) as s:
            s.sendall(f"PUT /{hashlib.md5(tiny).hexdigest()} HTTP/1.1\r\nHost: b\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Length: {len(tiny)}\r\n\r\n".encode() + tiny)
            status, headers, rest = read_head(s)
            read_body(s, headers, rest, None)
            if status != 200:
                raise SystemExit(f"warm-up PUT answered {status}")
        if want("rss"):
            time.sleep(1.0)
            idle = proc_status(node.pid)["VmRSS"]
            rss = trial("put", kp_port, [f"/{h}" for h in hashes], token, prefixes, base,
                        pid=node.pid, sample_rss=True)
            peak = max(proc_status(node.pid)["VmHWM"], rss.get("rss_max_sampled", 0))
            results["rss"] = {"idle": idle, "peak_16_uploads": peak, "delta": peak - idle,
                              "put16_bytes_per_s": rss["bytes_per_s"]}
            print(f"node RSS: idle {idle / MiB:.1f} MiB, peak with 16 x 64 MiB uploads {peak / MiB:.1f} MiB"
                  f" (+{(peak - idle) / MiB:.1f} MiB); 16-client PUT {rss['bytes_per_s'] / 1e6:.0f} MB/s",
                  flush=True)
            clean(root)

        results["load_per_round"] = []
        for rep in range(args.reps):
            results["load_per_round"].append(os.getloadavg()[0])
            print(f"round {rep + 1}/{args.reps} (load average {os.getloadavg()[0]:.2f})", flush=True)
            for conc in (1, 8):
                put = run(f"put arvnode c{conc}", "put", kp_port, [f"/{h}" for h in hashes[:conc]],
                          token, prefixes[:conc], base, pid=node.pid)
                if conc == 8 and (want("get arvnode") or want("get nginx")):
                    if put is None:  # GETs need the blocks
                        put = trial("put", kp_port, [f"/{h}" for h in hashes[:conc]], token,
                                    prefixes[:conc], base)
                    locators = put["bodies"]
                    warm(block_paths(root))
                    for c2 in (1, 8):
                        run(f"get arvnode c{c2}", "get", kp_port, [f"/{loc.strip()}" for loc in locators[:c2]],
                            token, prefixes[:c2], base, pid=node.pid)
                        if nginx:
                            run(f"get nginx c{c2}", "get", ng_seed, [f"/{h[:3]}/{h}" for h in hashes[:c2]],
                                "", prefixes[:c2], base)
                clean(root)
                if nginx:
                    for name, port in (("nginx-seed", ng_seed), ("nginx-1m", ng_big)):
                        if run(f"put {name} c{conc}", "put", port, [f"/{h[:3]}/{h}" for h in hashes[:conc]],
                               "", prefixes[:conc], base):
                            clean(root)
    finally:
        for p in reversed(procs):
            stop(p)

    md5_end = md5_rate(memoryview(base))
    md5 = statistics.median([md5_start, md5_end])
    results["md5_bytes_per_s"].update(end=md5_end, used=md5)
    load_after = os.getloadavg()
    results["machine"]["load_after"] = load_after
    summary: dict[str, Any] = {}
    for name, runs in cases.items():
        rates = [r["bytes_per_s"] for r in runs]
        med = statistics.median(rates)
        entry = {"median": med, "min": min(rates), "max": max(rates),
                 "ratio_md5": statistics.median(r["ratio_md5"] for r in runs),
                 "ratio_md5_run": med / md5}
        for key in ("server_cpu_s_per_gib", "reactor_cpu_s_per_gib"):
            cpu = [r[key] for r in runs if key in r]
            if cpu:
                entry[key] = statistics.median(cpu)
        summary[name] = entry
    results["cases"] = {k: [{kk: vv for kk, vv in r.items() if kk != "bodies"} for r in v]
                        for k, v in cases.items()}
    results["summary"] = summary

    def ratio(a: str, b: str) -> str:
        if a in summary and b in summary:
            return f"{summary[a]['median'] / summary[b]['median']:.2f}"
        return "-"

    print()
    print(f"md5 single core: {md5 / 1e6:.0f} MB/s (start {md5_start / 1e6:.0f}, end {md5_end / 1e6:.0f});"
          f" load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"{'case':22s} {'MB/s':>7s} {'min-max':>11s} {'x md5':>6s} {'x nginx-seed':>12s}"
          f" {'x nginx-1m':>10s} {'cpu s/GiB':>9s} {'reactor':>7s}")
    targets = {}
    for op in ("put", "get"):
        for conc in (1, 8):
            for server in ("arvnode", "nginx-seed", "nginx-1m", "nginx"):
                name = f"{op} {server} c{conc}"
                if name not in summary:
                    continue
                e = summary[name]
                seed = f"{op} nginx-seed c{conc}" if op == "put" else f"get nginx c{conc}"
                big = f"{op} nginx-1m c{conc}"
                print(f"{name:22s} {e['median'] / 1e6:7.0f} {e['min'] / 1e6:5.0f}-{e['max'] / 1e6:<5.0f}"
                      f" {e['ratio_md5']:6.2f} {ratio(name, seed):>12s} {ratio(name, big):>10s}"
                      f" {e.get('server_cpu_s_per_gib', float('nan')):9.2f}"
                      f" {e.get('reactor_cpu_s_per_gib', float('nan')):7.2f}")
            name = f"{op} arvnode c{conc}"
            if name in summary:
                goal = 0.8 if conc == 1 else 1.0
                targets[f"{op} c{conc} >= {goal} x md5"] = summary[name]["ratio_md5"] >= goal
    r = results.get("rss")
    if r:
        targets["RSS(16 uploads) <= idle + 64 MiB"] = r["delta"] <= 64 * MiB
        print(f"RSS idle {r['idle'] / MiB:.1f} MiB, peak (16 x 64 MiB uploads) {r['peak_16_uploads'] / MiB:.1f} MiB,"
              f" delta {r['delta'] / MiB:.1f} MiB")
    results["targets"] = targets
    for k, ok in targets.items():
        print(f"target {k}: {'met' if ok else 'NOT met'}")

    out = Path(args.out) if args.out else HERE / "results" / time.strftime("keep-%Y%m%dT%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out}")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
