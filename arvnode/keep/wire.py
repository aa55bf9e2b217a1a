"""What the keepproxy's answers look like on the wire (spec arvados-wire.md §4.2).

Kept apart from the request handling so the header set, the error shape and
the token parsing are defined once and easy to compare with the spec.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

__all__ = [
    "CORS_HEADERS",
    "FORBIDDEN",
    "HASH_PATH_RE",
    "INDEX_RE",
    "OPTIONS_RE",
    "KeepError",
    "bearer_token",
    "format_classes",
    "requested_classes",
]

CORS_HEADERS = {
    b"Access-Control-Allow-Origin": b"*",
    b"Access-Control-Allow-Methods": b"GET, HEAD, PUT, OPTIONS, POST",
    b"Access-Control-Allow-Headers": (
        b"Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas,"
        b" X-Keep-Signature, X-Keep-Storage-Classes"
    ),
    b"Access-Control-Expose-Headers": (
        b"X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed"
    ),
    b"Access-Control-Max-Age": b"86486400",
}

#: Routes (spec 4.1): paths are matched raw, with a literal "+".
HASH_PATH_RE = re.compile(rb"^/[0-9a-f]{32}(\+[^/]*)?$")
INDEX_RE = re.compile(rb"^/index(?:/([0-9a-f]{0,32}))?$")
OPTIONS_RE = re.compile(rb"^/[^/]*$")
FORBIDDEN = "Missing or invalid Authorization header, or method not allowed"


class KeepError(Exception):
    """An answer that is not a success: status, message, extra headers."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def bearer_token(request: Any) -> str | None:
    """The token of ``Authorization: Bearer|OAuth2 <token>``; nothing else counts."""
    header = request.getHeader(b"authorization")
    if not header:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme not in ("Bearer", "OAuth2") or not token:
        return None
    return token


def format_classes(counts: dict[str, int] | None) -> str:
    """``X-Keep-Storage-Classes-Confirmed`` value: ``a=1, b=2`` sorted by name."""
    if not counts:
        return ""
    return ", ".join(f"{name}={n}" for name, n in sorted(counts.items()))


def requested_classes(request: Any) -> list[str]:
    """The classes of ``X-Keep-Storage-Classes`` (comma separated, possibly
    in several headers), in order, without blanks or repeats."""
    out: list[str] = []
    for raw in request.requestHeaders.getRawHeaders(b"x-keep-storage-classes", []):
        for part in raw.decode("latin-1").split(","):
            name = part.strip()
            if name and name not in out:
                out.append(name)
    return out


async def send_index(request: Any, volumes: Sequence[Any], prefix: str, failed_status: int) -> None:
    """Answer ``GET /index[/<prefix>]`` (keepproxy and keepstore alike): lines
    ``<hash>+<size> <mtime ns>`` of every volume in order, then the blank line
    that tells a client the listing is complete. A volume that cannot list
    fails the whole answer with ``failed_status`` (the keepproxy's 502 for an
    upstream, the keepstore's 503 for its own volume)."""
    if any(c not in "0123456789abcdef" for c in prefix) or len(prefix) > 32:
        raise KeepError(400, "invalid prefix")
    lines: list[str] = []
    for v in volumes:
        try:
            entries = await v.index(prefix)
        except Exception as e:
            raise KeepError(failed_status, f"index of volume {v.uuid} failed: {e}") from e
        lines.extend(f"{h}+{size} {mtime}\n" for h, size, mtime in entries)
    body = ("".join(lines) + "\n").encode()
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.write(body)
    request.finish()
