"""A deactivated user can no longer read blocks through the keepproxy,
even with signatures it was given while active."""
from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.helpers import http_client, make_cluster_config, start_node


class InactiveUserTests(TestCase):
    timeout = 60

    async def test_deactivated_user_refused_download(self) -> None:
        config, paths = make_cluster_config(Path(self.mktemp()))
        n = await start_node(self, config, paths)
        store, auth = n.node.store, n.node.authenticator
        user = await store.create_user(email="gone@example.com", is_active=True)
        token = (await store.create_token(user.uuid)).v2
        client = http_client(self)
        headers = {"Authorization": f"Bearer {token}"}
        data = b"still mine?"
        r = await client.put(f"{n.keepproxy_url}/{hashlib.md5(data).hexdigest()}", data=data, headers=headers)
        signed = (await r.text()).strip()
        self.assertEqual(r.code, 200, signed)
        r = await client.get(f"{n.keepproxy_url}/{signed}", headers=headers)
        self.assertEqual((r.code, await r.content()), (200, data))

        await store.update_user(user.uuid, is_active=False)
        auth.forget(user_uuid=user.uuid)
        r = await client.get(f"{n.keepproxy_url}/{signed}", headers=headers)
        self.assertEqual(r.code, 403)
        self.assertNotEqual(await r.content(), data)
