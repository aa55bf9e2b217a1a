"""Tests for arvnode.auth.salting (spec arvados-wire.md 3.3, vectors 12.2)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.auth.salting import (
    AlreadySalted,
    ObsoleteToken,
    SaltError,
    TokenFormatError,
    is_salted,
    salt_token,
    salted_secret,
)

SECRET = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
UUID = "zzzzz-gj3su-077z32aux8dg2s1"
V2 = f"v2/{UUID}/{SECRET}"
SALTED_ZBBBB = f"v2/{UUID}/33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98"

LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
clusters = st.text(LOWER_ALNUM, min_size=5, max_size=5)
uuids = st.builds(
    lambda c, r: f"{c}-gj3su-{r}", clusters, st.text(LOWER_ALNUM, min_size=15, max_size=15)
)
# Unsalted secrets: any length but 40 (Arvados issues 50-char ones).
unsalted_secrets = st.text(LOWER_ALNUM, min_size=1, max_size=60).filter(lambda s: len(s) != 40)


class SaltVectorTests(SynchronousTestCase):
    """Spec 12.2 vectors, bit-exact."""

    def test_saltForOtherCluster(self) -> None:
        """The fixture token salted for zbbbb gives the vector."""
        self.assertEqual(salt_token(V2, "zbbbb"), SALTED_ZBBBB)

    def test_issuerGetsTokenUnchanged(self) -> None:
        """Salting for the issuing cluster returns the token unchanged."""
        self.assertEqual(salt_token(V2, "zzzzz"), V2)

    def test_saltedSecretUpstreamAnchor(self) -> None:
        """HMAC-SHA1(secret, 'zzzzz') matches the Arvados fixture value."""
        self.assertEqual(salted_secret(SECRET, "zzzzz"), "282d7d172b6cfdce364c5ed12ddf7417b2d00065")

    def test_alreadySalted(self) -> None:
        """A salted token cannot be salted again for a third cluster."""
        self.assertRaises(AlreadySalted, salt_token, SALTED_ZBBBB, "zcccc")

    def test_obsoleteToken(self) -> None:
        """A bare v1 secret is ErrObsoleteToken."""
        self.assertRaises(ObsoleteToken, salt_token, SECRET, "zbbbb")

    def test_jwtTokenFormat(self) -> None:
        """A JWT-like token is ErrTokenFormat."""
        jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
        self.assertRaises(TokenFormatError, salt_token, jwt, "zbbbb")


class SaltTokenTests(SynchronousTestCase):
    """salt_token's remaining rules."""

    def test_containerPartDropped(self) -> None:
        """A fourth (container) part is dropped when salting."""
        token = V2 + "/zzzzz-dz642-000000000000000"
        self.assertEqual(salt_token(token, "zbbbb"), SALTED_ZBBBB)

    def test_containerPartKeptForIssuer(self) -> None:
        """For the issuer the whole token, container part included, is returned."""
        token = V2 + "/zzzzz-dz642-000000000000000"
        self.assertEqual(salt_token(token, "zzzzz"), token)

    def test_saltedTokenForItsIssuer(self) -> None:
        """A salted token goes back to its issuer unchanged."""
        self.assertEqual(salt_token(SALTED_ZBBBB, "zzzzz"), SALTED_ZBBBB)

    def test_shortV1IsFormatError(self) -> None:
        """A 40-character bare secret is not 'obsolete' (needs 41+): format error."""
        self.assertRaises(TokenFormatError, salt_token, "a" * 40, "zbbbb")

    def test_uppercaseV1IsFormatError(self) -> None:
        """The obsolete-token pattern is [0-9a-z]{41,}; uppercase does not match."""
        self.assertRaises(TokenFormatError, salt_token, SECRET.upper(), "zbbbb")

    def test_twoPartsIsFormatError(self) -> None:
        """'v2/<uuid>' without a secret is a format error."""
        self.assertRaises(TokenFormatError, salt_token, f"v2/{UUID}", "zbbbb")

    def test_v3IsFormatError(self) -> None:
        """Only the 'v2' prefix is accepted."""
        self.assertRaises(TokenFormatError, salt_token, f"v3/{UUID}/{SECRET}", "zbbbb")

    def test_emptyToken(self) -> None:
        """The empty string is a format error."""
        self.assertRaises(TokenFormatError, salt_token, "", "zbbbb")

    def test_badRemote(self) -> None:
        """The remote must be a cluster id; an empty one would match any UUID."""
        for remote in ("", "zzz", "ZZZZZ", "zzzzzz"):
            self.assertRaises(ValueError, salt_token, V2, remote)

    def test_hierarchy(self) -> None:
        """All salting errors are SaltErrors and ValueErrors."""
        for cls in (ObsoleteToken, TokenFormatError, AlreadySalted):
            self.assertTrue(issubclass(cls, SaltError))
        self.assertTrue(issubclass(SaltError, ValueError))

    def test_messagesDoNotLeakSecrets(self) -> None:
        """Error messages never contain the token's secret."""
        for token in (SECRET, "eyJx." + SECRET, SALTED_ZBBBB):
            try:
                salt_token(token, "zcccc")
            except SaltError as error:
                self.assertNotIn(SECRET, str(error))
                self.assertNotIn("33b4da68bfe07da0281a7fdbc08b4f6f41c7bd98", str(error))
            else:
                self.fail("should not salt")

    @given(uuids, unsalted_secrets, clusters)
    def test_neverSaltsTwice(self, uuid: str, secret: str, remote: str) -> None:
        """Salting a salted token for another cluster always refuses."""
        token = f"v2/{uuid}/{secret}"
        salted = salt_token(token, remote)
        if uuid.startswith(remote):
            self.assertEqual(salted, token)
            return
        self.assertTrue(is_salted(salted))
        for other in (remote, "zcccc" if not uuid.startswith("zcccc") else "zdddd"):
            if not uuid.startswith(other):
                self.assertRaises(AlreadySalted, salt_token, salted, other)

    @given(uuids, unsalted_secrets, clusters)
    def test_saltedShape(self, uuid: str, secret: str, remote: str) -> None:
        """A salted token is v2/<same uuid>/<40 lowercase hex>, deterministic."""
        if uuid.startswith(remote):
            return
        salted = salt_token(f"v2/{uuid}/{secret}", remote)
        self.assertEqual(salted, f"v2/{uuid}/{salted_secret(secret, remote)}")
        prefix, got_uuid, got_secret = salted.split("/")
        self.assertEqual((prefix, got_uuid), ("v2", uuid))
        self.assertRegex(got_secret, r"^[0-9a-f]{40}$")

    @given(uuids, unsalted_secrets, clusters, clusters)
    def test_differentRemotesDiffer(self, uuid: str, secret: str, r1: str, r2: str) -> None:
        """The salted secret depends on the remote cluster id."""
        if r1 == r2 or uuid.startswith(r1) or uuid.startswith(r2):
            return
        token = f"v2/{uuid}/{secret}"
        self.assertNotEqual(salt_token(token, r1), salt_token(token, r2))


class IsSaltedTests(SynchronousTestCase):
    """is_salted recognises salted tokens by the 40-character secret."""

    def test_salted(self) -> None:
        """The 12.2 salted vector is salted."""
        self.assertTrue(is_salted(SALTED_ZBBBB))

    def test_unsalted(self) -> None:
        """The 50-character fixture token is not salted."""
        self.assertFalse(is_salted(V2))

    def test_v1(self) -> None:
        """A bare secret is not salted."""
        self.assertFalse(is_salted(SECRET))
        self.assertFalse(is_salted("a" * 40))

    def test_lengthOnly(self) -> None:
        """Any 40-character secret counts, hex or not, as in Arvados."""
        self.assertTrue(is_salted(f"v2/{UUID}/" + "z" * 40))
        self.assertTrue(is_salted(f"v2/{UUID}/" + "a" * 40 + "/container"))
