"""The example configs in ``etc/`` load, and say what docs/scale-out.md says.

Why test examples: an operator copies them; one that no longer loads (a key
renamed, a value format changed) or that silently means something else is a
broken manual.
"""
from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from arvnode.config import Config, load_config
from arvnode.keep.keepstore import keepstore_role, mounted_here
from arvnode.keep.rendezvous import service_uuid_from_url

ETC = Path(__file__).resolve().parent.parent / "etc"


def load(name: str) -> Config:
    return load_config(str(ETC / name))


def role_on(config: Config, addresses: set[str]) -> tuple[str | None, list[str], list[str]]:
    """(own keepstore URL, upstream URLs, mounted volume UUIDs) on a host
    that has ``addresses``."""
    own, ups = keepstore_role(
        config.services.keepstore,
        has_local_volumes=bool(config.volumes),
        is_local=lambda host: host in addresses,
    )
    mounted = sorted(
        uuid for uuid, vc in config.volumes.items() if mounted_here(vc.access_via_hosts, own)
    )
    return (str(own) if own else None), [str(u) for u in ups], mounted


class ExamplesTests(SynchronousTestCase):
    def test_every_example_loads_cleanly(self) -> None:
        """Each file (here and in etc/*/) loads with no unknown keys and no
        warnings, and a node could start from it (startup_problems)."""
        from arvnode.config import load_config, startup_problems

        names = sorted(p.name for p in ETC.glob("*.yml"))
        for name in ("single-node.yml", "gateway-keepstores.yml",
                     "scale-out-postgresql-s3.yml", "federation.yml"):
            self.assertIn(name, names)
        for name in names:
            config = load(name)
            self.assertEqual(config.unknown_keys, (), name)
            self.assertEqual(config.warnings, (), name)
            self.assertEqual(startup_problems(config), [], name)
        for path in sorted(ETC.glob("*/*.yml")):
            self.assertEqual(startup_problems(load_config(str(path))), [], path)

    def test_single_node(self) -> None:
        c = load("single-node.yml")
        self.assertEqual(c.postgresql.connection, {})  # SQLite
        self.assertEqual([v.driver for v in c.volumes.values()], ["Directory"])
        self.assertEqual(role_on(c, {"127.0.0.1"})[0], None)  # no keepstore role

    def test_gateway_and_keepstores_roles(self) -> None:
        """The gateway host mounts nothing and uses both keepstores; each
        keepstore host serves its own URL and mounts only its own volume."""
        c = load("gateway-keepstores.yml")
        keep0, keep1 = "http://keep0.zzzzz.internal:25108/", "http://keep1.zzzzz.internal:25108/"
        self.assertEqual(role_on(c, {"10.0.0.10"}), (None, [keep0, keep1], []))
        self.assertEqual(role_on(c, {"10.0.0.20"}),
                         (keep0, [keep1], ["zzzzz-nyw5e-0000000000keep0"]))
        self.assertEqual(role_on(c, {"10.0.0.21"}),
                         (keep1, [keep0], ["zzzzz-nyw5e-0000000000keep1"]))
        # The service UUIDs (rendezvous names) are Arvados' for these URLs.
        uuids = {service_uuid_from_url("zzzzz", u) for u in (keep0, keep1)}
        self.assertEqual(len(uuids), 2)
        self.assertTrue(all(len(u) == 27 for u in uuids))

    def test_scale_out_on_postgresql_and_buckets(self) -> None:
        c = load("scale-out-postgresql-s3.yml")
        self.assertEqual(c.postgresql.connection["host"], "db.zzzzz.internal")
        self.assertEqual({v.driver for v in c.volumes.values()}, {"S3"})
        classes = sorted(cls for v in c.volumes.values() for cls in v.storage_classes)
        self.assertEqual(classes, ["archive", "default"])
        self.assertEqual(c.default_storage_classes, ("default",))
        self.assertEqual(c.arvnode.token_cache_ttl, 2.0)
        # No keepstore entries: every gateway mounts both buckets itself.
        self.assertEqual(role_on(c, {"10.0.0.10"})[2], sorted(c.volumes))

    def test_scale_out_iam_role_variant(self) -> None:
        """The commented instance-profile variant, put in place of the
        keyed volume, loads without warnings as a role volume."""
        from arvnode.config import config_from_string, startup_problems
        from arvnode.keep.volumes.s3_params import parse_s3_parameters

        lines = (ETC / "scale-out-postgresql-s3.yml").read_text(encoding="utf-8").splitlines()
        keyed = next(i for i, line in enumerate(lines)
                     if line.startswith("      zzzzz-nyw5e-000000000000000:"))
        start = lines.index("      # zzzzz-nyw5e-000000000000000:")
        end = start
        while lines[end].startswith("      # "):
            end += 1
        variant = [line.replace("      # ", "      ", 1) for line in lines[start:end]]
        first_comment = next(i for i in range(keyed, start) if lines[i].startswith("      #"))
        c = config_from_string("\n".join(lines[:keyed] + variant + lines[end:]) + "\n")
        self.assertEqual((c.unknown_keys, c.warnings), ((), ()))
        self.assertEqual(startup_problems(c), [])
        self.assertLess(first_comment, start)
        p = parse_s3_parameters(c.volumes["zzzzz-nyw5e-000000000000000"].driver_parameters)
        self.assertEqual((p.uses_role, p.iam_role, p.bucket), (True, "zzzzz-keepstore-role", "zzzzz-keep"))

    def test_federation(self) -> None:
        c = load("federation.yml")
        self.assertEqual(c.login.login_cluster, "yyyyy")
        self.assertEqual(sorted(c.remote_clusters), ["xxxxx", "yyyyy"])
        self.assertTrue(all(r.proxy for r in c.remote_clusters.values()))
        self.assertEqual(c.login.remote_token_refresh, 300.0)
