"""Store records → Arvados API JSON.

The store hands back plain dicts with API-shaped values; what only the API
adds is here: ``kind``, ``etag``, ``href``, ``select`` trimming and the list
envelope (``arvados#collectionList`` with ``items``/``items_available``),
so every resource renders alike.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Sequence

# Keys the API layer adds; a ``select`` never removes ``kind``.
API_ONLY = frozenset({"kind", "etag", "href"})


def etag(record: dict[str, Any]) -> str:
    """A short, stable fingerprint of the record's content (base 36, as Arvados)."""
    digest = hashlib.md5(json.dumps(record, sort_keys=True, default=str).encode()).digest()
    n = int.from_bytes(digest, "big")
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + out
    return out[:25] or "0"


def render(kind: str, resource: str, record: dict[str, Any],
           select: Sequence[str] | None = None) -> dict[str, Any]:
    """One record as the API shows it. ``select`` keeps only those keys (+ ``kind``)."""
    out = dict(record)
    out["kind"] = kind
    out["etag"] = etag(record)
    if record.get("uuid"):
        out["href"] = f"/{resource}/{record['uuid']}"
    if select is not None:
        wanted = set(select) | {"kind"}
        out = {k: v for k, v in out.items() if k in wanted}
    return out


def render_list(kind: str, items: Iterable[dict[str, Any]], items_available: int | None,
                *, offset: int, limit: int) -> dict[str, Any]:
    """The list envelope: ``kind`` is the item kind + ``List``."""
    body: dict[str, Any] = {
        "kind": kind + "List",
        "etag": "",
        "self_link": "",
        "offset": offset,
        "limit": limit,
        "items": list(items),
    }
    if items_available is not None:
        body["items_available"] = items_available
    return body
