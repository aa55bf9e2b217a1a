"""Tests for arvnode.keep.rendezvous (spec arvados-wire.md 4.7, vectors 12.4)."""
from __future__ import annotations

import hashlib

from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.keep.rendezvous import service_uuid_from_url, sort_services, weight

HASH = "acbd18db4cc2f85cedef654fccc4a4d8"
SERVICES = [f"zzzzz-bi6l4-00000000000000{i}" for i in range(4)]
EXPECTED_ORDER = [SERVICES[3], SERVICES[0], SERVICES[2], SERVICES[1]]

LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
uuids = st.builds(
    lambda c, r: f"{c}-bi6l4-{r}",
    st.text(LOWER_ALNUM, min_size=5, max_size=5),
    st.text(LOWER_ALNUM, min_size=15, max_size=15),
)
hashes = st.text("0123456789abcdef", min_size=32, max_size=32)


@frozen
class Service:
    uuid: str
    root: str = ""


class WeightVectorTests(SynchronousTestCase):
    """Spec 12.4 weights, one per service, bit-exact."""

    def test_service3(self) -> None:
        """Service ...003 weighs bd8cfa27... (rank 1)."""
        self.assertEqual(weight(HASH, SERVICES[3]), "bd8cfa27a7b561a9e2f6d31a5c869c53")

    def test_service0(self) -> None:
        """Service ...000 weighs 7dbe5843... (rank 2)."""
        self.assertEqual(weight(HASH, SERVICES[0]), "7dbe5843ff5e4573e44c96a7752dda6a")

    def test_service2(self) -> None:
        """Service ...002 weighs 3a0bc450... (rank 3)."""
        self.assertEqual(weight(HASH, SERVICES[2]), "3a0bc450a1f8f7c386d783850343d6c4")

    def test_service1(self) -> None:
        """Service ...001 weighs 28a8a441... (rank 4)."""
        self.assertEqual(weight(HASH, SERVICES[1]), "28a8a441cb0409bae5576ebb7b84b813")

    def test_order(self) -> None:
        """The four services sort heaviest first as in the vector table."""
        self.assertEqual(sort_services(HASH, SERVICES), EXPECTED_ORDER)


class ServiceUUIDVectorTests(SynchronousTestCase):
    """Spec 12.4 service UUIDs derived from config URLs."""

    def test_keep0(self) -> None:
        """keep0's URL gives zzzzz-bi6l4-0b56210446f8654."""
        self.assertEqual(
            service_uuid_from_url("zzzzz", "http://keep0.zzzzz.example:25107/"),
            "zzzzz-bi6l4-0b56210446f8654",
        )

    def test_keep1(self) -> None:
        """keep1's URL gives zzzzz-bi6l4-5c645be853ab913."""
        self.assertEqual(
            service_uuid_from_url("zzzzz", "http://keep1.zzzzz.example:25107/"),
            "zzzzz-bi6l4-5c645be853ab913",
        )


class WeightTests(SynchronousTestCase):
    """weight()'s suffix rule and input checks."""

    def test_non27UUIDHashedWhole(self) -> None:
        """A UUID that is not 27 characters long is hashed whole (Go behaviour)."""
        odd = "zzzzz-bi6l4-0000000000000000"  # 28 chars, as Rails can make
        self.assertEqual(weight(HASH, odd), hashlib.md5((HASH + odd).encode()).hexdigest())

    def test_clusterIgnored(self) -> None:
        """Only the last 15 characters of a 27-character UUID count."""
        self.assertEqual(weight(HASH, "zzzzz-bi6l4-000000000000003"), weight(HASH, "abcde-xxxxx-000000000000003"))

    def test_acceptsLocator(self) -> None:
        """A full locator may be passed; only its hash counts."""
        self.assertEqual(weight(HASH + "+3+K@xyzzy", SERVICES[0]), weight(HASH, SERVICES[0]))

    def test_badHash(self) -> None:
        """Something that does not start with 32 lowercase hex is refused."""
        self.assertRaises(ValueError, weight, HASH.upper(), SERVICES[0])
        self.assertRaises(ValueError, weight, HASH[:31], SERVICES[0])


class SortServicesTests(SynchronousTestCase):
    """sort_services orders any service objects."""

    def test_objectsByUUIDAttribute(self) -> None:
        """By default the .uuid attribute is used."""
        services = [Service(u, f"http://k{i}") for i, u in enumerate(SERVICES)]
        self.assertEqual([s.uuid for s in sort_services(HASH, services)], EXPECTED_ORDER)

    def test_customKey(self) -> None:
        """A key function picks the UUID from anything."""
        services = [{"uuid": u} for u in SERVICES]
        ordered = sort_services(HASH, services, key=lambda s: s["uuid"])
        self.assertEqual([s["uuid"] for s in ordered], EXPECTED_ORDER)

    def test_tiesByWholeUUID(self) -> None:
        """Services with the same suffix are ordered by the whole UUID, descending."""
        tied = ["zaaaa-bi6l4-000000000000000", "zcccc-bi6l4-000000000000000", "zbbbb-bi6l4-000000000000000"]
        self.assertEqual(sort_services(HASH, tied), sorted(tied, reverse=True))

    def test_empty(self) -> None:
        """No services, empty order."""
        self.assertEqual(sort_services(HASH, []), [])

    @given(hashes, st.lists(uuids, unique=True, max_size=8), st.randoms())
    def test_orderIndependentOfInput(self, block_hash: str, services: list[str], rnd) -> None:
        """The order depends only on the hash and the set of services."""
        shuffled = list(services)
        rnd.shuffle(shuffled)
        self.assertEqual(sort_services(block_hash, services), sort_services(block_hash, shuffled))

    @given(hashes, st.lists(uuids, unique=True, max_size=8))
    def test_heaviestFirst(self, block_hash: str, services: list[str]) -> None:
        """The result is a permutation with non-increasing weights."""
        ordered = sort_services(block_hash, services)
        self.assertEqual(sorted(ordered), sorted(services))
        weights = [weight(block_hash, s) for s in ordered]
        self.assertEqual(weights, sorted(weights, reverse=True))

    @given(hashes, st.lists(uuids, unique=True, min_size=2, max_size=8))
    def test_removalKeepsRelativeOrder(self, block_hash: str, services: list[str]) -> None:
        """Removing a service does not reorder the others (the point of rendezvous)."""
        full = sort_services(block_hash, services)
        gone = services[0]
        self.assertEqual(sort_services(block_hash, services[1:]), [s for s in full if s != gone])


class ServiceUUIDFromURLTests(SynchronousTestCase):
    """service_uuid_from_url's other rules."""

    def test_noTrailingSlash(self) -> None:
        """A URL without a path is hashed with '/' added, as Arvados' config loader does."""
        self.assertEqual(
            service_uuid_from_url("zzzzz", "http://keep0.zzzzz.example:25107"),
            "zzzzz-bi6l4-0b56210446f8654",
        )

    def test_literalRendezvous(self) -> None:
        """A 15-alphanumeric Rendezvous value is used as is."""
        self.assertEqual(
            service_uuid_from_url("zzzzz", "http://x/", "abcdefghij01234"), "zzzzz-bi6l4-abcdefghij01234"
        )

    def test_hashedRendezvous(self) -> None:
        """Any other non-empty Rendezvous is hashed instead of the URL."""
        expected = "zzzzz-bi6l4-" + hashlib.md5(b"keep-a").hexdigest()[:15]
        self.assertEqual(service_uuid_from_url("zzzzz", "http://x/", "keep-a"), expected)
        self.assertEqual(service_uuid_from_url("zzzzz", "http://y/", "keep-a"), expected)

    def test_badCluster(self) -> None:
        """The cluster id is validated."""
        self.assertRaises(ValueError, service_uuid_from_url, "ZZ", "http://x/")

    @given(st.from_regex(r"https?://[a-z0-9.]{1,20}(:[0-9]{1,5})?/", fullmatch=True))
    def test_shape(self, url: str) -> None:
        """Derived UUIDs are valid 27-character UUIDs."""
        uuid = service_uuid_from_url("zzzzz", url)
        self.assertRegex(uuid, r"^zzzzz-bi6l4-[0-9a-f]{15}$")
