#!/usr/bin/env python3
"""64 MiB PUT/GET through arvnode's S3 volume vs the same S3 server used directly.

Why (issue 6, last "Done means" bullet): an S3 volume is worth having only if
the keepproxy in front of a bucket costs little next to talking to the bucket
directly. The only S3-protocol server available offline is moto, which is
pure Python and CPU-bound (spec/s3-notes.md §4), so the absolute MB/s say
more about moto than about arvnode; the figure that matters is the ratio
arvnode / direct, measured against the same server in the same run.

What one run does:

1. starts ``python -m moto.server`` on loopback with signature checking on
   (``tests/s3server.S3Server``: an IAM user, then ``reset-auth``) and
   creates one bucket as that user;
2. starts a node as a subprocess the README way (``twistd --nodaemon
   --pidfile= arvnode --config <config.yml>``, this checkout on
   ``PYTHONPATH``) on a config made by ``arvnode init`` whose only volume is
   an S3 volume on that bucket (path style, ``Replication: 1``,
   ``DefaultReplication: 1``), plain-HTTP keepproxy on 127.0.0.1; the
   client uses the admin token ``arvnode init`` wrote;
3. ``--reps`` rounds; in each, for every concurrency level: PUT through the
   keepproxy and PUT directly with boto3 ``put_object`` (same bucket,
   other keys), then GET of the blocks just stored both ways (keepproxy
   ``GET /<signed locator>``, boto3 ``get_object``). The order of the two
   sides alternates between rounds, so moto slowing down as its memory grows
   weighs on both alike. Every block is distinct (no shortcut for data the
   bucket already has); every GET's md5 is checked (after the clock stops),
   and every PUT's answer (locator hash, ETag) is checked too;
4. prints medians and min/max MB/s and the ratio arvnode/direct, and writes
   everything (per-trial figures, CPU seconds of the node and of moto,
   load averages) to ``bench/results/s3-<time>.json`` (git-ignored).

The direct client sends the same request shape as the S3 volume:
``UNSIGNED-PAYLOAD`` plus ``Content-MD5`` (md5 computed before the clock
starts), no extra CRC32 (``request_checksum_calculation=when_required``).
Clients are forked processes (one per concurrent transfer) meeting at a
barrier; throughput = n x 64 MiB / (last finish - first start), MB = 10^6 B.

Run it from the repository root (about 1-2 minutes on 2 cores)::

    .venv/bin/python bench/s3_bench.py                      # 1 and 4 clients, 5 rounds
    .venv/bin/python bench/s3_bench.py --concurrency 1 --reps 3

``--baseline DIR`` adds a third side: a second node running the code in
``DIR`` (another checkout, e.g. ``git archive <commit> arvnode twisted | tar
-x -C DIR``) against the same bucket, interleaved with the other two, so a
change is measured before/after in one run under the same load::

    mkdir /tmp/before && git archive HEAD arvnode twisted | tar -x -C /tmp/before
    .venv/bin/python bench/s3_bench.py --baseline /tmp/before
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import multiprocessing as mp
import os
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

from benchlib import free_port, md5_rate, node_env, proc_cpu, stop, wait_port, write_results  # noqa: E402
REGION = "us-east-1"


# -- processes -------------------------------------------------------------------


def start_node(work: Path, endpoint: str, bucket: str, creds: tuple[str, str],
               max_inflight: int, code: Path | None = None,
               ) -> tuple[subprocess.Popen[bytes], int, str, Path]:
    """A node whose only volume is an S3 volume on ``bucket``; it runs this
    checkout's code, or ``code`` (another checkout: ``--baseline``)."""
    import yaml

    bindir = Path(sys.executable).parent
    data = work / "node"
    subprocess.run([str(bindir / "arvnode"), "init", "--data", str(data)],
                   check=True, stdout=subprocess.DEVNULL, env=node_env())
    cfg_path = data / "config.yml"
    cfg = yaml.safe_load(cfg_path.read_text())
    ((cluster_id, cluster),) = cfg["Clusters"].items()
    kp_port, api_port = free_port(), free_port()
    kp = f"http://127.0.0.1:{kp_port}/"
    api = f"https://127.0.0.1:{api_port}/"
    cluster["Services"]["Controller"] = {"ExternalURL": api, "InternalURLs": {api: {}}}
    cluster["Services"]["Keepproxy"] = {"ExternalURL": kp, "InternalURLs": {kp: {}}}
    cluster.setdefault("Collections", {})["DefaultReplication"] = 1
    cluster["Volumes"] = {
        f"{cluster_id}-nyw5e-000000000000053": {
            "Driver": "S3",
            "DriverParameters": {
                "Bucket": bucket,
                "Endpoint": endpoint,
                "Region": REGION,
                "UsePathStyle": True,
                "AccessKeyID": creds[0],
                "SecretAccessKey": creds[1],
            },
            "Replication": 1,
            "StorageClasses": {"default": True},
        }
    }
    # Admit every concurrent upload at once (the default, 256 MiB, is
    # exactly 4 blocks): the bench measures throughput, not admission.
    arv = cluster.setdefault("ArvNode", {})
    arv.setdefault("Keepproxy", {})["MaxInflightBytes"] = max_inflight
    cfg_path.write_text(yaml.safe_dump(cfg))
    token = (data / "admin-token").read_text().strip()
    log = work / "node.log"
    env = node_env()
    if code is not None:
        env["PYTHONPATH"] = str(code)
    proc = subprocess.Popen(
        [str(bindir / "twistd"), "--nodaemon", "--pidfile=", "--logfile", str(log),
         "arvnode", "--config", str(cfg_path)],
        cwd=str(work), stdout=subprocess.DEVNULL, stderr=open(work / "node.stderr", "wb"),
        env=env,
    )
    wait_port(kp_port, proc, "arvnode", log)
    return proc, kp_port, token, cfg_path


def s3_client(endpoint: str, creds: tuple[str, str]) -> Any:
    """boto3 configured like arvnode's requests: path style, UNSIGNED-PAYLOAD,
    no extra CRC32 (spec/s3-notes.md §5), no retries (a failure must show)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
            read_timeout=600, connect_timeout=60,
        ),
    )


# -- one transfer per forked client ----------------------------------------------------


def make_block(base: bytes, tag: str) -> tuple[bytes, str]:
    """A distinct 64 MiB block (``base`` with its head replaced) and its md5."""
    head = hashlib.sha256(tag.encode()).digest()
    data = head + base[len(head):]
    return data, hashlib.md5(data).hexdigest()


def _put(side: str, target: dict[str, Any], data: bytes, md5: str) -> str:
    """Store ``data``; returns what a GET needs (signed locator or key)."""
    if side != "direct":  # a node: "arvnode" or "baseline"
        conn = http.client.HTTPConnection("127.0.0.1", target["port"], timeout=600)
        conn.request("PUT", "/" + md5, body=data, headers={
            "Authorization": f"Bearer {target['token']}",
            "X-Keep-Desired-Replicas": "1",
            "Content-Type": "application/octet-stream",
        })
        resp = conn.getresponse()
        text = resp.read().decode("latin-1").strip()
        conn.close()
        if resp.status != 200 or not text.startswith(f"{md5}+{len(data)}"):
            raise RuntimeError(f"keepproxy PUT: {resp.status} {text[:300]}")
        return text
    key = f"direct/{md5}"
    r = target["client"].put_object(
        Bucket=target["bucket"], Key=key, Body=data,
        ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode())
    if r["ETag"].strip('"') != md5:
        raise RuntimeError(f"direct PUT: ETag {r['ETag']} != {md5}")
    return key


def _get(side: str, target: dict[str, Any], ref: str) -> bytes:
    if side != "direct":
        conn = http.client.HTTPConnection("127.0.0.1", target["port"], timeout=600)
        conn.request("GET", "/" + ref, headers={"Authorization": f"Bearer {target['token']}"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"keepproxy GET: {resp.status} {body[:300]!r}")
        return body
    return target["client"].get_object(Bucket=target["bucket"], Key=ref)["Body"].read()  # type: ignore[no-any-return]


def _client(op: str, side: str, target: dict[str, Any], base: bytes, tag: str, ref: str,
            md5: str, barrier: Any, out: Any) -> None:
    """One forked client: set up untimed, meet the others, one timed transfer."""
    try:
        if side == "direct":
            target = dict(target, client=s3_client(target["endpoint"], target["creds"]))
        if op == "put":
            data, md5 = make_block(base, tag)
        barrier.wait()
        t0 = time.time()
        if op == "put":
            ref = _put(side, target, data, md5)
            ok = True
        else:
            body = _get(side, target, ref)
        t1 = time.time()
        if op == "get":  # checked after the clock stopped, on both sides alike
            ok = len(body) == BLOCK and hashlib.md5(body).hexdigest() == md5
        out.put({"start": t0, "end": t1, "ref": ref, "md5": md5, "ok": ok})
    except BaseException as e:  # noqa: B902 - reported to the parent, which fails the run
        try:
            barrier.abort()
        except Exception:
            pass
        out.put({"error": f"{type(e).__name__}: {e}"})


def trial(op: str, side: str, target: dict[str, Any], base: bytes, tags: list[str],
          refs: list[tuple[str, str]], pids: dict[str, tuple[int, int | None]]) -> dict[str, Any]:
    """``len(tags)`` (put) or ``len(refs)`` (get) concurrent transfers."""
    mpctx = mp.get_context("fork")
    n = len(tags) if op == "put" else len(refs)
    barrier = mpctx.Barrier(n + 1)
    out = mpctx.Queue()
    procs = []
    for i in range(n):
        tag = tags[i] if op == "put" else ""
        ref, md5 = refs[i] if op == "get" else ("", "")
        procs.append(mpctx.Process(target=_client, args=(op, side, target, base, tag, ref, md5,
                                                          barrier, out)))
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=300)  # every client is ready: sample CPU, then they go
    except threading.BrokenBarrierError:
        pass  # a client failed while setting up: its error is in ``out``
    cpu0 = {k: proc_cpu(*v) for k, v in pids.items()}
    results = [out.get(timeout=900) for _ in procs]
    cpu1 = {k: proc_cpu(*v) for k, v in pids.items()}
    for p in procs:
        p.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"{op} {side}: {errors[0]}")
    if not all(r["ok"] for r in results):
        raise SystemExit(f"{op} {side}: md5 mismatch on GET")
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "op": op, "side": side, "clients": n, "seconds": elapsed,
        "mb_s": n * BLOCK / elapsed / 1e6,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in pids},
        "loadavg": os.getloadavg(),
        "refs": [(r["ref"], r["md5"]) for r in results],
    }


# -- report ---------------------------------------------------------------------------


def summarise(trials: list[dict[str, Any]], levels: list[int],
              sides: tuple[str, ...] = ("arvnode", "direct")) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        for op in ("put", "get"):
            row: dict[str, Any] = {"op": op, "clients": c}
            for side in sides:
                xs = [t["mb_s"] for t in trials if (t["op"], t["side"], t["clients"]) == (op, side, c)]
                row[side] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
                cpu = [t["cpu_s"] for t in trials if (t["op"], t["side"], t["clients"]) == (op, side, c)]
                gib = c * BLOCK / (1 << 30)
                row[side]["cpu_s_per_gib"] = {
                    k: statistics.median(x[k] for x in cpu) / gib for k in cpu[0]}
            # Paired per round: the ratio of the two trials run back to back.
            a = [t["mb_s"] for t in trials if (t["op"], t["side"], t["clients"]) == (op, "arvnode", c)]
            d = [t["mb_s"] for t in trials if (t["op"], t["side"], t["clients"]) == (op, "direct", c)]
            row["ratio_of_medians"] = row["arvnode"]["median"] / row["direct"]["median"]
            row["ratio_paired_median"] = statistics.median(x / y for x, y in zip(a, d))
            if "baseline" in sides:
                b = [t["mb_s"] for t in trials if (t["op"], t["side"], t["clients"]) == (op, "baseline", c)]
                row["baseline"]["ratio_of_medians"] = row["baseline"]["median"] / row["direct"]["median"]
                row["baseline"]["ratio_paired_median"] = statistics.median(x / y for x, y in zip(b, d))
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"{'case':<7} {'arvnode MB/s':>11} {'(min-max)':<15} {'direct MB/s':>11} {'(min-max)':<15} "
          f"{'ratio':>5} {'paired':>6}   CPU s/GiB: {'node':>5} {'reactor':>7} {'moto':>5} "
          f"{'moto(direct)':>12}")
    for r in rows:
        a, d = r["arvnode"], r["direct"]
        ca, cd = a["cpu_s_per_gib"], d["cpu_s_per_gib"]
        print(f"{r['op'] + ' c' + str(r['clients']):<7} "
              f"{a['median']:11.1f} ({a['min']:5.0f}-{a['max']:5.0f})   "
              f"{d['median']:11.1f} ({d['min']:5.0f}-{d['max']:5.0f})   "
              f"{r['ratio_of_medians']:5.2f} {r['ratio_paired_median']:6.2f}              "
              f"{ca['node']:5.2f} {ca['reactor']:7.2f} {ca['moto']:5.2f} {cd['moto']:12.2f}")
        b = r.get("baseline")
        if b is not None:
            cb = b["cpu_s_per_gib"]
            print(f"{'  base':<7} {b['median']:11.1f} ({b['min']:5.0f}-{b['max']:5.0f})   {'':11} {'':15} "
                  f"{b['ratio_of_medians']:5.2f} {b['ratio_paired_median']:6.2f}              "
                  f"{cb['node']:5.2f} {cb['reactor']:7.2f} {cb['moto']:5.2f}")
    print("ratio = arvnode median / direct median; paired = median over rounds of the ratio of the")
    print("two trials run back to back; CPU s/GiB = process CPU per GiB moved (medians);")
    print("'base' = the --baseline node, if any (ratios also to the direct side).")
    print()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--concurrency", default="1,4",
                        help="comma-separated numbers of concurrent clients (default 1,4)")
    parser.add_argument("--dir", help="work directory to keep (node log, config); default: a temp dir")
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--baseline", metavar="DIR",
                        help="another checkout (its arvnode/ and twisted/) run as a second node, "
                             "interleaved: before/after in one run")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    sys.path.insert(0, str(REPO))
    from tests.s3server import S3Server

    tmp = None
    if args.dir:
        work = Path(args.dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="s3-bench-")
        work = Path(tmp.name)
    up_before = uptime()
    print(f"before: {up_before}", flush=True)
    t_start = time.monotonic()
    server = S3Server(users=1).start()
    proc = base_proc = None
    try:
        assert server.proc is not None
        bucket = server.create_bucket("bench")
        creds = server.credentials[0]
        proc, kp_port, token, cfg_path = start_node(
            work, server.endpoint, bucket, creds, max(256 * MiB, max(levels) * BLOCK * 2))
        print(f"moto {server.endpoint} bucket {bucket}; arvnode keepproxy 127.0.0.1:{kp_port}",
              flush=True)
        # The node's main thread is its reactor: the share of the node's CPU
        # that cannot spread over the cores.
        pids = {"node": (proc.pid, None), "reactor": (proc.pid, proc.pid),
                "moto": (server.proc.pid, None)}
        target = {"port": kp_port, "token": token, "endpoint": server.endpoint,
                  "creds": creds, "bucket": bucket}
        targets = {"arvnode": (target, pids), "direct": (target, pids)}
        all_sides: tuple[str, ...] = ("arvnode", "direct")
        if args.baseline:
            base_dir = Path(args.baseline).resolve()
            (work / "baseline").mkdir(exist_ok=True)
            base_proc, base_port, base_token, _ = start_node(
                work / "baseline", server.endpoint, bucket, creds,
                max(256 * MiB, max(levels) * BLOCK * 2), code=base_dir)
            print(f"baseline node ({base_dir}) keepproxy 127.0.0.1:{base_port}", flush=True)
            targets["baseline"] = (
                dict(target, port=base_port, token=base_token),
                {"node": (base_proc.pid, None), "reactor": (base_proc.pid, base_proc.pid),
                 "moto": (server.proc.pid, None)})
            all_sides = ("arvnode", "baseline", "direct")
        direct = s3_client(server.endpoint, creds)
        base = os.urandom(BLOCK)
        md5_mb_s = md5_rate(base) / 1e6
        print(f"single-core md5: {md5_mb_s:.0f} MB/s", flush=True)

        # Warm-up, untimed: the node's first S3 request, imports, pools.
        for side in all_sides:
            trial("put", side, targets[side][0], base, [f"warm-{side}"], [], targets[side][1])

        trials: list[dict[str, Any]] = []
        for rep in range(args.reps):
            sides = all_sides if rep % 2 == 0 else all_sides[::-1]
            for c in levels:
                stored: dict[str, list[tuple[str, str]]] = {}
                put_rate: dict[str, float] = {}
                for side in sides:
                    t = trial("put", side, targets[side][0], base,
                              [f"{rep}-{c}-{side}-{i}" for i in range(c)], [], targets[side][1])
                    stored[side], put_rate[side] = t["refs"], t["mb_s"]
                    trials.append(dict(t, rep=rep))
                for side in sides:
                    t = trial("get", side, targets[side][0], base, [], stored[side], targets[side][1])
                    trials.append(dict(t, rep=rep))
                    print(f"round {rep + 1}/{args.reps} c{c} {side:<8} put {put_rate[side]:7.1f} MB/s"
                          f"  get {t['mb_s']:7.1f} MB/s", flush=True)
                # Free moto's temp files: every block is distinct, none is read again.
                for ref, md5 in stored["direct"]:
                    direct.delete_object(Bucket=bucket, Key=ref)
                for side in all_sides:
                    if side != "direct":
                        for ref, md5 in stored[side]:
                            direct.delete_object(Bucket=bucket, Key=md5)

        rows = summarise(trials, levels, all_sides)
        print_table(rows)
        up_after = uptime()
        print(f"after:  {up_after}")
        print(f"total {time.monotonic() - t_start:.0f} s")
        import moto

        report = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(),
            "uptime_before": up_before,
            "uptime_after": up_after,
            "block_bytes": BLOCK,
            "md5_single_core_mb_s": md5_mb_s,
            "reps": args.reps,
            "baseline": args.baseline,
            "concurrency": levels,
            "s3_server": f"moto {moto.__version__} server mode, auth on, {server.endpoint}",
            "direct_client": "boto3 put_object/get_object, UNSIGNED-PAYLOAD + Content-MD5, "
                             "checksums when_required, path style",
            "rows": rows,
            "trials": [{k: v for k, v in t.items() if k != "refs"} for t in trials],
        }
        print(f"written {write_results(args.results, 's3', report)}")
    finally:
        stop(proc)
        stop(base_proc)
        server.stop()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
