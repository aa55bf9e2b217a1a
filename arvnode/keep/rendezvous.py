"""Rendezvous hashing: which Keep servers to try for a block, in what order.

Why: Arvados clients, keepproxy and keep-balance all compute the same
per-block order of keep services, so a block written to the first servers
in that order is found at the first servers tried on read.  If arvnode
orders differently, or names its services differently (the names feed the
hash), it writes blocks where keep-balance will move them away and reads
miss.  Spec ``arvados-wire.md`` section 4.7, vectors in 12.4.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit

__all__ = ["weight", "sort_services", "service_uuid_from_url"]

T = TypeVar("T")

_HASH_RE = re.compile(r"[0-9a-f]{32}")
_CLUSTER_RE = re.compile(r"[a-z0-9]{5}")
_RENDEZVOUS_RE = re.compile(r"[A-Za-z0-9]{15}")


def _block_hash(hash_or_locator: str) -> str:
    block_hash = hash_or_locator[:32]
    if not _HASH_RE.fullmatch(block_hash):
        raise ValueError("block hash must start with 32 lowercase hex digits")
    return block_hash


def weight(hash32: str, service_uuid: str) -> str:
    """``md5_hex(hash32 + suffix)``; larger means "try earlier".

    ``suffix`` is the last 15 characters of a 27-character UUID, otherwise
    the whole UUID (as the Go keep client does).  ``hash32`` may also be a
    full locator: only its first 32 characters count.
    """
    suffix = service_uuid[-15:] if len(service_uuid) == 27 else service_uuid
    return hashlib.md5((_block_hash(hash32) + suffix).encode("utf-8")).hexdigest()


def _default_key(service: Any) -> str:
    return service if isinstance(service, str) else service.uuid


def sort_services(
    hash32: str,
    services: Iterable[T],
    key: Callable[[T], str] | None = None,
) -> list[T]:
    """``services`` in probe order for the block: heaviest weight first.

    ``key`` gives a service's UUID; by default ``service.uuid`` (or the
    service itself when it is a string).  Equal weights (same 15-character
    suffix) are ordered by the whole UUID, also descending, so the order
    never depends on the input order.
    """
    uuid_of = key if key is not None else _default_key
    block_hash = _block_hash(hash32)

    def sort_key(service: T) -> tuple[str, str]:
        uuid = uuid_of(service)
        return weight(block_hash, uuid), uuid

    return sorted(services, key=sort_key, reverse=True)


def service_uuid_from_url(cluster: str, url_string: str, rendezvous: str = "") -> str:
    """The keep service UUID Arvados derives from a config ``InternalURLs`` entry.

    ``<cluster>-bi6l4-<rvz>`` where ``rvz`` is ``rendezvous`` itself if it is
    exactly 15 ASCII letters/digits, else the first 15 hex digits of
    ``md5(rendezvous or url)``.  The URL is hashed as Arvados' config loader
    writes it: with a ``/`` path when it has none (so ``http://h:1`` and
    ``http://h:1/`` give the same UUID).
    """
    if not _CLUSTER_RE.fullmatch(cluster):
        raise ValueError(f"cluster id must be 5 characters of [a-z0-9], got {cluster!r}")
    if _RENDEZVOUS_RE.fullmatch(rendezvous):
        rvz = rendezvous
    else:
        source = rendezvous or _with_root_path(url_string)
        rvz = hashlib.md5(source.encode("utf-8")).hexdigest()[:15]
    return f"{cluster}-bi6l4-{rvz}"


def _with_root_path(url_string: str) -> str:
    # Arvados' config loader gives a URL with a host but no path the path "/".
    parts = urlsplit(url_string)
    if parts.path != "" or not parts.netloc:
        return url_string
    text = f"{parts.scheme}://{parts.netloc}/"
    if parts.query:
        text += "?" + parts.query
    if parts.fragment:
        text += "#" + parts.fragment
    return text
