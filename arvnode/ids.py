"""Arvados identifiers and secrets.

Randomness is always passed in (a :class:`random.Random`; production uses
:class:`random.SystemRandom`) so tests can make identifiers reproducible.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import re

UUID_RE = re.compile(r"^[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}$")
CLUSTER_ID_RE = re.compile(r"^[a-z0-9]{5}$")
PDH_RE = re.compile(r"^[0-9a-f]{32}\+[0-9]+$")

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"

# Type infixes (spec 1.2): last five base-36 digits of md5(<Rails class name>).
INFIX = {
    "collections": "4zz18",
    "users": "tpzed",
    "api_client_authorizations": "gj3su",
    "workflows": "7fd4e",
    "groups": "j7d0g",
    "keep_services": "bi6l4",
    "links": "o0j2j",
    "container_requests": "xvhdp",
    "containers": "dz642",
    "logs": "57u5n",
    "virtual_machines": "2x53u",
    "authorized_keys": "fngyi",
    "credentials": "oss07",
}
RESOURCE_BY_INFIX = {v: k for k, v in INFIX.items()}


def system_user_uuid(cluster: str) -> str:
    return f"{cluster}-tpzed-000000000000000"


def anonymous_user_uuid(cluster: str) -> str:
    return f"{cluster}-tpzed-anonymouspublic"


def anonymous_group_uuid(cluster: str) -> str:
    return f"{cluster}-j7d0g-anonymouspublic"


def all_users_group_uuid(cluster: str) -> str:
    return f"{cluster}-j7d0g-fffffffffffffff"


def system_group_uuid(cluster: str) -> str:
    return f"{cluster}-j7d0g-000000000000000"


def system_root_token_uuid(cluster: str) -> str:
    return f"{cluster}-gj3su-000000000000000"


def anonymous_token_uuid(cluster: str) -> str:
    return f"{cluster}-gj3su-anonymouspublic"


def random_alnum(rng: random.Random, length: int) -> str:
    """``length`` characters of ``[a-z0-9]``."""
    return "".join(rng.choice(_ALNUM) for _ in range(length))


def new_uuid(cluster: str, infix: str, rng: random.Random) -> str:
    """A fresh ``<cluster>-<infix>-<15 random>`` UUID (spec 1.1)."""
    return f"{cluster}-{infix}-{random_alnum(rng, 15)}"


def new_secret(rng: random.Random) -> str:
    """A 50-character ``[a-z0-9]`` token secret, as Arvados' controller makes."""
    return random_alnum(rng, 50)


def new_cluster_id(rng: random.Random) -> str:
    """``x`` + 4 random characters: the Arvados convention for local clusters."""
    return "x" + random_alnum(rng, 4)


def cluster_of(uuid_or_token: str) -> str | None:
    """The cluster that issued a UUID or a v2 token, or None if neither."""
    if uuid_or_token.startswith("v2/") and len(uuid_or_token) > 8:
        return uuid_or_token[3:8]
    if UUID_RE.match(uuid_or_token):
        return uuid_or_token[:5]
    return None


def salted_secret(secret: str, cluster_id: str) -> str:
    """``hex(HMAC-SHA1(key=secret, msg=cluster_id))``: a token secret salted
    for a cluster (spec 3.3). Here, not in auth/, because the store needs it
    too (it accepts a token salted for its own cluster) and must not import
    the services' packages."""
    return hmac.new(secret.encode("utf-8"), cluster_id.encode("utf-8"), hashlib.sha1).hexdigest()
