# -*- test-case-name: tests.api.test_units -*-
"""Pure helpers of the API layer: path decoding, token scopes, advertised
URLs, the node's keep service record, attribute extraction."""
from __future__ import annotations

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.api import params as P
from arvnode.api.resources.keep_services import own_proxy_record
from arvnode.api.service import advertised_url, scope_allows
from arvnode.config import URL
from arvnode.http.resource import HTTPError


@frozen
class _Service:
    external_url: URL | None


@frozen
class _Listener:
    scheme: str
    host: str
    port: int


class PathTests(SynchronousTestCase):
    def test_pdh_segment_is_unquoted(self):
        """A percent-encoded PDH comes back with its '+'; an encoded '/' stays
        inside its segment."""
        self.assertEqual(P.path_segments(b"/arvados/v1/collections/abc%2B53"),
                         ["arvados", "v1", "collections", "abc+53"])
        self.assertEqual(P.path_segments(b"/a/..%2Fb"), ["a", "../b"])

    @given(st.text(min_size=1).filter(lambda s: "/" not in s))
    def test_any_segment_round_trips(self, text):
        """Whatever a client percent-encodes in one segment is what the router sees."""
        from urllib.parse import quote

        raw = ("/x/" + quote(text, safe="")).encode("ascii")
        self.assertEqual(P.path_segments(raw), ["x", text])


class ScopeTests(SynchronousTestCase):
    def test_scopes(self):
        """'all' allows everything; 'GET /' every GET (and HEAD); a path with a
        trailing '/' is a prefix, without one an exact path."""
        self.assertTrue(scope_allows(("all",), "DELETE", "/arvados/v1/x"))
        self.assertTrue(scope_allows(("GET /",), "HEAD", "/arvados/v1/collections"))
        self.assertFalse(scope_allows(("GET /",), "POST", "/arvados/v1/collections"))
        scopes = ("GET /arvados/v1/collections/", "GET /arvados/v1/users/current")
        self.assertTrue(scope_allows(scopes, "GET", "/arvados/v1/collections/zzzzz-4zz18-1"))
        self.assertTrue(scope_allows(scopes, "GET", "/arvados/v1/users/current"))
        self.assertFalse(scope_allows(scopes, "GET", "/arvados/v1/users/current/x"))
        self.assertFalse(scope_allows((), "GET", "/"))


class AdvertisedUrlTests(SynchronousTestCase):
    def test_configured_port_wins_and_port_zero_uses_bound_port(self):
        """ExternalURL as configured (with a trailing slash); port 0 means the
        port the listener got."""
        listener = _Listener("http", "127.0.0.1", 40001)
        self.assertEqual(advertised_url(_Service(URL.parse("https://keep.example:443")), listener),
                         "https://keep.example/")
        self.assertEqual(
            advertised_url(_Service(URL.parse("http://127.0.0.1:0/", allow_port_zero=True)),
                           listener),
            "http://127.0.0.1:40001/")
        self.assertEqual(advertised_url(_Service(None), _Listener("https", "0.0.0.0", 9)),
                         "https://127.0.0.1:9/")


class KeepServiceRecordTests(SynchronousTestCase):
    def test_record_shape_and_stable_uuid(self):
        """27-character uuid that depends only on host and port; integer port;
        ssl flag from the scheme."""
        a = own_proxy_record("zzzzz", "https://keep.example:25107/")
        self.assertEqual(len(a["uuid"]), 27)
        self.assertRegex(a["uuid"], r"^zzzzz-bi6l4-[a-z0-9]{15}$")
        self.assertEqual((a["service_host"], a["service_port"], a["service_ssl_flag"],
                          a["service_type"]), ("keep.example", 25107, True, "proxy"))
        self.assertEqual(a["uuid"], own_proxy_record("zzzzz", "https://keep.example:25107")["uuid"])
        self.assertNotEqual(a["uuid"], own_proxy_record("zzzzz", "https://keep.example:1/")["uuid"])
        self.assertEqual(own_proxy_record("zzzzz", "http://h/")["service_port"], 80)


class AttributeTests(SynchronousTestCase):
    def test_flat_wrapped_and_form(self):
        """Wrapped attributes win; a flat body loses its request options; form
        JSON text is decoded; a non-object is refused."""
        self.assertEqual(P.attributes({"collection": {"name": "a"}}, None, "collection"),
                         {"name": "a"})
        self.assertEqual(P.attributes({}, {"name": "b", "ensure_unique_name": True,
                                           "select": ["uuid"]}, "collection"), {"name": "b"})
        self.assertEqual(P.attributes({"collection": '{"name": "c"}'}, None, "collection"),
                         {"name": "c"})
        with self.assertRaises(HTTPError) as e:
            P.attributes({"collection": "[1]"}, None, "collection")
        self.assertEqual(e.exception.status, 422)
        with self.assertRaises(HTTPError) as e:
            P.attributes({"collection": "{"}, None, "collection")
        self.assertEqual(e.exception.status, 400)

    def test_booleans(self):
        """true/false/1/0/yes/no and JSON booleans; anything else is a 422."""
        for value, expected in (("true", True), ("0", False), (True, True), ("", False),
                                ("no", False), (1, True)):
            self.assertIs(P.boolean({"x": value}, "x"), expected)
        self.assertIs(P.boolean({}, "x", True), True)
        with self.assertRaises(HTTPError):
            P.boolean({"x": "maybe"}, "x")
