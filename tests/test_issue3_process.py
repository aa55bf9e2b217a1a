"""Issue 3, as an operator meets it: the package `pip install .` builds, the
systemd unit, the `twistd arvnode` options and SIGTERM/SIGINT with requests
in flight, all across a real process boundary.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import yaml
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from arvnode.config.model import ArvNodeConfig
from tests.helpers import (
    REPO,
    ProcessNode,
    deferred_sleep,
    http_client,
    make_cluster_config,
    subprocess_env,
    wait_exit,
    wait_for,
)
from tests.integration.test_process import RawClient, exports

LISTEN_RE = re.compile(r"(controller|keepproxy) listening on \w+://127\.0\.0\.1:(\d+)/")
INFLIGHT_RE = re.compile(r'^arvnode_inflight_requests\{service="keepproxy"\} (\S+)$', re.M)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]


def _deps_view(into: Path) -> Path:
    """This venv's installed packages minus arvnode, as a directory of symlinks.

    The fresh venv gets its dependencies from here (no network), but must
    not see an arvnode that this venv may hold itself (a non-editable CI
    install puts ``arvnode_plugin.py`` into Twisted's own plugin directory):
    otherwise ``twistd --help`` would list arvnode whatever the wheel holds.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    into.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name == "arvnode" or name.startswith(("arvnode-", "__editable__", "__pycache__")):
            continue
        if name == "twisted":
            twisted = into / "twisted"
            twisted.mkdir()
            for sub in entry.iterdir():
                if sub.name != "plugins":
                    (twisted / sub.name).symlink_to(sub)
            (twisted / "plugins").mkdir()
            for plugin in (entry / "plugins").iterdir():
                if plugin.name not in ("arvnode_plugin.py", "dropin.cache", "__pycache__"):
                    (twisted / "plugins" / plugin.name).symlink_to(plugin)
        else:
            (into / name).symlink_to(entry)
    return into


class NonEditableInstallTests(TestCase):
    timeout = 600

    def test_pip_install_dot_ships_plugin_and_console_script(self) -> None:
        """Bullet 1 (Packaging; Done means "`twistd --help` lists `arvnode` after
        `pip install .` (non-editable)"): a wheel built offline from this
        tree holds twisted/plugins/arvnode_plugin.py and no
        twisted/plugins/__init__.py; installed into a fresh venv (deps from
        this one, minus arvnode), `twistd --help` lists arvnode from that
        venv with nothing on stderr (dropin.cache regenerated quietly),
        `twistd arvnode --help` documents --config/--cluster/--data and the
        `arvnode` console script runs."""
        base = Path(self.mktemp()).absolute()
        src = base / "src"
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                                capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            if (REPO / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)

        # Offline: the build backend comes from this venv (the test extra
        # holds setuptools and wheel), never from an index.
        built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                      "--no-index", "-w", str(base / "dist"), str(src)])
        self.assertEqual(built.returncode, 0, built.stdout + built.stderr
                         + "\n(setuptools and wheel come with the test extra: pip install '.[test]')")
        (wheel,) = (base / "dist").glob("arvnode-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("twisted/plugins/arvnode_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        modules = {str(p.relative_to(src)) for p in (src / "arvnode").rglob("*.py")}
        self.assertEqual(modules - names, set(), "modules missing from the wheel")
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        self.assertIn("arvnode = arvnode.cli:main", zipfile.ZipFile(wheel).read(entry_points).decode())

        venv = base / "venv"
        made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        self.assertEqual(made.returncode, 0, made.stderr)
        python = str(venv / "bin" / "python")
        site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                    .stdout.strip())
        (site / "_deps.pth").write_text(f"{_deps_view(base / 'deps')}\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        installed = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], env=env)
        self.assertEqual(installed.returncode, 0, installed.stdout + installed.stderr)

        cwd = base / "elsewhere"  # not the checkout: only the installed package counts
        cwd.mkdir()
        twistd = [python, "-c", "import sys; sys.argv[0] = 'twistd'; "
                                "from twisted.scripts.twistd import run; run()"]
        for attempt in ("writes dropin.cache", "reads it"):
            helped = _run([*twistd, "--help"], cwd=cwd, env=env)
            self.assertEqual((helped.returncode, helped.stderr), (0, ""), attempt)
            self.assertRegex(helped.stdout, r"(?m)^\s+arvnode\s+Arvados", attempt)
        self.assertTrue((site / "twisted" / "plugins" / "dropin.cache").exists())
        origin = _run([python, "-c", "import arvnode, twisted.plugins.arvnode_plugin as p; "
                                     "print(arvnode.__file__); print(p.__file__)"], cwd=cwd, env=env)
        for path in origin.stdout.split():
            self.assertTrue(path.startswith(str(site)), origin.stdout + origin.stderr)

        options = _run([*twistd, "arvnode", "--help"], cwd=cwd, env=env)
        self.assertEqual(options.returncode, 0, options.stderr)
        for option in ("--config=", "--cluster=", "--data="):
            self.assertIn(option, options.stdout)
        script = _run([str(venv / "bin" / "arvnode"), "--help"], cwd=cwd, env=env)
        self.assertEqual(script.returncode, 0, script.stderr)
        self.assertIn("token", script.stdout)


def _unit() -> dict[str, list[str]]:
    """``Section.Key`` -> values of systemd/arvnode.service (keys may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in (REPO / "systemd" / "arvnode.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key}", []).append(value)
    return entries


class SystemdUnitTests(TestCase):
    def test_unit_runs_twistd_sandboxed_with_journald_and_long_stop_timeout(self) -> None:
        """Bullet 3 (systemd unit): foreground twistd with the system config,
        journald (stdout) logging, Restart=on-failure, a high LimitNOFILE, a
        dedicated user, reload by SIGHUP, the sandboxing a network daemon
        wants, and TimeoutStopSec longer than the default grace period."""
        unit = _unit()
        one = {k: v[-1] for k, v in unit.items()}
        self.assertRegex(one["Service.ExecStart"],
                         r"^/\S+/twistd --nodaemon --pidfile= arvnode --config /etc/arvados/config\.yml$")
        self.assertEqual(one["Service.ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(one["Service.Type"], "simple")
        self.assertNotIn("Service.StandardOutput", one)  # default: journal
        self.assertEqual(one["Service.Restart"], "on-failure")
        self.assertGreaterEqual(int(one["Service.LimitNOFILE"]), 65536)
        self.assertEqual(one["Service.User"], "arvnode")
        self.assertNotIn("Service.DynamicUser", one)  # the state directory outlives the unit
        for key, value in {
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictNamespaces": "yes",
            "RestrictSUIDSGID": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes", "LockPersonality": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "CapabilityBoundingSet": "", "StateDirectory": "arvnode",
            "ReadWritePaths": "/var/lib/arvnode",
        }.items():
            self.assertEqual(one.get(f"Service.{key}"), value, key)
        self.assertIn("@system-service", unit["Service.SystemCallFilter"])
        # Outgoing TLS (pyOpenSSL's cffi callbacks) needs write+execute memory.
        self.assertNotIn("Service.MemoryDenyWriteExecute", one)
        stop = re.fullmatch(r"(\d+)s", one["Service.TimeoutStopSec"])
        assert stop is not None
        self.assertGreater(int(stop.group(1)), ArvNodeConfig().shutdown_grace_period)
        self.assertEqual(one["Install.WantedBy"], "multi-user.target")

    def test_systemd_analyze_verify(self) -> None:
        """Bullet 3: `systemd-analyze verify` accepts the unit (ExecStart
        pointed at an existing binary, as /opt/arvnode is not installed
        here). The Debian image this runs on ships systemd."""
        analyze = shutil.which("systemd-analyze")
        self.assertIsNotNone(analyze, "systemd-analyze is missing (apt-get install systemd)")
        assert analyze is not None
        unit = Path(self.mktemp()).absolute() / "arvnode.service"
        unit.parent.mkdir()
        text = (REPO / "systemd" / "arvnode.service").read_text()
        unit.write_text(re.sub(r"/\S+/twistd ", f"{shutil.which('true')} ", text))
        verified = _run([analyze, "verify", "--man=no", str(unit)])
        self.assertEqual((verified.returncode, verified.stderr), (0, ""))


class GracefulStopTests(TestCase):
    """Bullet 4: SIGTERM/SIGINT close the listeners, let in-flight requests
    finish within ArvNode.ShutdownGracePeriod, cut them at its end, exit 0.
    (tests/integration/test_process.py covers SIGTERM with an upload that
    finishes under the default grace period.)"""

    timeout = 180

    async def start(self, grace: str) -> tuple[ProcessNode, dict[str, int], str]:
        """A node from a config file; returns it, its ports and the root token."""
        base = Path(self.mktemp()).absolute()
        config, _ = make_cluster_config(base, extra={"ArvNode.ShutdownGracePeriod": grace})
        (section,) = config["Clusters"].values()
        path = base / "config.yml"
        path.write_text(yaml.safe_dump(config))
        node = ProcessNode(["--config", str(path)], base, base / "node.log")
        self.addCleanup(node.close)
        await wait_for(lambda: " is up" in node.output() or node.proc.poll() is not None, timeout=120)
        self.assertIsNone(node.proc.poll(), node.output())
        ports = {name: int(port) for name, port in LISTEN_RE.findall(node.output())}
        self.management = section["ManagementToken"]
        return node, ports, section["SystemRootToken"]

    async def inflight(self, port: int) -> float:
        """The keepproxy's in-flight gauge, read from its /metrics."""
        r = await http_client(self).get(f"http://127.0.0.1:{port}/metrics",
                                        headers={"Authorization": f"Bearer {self.management}"})
        self.assertEqual(r.code, 200)
        return float(INFLIGHT_RE.findall(await r.text())[0])

    async def slow_put(self, port: int, token: str, body: bytes) -> RawClient:
        """A PUT of ``body`` with only its first 1000 bytes sent; returns
        once the node counts it in flight, so a signal cannot beat it."""
        before = await self.inflight(port)
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        md5 = hashlib.md5(body).hexdigest()
        client.transport.write(
            (f"PUT /{md5} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body[:1000])
        deadline = reactor.seconds() + 20
        while await self.inflight(port) <= before:
            self.assertLess(reactor.seconds(), deadline, "the PUT never counted as in flight")
            await deferred_sleep(0.05)
        return client

    async def assert_refused(self, port: int) -> None:
        with self.assertRaises(ConnectionRefusedError):
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(RawClient))

    async def test_sigint_lets_inflight_upload_finish_and_exits_0(self) -> None:
        """Bullet 4, SIGINT (Ctrl-C): both listeners refuse new connections
        at once, the slow upload still completes with 200, and the process
        exits 0 as soon as it is done, well before the 20s grace period."""
        node, ports, token = await self.start("20s")
        body = os.urandom(200_000)
        client = await self.slow_put(ports["keepproxy"], token, body)
        signaled = time.monotonic()
        node.signal(signal.SIGINT)
        await wait_for(lambda: "for 1 request(s) in flight" in node.output(), timeout=20)
        await self.assert_refused(ports["keepproxy"])
        await self.assert_refused(ports["controller"])
        client.transport.write(body[1000:])
        await client.closed
        self.assertIn(b"HTTP/1.1 200", client.received)
        self.assertEqual(await wait_exit(node.proc), 0, node.output())
        self.assertLess(time.monotonic() - signaled, 15, node.output())

    async def overrun(self, sig: signal.Signals) -> None:
        """A request that outlives the grace period is cut at its end and
        the process still exits 0, about ``grace`` seconds after ``sig``."""
        grace = 2.0
        node, ports, token = await self.start(f"{grace:g}s")
        client = await self.slow_put(ports["keepproxy"], token, os.urandom(200_000))
        signaled = time.monotonic()
        node.signal(sig)
        await wait_for(lambda: "request(s) in flight" in node.output(), timeout=20)
        await self.assert_refused(ports["keepproxy"])
        await client.closed
        cut = time.monotonic() - signaled
        self.assertEqual(await wait_exit(node.proc), 0, node.output())
        exited = time.monotonic() - signaled
        self.assertNotIn(b"HTTP/1.1 200", client.received)
        self.assertIn("grace period over, cutting 1 request(s)", node.output())
        self.assertGreaterEqual(cut, grace - 0.5)
        self.assertLess(exited, grace + 8, node.output())

    async def test_sigterm_cuts_request_at_grace_period_and_exits_0(self) -> None:
        """Bullet 4, SIGTERM: an upload that never finishes is cut when the
        grace period ends; the process exits 0 about grace seconds later."""
        await self.overrun(signal.SIGTERM)

    async def test_sigint_cuts_request_at_grace_period_and_exits_0(self) -> None:
        """Bullet 4, SIGINT: the same as SIGTERM for a request that overruns."""
        await self.overrun(signal.SIGINT)


class TwistdOptionTests(TestCase):
    timeout = 180

    async def test_data_creates_state_dir_and_serves_from_it(self) -> None:
        """Bullet 5: `twistd arvnode --data DIR` creates DIR (and missing
        parents) with mode 0700 and runs the embedded default from it."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir()
        node = ProcessNode(["--data", "state/here"], cwd, cwd / "node.log")
        self.addCleanup(node.close)
        await wait_for(lambda: len(exports(node.output())) == 3 or node.proc.poll() is not None, timeout=120)
        data = cwd / "state" / "here"
        self.assertEqual(os.stat(data).st_mode & 0o777, 0o700)
        self.assertTrue(exports(node.output())["SSL_CERT_FILE"].startswith(f"{data}/"), node.output())
        self.assertFalse((cwd / "arvnode-data").exists())
        node.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(node.proc), 0, node.output())

    async def test_config_with_several_clusters_needs_and_honours_cluster(self) -> None:
        """Bullet 5: with a config holding two clusters, `--cluster ID` runs
        that one; without it the start fails non-zero naming the choice; and
        --config with --data is refused (exit 2)."""
        base = Path(self.mktemp()).absolute()
        config, _ = make_cluster_config(base / "a", cluster_id="aaaaa")
        other, _ = make_cluster_config(base / "b", cluster_id="bbbbb")
        config["Clusters"].update(other["Clusters"])
        path = base / "config.yml"
        path.write_text(yaml.safe_dump(config))

        bare = _run([*self.twistd(), "--config", str(path)], cwd=base, env=subprocess_env())
        self.assertNotEqual(bare.returncode, 0)
        self.assertIn("--cluster", bare.stdout + bare.stderr)
        both = _run([*self.twistd(), "--config", str(path), "--data", str(base / "d")],
                    cwd=base, env=subprocess_env())
        self.assertEqual(both.returncode, 2, both.stdout + both.stderr)

        node = ProcessNode(["--config", str(path), "--cluster", "bbbbb"], base, base / "node.log")
        self.addCleanup(node.close)
        await wait_for(lambda: " is up" in node.output() or node.proc.poll() is not None, timeout=120)
        self.assertIn("arvnode cluster bbbbb is up", node.output())
        node.signal(signal.SIGTERM)
        self.assertEqual(await wait_exit(node.proc), 0, node.output())

    def twistd(self) -> list[str]:
        return [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=", "arvnode"]
