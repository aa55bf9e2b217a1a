"""Acceptance test of issue 4: the unmodified Arvados SDK tools against a
node started exactly as the README's first command does.

Each node is ``twistd --nodaemon --pidfile= arvnode`` in a child process on
the embedded default; the clients get nothing but the three printed
``export`` lines (plus, for arv-copy, the ``<cluster>.conf`` files arv-copy
reads). The tools are the real console scripts of ``arvados-python-client``
from PyPI (installed by the ``test`` extra), run as child processes with a
fresh HOME / XDG cache and config per test, so no discovery document or
arv-put resume state leaks between tests. They run through
``reactor.spawnProcess`` so the reactor stays free, each with a hard timeout,
and with ``--retries 0`` wherever the tool has it: a server error then fails
at once instead of after minutes of backoff.

Every check is what a user would see: printed identifiers that are valid
and point at the right data, files that come back byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.helpers import ProcessNode, venv_bin, wait_exit, wait_for

EXPORT_RE = re.compile(r"^export (ARVADOS_API_HOST|ARVADOS_API_TOKEN|SSL_CERT_FILE)=(\S+)$", re.M)
PDH_RE = re.compile(r"^[0-9a-f]{32}\+[0-9]+$")
SIGNED_LOCATOR_RE = re.compile(
    r"^([0-9a-f]{32})\+([0-9]+)(\+\S+)*\+A[0-9a-f]{40}@[0-9a-f]{8}(\+\S+)*$")
BLOCK_SIZE = 64 * 1024 * 1024
EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"
# Access-log lines of the node's keepproxy (arvnode/http/site.py).
KEEP_HEAD_RE = re.compile(r"\bHEAD /[0-9a-f]{32}\+\S* 200\b")
KEEP_PUT_RE = re.compile(r"\bPUT /[0-9a-f]{32}\S* \d{3}\b")

TOOL_TIMEOUT = 180.0
BIG_TOOL_TIMEOUT = 600.0


def pseudo_random_bytes(seed: int, size: int) -> bytes:
    """Deterministic, incompressible test data."""
    return random.Random(seed).randbytes(size)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


LOCATOR_TOKEN_RE = re.compile(r"^[0-9a-f]{32}\+[0-9]+(\+\S+)?$")


def strip_manifest(manifest: str) -> str:
    """The manifest with every locator hint but the size removed: what the
    portable data hash is computed over."""
    lines = []
    for line in manifest.split("\n"):
        tokens = [re.sub(r"\+[^\d][^+]*", "", t) if LOCATOR_TOKEN_RE.match(t) else t
                  for t in line.split(" ")]
        lines.append(" ".join(tokens))
    return "\n".join(lines)


def pdh_of(manifest: str) -> str:
    stripped = strip_manifest(manifest).encode()
    return f"{hashlib.md5(stripped).hexdigest()}+{len(stripped)}"


def manifest_blocks(manifest: str) -> list[str]:
    """Every block locator in a manifest, in order."""
    blocks = []
    for line in manifest.splitlines():
        for token in line.split()[1:]:
            if re.match(r"^[0-9a-f]{32}\+[0-9]+", token):
                blocks.append(token)
    return blocks


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): file_digest(p)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


class _Collect(protocol.ProcessProtocol):
    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred[tuple[int | None, bytes, bytes]] = Deferred()
        self.timed_out = False
        self._timer = reactor.callLater(timeout, self._kill)

    def _kill(self) -> None:
        self.timed_out = True
        try:
            self.transport.signalProcess(signal.SIGKILL)
        except Exception:
            pass

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.done.callback((reason.value.exitCode, b"".join(self.out), b"".join(self.err)))


class ToolResult:
    def __init__(self, args: list[str], code: int | None, out: bytes, err: bytes) -> None:
        self.args, self.code, self.out, self.err = args, code, out, err

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def __str__(self) -> str:
        err = self.err.decode("utf-8", "replace")
        return (f"{' '.join(self.args)} -> exit {self.code}\n--- stdout ---\n"
                f"{self.text[-3000:]}\n--- stderr ---\n{err[-6000:]}")


class EmbeddedNode:
    """A node started as the README says, and what it printed."""

    def __init__(self, proc: ProcessNode, env: dict[str, str]) -> None:
        self.proc = proc
        self.env = env

    @property
    def api_host(self) -> str:
        return self.env["ARVADOS_API_HOST"]

    @property
    def token(self) -> str:
        return self.env["ARVADOS_API_TOKEN"]

    @property
    def ca_file(self) -> str:
        return self.env["SSL_CERT_FILE"]

    @property
    def cluster_id(self) -> str:
        # v2/<cluster>-gj3su-<15>/<secret>: the token names its cluster.
        return self.token.split("/")[1][:5]

    def log(self) -> str:
        return self.proc.output()


class SdkCliTests(TestCase):
    """arv-put / arv-ls / arv-get / arv-copy / arvados.api() against real nodes."""

    timeout = 1500

    # --- fixtures -----------------------------------------------------------

    async def start_node(self, *args: str) -> EmbeddedNode:
        """``twistd --nodaemon --pidfile= arvnode [args]`` in a fresh
        directory; returns once the export lines are printed."""
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        proc = ProcessNode(list(args), cwd, cwd / "node.log")

        async def stop() -> None:
            proc.signal(signal.SIGTERM)
            try:
                await wait_exit(proc.proc, timeout=30)
            finally:
                proc.close()

        self.addCleanup(stop)
        await wait_for(lambda: len(EXPORT_RE.findall(proc.output())) == 3
                       or proc.proc.poll() is not None, timeout=120)
        env = dict(EXPORT_RE.findall(proc.output()))
        self.assertEqual(len(env), 3, f"node did not print its environment:\n{proc.output()}")
        return EmbeddedNode(proc, env)

    def client_home(self) -> Path:
        home = Path(self.mktemp()).absolute()
        for sub in ("cache", "config/arvados", "work"):
            (home / sub).mkdir(parents=True)
        return home

    def client_env(self, home: Path, node: EmbeddedNode | None) -> dict[str, str]:
        """A clean environment: nothing from the developer's own Arvados
        setup, a fresh cache and config, and only the printed lines."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ARVADOS_", "XDG_")) and k not in (
                   "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PYTHONPATH")}
        env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"),
                   XDG_CONFIG_HOME=str(home / "config"), PYTHONUNBUFFERED="1")
        if node is not None:
            env.update(node.env)
        return env

    async def run_tool(self, tool: str, *args: str, env: dict[str, str], cwd: Path | None = None,
                  timeout: float = TOOL_TIMEOUT, check: bool = True) -> ToolResult:
        """Run a console script of the venv (``python`` for the interpreter)
        without blocking the reactor; with ``check`` a non-zero exit fails
        the test showing the tool's output."""
        exe = venv_bin(tool)
        if not os.path.exists(exe):
            self.fail(f"{exe} is missing: install the test extra (pip install '.[test]'), "
                      "which brings arvados-python-client from PyPI")
        argv = [exe, *args]
        collector = _Collect(tool, timeout)
        reactor.spawnProcess(collector, exe, argv, env=env, path=str(cwd) if cwd else None)
        collector.transport.closeStdin()
        code, out, err = await collector.done
        result = ToolResult([tool, *args], code, out, err)
        if collector.timed_out:
            self.fail(f"timed out after {timeout}s: {result}")
        if check and code != 0:
            self.fail(f"failed: {result}")
        return result

    async def python(self, script: str, env: dict[str, str], **kw: Any) -> Any:
        """Run a small script with the SDK; it prints one JSON value."""
        result = await self.run_tool("python", "-c", textwrap.dedent(script), env=env, **kw)
        try:
            return json.loads(result.text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail(f"script printed no JSON: {result}")

    def assert_collection_uuid(self, text: str, node: EmbeddedNode) -> str:
        value = text.strip()
        self.assertRegex(value, rf"^{node.cluster_id}-4zz18-[a-z0-9]{{15}}$")
        return value

    async def put_collection(self, node: EmbeddedNode, env: dict[str, str], *args: str) -> str:
        """arv-put; returns the printed UUID after checking its form."""
        put = await self.run_tool("arv-put", "--retries", "0", "--no-progress", *args, env=env)
        return self.assert_collection_uuid(put.text, node)

    def write(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # --- arv-put / arv-ls / arv-get -----------------------------------------

    async def test_put_file_then_ls_and_get_by_uuid_and_pdh(self):
        """arv-put of one file prints a UUID of this cluster; the collection's
        PDH is md5 of its stripped manifest; arv-put --portable-data-hash
        prints that PDH; arv-ls by UUID and by PDH list the file; arv-get to a
        file and to stdout give back the same bytes."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        data = pseudo_random_bytes(1, 123_457)
        src = self.write(home / "work" / "hello.bin", data)

        put = await self.run_tool("arv-put", "--retries", "0", "--no-progress", str(src), env=env)
        uuid = self.assert_collection_uuid(put.text, node)
        # The default storage class is published and confirmed on PUT, so the
        # SDK has nothing to warn about.
        self.assertNotIn(b"WARNING", put.err, str(put))

        md5 = hashlib.md5(data).hexdigest()
        expected_manifest = f". {md5}+{len(data)} 0:{len(data)}:hello.bin\n"
        expected_pdh = pdh_of(expected_manifest)

        # The manifest as served: signed locators, and it hashes to the PDH.
        manifest = (await self.run_tool("arv-get", "--retries", "0", uuid, env=env)).text
        self.assertEqual(strip_manifest(manifest), expected_manifest, manifest)
        for block in manifest_blocks(manifest):
            self.assertRegex(block, SIGNED_LOCATOR_RE)

        put_pdh = await self.run_tool("arv-put", "--retries", "0", "--no-progress", "--no-cache",
                                      "--portable-data-hash", str(src), env=env)
        self.assertEqual(put_pdh.text.strip(), expected_pdh)
        self.assertRegex(expected_pdh, PDH_RE)

        for loc in (uuid, expected_pdh):
            ls = await self.run_tool("arv-ls", "--retries", "0", loc, env=env)
            self.assertEqual([line.strip() for line in ls.text.splitlines()], ["./hello.bin"],
                             str(ls))

        dest = home / "work" / "out.bin"
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", f"{uuid}/hello.bin",
                            str(dest), env=env)
        self.assertEqual(dest.read_bytes(), data)

        got = await self.run_tool("arv-get", "--retries", "0", "--no-progress",
                                  f"{expected_pdh}/hello.bin", "-", env=env)
        self.assertEqual(got.out, data)

        # Mistakes are final 4xx answers the user can read, not 5xx that the
        # SDK would retry for minutes.
        missing = await self.run_tool("arv-ls", "--retries", "0",
                                      f"{node.cluster_id}-4zz18-000000000000000", env=env,
                                      check=False)
        self.assertEqual(missing.code, 1, str(missing))
        self.assertRegex(missing.err, rb"\b404\b", str(missing))
        bad_token = dict(env, ARVADOS_API_TOKEN="v2/" + node.token.split("/")[1] + "/" + "0" * 40)
        denied = await self.run_tool("arv-ls", "--retries", "0", uuid, env=bad_token, check=False)
        self.assertNotEqual(denied.code, 0, str(denied))
        self.assertRegex(denied.err, rb"\b401\b", str(denied))

    async def test_put_directory_resume_and_get_tree(self):
        """A directory with an empty file and subdirectories goes up and comes
        back (arv-get -r) identical; a second arv-put of it resumes from the
        cache (a keepproxy HEAD on a cached signed locator, no new block PUT)
        and prints the same PDH."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        top = home / "work" / "dataset"
        self.write(top / "a.txt", b"alpha\n" * 1000)
        self.write(top / "empty.txt", b"")
        self.write(top / "sub" / "b.bin", pseudo_random_bytes(2, 300_000))
        self.write(top / "sub" / "deeper" / "c.txt", b"gamma")
        self.write(top / "sub" / "nothing", b"")

        # With the trailing slash the directory's contents go to the root.
        first = await self.run_tool("arv-put", "--retries", "0", "--no-progress",
                                    "--portable-data-hash", f"{top}/", env=env)
        pdh = first.text.strip()
        self.assertRegex(pdh, PDH_RE)
        # (The first upload's block PUTs show in the log, so the check below
        # that the second sends none is not vacuous.)
        await wait_for(lambda: KEEP_PUT_RE.search(node.log()) is not None, timeout=30)

        manifest = (await self.run_tool("arv-get", "--retries", "0", pdh, env=env)).text
        self.assertEqual(pdh_of(manifest), pdh, manifest)

        ls = await self.run_tool("arv-ls", "--retries", "0", pdh, env=env)
        listed = {line.strip() for line in ls.text.splitlines()}
        self.assertEqual(listed, {"./a.txt", "./empty.txt", "./sub/b.bin", "./sub/deeper/c.txt",
                                  "./sub/nothing"}, str(ls))

        log_mark = len(node.log())
        second = await self.run_tool("arv-put", "--retries", "0", "--no-progress",
                                     "--portable-data-hash", f"{top}/", env=env)
        self.assertEqual(second.text.strip(), pdh, str(second))
        await wait_for(lambda: KEEP_HEAD_RE.search(node.log()[log_mark:]) is not None, timeout=30)
        self.assertIsNone(KEEP_PUT_RE.search(node.log()[log_mark:]),
                          "the resumed upload sent blocks again")

        out = home / "work" / "restored"
        out.mkdir()
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", "-r", f"{pdh}/",
                            f"{out}/", env=env)
        self.assertEqual(tree(out), tree(top))
        self.assertEqual((out / "empty.txt").stat().st_size, 0)

        # Only empty files: arv-put sends the unsigned empty block and makes
        # no Keep request; the server must accept that one unsigned locator.
        empties = home / "work" / "empties"
        self.write(empties / "e1", b"")
        self.write(empties / "d" / "e2", b"")
        put_empty = await self.run_tool("arv-put", "--retries", "0", "--no-progress",
                                        "--portable-data-hash", f"{empties}/", env=env)
        pdh_empty = put_empty.text.strip()
        manifest = (await self.run_tool("arv-get", "--retries", "0", pdh_empty, env=env)).text
        self.assertEqual(pdh_of(manifest), pdh_empty, manifest)
        self.assertEqual({b.split("+A")[0] for b in manifest_blocks(manifest)}, {EMPTY_BLOCK})
        out_empty = home / "work" / "restored-empties"
        out_empty.mkdir()
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", "-r", f"{pdh_empty}/",
                            f"{out_empty}/", env=env)
        self.assertEqual(tree(out_empty), tree(empties))

    async def test_put_70mb_file_in_two_blocks(self):
        """A 70 MiB file is stored as a full 64 MiB block plus the rest (both
        PUTs over 1 MiB, so through Expect: 100-continue) and arv-get returns
        it byte for byte."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        size = 70 * 1024 * 1024
        src = self.write(home / "work" / "big.bin", pseudo_random_bytes(3, size))

        put = await self.run_tool("arv-put", "--retries", "0", "--no-progress", str(src), env=env,
                                  timeout=BIG_TOOL_TIMEOUT)
        uuid = self.assert_collection_uuid(put.text, node)

        manifest = (await self.run_tool("arv-get", "--retries", "0", uuid, env=env)).text
        blocks = manifest_blocks(manifest)
        self.assertEqual([int(b.split("+")[1]) for b in blocks], [BLOCK_SIZE, size - BLOCK_SIZE])
        for block in blocks:
            self.assertRegex(block, SIGNED_LOCATOR_RE)

        dest = home / "work" / "big.out"
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", f"{uuid}/big.bin",
                            str(dest), env=env, timeout=BIG_TOOL_TIMEOUT)
        self.assertEqual(dest.stat().st_size, size)
        self.assertEqual(file_digest(dest), file_digest(src))

    async def test_stream_and_raw_print_usable_locators_without_a_collection(self):
        """--stream prints a manifest and --raw the block locators, both
        signed and readable back through Keep with arv-get, and neither
        creates a collection."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        data = pseudo_random_bytes(4, 50_000)
        src = self.write(home / "work" / "s.bin", data)
        count_script = """
            import arvados, json
            r = arvados.api('v1').collections().list(limit=0, count='exact').execute()
            print(json.dumps(r['items_available']))
        """
        before = await self.python(count_script, env)

        stream = await self.run_tool("arv-put", "--retries", "0", "--no-progress", "--stream",
                                     str(src), env=env)
        manifest = stream.text
        self.assertEqual(strip_manifest(manifest),
                         f". {hashlib.md5(data).hexdigest()}+{len(data)} 0:{len(data)}:s.bin\n")
        (block,) = manifest_blocks(manifest)
        self.assertRegex(block, SIGNED_LOCATOR_RE)
        got = await self.run_tool("arv-get", "--retries", "0", "--no-progress", block, env=env)
        self.assertEqual(got.out, data)

        raw = await self.run_tool("arv-put", "--retries", "0", "--no-progress", "--raw",
                                  "--no-cache", str(src), env=env)
        locators = raw.text.strip().split(",")
        self.assertEqual(len(locators), 1, str(raw))
        self.assertRegex(locators[0], SIGNED_LOCATOR_RE)
        self.assertTrue(locators[0].startswith(f"{hashlib.md5(data).hexdigest()}+{len(data)}+"))
        got = await self.run_tool("arv-get", "--retries", "0", "--no-progress", locators[0],
                                  env=env)
        self.assertEqual(got.out, data)

        self.assertEqual(await self.python(count_script, env), before)

    async def test_update_collection_adds_a_file(self):
        """arv-put --update-collection UUID adds the new file to the existing
        collection (same UUID); both files are then listed and readable."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        a = self.write(home / "work" / "a.txt", b"first file\n")
        b_data = pseudo_random_bytes(5, 70_000)
        b = self.write(home / "work" / "b.bin", b_data)

        uuid = await self.put_collection(node, env, str(a))
        updated = await self.run_tool("arv-put", "--retries", "0", "--no-progress",
                                      "--update-collection", uuid, str(b), env=env)
        self.assertEqual(updated.text.strip(), uuid, str(updated))

        ls = await self.run_tool("arv-ls", "--retries", "0", uuid, env=env)
        self.assertEqual(sorted(line.strip() for line in ls.text.splitlines()),
                         ["./a.txt", "./b.bin"], str(ls))
        for name, data in (("a.txt", b"first file\n"), ("b.bin", b_data)):
            got = await self.run_tool("arv-get", "--retries", "0", "--no-progress",
                                      f"{uuid}/{name}", "-", env=env)
            self.assertEqual(got.out, data, name)

    async def test_put_into_project(self):
        """A project created through the API receives the collection that
        arv-put --project-uuid makes: its owner_uuid is the project."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        project = await self.python("""
            import arvados, json
            g = arvados.api('v1').groups().create(
                body={"name": "h3 project", "group_class": "project"},
                ensure_unique_name=True).execute()
            print(json.dumps(g["uuid"]))
        """, env)
        self.assertRegex(project, rf"^{node.cluster_id}-j7d0g-[a-z0-9]{{15}}$")

        src = self.write(home / "work" / "p.txt", b"in a project\n")
        # One collection in the user's home project, so the owner filter
        # below has something to leave out.
        await self.put_collection(node, env, "--name", "at home", str(src))
        uuid = await self.put_collection(node, env, "--project-uuid", project,
                                         "--name", "project upload", str(src))

        record = await self.python(f"""
            import arvados, json
            api = arvados.api('v1')
            c = api.collections().get(uuid={uuid!r}).execute()
            l = api.collections().list(filters=[["owner_uuid", "=", {project!r}]],
                                       select=["uuid", "name"]).execute()
            print(json.dumps([c["owner_uuid"], c["name"], [i["uuid"] for i in l["items"]]]))
        """, env)
        self.assertEqual(record, [project, "project upload", [uuid]])

    # --- the Python SDK -----------------------------------------------------

    async def test_sdk_lists_with_filters_and_gets_by_pdh(self):
        """arvados.api('v1') lists collections with the filters the SDK uses
        (=, like, in, order, select, limit) and gets one by PDH; the
        collection's file is readable through CollectionReader."""
        node = await self.start_node()
        home = self.client_home()
        env = self.client_env(home, node)
        data1 = pseudo_random_bytes(6, 10_000)
        f1 = self.write(home / "work" / "one.bin", data1)
        f2 = self.write(home / "work" / "two.bin", pseudo_random_bytes(7, 10_000))
        u1 = await self.put_collection(node, env, "--name", "sdk-one", str(f1))
        u2 = await self.put_collection(node, env, "--name", "sdk-two", str(f2))

        result = await self.python(f"""
            import arvados, arvados.collection, json
            api = arvados.api('v1')
            by_uuid = api.collections().list(
                filters=[["uuid", "=", {u1!r}]],
                select=["uuid", "name", "portable_data_hash"], limit=10).execute()
            pdh = by_uuid["items"][0]["portable_data_hash"]
            like = api.collections().list(
                filters=[["name", "like", "sdk-%"]], order=["name desc"],
                select=["uuid", "name"]).execute()
            within = api.collections().list(
                filters=[["uuid", "in", [{u1!r}, {u2!r}]], ["portable_data_hash", "=", pdh]],
                select=["uuid"]).execute()
            got = api.collections().get(uuid=pdh).execute()
            reader = arvados.collection.CollectionReader(pdh, api_client=api)
            with reader.open("one.bin", "rb") as f:
                content = f.read()
            print(json.dumps({{
                "by_uuid": by_uuid["items"],
                "by_uuid_available": by_uuid.get("items_available"),
                "like": [[i["uuid"], i["name"]] for i in like["items"]],
                "within": [i["uuid"] for i in within["items"]],
                "get_pdh": got["portable_data_hash"],
                "get_manifest": got["manifest_text"],
                "content_md5": __import__("hashlib").md5(content).hexdigest(),
            }}))
        """, env)
        (item,) = result["by_uuid"]
        self.assertEqual(item["uuid"], u1)
        self.assertEqual(item["name"], "sdk-one")
        self.assertNotIn("manifest_text", item)
        self.assertEqual(result["by_uuid_available"], 1)
        pdh = item["portable_data_hash"]
        self.assertRegex(pdh, PDH_RE)
        self.assertEqual(result["like"], [[u2, "sdk-two"], [u1, "sdk-one"]])
        self.assertEqual(result["within"], [u1])
        self.assertEqual(result["get_pdh"], pdh)
        self.assertEqual(pdh_of(result["get_manifest"]), pdh)
        for block in manifest_blocks(result["get_manifest"]):
            self.assertRegex(block, SIGNED_LOCATOR_RE)
        self.assertEqual(result["content_md5"], hashlib.md5(data1).hexdigest())

    # --- arv-copy -----------------------------------------------------------

    async def test_arv_copy_between_two_nodes(self):
        """arv-copy, configured only through <cluster>.conf files, copies a
        collection from one node to another: the copy has the destination's
        cluster id, the same PDH, and its files read back identical from
        the destination."""
        src_node = await self.start_node()
        dst_node = await self.start_node("--data", str(Path(self.mktemp()).absolute() / "d2"))
        self.assertNotEqual(src_node.cluster_id, dst_node.cluster_id)
        home = self.client_home()
        src_env = self.client_env(home, src_node)
        data = pseudo_random_bytes(8, 2_500_000)
        src_dir = home / "work" / "tocopy"
        self.write(src_dir / "x.bin", data)
        self.write(src_dir / "sub" / "y.txt", b"why\n")
        uuid = await self.put_collection(src_node, src_env, "--name", "copy me", str(src_dir))

        # arv-copy reads host and token from the conf files only; one CA
        # bundle trusts both nodes' self-signed CAs.
        bundle = home / "cas.pem"
        bundle.write_text(Path(src_node.ca_file).read_text() + Path(dst_node.ca_file).read_text())
        for n in (src_node, dst_node):
            (home / "config" / "arvados" / f"{n.cluster_id}.conf").write_text(
                f"ARVADOS_API_HOST={n.api_host}\nARVADOS_API_TOKEN={n.token}\n")
        copy_env = self.client_env(home, None)
        copy_env["SSL_CERT_FILE"] = str(bundle)
        copied = await self.run_tool(
            "arv-copy", "--retries", "0", "--no-progress", "--src", src_node.cluster_id,
            "--dst", dst_node.cluster_id, uuid, env=copy_env, timeout=BIG_TOOL_TIMEOUT)
        new_uuid = self.assert_collection_uuid(copied.text.strip().splitlines()[-1], dst_node)

        dst_env = self.client_env(home, dst_node)
        src_pdh = (await self.python(f"""
            import arvados, json
            print(json.dumps(arvados.api('v1').collections().get(uuid={uuid!r}).execute()
                             ["portable_data_hash"]))
        """, src_env))
        dst_record = await self.python(f"""
            import arvados, json
            c = arvados.api('v1').collections().get(uuid={new_uuid!r}).execute()
            print(json.dumps([c["portable_data_hash"], c["name"]]))
        """, dst_env)
        self.assertEqual(dst_record[0], src_pdh)
        self.assertEqual(dst_record[1], "copy me")

        out = home / "work" / "copied"
        out.mkdir()
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", "-r", f"{new_uuid}/",
                            f"{out}/", env=dst_env)
        # Without a trailing slash arv-put keeps the directory's own name.
        self.assertEqual(tree(out / "tocopy"), tree(src_dir))
        self.assertEqual([p.name for p in out.iterdir()], ["tocopy"])
