"""What each Arvados resource looks like to the store: its table and attributes.

A :class:`Kind` is the whitelist the generic object code works from: only
attribute names listed here ever reach SQL (as identifiers or as the
column expressions given below), and each :class:`Attr`'s type decides how
values are checked on the way in, how filter operands are checked, and how
columns are turned back into the JSON the Arvados API shows. Keeping it as
data lets one code path serve collections, groups, links, workflows, keep
services and the older users/tokens tables.

Timestamps are stored as UTC epoch seconds (DOUBLE PRECISION) so that both
engines compare them as numbers; the API shows them as Arvados ISO strings
with nine fractional digits, made by :func:`to_api_time`.
"""
from __future__ import annotations

import calendar
import re
import time
from typing import Any

from attrs import field, frozen

from arvnode import ids

class QueryError(ValueError):
    """A request's filters, order, select or values are not acceptable.

    The API answers 422 with ``str(e)`` as the message, so the message names
    the offending attribute, operator or value. Re-exported by
    :mod:`arvnode.store.query`, where the contract places it.
    """


ATTR_TYPES = frozenset({"string", "text", "integer", "float", "boolean", "datetime", "json"})


@frozen
class Attr:
    """One attribute of a kind.

    ``column`` is the SQL expression that yields it when it is not a stored
    column of the same name (users' ``owner_uuid``, tokens' ``modified_at``):
    such attributes can be filtered and ordered but not written.
    ``readonly`` attributes are kept by the store (timestamps, derived
    values) and silently ignored in values given to create/update, as
    Arvados ignores them in a request body. ``choices`` restricts a string.
    """

    name: str
    type: str
    nullable: bool = True
    default: Any = field(default=None, hash=False)
    filterable: bool = True
    column: str | None = None
    readonly: bool = False
    choices: tuple[str, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if self.type not in ATTR_TYPES:
            raise ValueError(f"unknown attribute type {self.type!r}")

    @property
    def stored(self) -> bool:
        """True when the attribute is a real column that create/update may write."""
        return self.column is None and self.name != "is_trashed"

    @property
    def is_object(self) -> bool:
        """A JSON attribute holding an object (``properties``): ``<name>.<key>`` filters apply."""
        return self.type == "json" and isinstance(self.default, dict)


@frozen
class Kind:
    """One Arvados resource: its API name, table, uuid infix, ``kind`` string and attributes.

    ``unique_name`` is None, ``"always"`` (collections: names unique per
    owner among non-trashed rows) or ``"project"`` (groups: only for
    ``group_class == 'project'``). ``creatable`` is False for the tables
    that have their own create methods (users, tokens).
    """

    name: str
    table: str
    infix: str
    kind: str
    attrs: tuple[Attr, ...]
    unique_name: str | None = None
    creatable: bool = True
    _by_name: dict[str, Attr] = field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {a.name: a for a in self.attrs})

    def attr(self, name: str) -> Attr:
        """The attribute called ``name``; :class:`QueryError` naming it if there is none."""
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise QueryError(f"unknown attribute {name!r} for {self.name}") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attrs)

    @property
    def trashable(self) -> bool:
        return "trash_at" in self._by_name

    @property
    def in_projects(self) -> bool:
        """True when a project can own rows of this kind (owner_uuid is a real column).

        Such rows disappear with a trashed project and go with a deleted one
        (Arvados' trash inheritance, :mod:`arvnode.store.trash`).
        """
        return self._by_name["owner_uuid"].stored


def _common(*, owner_column: str | None = None, modified_by_column: str | None = None,
            modified_at_column: str | None = None) -> tuple[Attr, ...]:
    return (
        Attr("uuid", "string", nullable=False),
        Attr("owner_uuid", "string", nullable=False, column=owner_column),
        Attr("created_at", "datetime", nullable=False, readonly=True),
        Attr("modified_at", "datetime", nullable=False, readonly=True, column=modified_at_column),
        Attr("modified_by_user_uuid", "string", readonly=True, column=modified_by_column),
    )


_TRASH = (
    Attr("trash_at", "datetime"),
    Attr("delete_at", "datetime"),
    Attr("is_trashed", "boolean", readonly=True),
)

EMPTY_PDH = "d41d8cd98f00b204e9800998ecf8427e+0"

COLLECTIONS = Kind(
    "collections",
    "collections",
    ids.INFIX["collections"],
    "arvados#collection",
    (
        *_common(),
        Attr("name", "string"),
        Attr("description", "text"),
        Attr("properties", "json", nullable=False, default={}),
        Attr("manifest_text", "text", nullable=False, default="", filterable=False),
        Attr("portable_data_hash", "string", nullable=False, default=EMPTY_PDH),
        Attr("replication_desired", "integer"),
        Attr("replication_confirmed", "integer"),
        Attr("replication_confirmed_at", "datetime"),
        Attr("storage_classes_desired", "json", nullable=False, default=["default"]),
        Attr("storage_classes_confirmed", "json", nullable=False, default=[]),
        Attr("storage_classes_confirmed_at", "datetime"),
        *_TRASH,
        Attr("file_count", "integer", nullable=False, default=0),
        Attr("file_size_total", "integer", nullable=False, default=0),
        Attr("version", "integer", nullable=False, default=1),
        Attr("current_version_uuid", "string", readonly=True),
        Attr("preserve_version", "boolean", nullable=False, default=False),
    ),
    unique_name="always",
)

GROUPS = Kind(
    "groups",
    "groups",
    ids.INFIX["groups"],
    "arvados#group",
    (
        *_common(),
        Attr("name", "string", nullable=False),
        Attr("description", "text"),
        Attr("group_class", "string", nullable=False, choices=("project", "role", "filter")),
        Attr("properties", "json", nullable=False, default={}),
        *_TRASH,
        Attr("frozen_by_uuid", "string"),
    ),
    unique_name="project",
)

LINKS = Kind(
    "links",
    "links",
    ids.INFIX["links"],
    "arvados#link",
    (
        *_common(),
        Attr("link_class", "string"),
        Attr("name", "string"),
        Attr("tail_uuid", "string"),
        Attr("head_uuid", "string"),
        Attr("properties", "json", nullable=False, default={}),
    ),
)

WORKFLOWS = Kind(
    "workflows",
    "workflows",
    ids.INFIX["workflows"],
    "arvados#workflow",
    (
        *_common(),
        Attr("name", "string"),
        Attr("description", "text"),
        Attr("definition", "text", filterable=False),
    ),
)

KEEP_SERVICES = Kind(
    "keep_services",
    "keep_services",
    ids.INFIX["keep_services"],
    "arvados#keepService",
    (
        *_common(),
        Attr("service_host", "string", nullable=False, default=""),
        Attr("service_port", "integer", nullable=False, default=0),
        Attr("service_ssl_flag", "boolean", nullable=False, default=False),
        Attr("service_type", "string", nullable=False, default="disk"),
        Attr("read_only", "boolean", nullable=False, default=False),
    ),
)

# The migration-1 tables have no owner/modified_by columns: users are owned
# by their cluster's system user, a token by its user, as in Arvados.
USERS = Kind(
    "users",
    "users",
    ids.INFIX["users"],
    "arvados#user",
    (
        *_common(
            owner_column="(substr(uuid, 1, 5) || '-tpzed-000000000000000')",
            modified_by_column="CAST(NULL AS TEXT)",
        ),
        Attr("email", "string", nullable=False, default=""),
        Attr("username", "string"),
        Attr("first_name", "string", nullable=False, default=""),
        Attr("last_name", "string", nullable=False, default=""),
        Attr("is_admin", "boolean", nullable=False, default=False),
        Attr("is_active", "boolean", nullable=False, default=False),
        Attr("prefs", "json", nullable=False, default={}),
    ),
    creatable=False,
)

API_CLIENT_AUTHORIZATIONS = Kind(
    "api_client_authorizations",
    "api_client_authorizations",
    ids.INFIX["api_client_authorizations"],
    "arvados#apiClientAuthorization",
    (
        *_common(
            owner_column="user_uuid",
            modified_by_column="user_uuid",
            modified_at_column="created_at",
        ),
        Attr("user_uuid", "string", nullable=False),
        Attr("expires_at", "datetime"),
        Attr("scopes", "json", nullable=False, default=["all"]),
    ),
    creatable=False,
)

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        COLLECTIONS,
        GROUPS,
        LINKS,
        WORKFLOWS,
        KEEP_SERVICES,
        USERS,
        API_CLIENT_AUTHORIZATIONS,
    )
}


def _camel(resource: str) -> str:
    singular = resource[:-1] if resource.endswith("s") else resource
    first, *rest = singular.split("_")
    return "arvados#" + first + "".join(p.capitalize() for p in rest)


# "arvados#containerRequest" -> "xvhdp", for every type Arvados has an infix for.
INFIX_BY_KIND: dict[str, str] = {_camel(r): infix for r, infix in ids.INFIX.items()}


# -- time -------------------------------------------------------------------

_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2}|[+-]\d{2}|UTC)?$"
)


def to_api_time(epoch: float | None) -> str | None:
    """Epoch seconds as Arvados shows times: ``2026-11-23T03:24:27.123456000Z``.

    Microsecond precision (what the store keeps), padded to the nine
    fractional digits Arvados prints.
    """
    if epoch is None:
        return None
    micros = round(float(epoch) * 1_000_000)
    seconds, frac = divmod(micros, 1_000_000)
    t = _gmtime(seconds)
    return f"{t}.{frac:06d}000Z"


def _gmtime(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}")


# Years 1..9999, what ISO strings (and both engines' clients) can show.
MIN_TIME = -62_135_596_800.0
MAX_TIME = 253_402_300_800.0  # exclusive


def check_time(epoch: float, text: Any = None) -> float:
    """``epoch`` if it is a time :func:`to_api_time` can print; QueryError otherwise."""
    if not MIN_TIME <= epoch < MAX_TIME:
        raise QueryError(f"time {text if text is not None else epoch!r} is out of range")
    return epoch


def from_api_time(text: str) -> float:
    """Parse an ISO 8601 time as clients send it (``Z``, an offset, or none = UTC).

    Raises :class:`QueryError` (a ValueError) for anything else, so a bad
    time in a filter or a body becomes a 422 naming it.
    """
    if not isinstance(text, str):
        raise QueryError(f"invalid time {text!r}: expected an ISO 8601 string")
    m = _TIME_RE.match(text.strip())
    if not m:
        raise QueryError(f"invalid time {text!r}: expected an ISO 8601 string")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        parts = [int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                 int(second or 0)]
        if not (1 <= parts[1] <= 12 and 1 <= parts[2] <= 31 and parts[3] <= 23
                and parts[4] <= 59 and parts[5] <= 60):
            raise ValueError
        if parts[2] > calendar.monthrange(parts[0], parts[1])[1]:
            raise ValueError
        seconds = calendar.timegm((*parts, 0, 0, 0))
    except (ValueError, OverflowError):
        raise QueryError(f"invalid time {text!r}") from None
    offset = 0
    if zone and zone not in ("Z", "z", "UTC"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hh, mm = int(digits[:2]), int(digits[2:] or 0)
        if hh > 23 or mm > 59:
            raise QueryError(f"invalid time {text!r}: bad UTC offset")
        offset = sign * (hh * 3600 + mm * 60)
    micros = int((frac or "0").ljust(9, "0")[:6])
    return check_time(float(seconds - offset) + micros / 1_000_000, text)
