# -*- test-case-name: tests.test_config -*-
"""Tests for :mod:`arvnode.config` and ``arvnode config check``."""
from __future__ import annotations

import io
import operator
import os
import sys
import textwrap
from typing import Any

import attrs
import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from arvnode import cli
from arvnode.config import (
    URL,
    ConfigError,
    StorageClass,
    config_from_string,
    format_duration,
    load_config,
    mask_secrets,
    parse_duration,
    parse_size,
)

ROOT = "r00tt0kenr00tt0kenr00tt0kenr00tt0ken12"
KEY = "s1gn1ngkeys1gn1ngkeys1gn1ngkeys1gn1ng12"
FULL = FilePath(__file__).sibling("data").child("arvados-full.yml")


STARTABLE = """\
Services:
  Controller: {InternalURLs: {"http://127.0.0.1:0/": {}}}
  Keepproxy: {InternalURLs: {"http://127.0.0.1:0/": {}}}
"""


def cfg(body: str = "", cluster_id: str = "zzzzz", secrets: bool = True,
        startable: bool = False) -> str:
    """A config text for one cluster: the two required secrets plus ``body``
    (YAML indented as if directly under ``Clusters.<id>``); ``startable``
    adds the listeners a node needs (see startup_problems)."""
    if startable:
        body = STARTABLE + textwrap.dedent(body).strip("\n")
    lines = ["Clusters:", f"  {cluster_id}:"]
    if secrets:
        lines += [f"    SystemRootToken: {ROOT}"]
        if "Collections:" not in body:
            lines += ["    Collections:", f"      BlobSigningKey: {KEY}"]
    lines += ["    " + line for line in textwrap.dedent(body).strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


class ConfigTestMixin:
    """Helpers shared by the config test classes."""

    def problems(self, text: str, cluster: str | None = None) -> list[str]:
        """The problems reported for ``text`` (it must be refused)."""
        e = self.assertRaises(ConfigError, config_from_string, text, cluster)  # type: ignore[attr-defined]
        self.assertEqual(str(e), "\n".join(e.problems))  # type: ignore[attr-defined]
        return e.problems

    def problem_for(self, text: str, path: str) -> str:
        """The single problem line naming ``path``."""
        found = [p for p in self.problems(text) if p.startswith(path + ":")]
        self.assertEqual(len(found), 1, f"one problem for {path}: {found}")  # type: ignore[attr-defined]
        return found[0]


class ParseDurationTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """Go duration syntax is read as seconds."""
        for text, seconds in [
            ("5m", 300.0), ("336h", 1209600.0), ("1h30m", 5400.0), ("300ms", 0.3),
            ("1.5h", 5400.0), ("0", 0.0), ("0s", 0.0), (".5s", 0.5), ("2us", 2e-6),
            ("2\u00b5s", 2e-6), ("10ns", 1e-8), ("1h0m0.25s", 3600.25), ("-5m", -300.0),
            ("+5m", 300.0), ("1.h", 3600.0),
        ]:
            self.assertAlmostEqual(parse_duration(text), seconds, places=12, msg=text)

    def test_zero_number(self) -> None:
        """The number 0 needs no unit."""
        self.assertEqual(parse_duration(0), 0.0)

    def test_bare_number(self) -> None:
        """A number other than 0, as a number or a string, is refused as a
        duration without unit."""
        for value in (300, "300", 1.5, "2.5"):
            e = self.assertRaises(ValueError, parse_duration, value)
            self.assertEqual(str(e), "duration without unit")

    def test_malformed(self) -> None:
        """Anything else that is not Go duration syntax is refused."""
        for value in ("", "5 m", "5x", "h", "1h30", "abc", "5M", "1hm", ".", True, None, [], {}):
            self.assertRaises(ValueError, parse_duration, value)

    def test_too_large(self) -> None:
        """Durations beyond Go's int64 nanoseconds are refused."""
        self.assertRaises(ValueError, parse_duration, "3000000h")

    @given(
        st.integers(0, 100_000), st.integers(0, 59), st.integers(0, 59),
        st.integers(0, 999), st.integers(0, 999), st.booleans(),
    )
    def test_components_round_trip(
        self, h: int, m: int, s: int, ms: int, us: int, skip_zero: bool
    ) -> None:
        """A duration written as Go components parses to their sum."""
        parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms"), (us, "us")]
        text = "".join(f"{n}{u}" for n, u in parts if n or not skip_zero) or "0"
        expected = h * 3600 + m * 60 + s + ms / 1e3 + us / 1e6
        self.assertLessEqual(abs(parse_duration(text) - expected), 1e-12 * max(1, expected))

    @given(st.integers(-(10**15), 10**15))
    def test_format_round_trip(self, ns: int) -> None:
        """format_duration writes what parse_duration reads back unchanged."""
        seconds = ns / 1e9
        text = format_duration(seconds)
        self.assertLessEqual(abs(parse_duration(text) - seconds), 1e-12 * max(1, abs(seconds)))
        self.assertEqual(format_duration(parse_duration(text)), text)

    def test_format(self) -> None:
        """format_duration spells durations as Go's Duration.String does."""
        for seconds, text in [
            (1209600.0, "336h0m0s"), (300.0, "5m0s"), (1.5, "1.5s"), (0.3, "300ms"),
            (0.0, "0s"), (2e-6, "2us"), (5400.25, "1h30m0.25s"), (-60.0, "-1m0s"),
        ]:
            self.assertEqual(format_duration(seconds), text)


class ParseSizeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """Sizes take SI (1000) and IEC (1024) suffixes or plain bytes."""
        for value, size in [
            ("64MiB", 64 * 2**20), ("4MB", 4_000_000), ("1048576", 1048576), (1048576, 1048576),
            ("2GiB", 2 * 2**30), ("2 GiB", 2 * 2**30), ("1.5KiB", 1536), ("10k", 10_000),
            ("1Ti", 2**40), ("0", 0), ("7B", 7), (4096.0, 4096),
        ]:
            self.assertEqual(parse_size(value), size, value)

    def test_malformed(self) -> None:
        """Non-sizes, negative and fractional byte counts are refused."""
        for value in ("", "MiB", "64XB", "-1", -1, "0.5B", 1.5, True, None, [], "1 2"):
            self.assertRaises(ValueError, parse_size, value)

    @given(st.integers(0, 2**40), st.sampled_from(["", "B", "KiB", "MiB", "KB", "GB"]))
    def test_round_trip(self, n: int, unit: str) -> None:
        """An integer with any unit is that many units."""
        factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 2**20, "KB": 1000, "GB": 10**9}[unit]
        self.assertEqual(parse_size(f"{n}{unit}"), n * factor)


class URLTests(SynchronousTestCase):
    def test_default_ports(self) -> None:
        """The port defaults to 443 for https and 80 for http."""
        self.assertEqual(URL.parse("https://ctrl.example"), URL("https", "ctrl.example", 443, ""))
        self.assertEqual(URL.parse("http://ctrl.example/x"), URL("http", "ctrl.example", 80, "/x"))

    def test_str(self) -> None:
        """str() gives the URL back, with the port only when not the default."""
        for text in ("https://0.0.0.0:8443", "http://ks:25107/", "https://a.example/p", "http://[::1]:80"):
            url = URL.parse(text)
            self.assertEqual(URL.parse(str(url)), url)
        self.assertEqual(str(URL.parse("https://A.example:443/")), "https://a.example/")
        self.assertEqual(str(URL.parse("http://[::1]:8080")), "http://[::1]:8080")

    def test_invalid(self) -> None:
        """URLs without scheme or host, with bad ports or extras are refused."""
        for text in (
            "https//foo", "foo:8443", "https://", "https://:8443", "ftp://x", "https://x:70000",
            "https://x:0", "https://x:port", "https://u@x", "https://x/?q=1", "https://x y",
            "https://[::1", "",
        ):
            self.assertRaises(ValueError, URL.parse, text)

    def test_port_zero_when_allowed(self) -> None:
        """Port 0 (bind any free port) is accepted only when asked for."""
        self.assertEqual(URL.parse("http://127.0.0.1:0", allow_port_zero=True).port, 0)


class LoadTests(ConfigTestMixin, SynchronousTestCase):
    def test_minimal_defaults(self) -> None:
        """A config with only the required secrets gets Arvados' defaults."""
        c = config_from_string(cfg())
        self.assertEqual(c.cluster_id, "zzzzz")
        self.assertEqual(c.system_root_token, ROOT)
        self.assertEqual(c.management_token, "")
        self.assertIsNone(c.services.controller.external_url)
        self.assertEqual(c.services.keepproxy.internal_urls, ())
        self.assertTrue(c.collections.blob_signing)
        self.assertEqual(c.collections.blob_signing_key, KEY)
        self.assertEqual(c.collections.blob_signing_ttl, 336 * 3600)
        self.assertEqual(c.collections.default_replication, 2)
        p = c.collections.keepproxy_permission
        self.assertTrue(p.user_download and p.user_upload and p.admin_download and p.admin_upload)
        self.assertEqual((c.tls.certificate, c.tls.key, c.tls.insecure), ("", "", False))
        self.assertEqual(c.login.remote_token_refresh, 300)
        self.assertEqual((c.login.login_cluster, c.login.trusted_clients, c.login.token_lifetime), ("", (), 0))
        self.assertEqual(dict(c.remote_clusters), {})
        a = c.api
        self.assertEqual(
            (a.max_concurrent_requests, a.max_queued_requests, a.request_timeout, a.max_request_size,
             a.max_items_per_response, a.max_request_amplification),
            (64, 128, 300.0, 134217728, 1000, 4),
        )
        self.assertEqual(dict(c.postgresql.connection), {})
        self.assertEqual(c.users.anonymous_user_token, "")
        self.assertFalse(c.users.auto_setup_new_users or c.users.new_users_are_active)
        self.assertEqual(dict(c.volumes), {})
        self.assertEqual(dict(c.storage_classes), {"default": StorageClass(default=True, priority=0)})
        self.assertEqual(c.default_storage_classes, ("default",))
        n = c.arvnode
        self.assertEqual((n.shutdown_grace_period, n.data_directory, n.token_cache_ttl), (30.0, "", 2.0))
        self.assertEqual(
            (n.keepproxy.upload_window, n.keepproxy.max_inflight_bytes, n.keepproxy.idle_timeout),
            (8 * 2**20, 256 * 2**20, 60.0),
        )
        self.assertEqual((c.unknown_keys, c.warnings), ((), ()))

    def test_frozen(self) -> None:
        """The config and its mappings cannot be changed after loading."""
        c = config_from_string(cfg("RemoteClusters: {aaaaa: {Host: a.example}}"))
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, c, "cluster_id", "yyyyy")
        self.assertRaises(TypeError, operator.setitem, c.remote_clusters, "bbbbb", None)

    def test_values(self) -> None:
        """Every section arvnode uses is read from Arvados' key names."""
        c = config_from_string(cfg(f"""
            ManagementToken: mgmt0123456789mgmt0123456789mgmt01
            Services:
              Controller:
                ExternalURL: https://zzzzz.example.org
                InternalURLs:
                  "https://10.0.0.1:8443": {{ListenURL: "https://0.0.0.0:8443"}}
                  "http://localhost:8003": {{}}
              Keepproxy:
                ExternalURL: https://keep.zzzzz.example.org:25107
                InternalURLs: {{"http://0.0.0.0:25107": {{}}}}
              Keepstore:
                InternalURLs:
                  "http://ks0:25107": {{}}
                  "http://ks1:25107": {{Rendezvous: "abcde12345"}}
            Collections:
              BlobSigning: false
              BlobSigningKey: {KEY}
              BlobSigningTTL: 24h
              DefaultReplication: 3
              KeepproxyPermission:
                User: {{Download: true, Upload: false}}
                Admin: {{Upload: false}}
            TLS:
              Certificate: file:///etc/arvados/cert.pem
              Key: /etc/arvados/key.pem
              Insecure: true
            Login:
              RemoteTokenRefresh: 1m30s
              LoginCluster: aaaaa
              TokenLifetime: 12h
              TrustedClients: {{"https://wb.example": {{}}}}
            RemoteClusters:
              aaaaa: {{Host: "a.example:8443", Proxy: true, ActivateUsers: true}}
              bbbbb: {{Host: b.example, Scheme: http, Insecure: true}}
              "*": {{Proxy: false}}
            API:
              MaxConcurrentRequests: 10
              MaxQueuedRequests: 0
              RequestTimeout: 30s
              MaxRequestSize: 64MiB
              MaxItemsPerResponse: 500
              MaxRequestAmplification: 2
            PostgreSQL:
              ConnectionPool: 8
              Connection: {{host: db, port: 5432, dbname: arv, password: "", SAMPLE: ""}}
            Users:
              AnonymousUserToken: anon0123456789anon0123456789anon01
              AutoSetupNewUsers: true
              NewUsersAreActive: true
            ArvNode:
              ShutdownGracePeriod: 5s
              DataDirectory: /var/lib/arvnode
              TokenCacheTTL: 500ms
              Keepproxy: {{UploadWindow: 4MiB, MaxInflightBytes: 1GiB, IdleTimeout: 2m}}
        """))
        ctrl = c.services.controller
        self.assertEqual(str(ctrl.external_url), "https://zzzzz.example.org")
        self.assertEqual([str(u) for u in ctrl.internal_urls],
                         ["https://10.0.0.1:8443", "http://localhost:8003"])
        self.assertEqual(str(ctrl.listen_url(ctrl.internal_urls[0])), "https://0.0.0.0:8443")
        self.assertEqual(ctrl.listen_url(ctrl.internal_urls[1]), ctrl.internal_urls[1])
        self.assertEqual(c.services.keepproxy.external_url, URL("https", "keep.zzzzz.example.org", 25107, ""))
        ks = c.services.keepstore
        self.assertEqual(len(ks.internal_urls), 2)
        self.assertEqual(dict(ks.rendezvous), {URL.parse("http://ks1:25107"): "abcde12345"})
        self.assertEqual(c.management_token, "mgmt0123456789mgmt0123456789mgmt01")
        self.assertFalse(c.collections.blob_signing)
        self.assertEqual((c.collections.blob_signing_ttl, c.collections.default_replication), (86400.0, 3))
        p = c.collections.keepproxy_permission
        self.assertEqual(attrs.astuple(p), (True, False, True, False))
        self.assertEqual(attrs.astuple(c.tls), ("/etc/arvados/cert.pem", "/etc/arvados/key.pem", True))
        self.assertEqual(attrs.astuple(c.login)[:4], (90.0, "aaaaa", ("https://wb.example",), 43200.0))
        self.assertEqual(c.login.trusted_clients, ("https://wb.example",))
        a, b, star = c.remote_clusters["aaaaa"], c.remote_clusters["bbbbb"], c.remote_clusters["*"]
        self.assertEqual(attrs.astuple(a), ("a.example:8443", True, "https", False, True))
        self.assertEqual((b.host, b.proxy, b.scheme, b.insecure), ("b.example", False, "http", True))
        self.assertEqual(star.host, "")
        self.assertEqual(
            attrs.astuple(c.api), (10, 0, 30.0, 64 * 2**20, 500, 2)
        )
        self.assertEqual(dict(c.postgresql.connection), {"host": "db", "port": "5432", "dbname": "arv"})
        self.assertEqual(c.postgresql.connection_pool, 8)
        self.assertEqual(c.users.anonymous_user_token, "anon0123456789anon0123456789anon01")
        self.assertTrue(c.users.auto_setup_new_users and c.users.new_users_are_active)
        n = c.arvnode
        self.assertEqual(attrs.astuple(n), (5.0, "/var/lib/arvnode", 0.5, (4 * 2**20, 2**30, 120.0)))
        self.assertEqual(c.unknown_keys, ())

    def test_anonymous_v2_token_reduced(self) -> None:
        """A v2 AnonymousUserToken is reduced to its secret, as Arvados does."""
        secret = "anon0123456789anon0123456789anon01"
        c = config_from_string(cfg(f"Users: {{AnonymousUserToken: v2/zzzzz-gj3su-anonymouspublic/{secret}}}"))
        self.assertEqual(c.users.anonymous_user_token, secret)

    def test_volumes_and_storage_classes(self) -> None:
        """Volumes keep their driver parameters raw; storage classes are the
        names set to true, "default" when none is."""
        c = config_from_string(cfg("""
            StorageClasses:
              default: {Default: true}
              archive: {Priority: 5}
            Volumes:
              zzzzz-nyw5e-000000000000000:
                Driver: Directory
                DriverParameters: {Root: /srv/keep, Serialize: true}
              zzzzz-nyw5e-000000000000001:
                Driver: S3
                DriverParameters: {Bucket: b, Region: r}
                Replication: 2
                ReadOnly: true
                StorageClasses: {archive: true, default: false}
        """))
        d, s3 = c.volumes["zzzzz-nyw5e-000000000000000"], c.volumes["zzzzz-nyw5e-000000000000001"]
        self.assertEqual((d.driver, dict(d.driver_parameters), d.replication, d.read_only, d.storage_classes),
                         ("Directory", {"Root": "/srv/keep", "Serialize": True}, 1, False, ("default",)))
        self.assertEqual((s3.driver, s3.replication, s3.read_only, s3.storage_classes),
                         ("S3", 2, True, ("archive",)))
        self.assertEqual(c.storage_classes["archive"], StorageClass(default=False, priority=5))
        self.assertEqual(c.default_storage_classes, ("default",))

    def test_sample_entries_skipped(self) -> None:
        """SAMPLE entries, copied from Arvados' documented defaults, are ignored."""
        c = config_from_string(cfg("""
            RemoteClusters: {SAMPLE: {Host: sample.arvadosapi.com}}
            Volumes: {SAMPLE: {Driver: s3}}
            Services: {Keepstore: {InternalURLs: {SAMPLE: {}}}}
        """))
        self.assertEqual((dict(c.remote_clusters), dict(c.volumes)), ({}, {}))
        self.assertEqual(c.services.keepstore.internal_urls, ())
        self.assertEqual(c.unknown_keys, ())

    def test_unknown_keys(self) -> None:
        """Keys arvnode does not use are reported, not refused, at the highest
        unused level; a near miss of a key arvnode reads also gets a warning."""
        c = config_from_string(cfg("""
            Workbench: {SiteName: x, Theme: {Color: red}}
            Collections:
              BlobSigningKey: %s
              TrashSweepInterval: 60s
            Login:
              RemoteTokenRefersh: 5m
              PAM: {Enable: false}
            Services:
              RailsAPI: {InternalURLs: {"http://localhost:8004": {}}}
              Controller: {InternalURLs: {"http://localhost:8003": {Rendezvous: x}}}
        """ % KEY) + "Extra: 1\n")
        self.assertEqual(set(c.unknown_keys), {
            "Clusters.zzzzz.Workbench",
            "Clusters.zzzzz.Collections.TrashSweepInterval",
            "Clusters.zzzzz.Login.RemoteTokenRefersh",
            "Clusters.zzzzz.Login.PAM",
            "Clusters.zzzzz.Services.RailsAPI",
            'Clusters.zzzzz.Services.Controller.InternalURLs."http://localhost:8003".Rendezvous',
            "Extra",
        })
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("Clusters.zzzzz.Login.RemoteTokenRefersh", c.warnings[0])
        self.assertIn("did you mean RemoteTokenRefresh", c.warnings[0])

    def test_short_secret_warns(self) -> None:
        """A secret under 32 characters is accepted with a warning that does
        not show it."""
        c = config_from_string(cfg("ManagementToken: short1"))
        self.assertEqual(c.management_token, "short1")
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("Clusters.zzzzz.ManagementToken", c.warnings[0])
        self.assertNotIn("short1", c.warnings[0])

    def test_one_cluster_picked(self) -> None:
        """With one cluster and no cluster asked for, that cluster is used."""
        self.assertEqual(config_from_string(cfg(cluster_id="abc12")).cluster_id, "abc12")

    def test_several_clusters(self) -> None:
        """With several clusters one must be named; the others are not read."""
        text = cfg(cluster_id="aaaaa") + cfg(cluster_id="bbbbb").replace("Clusters:\n", "")
        [problem] = self.problems(text)
        self.assertIn("Clusters", problem)
        self.assertIn("aaaaa, bbbbb", problem)
        c = config_from_string(text, "bbbbb")
        self.assertEqual((c.cluster_id, c.unknown_keys), ("bbbbb", ()))

    def test_cluster_not_present(self) -> None:
        """Asking for a cluster the file does not define is an error naming both."""
        [problem] = self.problems(cfg(), "yyyyy")
        self.assertIn("Clusters.yyyyy", problem)
        self.assertIn("zzzzz", problem)

    def test_load_config_file(self) -> None:
        """load_config reads the file and names it in messages."""
        path = FilePath(self.mktemp())
        path.setContent(cfg().encode())
        self.assertEqual(load_config(path.path).source, path.path)
        path.setContent(cfg("API: {RequestTimeout: 5}").encode())
        e = self.assertRaises(ConfigError, load_config, path.path)
        self.assertIn(f"({path.path}, line 6)", str(e))

    def test_load_config_missing(self) -> None:
        """A missing or unreadable file is a ConfigError naming the path."""
        path = self.mktemp()
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(e.problems), 1)
        self.assertIn(path, str(e))
        self.assertIn("cannot read", str(e))
        os.mkdir(path)
        self.assertIn(path, str(self.assertRaises(ConfigError, load_config, path)))

    def test_numeric_cluster_id(self) -> None:
        """Keys are taken literally: a cluster id of digits is not a number."""
        self.assertEqual(config_from_string(cfg(cluster_id="01234")).cluster_id, "01234")

    def test_yaml_anchors(self) -> None:
        """YAML anchors and merge keys work, later keys winning."""
        c = config_from_string(cfg("""
            RemoteClusters:
              aaaaa: &base {Host: a.example, Proxy: true}
              bbbbb: {<<: *base, Host: b.example}
        """))
        self.assertEqual((c.remote_clusters["bbbbb"].host, c.remote_clusters["bbbbb"].proxy), ("b.example", True))


class ValidationTests(ConfigTestMixin, SynchronousTestCase):
    def test_tab_indentation(self) -> None:
        """Tab indentation is reported with the key path, the file, the line and the fix."""
        text = cfg("API:\n  RequestTimeout: 5m").replace("  RequestTimeout", "\tRequestTimeout")
        [problem] = self.problems(text)
        self.assertEqual(problem, "Clusters.zzzzz.API.RequestTimeout: got a TAB in the indentation "
                                  "(<string>, line 7); expected spaces only (YAML does not allow tabs there)")
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        e = self.assertRaises(ConfigError, load_config, path.path)
        [problem] = e.problems
        self.assertTrue(problem.startswith("Clusters.zzzzz.API.RequestTimeout: got a TAB"), problem)
        self.assertIn(f"({path.path}, line 7)", problem)

    def test_invalid_yaml(self) -> None:
        """Other YAML syntax errors name the line."""
        [problem] = self.problems(cfg("API: {RequestTimeout: [5m}"))
        self.assertIn("<string>, line 6", problem)
        self.assertIn("not valid YAML", problem)

    def test_string_for_int(self) -> None:
        """A string where an integer is expected names key, value and type."""
        problem = self.problem_for(cfg('API: {MaxConcurrentRequests: "64"}'),
                                   "Clusters.zzzzz.API.MaxConcurrentRequests")
        self.assertIn('the string "64"', problem)
        self.assertIn("expected an integer", problem)
        self.assertIn("line 6", problem)

    def test_list_for_map(self) -> None:
        """A list where a mapping is expected names key and expectation."""
        problem = self.problem_for(cfg("RemoteClusters: [aaaaa, bbbbb]"), "Clusters.zzzzz.RemoteClusters")
        self.assertIn("got a list", problem)
        self.assertIn("expected a mapping", problem)

    def test_other_wrong_types(self) -> None:
        """Wrong types are reported for booleans, floats and sections alike."""
        problems = self.problems(cfg("""
            TLS: {Insecure: "yes please"}
            Collections: {BlobSigningKey: %s, DefaultReplication: 2.5}
            Login: 7
        """ % KEY))
        self.assertEqual(
            sorted(p.split(":")[0] for p in problems),
            ["Clusters.zzzzz.Collections.DefaultReplication", "Clusters.zzzzz.Login",
             "Clusters.zzzzz.TLS.Insecure"],
        )
        self.assertIn("expected true or false", "\n".join(problems))

    def test_duration_without_unit(self) -> None:
        """A bare number for a duration is a problem that says so."""
        problem = self.problem_for(cfg("Login: {RemoteTokenRefresh: 300}"),
                                   "Clusters.zzzzz.Login.RemoteTokenRefresh")
        self.assertIn("300", problem)
        self.assertIn("duration without unit", problem)
        self.assertIn('"5m"', problem)

    def test_negative_or_zero_durations(self) -> None:
        """Durations that must be positive refuse 0 and negatives."""
        problems = self.problems(cfg("""
            Login: {RemoteTokenRefresh: 0s}
            API: {RequestTimeout: -5m}
        """))
        self.assertEqual(len(problems), 2)

    def test_malformed_url(self) -> None:
        """A URL without scheme or host names key, value and form."""
        problem = self.problem_for(cfg('Services: {Controller: {ExternalURL: "https//foo"}}'),
                                   "Clusters.zzzzz.Services.Controller.ExternalURL")
        self.assertIn('"https//foo"', problem)
        self.assertIn("expected a URL", problem)

    def test_port_out_of_range(self) -> None:
        """An InternalURLs key with a port above 65535 is reported by its key path."""
        problem = self.problem_for(
            cfg('Services: {Keepproxy: {InternalURLs: {"https://0.0.0.0:70000": {}}}}'),
            'Clusters.zzzzz.Services.Keepproxy.InternalURLs."https://0.0.0.0:70000"',
        )
        self.assertIn("port 70000 out of range", problem)

    def test_port_zero(self) -> None:
        """Port 0 (any free port, for test nodes) is accepted in service URLs;
        in an ExternalURL it draws a warning."""
        c = config_from_string(cfg("""
            Services:
              Keepproxy:
                ExternalURL: "http://127.0.0.1:0/"
                InternalURLs: {"http://127.0.0.1:0/": {}}
        """))
        self.assertEqual(c.services.keepproxy.internal_urls[0].port, 0)
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("Clusters.zzzzz.Services.Keepproxy.ExternalURL", c.warnings[0])

    def test_listen_url_invalid(self) -> None:
        """A bad ListenURL is reported under its InternalURLs entry."""
        self.problem_for(
            cfg('Services: {Controller: {InternalURLs: {"https://a:1": {ListenURL: "0.0.0.0:1"}}}}'),
            'Clusters.zzzzz.Services.Controller.InternalURLs."https://a:1".ListenURL',
        )

    def test_remote_cluster_without_host(self) -> None:
        """A RemoteClusters entry needs a Host, except the "*" entry."""
        problem = self.problem_for(cfg('RemoteClusters: {aaaaa: {Proxy: true}, "*": {Proxy: true}}'),
                                   "Clusters.zzzzz.RemoteClusters.aaaaa.Host")
        self.assertIn("required", problem)
        self.assertEqual(len(self.problems(cfg('RemoteClusters: {aaaaa: {Host: ""}}'))), 1)

    def test_remote_host_with_scheme(self) -> None:
        """A Host holding a URL, or a bad Scheme, is refused."""
        problems = self.problems(cfg("RemoteClusters: {aaaaa: {Host: 'https://a.example', Scheme: ftp}}"))
        self.assertEqual(
            sorted(p.split(":")[0] for p in problems),
            ["Clusters.zzzzz.RemoteClusters.aaaaa.Host", "Clusters.zzzzz.RemoteClusters.aaaaa.Scheme"],
        )

    def test_cluster_id_format(self) -> None:
        """Cluster ids must be 5 characters of [a-z0-9]: the cluster key, the
        LoginCluster and each RemoteClusters key."""
        problem = self.problem_for(cfg(cluster_id="ZZZZZ"), "Clusters.ZZZZZ")
        self.assertIn('"ZZZZZ"', problem)
        self.assertIn("5 characters of [a-z0-9]", problem)
        problem = self.problem_for(cfg("Login: {LoginCluster: abc}"), "Clusters.zzzzz.Login.LoginCluster")
        self.assertIn('"abc"', problem)
        problem = self.problem_for(cfg("RemoteClusters: {toolong: {Host: x.example}}"),
                                   "Clusters.zzzzz.RemoteClusters.toolong")
        self.assertIn('"toolong"', problem)

    def test_required_secrets(self) -> None:
        """SystemRootToken and Collections.BlobSigningKey are required and non-empty."""
        problems = self.problems(cfg(secrets=False))
        self.assertEqual(
            sorted(p.split(":")[0] for p in problems),
            ["Clusters.zzzzz.Collections.BlobSigningKey", "Clusters.zzzzz.SystemRootToken"],
        )
        self.assertIn("required", problems[0])
        self.problem_for(cfg('SystemRootToken: ""\nCollections: {BlobSigningKey: %s}' % KEY, secrets=False),
                         "Clusters.zzzzz.SystemRootToken")

    def test_secret_characters(self) -> None:
        """Secrets with characters outside [a-zA-Z0-9] are refused without
        showing the secret."""
        bad = "abc-def/ghi+jkl0123456789012345678901"
        problems = self.problems(cfg(f"""
            ManagementToken: "{bad}"
            Users: {{AnonymousUserToken: "{bad}"}}
        """))
        self.assertEqual(len(problems), 2)
        self.assertTrue(problems[0].startswith("Clusters.zzzzz.ManagementToken:"))
        self.assertTrue(problems[1].startswith("Clusters.zzzzz.Users.AnonymousUserToken:"))
        for problem in problems:
            self.assertIn("[a-zA-Z0-9]", problem)
            self.assertNotIn(bad, problem)
            self.assertNotIn("abc", problem)

    def test_anonymous_token_bad_v2(self) -> None:
        """A v2 AnonymousUserToken must be v2/<token uuid>/<secret>."""
        problem = self.problem_for(cfg("Users: {AnonymousUserToken: v2/notauuid/s3cr3t}"),
                                   "Clusters.zzzzz.Users.AnonymousUserToken")
        self.assertIn("v2/<token uuid>/<secret>", problem)
        self.assertNotIn("notauuid", problem)
        self.assertNotIn("s3cr3t", problem)

    def test_top_not_mapping(self) -> None:
        """A document that is not a mapping, or empty, is refused."""
        self.assertIn("expected a mapping", self.problems("- a\n- b\n")[0])
        self.assertIn("expected a mapping", self.problems("")[0])

    def test_missing_clusters(self) -> None:
        """A document without Clusters, or with none in it, is refused."""
        [problem] = self.problems("Foo: {}\n")
        self.assertTrue(problem.startswith("Clusters:"))
        self.assertIn("missing", problem)
        self.assertTrue(self.problems("Clusters: {}\n")[0].startswith("Clusters:"))
        self.assertTrue(self.problems("Clusters: [a]\n")[0].startswith("Clusters:"))

    def test_duplicate_keys(self) -> None:
        """A key given twice is a problem naming both lines."""
        problem = self.problem_for(cfg("API:\n  RequestTimeout: 5m\n  RequestTimeout: 6m"),
                                   "Clusters.zzzzz.API.RequestTimeout")
        self.assertIn("lines 7 and 8", problem)

    def test_login_cluster_unreachable(self) -> None:
        """A LoginCluster without a RemoteClusters entry is accepted with a warning."""
        c = config_from_string(cfg("Login: {LoginCluster: aaaaa}"))
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("Clusters.zzzzz.Login.LoginCluster", c.warnings[0])
        self.assertEqual(config_from_string(cfg("Login: {LoginCluster: zzzzz}")).warnings, ())

    def test_all_problems_collected(self) -> None:
        """Every problem is reported at once, one line each, in file order,
        with its line number."""
        problems = self.problems(cfg("""
            API:
              RequestTimeout: 5
              MaxItemsPerResponse: lots
            Login: {RemoteTokenRefresh: 300}
            Services: {Controller: {ExternalURL: "https//foo"}}
            RemoteClusters: {aaaaa: {}}
        """, secrets=False))
        self.assertEqual(len(problems), 7)
        self.assertEqual([p.split(":")[0] for p in problems], [
            "Clusters.zzzzz.SystemRootToken",
            "Clusters.zzzzz.Collections.BlobSigningKey",
            "Clusters.zzzzz.API.RequestTimeout",
            "Clusters.zzzzz.API.MaxItemsPerResponse",
            "Clusters.zzzzz.Login.RemoteTokenRefresh",
            "Clusters.zzzzz.Services.Controller.ExternalURL",
            "Clusters.zzzzz.RemoteClusters.aaaaa.Host",
        ])
        for problem in problems:
            self.assertNotIn("\n", problem)
            self.assertTrue(problem.startswith("Clusters.zzzzz."), problem)
            self.assertIn("expected", problem)
            self.assertIn("<string>, ", problem)

    def test_storage_class_checks(self) -> None:
        """Volumes may only name defined classes, and one class must be default."""
        problems = self.problems(cfg("""
            StorageClasses: {archive: {Priority: 1}}
            Volumes:
              zzzzz-nyw5e-000000000000000:
                Driver: Directory
                DriverParameters: {Root: /srv}
                StorageClasses: {hot: true}
        """))
        self.assertEqual(
            sorted(p.split(":")[0] for p in problems),
            ["Clusters.zzzzz.StorageClasses",
             "Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000000.StorageClasses"],
        )

    def test_volume_driver_parameters(self) -> None:
        """A volume needs a Driver; Directory needs a Root, S3 a Bucket."""
        problems = self.problems(cfg("""
            Volumes:
              zzzzz-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: ""}}
              zzzzz-nyw5e-000000000000001: {Driver: S3}
              zzzzz-nyw5e-000000000000002: {Replication: 0}
        """))
        self.assertEqual(sorted(p.split(":")[0] for p in problems), [
            "Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000000.DriverParameters.Root",
            "Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000001.DriverParameters.Bucket",
            "Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000002.Driver",
            "Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000002.Replication",
        ])

    def test_relative_root_warns(self) -> None:
        """A relative Directory Root is accepted with a warning."""
        c = config_from_string(cfg("""
            Volumes:
              zzzzz-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: keep}}
        """))
        self.assertEqual(c.volumes["zzzzz-nyw5e-000000000000000"].driver_parameters["Root"], "keep")
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("DriverParameters.Root", c.warnings[0])

    def test_tls_pair(self) -> None:
        """TLS.Certificate without TLS.Key (or a non-file URL) is refused."""
        problems = self.problems(cfg("TLS: {Certificate: 'https://x/cert.pem'}"))
        self.assertEqual(sorted(p.split(":")[0] for p in problems), ["Clusters.zzzzz.TLS.Certificate"])
        problems = self.problems(cfg("TLS: {Certificate: /c.pem}"))
        self.assertEqual([p.split(":")[0] for p in problems], ["Clusters.zzzzz.TLS.Key"])

    def test_arvnode_section(self) -> None:
        """ArvNode is arvnode's own section: bad values and unknown keys are errors."""
        problems = self.problems(cfg("""
            ArvNode:
              ShutdownGracePeriod: 30
              Typo: 1
              Keepproxy: {UploadWindow: 1GiB, MaxInflightBytes: 64MiB}
        """))
        self.assertEqual(sorted(p.split(":")[0] for p in problems), [
            "Clusters.zzzzz.ArvNode.Keepproxy.UploadWindow",
            "Clusters.zzzzz.ArvNode.ShutdownGracePeriod",
            "Clusters.zzzzz.ArvNode.Typo",
        ])


class MaskSecretsTests(ConfigTestMixin, SynchronousTestCase):
    def test_no_secret_in_output(self) -> None:
        """No secret of the full example appears in the masked dump."""
        text = FULL.getContent().decode()
        c = config_from_string(text)
        dumped = yaml.safe_dump(mask_secrets(c))
        for secret in (c.system_root_token, c.management_token, c.collections.blob_signing_key,
                       c.users.anonymous_user_token, "not-a-real-password", "example/secret+key",
                       "AKIAEXAMPLEEXAMPLE", "oidc-secret-value"):
            self.assertNotIn(secret, dumped)
        cluster = mask_secrets(c)["Clusters"]["x9a2b"]
        self.assertEqual(cluster["SystemRootToken"], "***")
        self.assertEqual(cluster["PostgreSQL"]["Connection"]["password"], "***")
        self.assertEqual(cluster["PostgreSQL"]["Connection"]["host"], "db.x9a2b.internal")
        self.assertEqual(cluster["Collections"]["BlobSigningTTL"], "336h0m0s")

    def test_unset_secret_stays_empty(self) -> None:
        """An unset optional secret shows as "", not as masked."""
        self.assertEqual(mask_secrets(config_from_string(cfg()))["Clusters"]["zzzzz"]["ManagementToken"], "")

    def test_round_trip(self) -> None:
        """The effective configuration, secrets put back, loads to the same Config."""
        original = config_from_string(FULL.getContent().decode().replace(
            "not-a-real-password", ROOT).replace("example/secret+key", ROOT).replace("AKIAEXAMPLEEXAMPLE", ROOT))
        tokens = {original.system_root_token, original.management_token, original.collections.blob_signing_key,
                  original.users.anonymous_user_token}
        dumped = mask_secrets(original)
        cluster = dumped["Clusters"]["x9a2b"]
        cluster["SystemRootToken"] = original.system_root_token
        cluster["ManagementToken"] = original.management_token
        cluster["Collections"]["BlobSigningKey"] = original.collections.blob_signing_key
        cluster["Users"]["AnonymousUserToken"] = original.users.anonymous_user_token
        cluster["Login"]["OpenIDConnect"]["ClientSecret"] = original.login.openid_connect.client_secret
        text = yaml.safe_dump(dumped).replace("'***'", ROOT)
        self.assertEqual(len(tokens), 4)
        reloaded = config_from_string(text)
        self.assertEqual(attrs.evolve(reloaded, unknown_keys=(), warnings=()),
                         attrs.evolve(original, unknown_keys=(), warnings=()))
        self.assertEqual(reloaded.unknown_keys, ())


class FullConfigTests(SynchronousTestCase):
    def leaves(self, value: Any) -> int:
        """How many leaf keys ``value`` holds."""
        if isinstance(value, dict) and value:
            return sum(self.leaves(v) for v in value.values())
        return 1

    def test_loads(self) -> None:
        """A realistic full Arvados config (150+ keys) loads, with its values."""
        self.assertGreater(self.leaves(yaml.safe_load(FULL.getContent())), 150)
        c = load_config(FULL.path)
        self.assertEqual(c.cluster_id, "x9a2b")
        self.assertEqual(c.warnings, ())
        self.assertEqual(str(c.services.controller.external_url), "https://x9a2b.arv.example.org")
        self.assertEqual(c.services.keepproxy.internal_urls, (URL("http", "localhost", 25107, ""),))
        self.assertEqual(len(c.services.keepstore.internal_urls), 2)
        self.assertEqual(c.tls.certificate, "/etc/arvados/tls/x9a2b.crt")
        self.assertEqual(c.login.remote_token_refresh, 600.0)
        self.assertEqual(c.api.max_request_size, 128 * 2**20)
        self.assertEqual(set(c.remote_clusters), {"*", "x9a2b", "q8w7e", "lab01"})
        self.assertEqual(c.postgresql.connection["port"], "5432")
        self.assertEqual(set(c.storage_classes), {"default", "archive"})
        self.assertEqual(c.volumes["x9a2b-nyw5e-s3archive000000"].storage_classes, ("archive",))
        self.assertEqual(c.arvnode.keepproxy.upload_window, 4 * 2**20)
        self.assertEqual(len(c.users.anonymous_user_token), 50)

    def test_unknown_keys(self) -> None:
        """The full config's unused sections and keys are reported, and no key
        arvnode reads is among them."""
        unknown = load_config(FULL.path).unknown_keys
        for key in ("Clusters.x9a2b.Containers", "Clusters.x9a2b.Workbench", "Clusters.x9a2b.Mail",
                    "Clusters.x9a2b.Services.RailsAPI", "Clusters.x9a2b.Services.WebDAV",
                    "Clusters.x9a2b.Login.PAM",
                    "Clusters.x9a2b.Collections.TrashSweepInterval", "Clusters.x9a2b.API.MaxTokenLifetime",
                    "Clusters.x9a2b.InstanceTypes", "Clusters.x9a2b.TLS.ACME"):
            self.assertIn(key, unknown)
        for key in unknown:
            self.assertFalse(key.startswith(("Clusters.x9a2b.ArvNode", "Clusters.x9a2b.RemoteClusters",
                                             "Clusters.x9a2b.StorageClasses", "Clusters.x9a2b.PostgreSQL",
                                             "Clusters.x9a2b.Services.Keepproxy")), key)
            self.assertNotIn(key.split(".")[-1], (
                "RemoteTokenRefresh", "BlobSigningKey", "SystemRootToken", "RequestTimeout",
                "DefaultReplication", "KeepproxyPermission", "AnonymousUserToken", "LoginCluster",
            ))
        self.assertEqual(len(unknown), len(set(unknown)))


class CheckCommandTests(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """Run ``arvnode`` with ``argv``; return exit code, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def write(self, text: str) -> str:
        """Write ``text`` to a new temporary file; return its path."""
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return path.path

    def test_valid(self) -> None:
        """A valid file prints the effective config with secrets masked, and
        the unknown keys on stderr; exit status 0."""
        code, out, err = self.run_cli("config", "check", "--config", FULL.path)
        self.assertEqual(code, 0)
        effective = yaml.safe_load(out)
        cluster = effective["Clusters"]["x9a2b"]
        self.assertEqual(cluster["SystemRootToken"], "***")
        self.assertEqual(cluster["Login"]["RemoteTokenRefresh"], "10m0s")
        c = load_config(FULL.path)
        for secret in (c.system_root_token, c.collections.blob_signing_key, "not-a-real-password"):
            self.assertNotIn(secret, out + err)
        self.assertIn("not used by arvnode", err)
        self.assertIn("Clusters.x9a2b.Containers", err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_invalid(self) -> None:
        """An invalid file prints one line per problem on stderr; exit status 1."""
        path = self.write(cfg("API: {RequestTimeout: 5}\nLogin: {RemoteTokenRefresh: 300}"))
        code, out, err = self.run_cli("config", "check", "--config", path)
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        lines = err.splitlines()
        self.assertTrue(lines[0].startswith("Clusters.zzzzz.API.RequestTimeout:"))
        self.assertTrue(lines[1].startswith("Clusters.zzzzz.Login.RemoteTokenRefresh:"))
        self.assertIn("2 problem(s)", lines[2])
        self.assertNotIn(ROOT, err)

    def test_missing_file(self) -> None:
        """A missing file is reported by path with exit status 1."""
        path = self.mktemp()
        code, _, err = self.run_cli("config", "check", "--config", path)
        self.assertEqual(code, 1)
        self.assertIn(path, err)

    def test_data_dir(self) -> None:
        """--data DIR checks DIR/config.yml."""
        data = FilePath(self.mktemp())
        data.makedirs()
        data.child("config.yml").setContent(cfg(cluster_id="x1234", startable=True).encode())
        code, out, err = self.run_cli("config", "check", "--data", data.path)
        self.assertEqual(code, 0)
        self.assertIn("x1234", yaml.safe_load(out)["Clusters"])
        self.assertIn("no keys unused", err)

    def test_environment(self) -> None:
        """Without --config, $ARVADOS_CONFIG names the file."""
        path = self.write(cfg(cluster_id="x5678", startable=True))
        old = os.environ.get("ARVADOS_CONFIG")
        os.environ["ARVADOS_CONFIG"] = path
        self.addCleanup(
            lambda: os.environ.pop("ARVADOS_CONFIG") if old is None
            else os.environ.__setitem__("ARVADOS_CONFIG", old)
        )
        code, out, _ = self.run_cli("config", "check")
        self.assertEqual(code, 0)
        self.assertIn("x5678", yaml.safe_load(out)["Clusters"])

    def test_cluster_option(self) -> None:
        """--cluster picks one cluster of several; without it the check fails."""
        path = self.write(cfg(cluster_id="aaaaa", startable=True)
                          + cfg(cluster_id="bbbbb", startable=True).replace("Clusters:\n", ""))
        code, _, err = self.run_cli("config", "check", "--config", path)
        self.assertEqual(code, 1)
        self.assertIn("aaaaa, bbbbb", err)
        code, out, _ = self.run_cli("config", "check", "--config", path, "--cluster", "bbbbb")
        self.assertEqual(code, 0)
        self.assertEqual(list(yaml.safe_load(out)["Clusters"]), ["bbbbb"])

    def test_startup_problems(self) -> None:
        """A file that loads but could not start a node (no listener URL, an
        https listener without a certificate, a volume driver arvnode lacks)
        fails the check with the key path of each; exit status 1."""
        path = self.write(cfg("""
            Services:
              Controller: {InternalURLs: {"https://127.0.0.1:0/": {}}}
            Volumes:
              zzzzz-nyw5e-000000000000000: {Driver: Azure, DriverParameters: {}}
        """))
        code, out, err = self.run_cli("config", "check", "--config", path)
        self.assertEqual(code, 1)
        self.assertIn("error: Clusters.zzzzz.Services.Keepproxy.InternalURLs: got nothing", err)
        self.assertIn("error: Clusters.zzzzz.TLS.Certificate: got nothing", err)
        self.assertIn('error: Clusters.zzzzz.Volumes.zzzzz-nyw5e-000000000000000.Driver: got "Azure"', err)
        self.assertNotIn("Services.Controller.InternalURLs", err)
        # The verdict line of docs/configure.md, as for a file that does not load.
        self.assertEqual(err.splitlines()[-1], f"{path}: 3 problem(s); the node would not start")

    def test_warnings(self) -> None:
        """Warnings go to stderr, never with the secret."""
        path = self.write(cfg("ManagementToken: short1", startable=True))
        code, out, err = self.run_cli("config", "check", "--config", path)
        self.assertEqual(code, 0)
        self.assertIn("warning: Clusters.zzzzz.ManagementToken", err)
        self.assertNotIn("short1", out + err)
