"""The federation examples in ``etc/federation-peer/`` and ``etc/federation-logincluster/``.

Why: operators copy these. Each must load with the real config loader (no
unknown keys, no warnings, no tabs) and describe the federation it claims
to: three peers that all know each other, or a login cluster with two
satellites that send logins to it.
"""
from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from arvnode.config import Config, load_config

ETC = Path(__file__).resolve().parent.parent / "etc"
PEERS = ("clsr1", "clsr2", "clsr3")


def load(path: Path) -> Config:
    config = load_config(str(path))
    return config


class FederationExamplesTests(SynchronousTestCase):
    def check_file(self, path: Path) -> Config:
        text = path.read_text()
        self.assertNotIn("\t", text, f"{path.name} contains a tab")
        config = load(path)
        self.assertEqual(config.unknown_keys, (), path.name)
        self.assertEqual(config.warnings, (), path.name)
        self.assertEqual(config.cluster_id, path.stem)
        return config

    def test_peer_federation(self) -> None:
        """Every peer lists the two others, with Proxy and ActivateUsers, and no LoginCluster."""
        files = sorted((ETC / "federation-peer").glob("*.yml"))
        self.assertEqual([f.stem for f in files], list(PEERS))
        for path in files:
            c = self.check_file(path)
            self.assertEqual(c.login.login_cluster, "")
            others = sorted(set(PEERS) - {c.cluster_id})
            self.assertEqual(sorted(c.remote_clusters), others)
            for cid, rc in c.remote_clusters.items():
                self.assertEqual(rc.host, f"{cid}.example.org")
                self.assertTrue(rc.proxy and rc.activate_users, cid)
            self.assertEqual(str(c.services.controller.external_url),
                             f"https://{c.cluster_id}.example.org/")

    def test_login_cluster_federation(self) -> None:
        files = {f.stem: f for f in (ETC / "federation-logincluster").glob("*.yml")}
        self.assertEqual(sorted(files), ["zlgin", "zsat1", "zsat2"])
        login = self.check_file(files["zlgin"])
        self.assertEqual(login.login.login_cluster, "")
        self.assertTrue(login.login.test_enable)
        self.assertEqual(sorted(login.login.test_users), ["alice", "bob"])
        self.assertTrue(all(u.password and u.email for u in login.login.test_users.values()))
        self.assertTrue(login.users.new_users_are_active)
        for sat in ("zsat1", "zsat2"):
            c = self.check_file(files[sat])
            self.assertEqual(c.login.login_cluster, "zlgin")
            self.assertTrue(c.remote_clusters["zlgin"].proxy)
            self.assertFalse(c.login.test_enable)
            # The login cluster trusts this satellite's Workbench as a return_to.
            self.assertIn(f"https://workbench.{sat}.example.org/", login.login.trusted_clients)
