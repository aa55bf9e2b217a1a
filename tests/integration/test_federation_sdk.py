# -*- test-case-name: tests.integration.test_federation_sdk -*-
"""Issue 5, "Done means": the unmodified Arvados SDK, holding only a token
issued by A and talking only to A, reads what exists only on B.

Three in-process nodes (A ``zzzzz``, B ``zbbbb``, C ``zcccc``) federated with
``Proxy: true``; the SDK's console scripts (``arv-ls``, ``arv-get``) and
``arvados.api()`` run as child processes with a clean environment holding
A's host, A's CA and the A token, exactly as in
:mod:`tests.integration.test_sdk_cli` (whose helpers are reused). The file
bytes travel B keepproxy → A keepproxy (``+R`` locators) → SDK.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import treq
import treq.client
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from arvnode.tls import client_policy
from tests.helpers import make_cluster_config, start_node
from tests.integration import test_sdk_cli as sdk
from tests.integration.test_federation import free_port, pinned_controller, remote

A, B, C = "zzzzz", "zbbbb", "zcccc"
FILE_A = sdk.pseudo_random_bytes(51, 300_001)
FILE_B = b"second file on B\n" * 999


class _Node:
    """What ``SdkCliTests.client_env`` needs of a node: the three exported values."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env


class FederationSdkTests(TestCase):
    timeout = 900

    # The subprocess plumbing of the single-cluster SDK acceptance test.
    client_home = sdk.SdkCliTests.client_home
    client_env = sdk.SdkCliTests.client_env
    run_tool = sdk.SdkCliTests.run_tool
    python = sdk.SdkCliTests.python

    async def setUp(self) -> None:
        base = Path(self.mktemp())
        ports = {c: free_port() for c in (A, B, C)}
        self.nodes: dict[str, Any] = {}
        for cid in (A, B, C):
            config, paths = make_cluster_config(base / cid, cluster_id=cid, extra={
                "Services.Controller": pinned_controller(ports[cid]),
                "RemoteClusters": {o: remote(ports[o]) for o in (A, B, C) if o != cid},
            })
            self.nodes[cid] = await start_node(self, config, paths)
        self.a, self.b = self.nodes[A], self.nodes[B]
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(
            Agent(reactor, contextFactory=client_policy(insecure=True), pool=pool))
        self.user = await self.a.node.store.create_user(email="sdk@a.example", username="sdk",
                                                        is_active=True)
        self.token = (await self.a.node.store.create_token(self.user.uuid)).v2
        home = self.client_home()
        self.env = self.client_env(home, _Node({
            "ARVADOS_API_HOST": f"127.0.0.1:{self.a.controller_port}",
            "ARVADOS_API_TOKEN": self.token,
            "SSL_CERT_FILE": str(self.a.paths["ca"]),
        }))
        self.home = home

    async def put_block(self, node: Any, data: bytes) -> str:
        r = await self.http.put(node.keepproxy_url + "/" + hashlib.md5(data).hexdigest(),
                                data=data, headers={"Authorization": [f"Bearer {node.root_token}"]})
        self.assertEqual(r.code, 200, await treq.content(r))
        return (await treq.content(r)).decode().strip()

    async def b_collection(self) -> dict[str, Any]:
        """Two files whose blocks and record exist only on B, owned by A's user."""
        loc_a = await self.put_block(self.b, FILE_A)
        loc_b = await self.put_block(self.b, FILE_B)
        manifest = (f". {loc_a} {loc_b} 0:{len(FILE_A)}:data.bin "
                    f"{len(FILE_A)}:{len(FILE_B)}:notes.txt\n")
        r = await self.http.post(
            self.b.controller_url + "/arvados/v1/collections",
            json={"collection": {"owner_uuid": self.user.uuid, "name": "only on B",
                                 "manifest_text": manifest}},
            headers={"Authorization": [f"Bearer {self.b.root_token}"]})
        body = json.loads(await treq.content(r))
        self.assertEqual(r.code, 200, body)
        return body

    async def test_arv_ls_and_arv_get_of_b_data_through_a(self) -> None:
        """arv-ls and arv-get by UUID and by PDH of a B collection, run
        against A: same listing and bytes; the manifest carries +Rzbbbb- hints
        and nothing of it exists on A."""
        coll = await self.b_collection()
        uuid, pdh = coll["uuid"], coll["portable_data_hash"]
        for ref in (uuid, pdh):
            ls = await self.run_tool("arv-ls", "--retries", "0", ref, env=self.env)
            self.assertEqual(sorted(line.strip() for line in ls.text.splitlines()),
                             ["./data.bin", "./notes.txt"], str(ls))
        manifest = (await self.run_tool("arv-get", "--retries", "0", uuid, env=self.env)).text
        for block in sdk.manifest_blocks(manifest):
            self.assertRegex(block, r"\+Rzbbbb-[0-9a-f]{40}@[0-9a-f]{8}")
        self.assertEqual(sdk.pdh_of(manifest), pdh)

        got = await self.run_tool("arv-get", "--retries", "0", "--no-progress",
                                  f"{uuid}/data.bin", "-", env=self.env)
        self.assertEqual(hashlib.sha256(got.out).hexdigest(), hashlib.sha256(FILE_A).hexdigest())
        got = await self.run_tool("arv-get", "--retries", "0", "--no-progress",
                                  f"{pdh}/notes.txt", "-", env=self.env)
        self.assertEqual(got.out, FILE_B)
        dest = self.home / "work" / "tree"
        dest.mkdir()
        await self.run_tool("arv-get", "--retries", "0", "--no-progress", "-r", f"{uuid}/",
                            str(dest) + "/", env=self.env)
        self.assertEqual((dest / "data.bin").read_bytes(), FILE_A)
        self.assertEqual((dest / "notes.txt").read_bytes(), FILE_B)
        # The record and the blocks are B's alone.
        self.assertEqual(await self.a.node.store.find_collections_by_pdh(pdh, readable=None), [])

    async def test_workflow_get_through_a(self) -> None:
        """arvados.api().workflows().get(uuid=<B workflow>) against A returns B's
        record; its owner is the A user (B's copy of the user keeps the home UUID)."""
        r = await self.http.post(
            self.a.controller_url + f"/arvados/v1/workflows?cluster_id={B}",
            json={"workflow": {"name": "made on B", "definition": "cwlVersion: v1.2\n"}},
            headers={"Authorization": [f"Bearer {self.token}"]})
        wf = json.loads(await treq.content(r))
        self.assertEqual(r.code, 200, wf)
        self.assertTrue(wf["uuid"].startswith(f"{B}-7fd4e-"), wf)
        got = await self.python(f"""
            import json, arvados
            api = arvados.api('v1', num_retries=0)
            wf = api.workflows().get(uuid={wf['uuid']!r}).execute()
            print(json.dumps({{k: wf.get(k) for k in ('uuid', 'owner_uuid', 'name', 'definition')}}))
        """, env=self.env)
        self.assertEqual(got, {"uuid": wf["uuid"], "owner_uuid": self.user.uuid,
                               "name": "made on B", "definition": "cwlVersion: v1.2\n"})
