"""Token salting for federation (spec ``arvados-wire.md`` section 3.3).

Why: when arvnode forwards a request to a remote cluster it must not hand
over the client's real secret.  It sends ``v2/<uuid>/<HMAC-SHA1(secret,
remote)>`` instead; the issuing cluster can check that value, and the remote
cluster can use it only for the few calls salted tokens are good for.  The
remote then signs Keep locators for that salted token, and arvnode's own
Keep side must recompute exactly the same string to fetch those blocks, so
this must match Arvados bit for bit.

Refusing to salt a token that is already salted (a 40-character secret) is
also what stops federation loops on a second hop.

Pure functions; tokens never appear in exception messages.
"""
from __future__ import annotations

import re

from arvnode.ids import salted_secret

__all__ = [
    "SaltError",
    "ObsoleteToken",
    "TokenFormatError",
    "AlreadySalted",
    "salt_token",
    "salted_secret",
    "is_salted",
]

SALTED_SECRET_LENGTH = 40

_OBSOLETE_RE = re.compile(r"[0-9a-z]{41,}")
_CLUSTER_RE = re.compile(r"[a-z0-9]{5}")


class SaltError(ValueError):
    """The token cannot be salted for the requested cluster."""


class ObsoleteToken(SaltError):
    """A v1 token (bare secret): look up its v2 form first (spec 3.4)."""


class TokenFormatError(SaltError):
    """Neither v1 nor v2, e.g. an OIDC access token: forward it unchanged."""


class AlreadySalted(SaltError):
    """The secret is already salted, for a cluster other than the target."""


def _v2_parts(token: str) -> list[str] | None:
    parts = token.split("/")
    if len(parts) < 3 or parts[0] != "v2":
        return None
    return parts


def salt_token(token: str, remote: str) -> str:
    """The token to send to cluster ``remote`` on the client's behalf.

    * v2 token issued by ``remote`` (its UUID starts with ``remote``):
      returned unchanged, container part included.
    * v2 token with a secret that is not 40 characters long:
      ``v2/<uuid>/<salted_secret(secret, remote)>`` (a 4th ``/`` part is
      dropped).
    * v2 token with a 40-character secret: :class:`AlreadySalted`.
    * not v2 and ``[0-9a-z]{41,}``: :class:`ObsoleteToken`.
    * anything else: :class:`TokenFormatError`.

    ``remote`` must be a cluster id (5 characters of ``[a-z0-9]``); anything
    else is a programming error (:class:`ValueError`), since an empty
    prefix would match every UUID and leak the unsalted token.
    """
    if not isinstance(remote, str) or not _CLUSTER_RE.fullmatch(remote):
        raise ValueError("remote must be a cluster id of 5 characters [a-z0-9]")
    parts = _v2_parts(token)
    if parts is None:
        if _OBSOLETE_RE.fullmatch(token):
            raise ObsoleteToken("v1 token: salt its v2 form instead")
        raise TokenFormatError("token is not a v2 token")
    uuid, secret = parts[1], parts[2]
    if uuid.startswith(remote):
        return token
    # Length in bytes, as Arvados (Go) measures it.
    if len(secret.encode("utf-8")) == SALTED_SECRET_LENGTH:
        raise AlreadySalted(
            f"token {uuid} is already salted and was not issued by {remote}"
        )
    return f"v2/{uuid}/{salted_secret(secret, remote)}"


def is_salted(token: str) -> bool:
    """True for a v2 token whose secret part is 40 characters long.

    That length is the only thing that marks a salted token in Arvados.
    """
    parts = _v2_parts(token)
    return parts is not None and len(parts[2].encode("utf-8")) == SALTED_SECRET_LENGTH
