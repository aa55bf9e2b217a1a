#!/usr/bin/env python3
"""Added latency of a federated ``GET collections/<uuid>`` (A → B) over a direct one (→ B).

Why: federation puts a second controller on the path of every read of a
remote record (token check at A, salted relay, manifest rewrite to ``+R``);
this measures what that costs a client, with every cache warm (A's and B's
token caches, A's pooled connection to B, the client's keep-alive
connections), so the figure is the steady-state overhead, not the first-use
token validation.

What one run does:

1. starts two real nodes as subprocesses (``twistd --nodaemon arvnode
   --config ...``), A (``zaaaa``) and B (``zbbbb``), each naming the other in
   ``RemoteClusters`` with ``Proxy: true`` (TLS on, ``Insecure`` between them);
2. creates a user and token on A (admin API calls with A's root token) and,
   on B, a collection owned by that user with a manifest of ``--blocks``
   locators;
3. warms up (the token of A gets validated and cached at B), then runs
   ``--n`` rounds, each one direct ``GET`` to B and one federated ``GET`` to A
   (interleaved, so load changes hit both alike), over keep-alive
   connections, one request at a time;
4. prints median and p99 of both and of their difference, and writes them
   to ``bench/results/federation-<time>.json``.

Run it::

    .venv/bin/python bench/federation_bench.py            # ~20 s
    .venv/bin/python bench/federation_bench.py --n 2000   # steadier p99
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.helpers import make_cluster_config  # noqa: E402
from benchlib import free_port  # noqa: E402

A, B = "zaaaa", "zbbbb"


def start(work: Path, cid: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    path = work / f"{cid}.yml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    log = open(work / f"{cid}.log", "wb")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=", "arvnode",
         "--config", str(path)], cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/arvados/v1/config", verify=False, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="timed rounds (default 300)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--blocks", type=int, default=100, help="locators in the manifest")
    ap.add_argument("--dir", help="keep the work directory here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # unverified HTTPS to the test CA
    work = Path(args.dir or tempfile.mkdtemp(prefix="fedbench-"))
    work.mkdir(parents=True, exist_ok=True)
    ports = {A: free_port(), B: free_port()}
    procs = []
    roots = {}
    try:
        for cid, other in ((A, B), (B, A)):
            url = f"https://127.0.0.1:{ports[cid]}/"
            config, _ = make_cluster_config(work / cid, cluster_id=cid, extra={
                "Services.Controller": {"ExternalURL": url, "InternalURLs": {url: {}}},
                "RemoteClusters": {other: {"Host": f"127.0.0.1:{ports[other]}", "Proxy": True,
                                           "Insecure": True, "ActivateUsers": True}},
            })
            roots[cid] = config["Clusters"][cid]["SystemRootToken"]
            procs.append(start(work, cid, config))
        url_a, url_b = (f"https://127.0.0.1:{ports[c]}" for c in (A, B))
        wait_up(url_a)
        wait_up(url_b)

        admin = requests.Session()
        admin.verify = False
        admin.trust_env = False  # an exported CA bundle would override verify=False
        admin.headers["Authorization"] = f"Bearer {roots[A]}"
        user = admin.post(url_a + "/arvados/v1/users", json={"user": {
            "email": "bench@a.example", "username": "bench", "is_active": True}}).json()
        tok = admin.post(url_a + "/arvados/v1/api_client_authorizations", json={
            "api_client_authorization": {"owner_uuid": user["uuid"]}}).json()
        token = f"v2/{tok['uuid']}/{tok['api_token']}"
        rng = random.Random(1)
        locs = " ".join(f"{rng.getrandbits(128):032x}+{1 << 20}" for _ in range(args.blocks))
        manifest = f". {locs} 0:{args.blocks << 20}:big.bin\n"
        # B's admin creates it for A's user: B needs the user's copy only when
        # the user reads, and then validates A's token once.
        coll = requests.post(url_b + "/arvados/v1/collections", verify=False,
                             headers={"Authorization": f"Bearer {roots[B]}"},
                             json={"collection": {"owner_uuid": user["uuid"], "name": "bench",
                                                  "manifest_text": manifest}}).json()
        path = f"/arvados/v1/collections/{coll['uuid']}"

        client = requests.Session()
        client.verify = False
        client.trust_env = False
        client.headers["Authorization"] = f"Bearer {token}"

        def timed(url: str) -> float:
            t0 = time.perf_counter()
            r = client.get(url + path)
            r.content
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                raise SystemExit(f"GET {url}{path}: {r.status_code} {r.text[:300]}")
            return dt

        for _ in range(args.warmup):
            timed(url_b)
            timed(url_a)
        fed = client.get(url_a + path).json()["manifest_text"]
        assert "+R" not in manifest and ("+Rzbbbb-" in fed or "+A" not in manifest)
        direct, federated = [], []
        for _ in range(args.n):
            direct.append(timed(url_b))
            federated.append(timed(url_a))
        added = [f - d for f, d in zip(federated, direct)]
        result = {
            "n": args.n, "blocks": args.blocks, "loadavg": os.getloadavg(),
            "direct_ms": {"median": statistics.median(direct) * 1e3, "p99": pct(direct, 99) * 1e3},
            "federated_ms": {"median": statistics.median(federated) * 1e3,
                             "p99": pct(federated, 99) * 1e3},
            "added_ms": {"median": statistics.median(added) * 1e3, "p99": pct(added, 99) * 1e3},
        }
        print(f"GET collections/<uuid>, manifest of {args.blocks} locators, {args.n} rounds, "
              f"loadavg {result['loadavg'][0]:.2f}")
        for key, label in (("direct_ms", "direct  (-> B)"), ("federated_ms", "federated (A -> B)"),
                           ("added_ms", "added by A")):
            print(f"  {label:20s} median {result[key]['median']:7.2f} ms   "
                  f"p99 {result[key]['p99']:7.2f} ms")
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / f"federation-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
            json.dumps(result, indent=2))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
