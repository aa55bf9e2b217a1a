# -*- test-case-name: tests.test_cli_admin -*-
"""Tests for ``arvnode user ...`` and ``arvnode token ...`` (driven through ``arvnode.cli.main``).

Each command runs its database work on a reactor of its own, so these are
synchronous tests; the database is SQLite in a temp directory.
"""
from __future__ import annotations

import calendar
import io
import os
import re
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from arvnode import ids
from arvnode.cli import main

CLUSTER = "zzzzz"
ROOT = "r" * 50
ANON = "a" * 50
CONFIG = """\
Clusters:
  {cluster}:
    SystemRootToken: {root}
    Collections:
      BlobSigningKey: {key}
    Users:
      AnonymousUserToken: {anon}
    ArvNode:
      DataDirectory: {data}
"""


class AdminCommandTests(SynchronousTestCase):
    """The user and token commands against an embedded-style data directory."""

    def setUp(self) -> None:
        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        with open(os.path.join(self.data, "config.yml"), "w") as f:
            f.write(
                CONFIG.format(cluster=CLUSTER, root=ROOT, anon=ANON, key="k" * 50, data=self.data)
            )

    def arvnode(self, *argv: str, where: tuple[str, ...] | None = None) -> tuple[int, str, str]:
        """Run ``arvnode <argv> --data DIR``; (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        patches = [self.patch(sys, "stdout", out), self.patch(sys, "stderr", err)]
        args = [*argv, *(where if where is not None else ("--data", self.data))]
        try:
            code = main(args)
        except SystemExit as e:  # argparse usage errors
            code = int(e.code or 0)
        finally:
            for patch in patches:
                patch.restore()
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, **kw: tuple[str, ...]) -> str:
        code, out, err = self.arvnode(*argv, **kw)
        self.assertEqual(code, 0, err)
        return out

    def test_user_create_prints_uuid(self) -> None:
        """user create prints only the new user's uuid, and the user is listed."""
        out = self.ok("user", "create", "--email", "a@x", "--username", "alice",
                      "--first-name", "Alice", "--admin", "--active")
        uuid = out.strip()
        self.assertRegex(uuid, rf"^{CLUSTER}-tpzed-[a-z0-9]{{15}}$")
        listing = self.ok("user", "list")
        line = next(l for l in listing.splitlines() if l.startswith(uuid))
        self.assertEqual(line.split(), [uuid, "alice", "a@x", "Alice", "yes", "yes"])

    def test_user_list_includes_system_users(self) -> None:
        """The system and anonymous users exist even before any node has started."""
        listing = self.ok("user", "list")
        self.assertIn(ids.system_user_uuid(CLUSTER), listing)
        self.assertIn(ids.anonymous_user_uuid(CLUSTER), listing)
        self.assertTrue(listing.startswith("UUID"))

    def test_user_create_duplicate_username(self) -> None:
        """A taken username is refused with status 1 and a message."""
        self.ok("user", "create", "--email", "a@x", "--username", "bob")
        code, out, err = self.arvnode("user", "create", "--email", "b@x", "--username", "bob")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("bob", err)

    def test_activate_deactivate(self) -> None:
        """activate and deactivate flip is_active; an unknown uuid is status 1."""
        uuid = self.ok("user", "create", "--email", "a@x").strip()
        self.ok("user", "activate", uuid)
        self.assertRegex(self.ok("user", "list"), rf"{uuid}\s+a@x\s+no\s+yes")
        self.ok("user", "deactivate", uuid)
        self.assertRegex(self.ok("user", "list"), rf"{uuid}\s+a@x\s+no\s+no")
        code, _, err = self.arvnode("user", "activate", f"{CLUSTER}-tpzed-000000000000abc")
        self.assertEqual(code, 1)
        self.assertIn("no user", err)

    def test_token_create_for_user(self) -> None:
        """token create --user prints only a v2 token for that user."""
        uuid = self.ok("user", "create", "--email", "a@x", "--active").strip()
        out = self.ok("token", "create", "--user", uuid)
        self.assertRegex(out, rf"^v2/{CLUSTER}-gj3su-[a-z0-9]{{15}}/[a-z0-9]{{50}}\n$")
        token_uuid = out.split("/")[1]
        listing = self.ok("token", "list", "--user", uuid)
        self.assertRegex(listing, rf"{token_uuid}\s+{uuid}\s+never\s+all")

    def test_token_create_unknown_user(self) -> None:
        """A token for a user that does not exist is refused."""
        code, out, err = self.arvnode("token", "create", "--user", f"{CLUSTER}-tpzed-000000000000abc")
        self.assertEqual((code, out), (1, ""))

    def test_token_create_expires(self) -> None:
        """--expires sets the expiry that many seconds from now."""
        uuid = self.ok("user", "create", "--email", "a@x").strip()
        before = time.time()
        token_uuid = self.ok("token", "create", "--user", uuid, "--expires", "2h").split("/")[1]
        listing = self.ok("token", "list")
        stamp = re.search(rf"{token_uuid}\s+\S+\s+(\S+)", listing)
        assert stamp is not None
        expires = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%dT%H:%M:%SZ"))
        self.assertTrue(before + 7200 - 1 <= expires <= time.time() + 7200, (expires, before))

    def test_token_create_bad_expires(self) -> None:
        """An unparseable or non-positive duration is a usage error."""
        uuid = self.ok("user", "create", "--email", "a@x").strip()
        for bad in ("soon", "300", "-1h"):
            code, out, _ = self.arvnode("token", "create", "--user", uuid, "--expires", bad)
            self.assertEqual((code, out), (2, ""), bad)

    def test_token_create_admin(self) -> None:
        """--admin creates user 'admin' once, then issues its tokens."""
        first = self.ok("token", "create", "--admin").strip()
        second = self.ok("token", "create", "--admin").strip()
        self.assertNotEqual(first, second)
        admins = [l for l in self.ok("user", "list").splitlines() if " admin " in f" {l} "]
        self.assertEqual(len(admins), 1, admins)
        admin_uuid = admins[0].split()[0]
        listing = self.ok("token", "list", "--user", admin_uuid)
        self.assertIn(first.split("/")[1], listing)
        self.assertIn(second.split("/")[1], listing)

    def test_token_create_anonymous(self) -> None:
        """--anonymous prints the configured anonymous token in v2 form."""
        out = self.ok("token", "create", "--anonymous")
        self.assertEqual(out, f"v2/{ids.anonymous_token_uuid(CLUSTER)}/{ANON}\n")

    def test_token_create_needs_whom(self) -> None:
        """token create without --user, --admin or --anonymous is a usage error."""
        code, out, _ = self.arvnode("token", "create")
        self.assertEqual((code, out), (2, ""))

    def test_token_list_no_secrets(self) -> None:
        """token list shows uuids, never secrets (not even the configured ones)."""
        uuid = self.ok("user", "create", "--email", "a@x").strip()
        secret = self.ok("token", "create", "--user", uuid).strip().split("/")[2]
        listing = self.ok("token", "list")
        for hidden in (secret, ROOT, ANON):
            self.assertNotIn(hidden, listing)
        self.assertIn(ids.system_root_token_uuid(CLUSTER), listing)

    def test_token_revoke(self) -> None:
        """A revoked token disappears; revoking it again is status 1."""
        uuid = self.ok("user", "create", "--email", "a@x").strip()
        token_uuid = self.ok("token", "create", "--user", uuid).split("/")[1]
        self.assertEqual(self.ok("token", "revoke", token_uuid), f"{token_uuid}\n")
        self.assertNotIn(token_uuid, self.ok("token", "list"))
        code, _, err = self.arvnode("token", "revoke", token_uuid)
        self.assertEqual(code, 1)
        self.assertIn("no token", err)

    def test_token_revoke_configured_refused(self) -> None:
        """The config's own tokens cannot be revoked from the CLI (the node would re-create them)."""
        code, _, err = self.arvnode("token", "revoke", ids.system_root_token_uuid(CLUSTER))
        self.assertEqual(code, 1)
        self.assertIn("SystemRootToken", err)

    def test_config_option(self) -> None:
        """--config PATH finds the database through ArvNode.DataDirectory."""
        where = ("--config", os.path.join(self.data, "config.yml"), "--cluster", CLUSTER)
        uuid = self.ok("user", "create", "--email", "c@x", where=where).strip()
        self.assertIn(uuid, self.ok("user", "list"))

    def test_arvados_config_env(self) -> None:
        """Without --config or --data, $ARVADOS_CONFIG names the config file."""
        self.patch(os, "environ", {**os.environ, "ARVADOS_CONFIG": os.path.join(self.data, "config.yml")})
        uuid = self.ok("user", "create", "--email", "c@x", where=()).strip()
        self.assertIn(uuid, self.ok("user", "list"))

    def test_bad_config(self) -> None:
        """An unreadable config is reported on stderr with status 1."""
        code, out, err = self.arvnode("user", "list", where=("--config", "/nonexistent/x.yml"))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("/nonexistent/x.yml", err)

    def test_cache_drop_untrusted_certificate_says_what_to_pass(self) -> None:
        """`cache drop` against a node whose CA the client does not trust:
        exit 1 and the verification error followed by the option to pass
        (docs/login-cluster.md: --ca-file or SSL_CERT_FILE)."""
        import socket
        import ssl
        import threading
        from pathlib import Path

        from arvnode.tls import generate_ca_and_server

        files = generate_ca_and_server(Path(self.mktemp()), common_name="other")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files["cert"]), str(files["key"]))
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]

        def serve_one_handshake() -> None:
            conn, _ = listener.accept()
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()  # the client gave up on our certificate: expected

        thread = threading.Thread(target=serve_one_handshake, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        code, out, err = self.arvnode("cache", "drop", "--token-uuid", f"{CLUSTER}-gj3su-000000000000001",
                                      "--url", f"https://127.0.0.1:{port}/",
                                      where=("--config", os.path.join(self.data, "config.yml")))
        self.assertEqual((code, out), (1, ""), err)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", err)
        self.assertIn("pass --ca-file PATH", err)

    def test_missing_data_directory(self) -> None:
        """A DataDirectory no node has created yet: one line naming it and
        what to do, not SQLite's "unable to open database file"; nothing is
        created."""
        missing = os.path.join(self.data, "not-yet")
        config = os.path.join(self.data, "other.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(cluster=CLUSTER, root=ROOT, anon=ANON, key="k" * 50, data=missing))
        code, out, err = self.arvnode("user", "list", where=("--config", config))
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"ArvNode.DataDirectory {missing!r} is not a directory; start the node once", err)
        self.assertNotIn("unable to open", err)
        self.assertFalse(os.path.exists(missing))


class InitCommandTests(SynchronousTestCase):
    """``arvnode init`` leaves what the docs tell the operator to use next."""

    def test_init_writes_env_sh(self) -> None:
        """docs/install.md: after `arvnode init`, `source DIR/env.sh` works and
        sets what init printed (it used to be written only by a start)."""
        data = os.path.abspath(self.mktemp())
        out, err = io.StringIO(), io.StringIO()
        patches = [self.patch(sys, "stdout", out), self.patch(sys, "stderr", err)]
        try:
            code = main(["init", "--data", data])
        finally:
            for patch in patches:
                patch.restore()
        self.assertEqual(code, 0, err.getvalue())
        with open(os.path.join(data, "env.sh")) as f:
            env = f.read()
        self.assertIn("export ARVADOS_API_TOKEN=v2/", env)
        self.assertIn(env, out.getvalue())
        self.assertEqual(os.stat(os.path.join(data, "env.sh")).st_mode & 0o777, 0o600)
