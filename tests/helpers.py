"""Shared test helpers: a CA per test, node configs on ephemeral ports,
in-process nodes, a treq client that trusts the test CA, and subprocess nodes.

Nodes started here talk over real loopback sockets; nothing is faked.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from arvnode import ids
from arvnode.tls import client_policy, generate_ca_and_server

REPO = Path(__file__).resolve().parent.parent


def make_cluster_config(
    base: Path,
    *,
    cluster_id: str | None = None,
    rng: random.Random | None = None,
    controller_scheme: str = "https",
    keepproxy_scheme: str = "http",
    extra: dict[str, Any] | None = None,
    postgresql: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """A config dict for one node listening on ephemeral loopback ports.

    Returns (config dict, paths) where paths has ca/cert/key/data.
    """
    rng = rng or random.Random()
    cluster_id = cluster_id or ids.new_cluster_id(rng)
    base.mkdir(parents=True, exist_ok=True)
    tls = generate_ca_and_server(base / "tls", common_name=cluster_id)
    data = base / "data"
    data.mkdir(exist_ok=True)
    controller = f"{controller_scheme}://127.0.0.1:0/"
    keepproxy = f"{keepproxy_scheme}://127.0.0.1:0/"
    cluster: dict[str, Any] = {
        "SystemRootToken": ids.random_alnum(rng, 40),
        "ManagementToken": ids.random_alnum(rng, 40),
        "Services": {
            "Controller": {"ExternalURL": controller, "InternalURLs": {controller: {}}},
            "Keepproxy": {"ExternalURL": keepproxy, "InternalURLs": {keepproxy: {}}},
        },
        "Collections": {"BlobSigningKey": ids.random_alnum(rng, 40), "DefaultReplication": 1},
        "Users": {"AnonymousUserToken": ids.random_alnum(rng, 40)},
        "TLS": {"Certificate": str(tls["cert"]), "Key": str(tls["key"])},
        "Volumes": {
            f"{cluster_id}-nyw5e-000000000000000": {
                "Driver": "Directory",
                "DriverParameters": {"Root": str(data / "keep")},
                "Replication": 1,
            }
        },
        "ArvNode": {"DataDirectory": str(data), "ShutdownGracePeriod": "5s"},
    }
    if postgresql:
        cluster["PostgreSQL"] = {"Connection": postgresql}
    for key, value in (extra or {}).items():
        _merge(cluster, key, value)
    paths = dict(tls)
    paths["data"] = data
    return {"Clusters": {cluster_id: cluster}}, paths


def _merge(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[last] = value


def cluster_section(config_dict: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (cid, section), = config_dict["Clusters"].items()
    return cid, section


class RunningNode:
    """An in-process node and what tests need to talk to it."""

    def __init__(self, node: Any, config_dict: dict[str, Any], paths: dict[str, Path]) -> None:
        self.node = node
        self.config_dict = config_dict
        self.paths = paths
        self.cluster_id, self.section = cluster_section(config_dict)

    @property
    def controller_port(self) -> int:
        return self.node.getServiceNamed("controller").port

    @property
    def keepproxy_port(self) -> int:
        return self.node.getServiceNamed("keepproxy").port

    @property
    def controller_url(self) -> str:
        return f"https://127.0.0.1:{self.controller_port}"

    @property
    def keepproxy_url(self) -> str:
        listener = self.node.getServiceNamed("keepproxy")
        return f"{listener.scheme}://127.0.0.1:{self.keepproxy_port}"

    @property
    def management_token(self) -> str:
        return self.section["ManagementToken"]

    @property
    def root_token(self) -> str:
        return self.section["SystemRootToken"]


async def start_node(testcase: Any, config_dict: dict[str, Any], paths: dict[str, Path], **kw: Any) -> RunningNode:
    """Build, start and (in cleanup) stop a node in this process."""
    from arvnode.config import config_from_string
    from arvnode.node import build_node

    config = config_from_string(yaml.safe_dump(config_dict))
    fatal: list[Any] = []
    node = build_node(config, reactor, on_fatal=fatal.append, **kw)
    node.startService()
    testcase.addCleanup(node.stopService)
    await node.started()
    return RunningNode(node, config_dict, paths)


def http_client(testcase: Any, ca_file: Path | str | None = None) -> HTTPClient:
    """A treq client trusting ``ca_file``; its pool is closed in cleanup."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = client_policy(insecure=False, ca_file=str(ca_file) if ca_file else None)
    client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    testcase.addCleanup(pool.closeCachedConnections)
    return client


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that runs this checkout's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def venv_bin(name: str) -> str:
    """A console script of the Python running the tests (the venv's)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate)


class ProcessNode:
    """``twistd --nodaemon --pidfile= arvnode ...`` in a child process.

    Used where the process boundary is the point (signals, exit codes,
    SIGKILL, the README command). Output is collected to a file.
    """

    def __init__(self, args: list[str], cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [venv_bin("twistd"), "--nodaemon", "--pidfile=", "arvnode", *args],
            cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=subprocess_env(),
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


async def wait_for(predicate: Any, *, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` on the reactor (never blocking it) until true."""
    from twisted.internet import task

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, interval, lambda: None)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    await wait_for(lambda: proc.poll() is not None, timeout=timeout)
    return proc.returncode


def deferred_sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
