# -*- test-case-name: tests.keep.test_proxy_sdk -*-
"""The unmodified Arvados Python SDK (KeepClient, pycurl) against the keepproxy.

The SDK runs in a subprocess (it is blocking and threaded); the keepproxy runs
in this process on a loopback port. Skipped when ``arvados`` is not installed
(``pip install arvados-python-client``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests.keep.test_proxy_fixture import USER, start_keepproxy

HAVE_SDK = importlib.util.find_spec("arvados") is not None

SCRIPT = r"""
import hashlib, json, os, sys
import arvados, arvados.errors
MiB = 1 << 20
kc = arvados.KeepClient(api_token=os.environ["ARVADOS_API_TOKEN"], local_store=None, num_retries=0)
out = {}
for name, size in (("0", 0), ("3", 3), ("1M+1", MiB + 1), ("64M", 64 * MiB)):
    data = os.urandom(size) if size != 3 else b"foo"
    loc = kc.put(data, copies=1)
    got = kc.get(loc)
    out[name] = {
        "locator": loc,
        "ok": hashlib.md5(got).hexdigest() == hashlib.md5(data).hexdigest() and len(got) == size,
        "head": bool(kc.head(loc)),
    }
try:
    kc.put(b"\0" * (64 * MiB + 1), copies=1)
    out["too_big"] = "accepted"
except arvados.errors.KeepWriteError as e:
    out["too_big"] = str(e)
print(json.dumps(out))
"""


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(getattr(reason.value, "exitCode", -1))


class SDKTests(TestCase):
    """arvados.KeepClient put/get/head through the keepproxy."""

    timeout = 300

    async def test_sdk_round_trips(self) -> None:
        """put/get/head of 0 B, 3 B, 1 MiB+1, 64 MiB; 64 MiB+1 refused with 413
        before its body is sent."""
        if not HAVE_SDK:
            raise SkipTest("arvados-python-client is not installed")
        keep = await start_keepproxy(self, upload_window=8 << 20)
        access: list[dict] = []

        def observe(event: dict) -> None:
            # NodeSite's access-log events (matched by their fields).
            if event.get("service") == "keepproxy" and "bytes_in" in event and event.get("method") == "PUT":
                access.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        home = self.mktemp()
        os.makedirs(home)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "XDG_CONFIG_HOME": home,
            "XDG_CACHE_HOME": home,
            "ARVADOS_API_HOST": "127.0.0.1:1",
            "ARVADOS_API_TOKEN": USER,
            "ARVADOS_KEEP_SERVICES": f"http://127.0.0.1:{keep.port}/",
        }
        proto = _Collect()
        reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", SCRIPT], env=env)
        code = await proto.done
        self.assertEqual(code, 0, proto.err.decode(errors="replace")[-3000:])
        result = json.loads(proto.out.decode().strip().splitlines()[-1])
        for name, size in (("0", 0), ("3", 3), ("1M+1", (1 << 20) + 1), ("64M", 64 << 20)):
            entry = result[name]
            self.assertTrue(entry["ok"], name)
            self.assertTrue(entry["head"], name)
            self.assertRegex(entry["locator"], rf"^[0-9a-f]{{32}}\+{size}\+A[0-9a-f]{{40}}@[0-9a-f]{{8}}$")
        self.assertIn("413", result["too_big"])
        refused = [e for e in access if e["status"] == 413]
        self.assertEqual(len(refused), 1)
        self.assertEqual(refused[0]["bytes_in"], 0)  # the body was never read
        # The SDK saw storage-class confirmations, so no "not supported" warning.
        self.assertNotIn(b"not supported by the cluster", proto.err)
