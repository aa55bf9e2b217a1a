"""Arvados list parameters (filters, where, order, limit, offset, select, count).

:func:`parse_list_query` turns a request's parameters, as they came off the
wire or already decoded, into a checked :class:`ListQuery`. Everything a
client can get wrong is caught here and raised as :class:`QueryError`
naming the culprit (the API answers 422), so the SQL side only ever sees
whitelisted attribute names and operands of the right type: an unknown
filter must give an error, never a silently unfiltered list.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from attrs import frozen

from arvnode.store.kinds import INFIX_BY_KIND, Attr, Kind, QueryError, from_api_time

__all__ = [
    "COMPARISONS",
    "Filter",
    "ListQuery",
    "OPERATORS",
    "QueryError",
    "parse_list_query",
    "property_key",
]

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
PATTERNS = ("like", "ilike", "not like", "not ilike")
OPERATORS = frozenset((*COMPARISONS, *PATTERNS, "in", "not in", "is_a", "exists"))
DEFAULT_ORDER: tuple[tuple[str, bool], ...] = (("modified_at", True), ("uuid", False))
DEFAULT_LIMIT = 100
MAX_FILTERS = 500      # more is abuse, and each costs SQL parameters
MAX_IN_LIST = 100_000  # operands of one in/not in on a plain attribute
MAX_OR_LIST = 1_000    # ... on a time or properties.<key> (expanded into ORs)


@frozen
class Filter:
    """One checked filter.

    ``attr`` is an attribute of the kind or ``<json attr>.<key>``; ``op`` is
    lower-case; ``operand`` is normalised: times are epoch seconds, ``is_a``
    holds a tuple of uuid infixes, ``in``/``not in`` a tuple, ``exists`` a
    bool (for ``properties`` ``exists`` "key" the filter becomes
    ``properties.key exists True``).
    """

    attr: str
    op: str
    operand: Any


@frozen
class ListQuery:
    """A checked list request; ``order`` holds (attribute, descending) pairs."""

    filters: tuple[Filter, ...] = ()
    order: tuple[tuple[str, bool], ...] = DEFAULT_ORDER
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    select: tuple[str, ...] | None = None
    count: str = "exact"
    include_trash: bool = False
    include_old_versions: bool = False


def property_key(kind: Kind, name: str) -> tuple[Attr, str] | None:
    """``("properties", "k")`` for ``properties.k`` when that is a JSON-object attribute."""
    if not isinstance(name, str) or "." not in name:
        return None
    base, key = name.split(".", 1)
    if not kind.has(base) or not kind.attr(base).is_object:
        return None
    _check_key(key)
    return kind.attr(base), key


def _check_key(key: str) -> None:
    # A key SQLite's JSON path syntax ($."key") can express, so both engines agree.
    if not key or '"' in key or "\\" in key or any(ord(c) < 32 for c in key):
        raise QueryError(f"invalid property key {key!r}")
    _text(key, "property key")


def _decode(name: str, value: Any) -> Any:
    """A parameter as Python: JSON text is decoded, anything else passes."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(f"{name} is not valid UTF-8") from None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            raise QueryError(f"{name} is not valid JSON: {value[:80]!r}") from None
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise QueryError(f"{what} must be a string, not {_tname(value)}")
    if "\x00" in value:
        raise QueryError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what} is not valid UTF-8") from None
    return value


def _tname(value: Any) -> str:
    return {
        type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
        list: "array", tuple: "array", dict: "object",
    }.get(type(value), type(value).__name__)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise QueryError(f"{name} must be an integer, not {value!r}")
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise QueryError(f"{name} must be an integer, not {value[:40]!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise QueryError(f"{name} must be an integer, not {_tname(value)}")
    if value < 0:
        raise QueryError(f"{name} must not be negative")
    return value


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "t"):
            return True
        if lowered in ("false", "0", "no", "f", ""):
            return False
        raise QueryError(f"{name} must be true or false, not {value[:40]!r}")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    raise QueryError(f"{name} must be true or false, not {_tname(value)}")


# -- operands ---------------------------------------------------------------


def _scalar_for(attr: Attr, value: Any, label: str) -> Any:
    """Check one non-null operand against an attribute's type; times become epoch seconds."""
    t = attr.type
    if t in ("string", "text"):
        return _text(value, f"operand for {label}")
    if t in ("integer", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise QueryError(f"operand for {label} must be a number, not {_tname(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError(f"operand for {label} must be a finite number")
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise QueryError(f"operand for {label} must be true or false, not {_tname(value)}")
        return value
    if t == "datetime":
        if not isinstance(value, str):
            raise QueryError(f"operand for {label} must be a time string, not {_tname(value)}")
        return from_api_time(value)
    raise QueryError(f"attribute {label!r} cannot be compared")  # json


def _property_scalar(value: Any, label: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError(f"operand for {label} must be a finite number")
        return value
    if isinstance(value, str):
        return _text(value, f"operand for {label}")
    raise QueryError(
        f"operand for {label} must be a string, number, boolean or null, not {_tname(value)}"
    )


def _pattern(value: Any, label: str) -> str:
    text = _text(value, f"operand for {label}")
    # PostgreSQL refuses a pattern ending in its escape character; refuse it on both engines.
    trailing = len(text) - len(text.rstrip("\\"))
    if trailing % 2:
        raise QueryError(f"pattern for {label} must not end with an escape character")
    return text


def _kinds_operand(value: Any, label: str) -> tuple[str, ...]:
    names = value if isinstance(value, list) else [value]
    if not names:
        raise QueryError(f"operand for {label} is_a must name at least one kind")
    infixes = []
    for n in names:
        if not isinstance(n, str) or n not in INFIX_BY_KIND:
            raise QueryError(f"unknown kind {n!r} in is_a filter on {label}")
        infixes.append(INFIX_BY_KIND[n])
    return tuple(infixes)


def _strip_table(kind: Kind, name: str) -> str:
    prefix = kind.table + "."
    return name[len(prefix):] if name.startswith(prefix) else name


def _filter(kind: Kind, raw: Any) -> Filter:
    if isinstance(raw, str):
        raise QueryError("full-text filters are not supported")
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        raise QueryError(f"invalid filter {json.dumps(raw, default=str)[:120]}: "
                         "expected [attribute, operator, operand]")
    name, op, operand = raw
    if not isinstance(name, str):
        raise QueryError(f"invalid filter attribute {json.dumps(name, default=str)[:80]}")
    if not isinstance(op, str):
        raise QueryError(f"invalid filter operator {json.dumps(op, default=str)[:80]}")
    op = " ".join(op.lower().split())
    if op not in OPERATORS:
        raise QueryError(f"unknown filter operator {op[:40]!r}")
    name = _strip_table(kind, name)
    prop = property_key(kind, name)
    if prop is not None:
        return _property_filter(name, op, operand)
    attr = kind.attr(name)
    if not attr.filterable:
        raise QueryError(f"attribute {name!r} of {kind.name} cannot be filtered")
    if attr.type == "json":
        if op == "exists" and attr.is_object:
            key = _text(operand, f"operand for {name} exists")
            _check_key(key)
            return Filter(f"{name}.{key}", "exists", True)
        raise QueryError(f"operator {op!r} is not supported for attribute {name!r}")
    if op in ("=", "!="):
        value = None if operand is None else _scalar_for(attr, operand, name)
        return Filter(name, op, value)
    if op in COMPARISONS:
        if attr.type == "boolean":
            raise QueryError(f"operator {op!r} is not supported for boolean attribute {name!r}")
        return Filter(name, op, _scalar_for(attr, operand, name))
    if op in PATTERNS:
        if attr.type not in ("string", "text"):
            raise QueryError(f"operator {op!r} is only for text attributes, not {name!r}")
        return Filter(name, op, _pattern(operand, name))
    if op in ("in", "not in"):
        if not isinstance(operand, (list, tuple)):
            raise QueryError(f"operand for {name} {op} must be an array, not {_tname(operand)}")
        _check_length(operand, MAX_OR_LIST if attr.type == "datetime" else MAX_IN_LIST, name)
        return Filter(name, op, tuple(_scalar_for(attr, v, name) for v in operand))
    if op == "is_a":
        if attr.type != "string":
            raise QueryError(f"operator 'is_a' is not supported for attribute {name!r}")
        return Filter(name, op, _kinds_operand(operand, name))
    raise QueryError(f"operator {op!r} is not supported for attribute {name!r}")  # exists


def _property_filter(name: str, op: str, operand: Any) -> Filter:
    if op == "exists":
        return Filter(name, op, _bool(operand, f"operand for {name} exists"))
    if op in ("=", "!="):
        return Filter(name, op, _property_scalar(operand, name))
    if op in COMPARISONS:
        value = _property_scalar(operand, name)
        if value is None or isinstance(value, bool):
            raise QueryError(f"operand for {name} {op} must be a string or a number")
        return Filter(name, op, value)
    if op in PATTERNS:
        return Filter(name, op, _pattern(operand, name))
    if op in ("in", "not in"):
        if not isinstance(operand, (list, tuple)):
            raise QueryError(f"operand for {name} {op} must be an array, not {_tname(operand)}")
        _check_length(operand, MAX_OR_LIST, name)
        return Filter(name, op, tuple(_property_scalar(v, name) for v in operand))
    raise QueryError(f"operator {op!r} is not supported for attribute {name!r}")


def _check_length(operand: Any, limit: int, name: str) -> None:
    if len(operand) > limit:
        raise QueryError(f"too many values for {name} (at most {limit})")


def _filters(kind: Kind, params: Mapping[str, Any]) -> list[Filter]:
    out: list[Filter] = []
    raw = params.get("filters")
    if raw is not None:
        filters = _decode("filters", raw)
        if filters is None:
            filters = []
        if isinstance(filters, str):
            raise QueryError("full-text filters are not supported")
        if not isinstance(filters, list):
            raise QueryError(f"filters must be an array, not {_tname(filters)}")
        # A single filter given bare ([a, op, b] instead of [[a, op, b]]) is accepted too.
        if len(filters) == 3 and isinstance(filters[0], str) and isinstance(filters[1], str) \
                and filters[1].lower().strip() in OPERATORS:
            filters = [filters]
        out.extend(_filter(kind, f) for f in filters)
    raw = params.get("where")
    if raw is not None:
        where = _decode("where", raw)
        if where is None:
            where = {}
        if not isinstance(where, dict):
            raise QueryError(f"where must be an object, not {_tname(where)}")
        for name, value in where.items():
            op = "in" if isinstance(value, list) else "="
            out.append(_filter(kind, [name, op, value]))
    if len(out) > MAX_FILTERS:
        raise QueryError(f"too many filters (at most {MAX_FILTERS})")
    return out


def _order(kind: Kind, raw: Any) -> tuple[tuple[str, bool], ...]:
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith("["):
            raw = _decode("order", stripped)
        elif stripped.startswith('"'):
            raw = [_decode("order", stripped)]
        else:
            raw = [p for p in stripped.split(",")]
    if raw is None:
        return DEFAULT_ORDER
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise QueryError(f"order must be a string or an array of strings, not {_tname(raw)}")
    out: list[tuple[str, bool]] = []
    for item in raw:
        if not isinstance(item, str):
            raise QueryError(f"invalid order {json.dumps(item, default=str)[:80]}")
        for piece in item.split(","):
            words = piece.split()
            if not words:
                continue
            if len(words) > 2:
                raise QueryError(f"invalid order {piece.strip()[:80]!r}")
            name = _strip_table(kind, words[0])
            direction = words[1].lower() if len(words) == 2 else "asc"
            if direction not in ("asc", "desc"):
                raise QueryError(f"invalid order direction {words[1][:20]!r}")
            attr = kind.attr(name)
            if not attr.filterable or attr.type == "json":
                raise QueryError(f"cannot order by attribute {name!r}")
            if all(n != name for n, _ in out):
                out.append((name, direction == "desc"))
    if not out:
        return DEFAULT_ORDER
    if all(n != "uuid" for n, _ in out):
        out.append(("uuid", False))  # a total order, so pages never overlap or skip
    return tuple(out)


def _select(kind: Kind, raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, (str, bytes, bytearray)):
        text = raw.decode("utf-8", "replace") if not isinstance(raw, str) else raw
        raw = _decode("select", text) if text.strip().startswith(("[", '"', "null")) \
            else [p.strip() for p in text.split(",") if p.strip()]
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise QueryError(f"select must be an array of attribute names, not {_tname(raw)}")
    names: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise QueryError(f"invalid select entry {json.dumps(item, default=str)[:80]}")
        kind.attr(item)
        if item not in names:
            names.append(item)
    if "uuid" not in names:
        names.insert(0, "uuid")
    return tuple(names)


def parse_list_query(kind: Kind, params: Mapping[str, Any], *, max_limit: int = 1000
                     ) -> ListQuery:
    """Check and normalise an Arvados list request for ``kind``.

    ``params`` values may be wire strings (JSON for filters/where/order/
    select, "10", "true") or decoded values. Parameters this does not know
    (alt, distinct, cluster_id, ...) are ignored. A limit above
    ``max_limit`` is lowered to it, as Arvados caps a page. Raises only
    :class:`QueryError`.
    """
    try:
        return _parse(kind, params, max_limit)
    except QueryError:
        raise
    except RecursionError:
        raise QueryError("request parameters are nested too deeply") from None


def _parse(kind: Kind, params: Mapping[str, Any], max_limit: int) -> ListQuery:
    filters = tuple(_filters(kind, params))
    order = _order(kind, params.get("order"))
    limit = DEFAULT_LIMIT if params.get("limit") is None else _int(params["limit"], "limit")
    limit = min(limit, max_limit)
    offset = 0 if params.get("offset") is None else _int(params["offset"], "offset")
    select = _select(kind, params.get("select"))
    count = params.get("count", "exact")
    if isinstance(count, (bytes, bytearray)):
        count = count.decode("utf-8", "replace")
    if count is None or count == "":
        count = "exact"
    if count not in ("exact", "none"):
        raise QueryError(f"count must be 'exact' or 'none', not {str(count)[:40]!r}")
    include_trash = _bool(params.get("include_trash"), "include_trash")
    include_old = _bool(params.get("include_old_versions"), "include_old_versions")
    return ListQuery(
        filters=filters,
        order=order,
        limit=limit,
        offset=offset,
        select=select,
        count=count,
        include_trash=include_trash,
        include_old_versions=include_old,
    )
