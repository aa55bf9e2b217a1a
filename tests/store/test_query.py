# -*- test-case-name: tests.store.test_query -*-
"""Tests for :mod:`arvnode.store.query` and the time helpers of :mod:`arvnode.store.kinds`.

These need no database: they check what a client's list parameters turn
into, and that every mistake becomes a QueryError (a 422) naming it.
"""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.store import KINDS, QueryError, from_api_time, parse_list_query, to_api_time
from arvnode.store.objects import like_to_glob
from arvnode.store.query import DEFAULT_ORDER, Filter, ListQuery

C = KINDS["collections"]
G = KINDS["groups"]


class TimeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Times print as Arvados does (9 digits, Z) and parse back to the microsecond."""
        self.assertEqual(to_api_time(1_700_000_000.123456), "2023-11-14T22:13:20.123456000Z")
        self.assertEqual(from_api_time("2023-11-14T22:13:20.123456000Z"), 1_700_000_000.123456)
        self.assertIsNone(to_api_time(None))

    def test_forms(self) -> None:
        """Clients send Z, offsets, no fraction, or no zone (UTC)."""
        base = 1_700_000_000.0
        for text in ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20", "2023-11-14 22:13:20",
                     "2023-11-14T23:13:20+01:00", "2023-11-14T21:13:20-0100",
                     "2023-11-14T22:13:20.000000Z"):
            self.assertEqual(from_api_time(text), base, text)
        self.assertEqual(from_api_time("2023-11-14"), base - (22 * 3600 + 13 * 60 + 20))

    @settings(max_examples=300, deadline=None)
    @given(st.integers(min_value=-2_208_988_800 * 10**6, max_value=4_102_444_800 * 10**6))
    def test_text_round_trip(self, micros: int) -> None:
        """Any microsecond time (1900..2100) prints, parses back and prints the same."""
        text = to_api_time(micros / 1e6)
        assert text is not None
        self.assertRegex(text, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}000Z$")
        self.assertEqual(to_api_time(from_api_time(text)), text)
        self.assertAlmostEqual(from_api_time(text), micros / 1e6, delta=1e-6)

    def test_out_of_range(self) -> None:
        """Years outside 1..9999 are refused, so every stored time can be shown."""
        self.assertEqual(to_api_time(from_api_time("0001-01-01T00:00:00Z")),
                         "0001-01-01T00:00:00.000000000Z")
        for bad in ("0000-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"):
            with self.assertRaises(QueryError):
                from_api_time(bad)

    def test_junk(self) -> None:
        """Junk is a QueryError (also a ValueError) quoting it."""
        for bad in ("", "yesterday", "2023-13-01T00:00:00Z", "2023-02-30", "2023-11-14T25:00Z",
                    "2023-11-14T22:13:20+25:00", 12, None):
            with self.assertRaises(QueryError) as e:
                from_api_time(bad)  # type: ignore[arg-type]
            self.assertIsInstance(e.exception, ValueError)


class ParseTests(SynchronousTestCase):
    def parse(self, kind=C, **params):  # type: ignore[no-untyped-def]
        return parse_list_query(kind, params)

    def assertQueryError(self, needle: str, kind=C, **params) -> None:  # type: ignore[no-untyped-def]
        with self.assertRaises(QueryError) as e:
            parse_list_query(kind, params)
        self.assertIn(needle, str(e.exception))

    def test_defaults(self) -> None:
        """No parameters: 100 items, newest modified first, exact count, trash hidden."""
        q = self.parse()
        self.assertEqual(q, ListQuery())
        self.assertEqual(q.order, DEFAULT_ORDER)
        self.assertEqual((q.limit, q.offset, q.count, q.include_trash), (100, 0, "exact", False))

    def test_filters_json_text_and_decoded(self) -> None:
        """Filters arrive as JSON text or already decoded; both give the same query."""
        raw = [["name", "=", "x"], ["owner_uuid", "in", ["a", "b"]]]
        self.assertEqual(self.parse(filters=json.dumps(raw)), self.parse(filters=raw))
        self.assertEqual(
            self.parse(filters=raw).filters,
            (Filter("name", "=", "x"), Filter("owner_uuid", "in", ("a", "b"))),
        )

    def test_every_operator(self) -> None:
        """All Arvados operators parse; operators are case-insensitive."""
        ops = [
            ["name", "=", "a"], ["name", "!=", None], ["file_count", "<", 2],
            ["file_count", "<=", 2], ["file_count", ">", 2.5], ["file_count", ">=", 2],
            ["name", "like", "a%"], ["name", "ILIKE", "a%"], ["name", "not like", "a%"],
            ["name", "not  ilike", "a%"], ["name", "in", ["a"]], ["name", "not in", []],
            ["uuid", "is_a", "arvados#collection"], ["properties", "exists", "k"],
            ["properties.k", "exists", True], ["properties.k", "=", 3],
        ]
        q = self.parse(filters=ops)
        self.assertEqual([f.op for f in q.filters][7:10], ["ilike", "not like", "not ilike"])
        self.assertEqual(q.filters[12], Filter("uuid", "is_a", ("4zz18",)))
        self.assertEqual(q.filters[13], Filter("properties.k", "exists", True))

    def test_time_operands(self) -> None:
        """Time operands are ISO strings, normalised to epoch seconds."""
        q = self.parse(filters=[["created_at", ">=", "2023-11-14T22:13:20Z"]])
        self.assertEqual(q.filters[0].operand, 1_700_000_000.0)
        self.assertQueryError("time", filters=[["created_at", ">", "soon"]])
        self.assertQueryError("time string", filters=[["created_at", ">", 12]])

    def test_is_a_list(self) -> None:
        """is_a takes one kind or a list of kinds, by their Arvados kind names."""
        q = self.parse(kind=KINDS["links"],
                       filters=[["head_uuid", "is_a", ["arvados#group", "arvados#user"]]])
        self.assertEqual(q.filters[0].operand, ("j7d0g", "tpzed"))
        self.assertQueryError("unknown kind 'arvados#nope'",
                              filters=[["uuid", "is_a", "arvados#nope"]])

    def test_unknown_attribute(self) -> None:
        self.assertQueryError("unknown attribute 'colour' for collections",
                              filters=[["colour", "=", "red"]])
        self.assertQueryError("unknown attribute 'any'", filters=[["any", "=", "x"]])

    def test_unknown_operator(self) -> None:
        self.assertQueryError("unknown filter operator '=='", filters=[["name", "==", "x"]])
        self.assertQueryError("'exists' is not supported", filters=[["name", "exists", True]])
        self.assertQueryError("'<' is not supported", filters=[["preserve_version", "<", True]])
        self.assertQueryError("only for text", filters=[["file_count", "like", "1%"]])

    def test_wrong_operand_type(self) -> None:
        cases = [
            (["name", "=", 3], "must be a string"),
            (["file_count", "=", "3"], "must be a number"),
            (["file_count", "=", True], "must be a number"),
            (["preserve_version", "=", "true"], "true or false"),
            (["name", "in", "abc"], "must be an array"),
            (["name", "in", [1]], "must be a string"),
            (["properties.k", "=", {"a": 1}], "string, number, boolean or null"),
            (["properties.k", "<", None], "string or a number"),
            (["name", "like", "abc\\"], "escape character"),
        ]
        for f, needle in cases:
            self.assertQueryError(needle, filters=[f])

    def test_malformed_filters(self) -> None:
        self.assertQueryError("full-text", filters=["foo"])
        self.assertQueryError("full-text", filters='"foo"')
        self.assertQueryError("not valid JSON", filters="[[")
        self.assertQueryError("expected [attribute, operator, operand]", filters=[["name", "="]])
        self.assertQueryError("must be an array", filters={"name": "x"})

    def test_bare_single_filter(self) -> None:
        """A lone [attr, op, operand] is taken as one filter, as Arvados does."""
        self.assertEqual(self.parse(filters=["name", "=", "x"]).filters,
                         (Filter("name", "=", "x"),))

    def test_where(self) -> None:
        """where {attr: value} becomes '=' filters, lists become 'in'."""
        q = self.parse(where='{"name": "x", "owner_uuid": ["a"]}')
        self.assertEqual(q.filters, (Filter("name", "=", "x"), Filter("owner_uuid", "in", ("a",))))
        self.assertQueryError("unknown attribute 'nope'", where={"nope": 1})
        self.assertQueryError("where must be an object", where="[1]")

    def test_property_keys(self) -> None:
        self.assertQueryError("invalid property key", filters=[['properties.a"b', "=", "x"]])
        self.assertQueryError("invalid property key", filters=[["properties.", "=", "x"]])
        self.assertQueryError("unknown attribute 'name.x'", filters=[["name.x", "=", "x"]])

    def test_order_forms(self) -> None:
        """Order as a plain string, comma list, table-qualified names or a JSON array."""
        expect = (("name", True), ("uuid", False))
        for order in ("name desc", "collections.name desc", '["name desc"]', ["name desc"],
                      "name desc, uuid", "name DESC,uuid asc"):
            self.assertEqual(self.parse(order=order).order, expect, order)
        self.assertEqual(self.parse(order="uuid desc, name").order,
                         (("uuid", True), ("name", False)))
        self.assertEqual(self.parse(order="").order, DEFAULT_ORDER)

    def test_order_errors(self) -> None:
        self.assertQueryError("unknown attribute 'nope'", order="nope")
        self.assertQueryError("invalid order direction 'up'", order="name up")
        self.assertQueryError("cannot order by attribute 'properties'", order="properties")
        self.assertQueryError("order must be", order={"name": "desc"})

    def test_limit_offset(self) -> None:
        q = self.parse(limit="0", offset="5")
        self.assertEqual((q.limit, q.offset), (0, 5))
        self.assertEqual(parse_list_query(C, {"limit": 5000}, max_limit=1000).limit, 1000)
        self.assertQueryError("limit must not be negative", limit=-1)
        self.assertQueryError("limit must be an integer", limit="ten")
        self.assertQueryError("offset must be an integer", offset=True)

    def test_select(self) -> None:
        """select keeps the named attributes (uuid always); unknown names are refused."""
        self.assertEqual(self.parse(select='["name"]').select, ("uuid", "name"))
        self.assertEqual(self.parse(select=["uuid", "name", "name"]).select, ("uuid", "name"))
        self.assertQueryError("unknown attribute 'nope'", select='["nope"]')
        self.assertQueryError("invalid select entry", select=[1])

    def test_count_and_flags(self) -> None:
        q = self.parse(count="none", include_trash="true", include_old_versions=True,
                       alt="json", distinct="false")
        self.assertEqual((q.count, q.include_trash, q.include_old_versions), ("none", True, True))
        self.assertQueryError("count must be", count="estimated")
        self.assertQueryError("include_trash must be true or false", include_trash="maybe")


class LikeToGlobTests(SynchronousTestCase):
    def test_translation(self) -> None:
        """LIKE wildcards become GLOB ones; GLOB's own metacharacters and escapes are literal."""
        self.assertEqual(like_to_glob("a%b_c"), "a*b?c")
        self.assertEqual(like_to_glob("a*b?[c]"), "a[*]b[?][[]c]")
        self.assertEqual(like_to_glob(r"100\%\_\\"), "100%_\\")


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["name", "uuid", "properties.k", "properties", "created_at", "=", "in",
                     "is_a", "like", "exists", "arvados#group", "2023-11-14T22:13:20Z",
                     "file_count", "not in", "desc", "name desc"]),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
param_value = st.one_of(json_values, json_values.map(lambda v: json.dumps(v)), st.text())


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(
        st.sampled_from(["filters", "where", "order", "limit", "offset", "select", "count",
                         "include_trash", "include_old_versions", "alt"]),
        param_value, max_size=5,
    ), st.sampled_from(sorted(KINDS)))
    def test_only_query_errors(self, params: dict, kind_name: str) -> None:  # type: ignore[type-arg]
        """Whatever a client sends, parsing either succeeds or raises QueryError."""
        try:
            q = parse_list_query(KINDS[kind_name], params)
        except QueryError:
            return
        self.assertIsInstance(q, ListQuery)
        for f in q.filters:
            self.assertIsInstance(f, Filter)
