"""Shared set-up for API tests: a real node in this process, HTTPS over loopback.

Users and tokens are made through the node's own store (as ``arvnode user
create`` / ``arvnode token create`` do); everything else goes through the
HTTP API the way a client would send it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from twisted.trial.unittest import TestCase

from tests import pgfixture
from tests.helpers import http_client, make_cluster_config, start_node

# A manifest holding only the empty block: needs no signature.
EMPTY_FILE_MANIFEST = ". d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty.txt\n"


class ApiTestCase(TestCase):
    """One node per test; ``self.api(...)`` sends a request and decodes the JSON answer."""

    extra: dict[str, Any] = {}
    postgresql = False
    timeout = 120

    async def startNode(self, **extra: Any) -> Any:
        base = Path(self.mktemp())
        merged = dict(self.extra)
        merged.update(extra)
        pg = pgfixture.fresh_database(self) if self.postgresql else None
        config, paths = make_cluster_config(base, extra=merged, postgresql=pg)
        self.node = await start_node(self, config, paths)
        self.client = http_client(self, paths["ca"])
        self.store = self.node.node.store
        self.root = self.node.root_token
        self.cluster = self.node.cluster_id
        return self.node

    async def raw(self, method: str, path: str, *, token: str | None = None,
                  body: bytes | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, bytes, Any]:
        hdrs = {"Accept": ["application/json"]}
        if token is not None:
            hdrs["Authorization"] = [f"Bearer {token}"]
        for k, v in (headers or {}).items():
            hdrs[k] = [v]
        url = self.node.controller_url + path
        r = await self.client.request(method, url, data=body, headers=hdrs)
        return r.code, await r.content(), r.headers

    async def api(self, method: str, path: str, *, token: str | None = None,
                  body: Any = None, params: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """``path`` below ``/arvados/v1/``; list-type params are JSON-encoded like the SDK."""
        full = "/arvados/v1/" + path
        if params:
            enc = {k: (json.dumps(v) if isinstance(v, (list, dict, bool)) else v)
                   for k, v in params.items()}
            full += "?" + urlencode(enc)
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        code, content, _ = await self.raw(method, full, token=token, body=data, headers=hdrs)
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content
        return code, decoded

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        code, body = await self.api(method, path, **kw)
        self.assertEqual(code, 200, f"{method} {path}: {body}")
        return body

    async def make_user(self, *, admin: bool = False, active: bool = True,
                        name: str = "") -> tuple[str, str]:
        """(user uuid, v2 token) of a new user."""
        user = await self.store.create_user(email=f"{name or 'u'}@example.com",
                                            username=name or None, first_name=name,
                                            is_admin=admin, is_active=active)
        token = await self.store.create_token(user.uuid)
        return user.uuid, token.v2

    @staticmethod
    def q(text: str) -> str:
        """Percent-encode a path segment as googleapiclient does (``+`` → ``%2B``)."""
        return quote(text, safe="")

    async def keep_put(self, data: bytes, token: str) -> str:
        """PUT a block through the node's real keepproxy; the signed locator it answers."""
        import hashlib

        r = await self.client.request(
            "PUT", f"{self.node.keepproxy_url}/{hashlib.md5(data).hexdigest()}", data=data,
            headers={"Authorization": [f"Bearer {token}"], "X-Keep-Desired-Replicas": ["1"]})
        text = (await r.content()).decode()
        self.assertEqual(r.code, 200, text)
        return text.strip()

    async def keep_get(self, locator: str, token: str) -> tuple[int, bytes]:
        r = await self.client.request(
            "GET", f"{self.node.keepproxy_url}/{locator}",
            headers={"Authorization": [f"Bearer {token}"]})
        return r.code, await r.content()

    async def signed_manifest(self, token: str, data: bytes = b"hello world\n",
                              name: str = "hello.txt") -> str:
        loc = await self.keep_put(data, token)
        return f". {loc} 0:{len(data)}:{name}\n"
