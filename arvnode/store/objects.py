"""Generic create/get/update/delete/list and permissions for Arvados objects.

One code path serves every :class:`~arvnode.store.kinds.Kind` on both
engines. SQL is assembled only from the kind's whitelisted attribute names
and column expressions; every value travels as a bound parameter. The few
engine differences (JSON access, case-sensitive LIKE, name locks) are
chosen here by dialect name so that a filter matches the same rows on
SQLite and PostgreSQL:

* ``like`` is case-sensitive on PostgreSQL but not on SQLite, so SQLite
  gets the pattern translated to ``GLOB`` (case-sensitive, same wildcards
  once escaped); ``ilike`` compares ``lower()`` of both sides there.
* NULLs sort last ascending and first descending, as PostgreSQL does.
* ``properties.<key>`` filters compare the JSON value with its JSON type:
  a string operand only matches string values, a number only numbers.

:class:`ObjectsMixin` is mixed into :class:`arvnode.store.Store`, which
supplies ``_run``, ``_dialect``, ``_clock``, ``_rng`` and ``cluster_id``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from arvnode import ids
from arvnode.store import trash
from arvnode.store.errors import Conflict, NotFound
from arvnode.store.kinds import (
    COLLECTIONS,
    GROUPS,
    INFIX_BY_KIND,
    Attr,
    Kind,
    QueryError,
    check_time,
    from_api_time,
    to_api_time,
)
from arvnode.store.query import DEFAULT_ORDER, Filter, ListQuery, property_key

LEVELS = {"can_read": 1, "can_write": 2, "can_manage": 3}
UNIQUE_NAME_LIMIT = 237  # Arvados cuts a clashing name to this before adding " (<uuid tail>)"
_CHUNK = 500  # uuids per IN (...) list in the permission walk
_HALF_MICRO = 0.5e-6  # times are kept to the microsecond: compare within half of one
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class NameConflict(Conflict):
    """Another live object with the same owner already has this name (Arvados answers 422)."""


# -- values in --------------------------------------------------------------


def _coerce(kind: Kind, attr: Attr, value: Any) -> Any:
    """A value from a request body as the column stores it; QueryError if it does not fit."""
    label = f"{kind.name}.{attr.name}"
    if value is None:
        if not attr.nullable:
            raise QueryError(f"{attr.name} must not be null")
        return None
    t = attr.type
    if t in ("string", "text"):
        if not isinstance(value, str):
            raise QueryError(f"{label} must be a string, not {type(value).__name__}")
        if "\x00" in value:
            raise QueryError(f"{label} must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise QueryError(f"{label} is not valid UTF-8") from None
        if attr.choices is not None and value not in attr.choices:
            raise QueryError(f"{attr.name} must be one of {', '.join(attr.choices)}, not {value!r}")
        return value
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise QueryError(f"{label} must be an integer")
        if not -(2**63) <= value < 2**63:
            raise QueryError(f"{label} is out of range")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise QueryError(f"{label} must be a number")
        return float(value)
    if t == "boolean":
        if not isinstance(value, bool):
            raise QueryError(f"{label} must be true or false")
        return value
    if t == "datetime":
        if isinstance(value, str):
            return from_api_time(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return check_time(float(value))
        raise QueryError(f"{label} must be a time string")
    # json
    if attr.default is not None and not isinstance(value, type(attr.default)):
        want = "an object" if isinstance(attr.default, dict) else "an array"
        raise QueryError(f"{label} must be {want}")
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise QueryError(f"{label} is not valid JSON") from None
    if "\\u0000" in text:  # PostgreSQL's jsonb refuses it, so refuse it everywhere
        raise QueryError(f"{label} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{label} is not valid UTF-8") from None
    return text


def _default(attr: Attr) -> Any:
    value = copy.deepcopy(attr.default)
    if attr.type == "json":
        return json.dumps(value, sort_keys=True)
    return value


# -- values out -------------------------------------------------------------


def _decode(attr: Attr, value: Any) -> Any:
    if value is None:
        return copy.deepcopy(attr.default) if attr.type == "json" else None
    t = attr.type
    if t == "boolean":
        return bool(value)
    if t == "integer":
        return int(value)
    if t == "float":
        return float(value)
    if t == "datetime":
        return to_api_time(float(value))
    if t == "json":
        return json.loads(value)
    return value


def _trashed(trash_at: Any, now: float) -> bool:
    return trash_at is not None and float(trash_at) <= now


# -- SQL building -----------------------------------------------------------


class _SQL:
    """Builds SQL fragments for one kind, one engine and one moment.

    ``dead`` is :func:`arvnode.store.trash.dead_groups` at that moment: the
    groups whose rows (and, for groups, themselves) the trash hides.
    """

    def __init__(self, kind: Kind, engine: str, now: float,
                 dead: Mapping[str, bool] | None = None) -> None:
        self.kind = kind
        self.pg = engine == "postgresql"
        self.now = now
        self.dead = dict(dead or {})

    def expr(self, attr: Attr) -> tuple[str, list[Any]]:
        if attr.name == "is_trashed":
            sql, params = "(trash_at IS NOT NULL AND trash_at <= ?)", [self.now]
            if self.dead and self.kind.in_projects:
                under, p = self.under(sorted(self.dead))
                sql, params = f"({sql} OR {under})", params + p
            return sql, params
        return (attr.column or attr.name), []

    def under(self, groups: Sequence[str]) -> tuple[str, list[Any]]:
        """True for a row owned by one of ``groups`` (for groups: or being one)."""
        parts = [self.in_list("owner_uuid", [], groups)]
        if self.kind.table == GROUPS.table:
            parts.append(self.in_list("uuid", [], groups))
        return "(" + " OR ".join(s for s, _ in parts) + ")", [x for _, p in parts for x in p]

    def columns(self, attrs: Sequence[Attr]) -> tuple[str, list[Any]]:
        parts, params = [], []
        for a in attrs:
            sql, p = self.expr(a)
            parts.append(sql)
            params.extend(p)
        return ", ".join(parts), params

    # filters

    def where(self, filters: Iterable[Filter]) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for f in filters:
            sql, p = self.filter(f)
            clauses.append(sql)
            params.extend(p)
        return clauses, params

    def filter(self, f: Filter) -> tuple[str, list[Any]]:
        prop = property_key(self.kind, f.attr)
        if prop is not None:
            return self.property_filter(prop[0], prop[1], f.op, f.operand)
        attr = self.kind.attr(f.attr)
        col, cp = self.expr(attr)
        op, v = f.op.lower(), _normalise(attr, f.op.lower(), f.operand)
        if op == "=":
            return self.equal(attr, col, cp, v)
        if op == "!=":
            if v is None:
                return f"{col} IS NOT NULL", cp
            sql, p = self.equal(attr, col, cp, v)
            return f"NOT COALESCE(({sql}), FALSE)", p
        if op in ("<", "<=", ">", ">="):
            if attr.type == "datetime":
                # Stored times carry float noise below the microsecond the API shows.
                bound = v - _HALF_MICRO if op in ("<", ">=") else v + _HALF_MICRO
                sop = "<" if op in ("<", "<=") else ">="
                return f"{col} {sop} ?", [*cp, bound]
            return f"{col} {op} ?", [*cp, v]
        if op in ("like", "ilike", "not like", "not ilike"):
            sql, p = self.like(col, cp, v, insensitive="ilike" in op)
            return (f"NOT ({sql})" if op.startswith("not") else sql), p
        if op in ("in", "not in"):
            if not v:
                sql, p = "1 = 0", []
            elif attr.type == "datetime":
                ors = [self.equal(attr, col, cp, x) for x in v]
                sql = "(" + " OR ".join(s for s, _ in ors) + ")"
                p = [x for _, ps in ors for x in ps]
            else:
                sql, p = self.in_list(col, cp, v)
            return (f"NOT COALESCE(({sql}), FALSE)" if op == "not in" else sql), p
        if op == "is_a":
            marks = ", ".join("?" for _ in v)
            return f"(length({col}) = 27 AND substr({col}, 7, 5) IN ({marks}))", [*cp, *cp, *v]
        raise QueryError(f"operator {op!r} is not supported for attribute {f.attr!r}")

    def in_list(self, col: str, cp: list[Any], values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``col IN values`` with one bound parameter, however long the list.

        SQLite allows at most 32766 parameters per statement, so a readable
        set of thousands of uuids travels as one JSON array (SQLite) or one
        array (PostgreSQL).
        """
        if self.pg:
            return f"{col} = ANY(?)", [*cp, list(values)]
        return f"{col} IN (SELECT value FROM json_each(?))", [*cp, json.dumps(list(values))]

    def equal(self, attr: Attr, col: str, cp: list[Any], v: Any) -> tuple[str, list[Any]]:
        if v is None:
            return f"{col} IS NULL", cp
        if attr.type == "datetime":
            return f"({col} >= ? AND {col} < ?)", [*cp, v - _HALF_MICRO, *cp, v + _HALF_MICRO]
        return f"{col} = ?", [*cp, v]

    def like(self, col: str, cp: list[Any], pattern: str, *, insensitive: bool
             ) -> tuple[str, list[Any]]:
        if self.pg:
            return f"{col} {'ILIKE' if insensitive else 'LIKE'} ?", [*cp, pattern]
        if insensitive:
            return f"lower({col}) GLOB ?", [*cp, like_to_glob(pattern.translate(_ASCII_LOWER))]
        return f"{col} GLOB ?", [*cp, like_to_glob(pattern)]

    # properties.<key>

    def _json(self, attr: Attr, key: str) -> tuple[
        Callable[[str], tuple[str, list[Any]]],
        Callable[[], tuple[str, list[Any]]],
        Callable[[], tuple[str, list[Any]]],
    ]:
        """(text-of-type, number, typeof) builders for one key of a JSON column."""
        col = attr.name
        if self.pg:
            j = f"CAST({col} AS jsonb)"

            def typed(types: str, value: str) -> tuple[str, list[Any]]:
                return (f"CASE WHEN jsonb_typeof({j} -> ?) IN ({types}) THEN {value} END",
                        [key] + ([key] if "?" in value else []))

            text = lambda t: typed(t, f"({j} ->> ?)")  # noqa: E731
            number = lambda: typed("'number'", f"CAST({j} ->> ? AS DOUBLE PRECISION)")  # noqa: E731
            kind_of = lambda: (f"jsonb_typeof({j} -> ?)", [key])  # noqa: E731
            return text, number, kind_of
        path = '$."' + key + '"'

        def typed_s(types: str, value: str) -> tuple[str, list[Any]]:
            return (f"CASE WHEN json_type({col}, ?) IN ({types}) THEN {value} END",
                    [path, path])

        text = lambda t: typed_s(t, f"json_extract({col}, ?)")  # noqa: E731
        number = lambda: typed_s("'integer', 'real'", f"json_extract({col}, ?)")  # noqa: E731
        kind_of = lambda: (f"json_type({col}, ?)", [path])  # noqa: E731
        return text, number, kind_of

    def _prop_equal(self, attr: Attr, key: str, v: Any) -> tuple[str, list[Any]]:
        text, number, kind_of = self._json(attr, key)
        if v is None:
            sql, p = kind_of()
            return f"{sql} = 'null'", p
        if isinstance(v, bool):
            if self.pg:
                sql, p = text("'boolean'")
                return f"{sql} = ?", [*p, "true" if v else "false"]
            sql, p = kind_of()
            return f"{sql} = ?", [*p, "true" if v else "false"]
        if isinstance(v, (int, float)):
            sql, p = number()
            return f"{sql} = ?", [*p, v]
        sql, p = text("'string'" if self.pg else "'text'")
        return f"{sql} = ?", [*p, v]

    def property_filter(self, attr: Attr, key: str, op: str, v: Any) -> tuple[str, list[Any]]:
        text, number, kind_of = self._json(attr, key)
        string_type = "'string'" if self.pg else "'text'"
        if op == "exists":
            sql, p = kind_of()
            return (f"{sql} IS NOT NULL" if v else f"{sql} IS NULL"), p
        if op == "=":
            return self._prop_equal(attr, key, v)
        if op == "!=":
            sql, p = self._prop_equal(attr, key, v)
            return f"NOT COALESCE(({sql}), FALSE)", p
        if op in ("<", "<=", ">", ">="):
            sql, p = number() if isinstance(v, (int, float)) else text(string_type)
            return f"{sql} {op} ?", [*p, v]
        if op in ("like", "ilike", "not like", "not ilike"):
            col, cp = text(string_type)
            sql, p = self.like(col, cp, v, insensitive="ilike" in op)
            return (f"NOT COALESCE(({sql}), FALSE)" if op.startswith("not") else sql), p
        if op in ("in", "not in"):
            if not v:
                sql, p = "1 = 0", []
            else:
                parts = [self._prop_equal(attr, key, x) for x in v]
                sql = "(" + " OR ".join(s for s, _ in parts) + ")"
                p = [x for _, ps in parts for x in ps]
            return (f"NOT COALESCE(({sql}), FALSE)" if op == "not in" else sql), p
        raise QueryError(f"operator {op!r} is not supported for attribute {attr.name}.{key!r}")

    def order(self, order: Sequence[tuple[str, bool]]) -> tuple[str, list[Any]]:
        parts, params = [], []
        for name, desc in order or DEFAULT_ORDER:
            attr = self.kind.attr(name)
            col, cp = self.expr(attr)
            direction = " DESC" if desc else ""
            if attr.nullable and attr.name != "is_trashed":
                # PostgreSQL's NULL placement (last ascending), on both engines.
                parts.append(f"({col} IS NULL){direction}")
                params.extend(cp)
            parts.append(f"{col}{direction}")
            params.extend(cp)
        return ", ".join(parts), params


def _normalise(attr: Attr, op: str, operand: Any) -> Any:
    """Accept a Filter built by code rather than by parse_list_query (times as strings,
    is_a with kind names) by normalising its operand the same way."""
    if op == "is_a":
        names = operand if isinstance(operand, (list, tuple)) else (operand,)
        return tuple(INFIX_BY_KIND.get(n, n) for n in names)
    if attr.type == "datetime":
        if isinstance(operand, str):
            return from_api_time(operand)
        if isinstance(operand, (list, tuple)):
            return tuple(from_api_time(x) if isinstance(x, str) else x for x in operand)
    if op in ("in", "not in") and isinstance(operand, list):
        return tuple(operand)
    return operand


def like_to_glob(pattern: str) -> str:
    """An SQL LIKE pattern (``%``, ``_``, backslash escapes) as an SQLite GLOB pattern."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(_glob_literal(pattern[i]))
        elif c == "%":
            out.append("*")
        elif c == "_":
            out.append("?")
        else:
            out.append(_glob_literal(c))
        i += 1
    return "".join(out)


def _glob_literal(c: str) -> str:
    return f"[{c}]" if c in "*?[" else c


def _lock_key(table: str, owner_uuid: str) -> int:
    digest = hashlib.sha256(f"name-lock:{table}:{owner_uuid}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- the mixin --------------------------------------------------------------


class ObjectsMixin:
    """Arvados object methods for :class:`arvnode.store.Store` (see the controller contract)."""

    _run: Any
    _dialect: Any
    _clock: Any
    _rng: Any
    cluster_id: str

    # reading rows (worker thread)

    def _select_row(self, cur: Any, kind: Kind, uuid: str, now: float,
                    *, hide_gone: bool = False) -> dict[str, Any] | None:
        """The row as a record; is_trashed also when a project above it is trashed.

        ``hide_gone``: None for a row past its delete_at or below a project
        that is (gone for good, whether or not the sweeper has run yet).
        """
        attrs = [a for a in kind.attrs if a.name != "is_trashed"]
        q = _SQL(kind, self._dialect.name, now)
        cols, params = q.columns(attrs)
        row = cur.one(f"SELECT {cols} FROM {kind.table} WHERE uuid = ?", (*params, uuid))
        if row is None:
            return None
        raw = dict(zip((a.name for a in attrs), row))
        trashed = gone = False
        if kind.in_projects:
            trashed, gone = trash.owner_state(cur, raw.get("owner_uuid"), now)
        if kind.trashable and _trashed(raw.get("delete_at"), now):
            gone = True
        if gone and hide_gone:
            return None
        return self._record(kind, attrs, row, now, inherited=trashed)

    @staticmethod
    def _record(kind: Kind, attrs: Sequence[Attr], row: Sequence[Any], now: float, *,
                inherited: bool = False, dead: Mapping[str, bool] | None = None
                ) -> dict[str, Any]:
        """Decode a row; ``inherited`` (or an owner in ``dead``) marks it trashed
        by a project above it."""
        raw = dict(zip((a.name for a in attrs), row))
        out = {a.name: _decode(a, raw[a.name]) for a in attrs}
        if kind.trashable:
            if dead and not inherited:
                inherited = raw.get("owner_uuid") in dead or (
                    kind.table == GROUPS.table and raw.get("uuid") in dead)
            out["is_trashed"] = _trashed(raw.get("trash_at"), now) or inherited
        return out

    def _check_name(self, cur: Any, kind: Kind, row: Mapping[str, Any], now: float) -> bool:
        """True if ``row``'s name is free among its owner's live objects of this kind."""
        if kind.unique_name is None or row.get("name") is None:
            return True
        if kind.unique_name == "project" and row.get("group_class") != "project":
            return True
        if _trashed(row.get("trash_at"), now):
            return True
        sql = (f"SELECT 1 FROM {kind.table} WHERE owner_uuid = ? AND name = ? AND uuid <> ?"
               " AND (trash_at IS NULL OR trash_at > ?)")
        params: list[Any] = [row["owner_uuid"], row["name"], row["uuid"], now]
        if kind.unique_name == "project":
            sql += " AND group_class = ?"
            params.append("project")
        return cur.one(sql + " LIMIT 1", params) is None

    def _lock_names(self, cur: Any, kind: Kind, owner_uuid: str) -> None:
        # SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL
        # (READ COMMITTED) needs a lock so two creators cannot both see a free name.
        if kind.unique_name is not None and self._dialect.name == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(kind.table, owner_uuid),))

    # public API

    async def create_object(self, kind: Kind, values: Mapping[str, Any], *,
                            ensure_unique_name: bool = False,
                            actor_uuid: str | None = None) -> dict[str, Any]:
        """Insert an object; see the controller contract for the rules.

        Raises QueryError (unknown attribute, wrong type, missing required
        value), :class:`NameConflict` for a taken name, Conflict for a
        taken uuid.
        """
        if not kind.creatable:
            raise QueryError(f"{kind.name} cannot be created through the generic interface")
        row: dict[str, Any] = {}
        for key, value in values.items():
            attr = kind.attr(key)
            if attr.readonly or not attr.stored:
                continue
            row[key] = _coerce(kind, attr, value)
        uuid = row.get("uuid")
        if uuid is None:
            uuid = ids.new_uuid(self.cluster_id, kind.infix, self._rng)
        elif not ids.UUID_RE.match(uuid) or uuid[6:11] != kind.infix:
            raise QueryError(f"invalid uuid {uuid!r} for {kind.name}")
        row["uuid"] = uuid
        for attr in kind.attrs:
            if attr.stored and not attr.readonly and attr.name not in row:
                if attr.default is None and not attr.nullable:
                    raise QueryError(f"{attr.name} is required for {kind.name}")
                row[attr.name] = _default(attr)
        now = self._clock.seconds()
        row["created_at"] = row["modified_at"] = now
        row["modified_by_user_uuid"] = actor_uuid
        if kind is COLLECTIONS or kind.has("current_version_uuid"):
            row["current_version_uuid"] = uuid
        def insert(cur: Any) -> dict[str, Any]:
            self._lock_names(cur, kind, row["owner_uuid"])
            if not self._check_name(cur, kind, row, now):
                if not ensure_unique_name:
                    raise NameConflict(_name_taken(kind, row))
                row["name"] = f"{row['name'][:UNIQUE_NAME_LIMIT]} ({uuid[-15:]})"
                if not self._check_name(cur, kind, row, now):
                    raise NameConflict(_name_taken(kind, row))
            names = list(row)
            cur.execute(
                f"INSERT INTO {kind.table} ({', '.join(names)})"
                f" VALUES ({', '.join('?' for _ in names)})",
                [row[n] for n in names],
            )
            record = self._select_row(cur, kind, uuid, now)
            assert record is not None
            return record

        return await self._run(insert, write=True)  # type: ignore[no-any-return]

    async def get_object(self, kind: Kind, uuid: str) -> dict[str, Any]:
        """The object with this uuid, trashed or not; NotFound if there is none.

        ``is_trashed`` is true when its own trash_at has passed or a project
        above it is trashed. Past its delete_at (or below a project past
        its delete_at) it is NotFound: gone for good, even before the
        sweeper (:mod:`arvnode.store.sweeper`) removes the row.
        """
        now = self._clock.seconds()
        record = await self._run(
            lambda cur: self._select_row(cur, kind, uuid, now, hide_gone=True), write=False)
        if record is None:
            raise NotFound(f"{kind.name} {uuid} not found")
        return record  # type: ignore[no-any-return]

    async def update_object(self, kind: Kind, uuid: str, changes: Mapping[str, Any], *,
                            actor_uuid: str | None = None,
                            ensure_unique_name: bool = False) -> dict[str, Any]:
        """Change some attributes; returns the updated record.

        Read-only attributes in ``changes`` are ignored; a different uuid is
        a QueryError. A change that makes the name clash is a
        :class:`NameConflict` unless ``ensure_unique_name`` (then renamed).
        """
        sets: dict[str, Any] = {}
        for key, value in changes.items():
            attr = kind.attr(key)
            if key == "uuid":
                if value != uuid:
                    raise QueryError("uuid cannot be changed")
                continue
            if attr.readonly or not attr.stored:
                continue
            sets[key] = _coerce(kind, attr, value)
        now = self._clock.seconds()
        if kind.attr("modified_at").stored:
            sets["modified_at"] = now
        if kind.attr("modified_by_user_uuid").stored:
            sets["modified_by_user_uuid"] = actor_uuid
        name_related = {"name", "owner_uuid", "trash_at", "group_class"} & set(sets)

        def update(cur: Any) -> dict[str, Any] | None:
            old = self._raw_row(cur, kind, uuid)
            if old is None:
                return None
            if name_related and kind.unique_name is not None:
                merged = {**old, **sets}
                self._lock_names(cur, kind, merged["owner_uuid"])
                if not self._check_name(cur, kind, merged, now):
                    if not ensure_unique_name:
                        raise NameConflict(_name_taken(kind, merged))
                    sets["name"] = merged["name"] = \
                        f"{merged['name'][:UNIQUE_NAME_LIMIT]} ({uuid[-15:]})"
                    if not self._check_name(cur, kind, merged, now):
                        raise NameConflict(_name_taken(kind, merged))
            if sets:
                assignments = ", ".join(f"{k} = ?" for k in sets)
                cur.execute(f"UPDATE {kind.table} SET {assignments} WHERE uuid = ?",
                            [*sets.values(), uuid])
            return self._select_row(cur, kind, uuid, now)

        record = await self._run(update, write=True)
        if record is None:
            raise NotFound(f"{kind.name} {uuid} not found")
        return record  # type: ignore[no-any-return]

    def _raw_row(self, cur: Any, kind: Kind, uuid: str) -> dict[str, Any] | None:
        names = [a.name for a in kind.attrs if a.stored]
        row = cur.one(f"SELECT {', '.join(names)} FROM {kind.table} WHERE uuid = ?", (uuid,))
        return None if row is None else dict(zip(names, row))

    async def delete_object(self, kind: Kind, uuid: str) -> dict[str, Any]:
        """Remove the row for good; returns it as it was. NotFound if there is none."""
        now = self._clock.seconds()

        def delete(cur: Any) -> dict[str, Any] | None:
            record = self._select_row(cur, kind, uuid, now)
            if record is not None:
                cur.execute(f"DELETE FROM {kind.table} WHERE uuid = ?", (uuid,))
            return record

        record = await self._run(delete, write=True)
        if record is None:
            raise NotFound(f"{kind.name} {uuid} not found")
        return record  # type: ignore[no-any-return]

    def _visibility(self, kind: Kind, q: _SQL, query_trash: bool,
                    readable: frozenset[str] | None) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if kind.trashable:
            # Past delete_at: gone for good, include_trash or not.
            clauses.append("(delete_at IS NULL OR delete_at > ?)")
            params.append(q.now)
            if not query_trash:
                clauses.append("(trash_at IS NULL OR trash_at > ?)")
                params.append(q.now)
        if q.dead and kind.in_projects:
            hidden = trash.split(q.dead, query_trash)
            if hidden:
                sql, p = q.under(hidden)
                clauses.append(f"NOT {sql}")
                params.extend(p)
        if readable is not None:
            uuids = sorted(readable)
            if not uuids:
                clauses.append("1 = 0")
            else:
                cols = ["uuid", kind.attr("owner_uuid").column or "owner_uuid"]
                if kind.has("tail_uuid"):
                    cols.append("tail_uuid")
                ors = [q.in_list(c, [], uuids) for c in cols]
                clauses.append("(" + " OR ".join(sql for sql, _ in ors) + ")")
                params.extend(x for _, p in ors for x in p)
        return clauses, params

    async def list_objects(self, kind: Kind, query: ListQuery, *,
                           readable: frozenset[str] | None
                           ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of objects matching ``query`` and the total count (None if count='none').

        ``readable`` None means no permission filter; otherwise a row shows
        iff its uuid or owner_uuid (links: or tail_uuid) is in it.
        """
        now = self._clock.seconds()
        engine = self._dialect.name
        # Checked here, on the reactor thread, so a bad filter fails before any SQL runs.
        _SQL(kind, engine, now).where(query.filters)
        _SQL(kind, engine, now).order(query.order)
        wanted = [a for a in kind.attrs if query.select is None or a.name in query.select]
        fetch = [a for a in wanted if a.name != "is_trashed"]
        if kind.trashable and len(fetch) < len(wanted):
            # is_trashed is worked out from these (its own trash_at, its owner's).
            fetch += [kind.attr(n) for n in ("uuid", "owner_uuid", "trash_at")
                      if all(a.name != n for a in fetch)]
        dead: dict[str, bool] = {}

        def run(cur: Any) -> tuple[list[tuple[Any, ...]], int | None]:
            dead.update(trash.dead_groups(cur, now) if kind.in_projects else {})
            q = _SQL(kind, engine, now, dead)
            clauses, params = q.where(query.filters)
            vis, vparams = self._visibility(kind, q, query.include_trash, readable)
            clauses, params = clauses + vis, params + vparams
            where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
            cols, cparams = q.columns(fetch)
            order, oparams = q.order(query.order)
            total = None
            if query.count == "exact":
                total = int(cur.one(f"SELECT COUNT(*) FROM {kind.table}{where}", params)[0])
            rows: list[tuple[Any, ...]] = []
            if query.limit > 0:
                rows = cur.all(
                    f"SELECT {cols} FROM {kind.table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                    [*cparams, *params, *oparams, query.limit, query.offset],
                )
            return rows, total

        rows, total = await self._run(run, write=False)
        items = []
        for row in rows:
            record = self._record(kind, fetch, row, now, dead=dead)
            if query.select is not None:
                record = {k: v for k, v in record.items() if k in query.select}
            items.append(record)
        return items, total

    async def find_collections_by_pdh(self, pdh: str, *, readable: frozenset[str] | None
                                      ) -> list[dict[str, Any]]:
        """Live collections with this portable data hash that ``readable`` allows, newest first."""
        query = ListQuery(
            filters=(Filter("portable_data_hash", "=", pdh),),
            order=(("modified_at", True), ("uuid", False)),
            limit=1000,
            count="none",
        )
        items, _ = await self.list_objects(COLLECTIONS, query, readable=readable)
        return items

    async def permission_levels(self, user_uuid: str, *, also: Mapping[str, int] = {},
                                include_trash: bool = False) -> dict[str, int]:
        """Every uuid ``user_uuid`` reaches, with its level (1 read, 2 write, 3 manage).

        The user itself is 3, ``also`` seeds more principals (the All users
        or anonymous group). From the user and every reached group the walk
        follows ownership (a group owned by X gets X's level) and permission
        links (head gets min(tail's level, link level)) to a fixpoint; the
        level of a uuid is the best over all paths.

        A trashed project (its own trash_at or one above it passed) is not
        reached, so it grants nothing through ownership, unless
        ``include_trash`` (to untrash it or read the trash); one past its
        delete_at is never reached.
        """
        now = self._clock.seconds()
        levels: dict[str, int] = {user_uuid: 3}
        for k, v in also.items():
            levels[k] = max(levels.get(k, 0), int(v))
        group_infix = f"-{ids.INFIX['groups']}-"
        link_names = list(LEVELS)

        def walk(cur: Any) -> dict[str, int]:
            blocked = set(trash.split(trash.dead_groups(cur, now), include_trash))
            frontier = set(levels)
            while frontier:
                sources = sorted(u for u in frontier
                                 if u == user_uuid or u in also or group_infix in u)
                changed: set[str] = set()

                def raise_to(target: str, level: int) -> None:
                    if target in blocked:
                        return
                    if level > levels.get(target, 0):
                        levels[target] = level
                        changed.add(target)

                for chunk in _chunks(sources):
                    marks = ", ".join("?" for _ in chunk)
                    for uuid, owner in cur.all(
                        f"SELECT uuid, owner_uuid FROM groups WHERE owner_uuid IN ({marks})",
                        chunk,
                    ):
                        raise_to(uuid, levels[owner])
                    for tail, head, name in cur.all(
                        "SELECT tail_uuid, head_uuid, name FROM links"
                        f" WHERE link_class = ? AND tail_uuid IN ({marks})"
                        f" AND name IN ({', '.join('?' for _ in link_names)})",
                        ["permission", *chunk, *link_names],
                    ):
                        if head:
                            raise_to(head, min(levels[tail], LEVELS[name]))
                frontier = changed
            return levels

        return await self._run(walk, write=False)  # type: ignore[no-any-return]

    # -- trash ------------------------------------------------------------------

    async def purge_deleted(self) -> dict[str, int]:
        """Delete for good every record past its delete_at and what such projects hold.

        Reads already hide these rows (see :meth:`get_object`); this frees
        the space and drops the links to them. Rows deleted per table.
        """
        now = self._clock.seconds()
        postgresql = self._dialect.name == "postgresql"
        return await self._run(  # type: ignore[no-any-return]
            lambda cur: trash.purge(cur, now, postgresql=postgresql), write=True)

    async def scan_manifests(self, after: str, limit: int,
                             digest: Callable[[str, str], Any], *,
                             modified_since: float | None = None) -> list[tuple[str, Any]]:
        """``(uuid, digest(uuid, manifest_text))`` of up to ``limit`` collection rows
        whose uuid sorts after ``after`` (and, with ``modified_since``, that were
        created or modified at or after it), in uuid order, for the block balancer.

        Every row counts, whatever its trash_at/delete_at and whichever
        version it is: a trashed collection can be untrashed, and until the
        sweeper removed the row its blocks must stay. ``digest`` runs on the
        worker thread, so a large manifest is reduced there (to the set of
        its block hashes) and never crosses to the reactor thread; one
        short transaction per batch keeps SQLite's single connection free
        for API requests in between. Paging by uuid (the primary key) is
        stable across batches, but the batches are not one snapshot: a row
        saved during the scan behind the cursor is missed, which is what
        ``modified_since`` (the balancer's catch-up read) is for.
        """
        def run(cur: Any) -> list[tuple[str, Any]]:
            if modified_since is None:
                rows = cur.all("SELECT uuid, manifest_text FROM collections WHERE uuid > ?"
                               " ORDER BY uuid LIMIT ?", (after, int(limit)))
            else:
                rows = cur.all("SELECT uuid, manifest_text FROM collections WHERE uuid > ?"
                               " AND modified_at >= ? ORDER BY uuid LIMIT ?",
                               (after, float(modified_since), int(limit)))
            return [(str(u), digest(str(u), str(m))) for u, m in rows]

        return await self._run(run, write=False)  # type: ignore[no-any-return]

    async def descendant_projects(self, uuid: str) -> list[str]:
        """Every project below the user or group ``uuid``, at any depth (trashed ones too:
        callers list through :meth:`list_objects`, which hides those)."""
        return await self._run(  # type: ignore[no-any-return]
            lambda cur: trash.descendant_projects(cur, uuid), write=False)

    async def project_uuids(self, among: Iterable[str] | None = None) -> frozenset[str]:
        """Which of ``among`` (None: all groups) are projects (group_class 'project')."""
        engine = self._dialect.name
        wanted = None if among is None else sorted(
            u for u in among if f"-{ids.INFIX['groups']}-" in u)

        def run(cur: Any) -> frozenset[str]:
            sql, params = "SELECT uuid FROM groups WHERE group_class = ?", ["project"]
            if wanted is not None:
                if not wanted:
                    return frozenset()
                inside, p = _SQL(GROUPS, engine, 0.0).in_list("uuid", [], wanted)
                sql, params = f"{sql} AND {inside}", params + p
            return frozenset(str(r[0]) for r in cur.all(sql, params))

        return await self._run(run, write=False)  # type: ignore[no-any-return]


def _name_taken(kind: Kind, row: Mapping[str, Any]) -> str:
    what = "project" if kind.name == "groups" else kind.name[:-1]
    return (f"Name has already been taken: a {what} named {row['name']!r}"
            f" already exists in {row['owner_uuid']}")
