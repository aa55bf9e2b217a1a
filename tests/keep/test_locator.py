"""Tests for arvnode.keep.locator: grammar, signatures, +R conversion.

Vectors come from spec arvados-wire.md section 12.1 and must hold
bit-exact; properties cover the rest of the input space.
"""
from __future__ import annotations

import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.keep.locator import (
    EMPTY_BLOCK_HASH,
    MAX_BLOCK_SIZE,
    Locator,
    LocatorError,
    SignatureError,
    SignatureExpired,
    SignatureInvalid,
    SignatureMissing,
    from_remote,
    parse_locator,
    sign_locator,
    signature,
    strip_cluster_hints,
    to_remote,
    verify_locator,
)

# --- spec 12.1 inputs -------------------------------------------------------
HASH = "acbd18db4cc2f85cedef654fccc4a4d8"
LOCATOR = HASH + "+3"
KEY = "exampleblobsigningkey0123456789abcdefghijklmnopqrstuvwxyz"
V1 = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
V2 = "v2/zzzzz-gj3su-077z32aux8dg2s1/" + V1
EXPIRY = 1893456000  # 2030-01-01T00:00:00Z == 0x70dbd880
TTL = 1209600  # 336h
NOW_FOR_EXPIRY = EXPIRY - TTL  # signing at this "now" gives EXPIRY
NOW = 1700000000  # a "now" before 2030
V1_SIGNED = HASH + "+3+Ad0f29ba98e1b070c3718101cc0902e4dc1fbdc36@70dbd880"
V2_SIG = "ff0a8a06369007a323419829ed30fff4782ba84d"
V2_SIGNED = HASH + "+3+A" + V2_SIG + "@70dbd880"
V2_REMOTE = HASH + "+3+Rzzzzz-" + V2_SIG + "@70dbd880"

# Upstream anchor from Arvados' Go SDK tests (sdk/go/arvados/blob_signature_test.go).
UPSTREAM_TOKEN = "hocfupkn2pjhrpgp2vxv8rsku7tvtx49arbc9s4bvu7p7wxqvk"
UPSTREAM_KEY = (
    "13u9fkuccnboeewr0ne3mvapk28epf68a3bhj9q8sb4l6e4e5mkk"
    "p6nhj2mmpscgu1zze5h5enydxfe3j215024u16ij4hjaiqs5u4pzsl3nczmaoxnc"
    "ljkm4875xqn4xv058koz3vkptmzhyheiy6wzevzjmdvxhvcqsvr5abhl15c2d4o4"
    "jhl0s91lojy1mtrzqqvprqcverls0xvy9vai9t1l1lvvazpuadafm71jl4mrwq2y"
    "gokee3eamvjy8qq1fvy238838enjmy5wzy2md7yvsitp5vztft6j4q866efym7e6"
    "vu5wm9fpnwjyxfldw3vbo01mgjs75rgo7qioh8z8ij7jpyp8508okhgbbex3ceei"
    "786u5rw2a9gx743dj3fgq2irk"
)

# What the Python SDK accepts (client-surface.md 5.6).
SDK_BLOCK_RE = re.compile(r"[0-9a-f]{32}\+\d+(\+\S+)*")
SDK_HINT_RE = re.compile(r"[A-Z][A-Za-z0-9@_-]+")
SDK_A_RE = re.compile(r"A[0-9a-f]{40}@[0-9a-f]{8}")

# --- strategies -------------------------------------------------------------
HEX = "0123456789abcdef"
LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
hashes = st.text(HEX, min_size=32, max_size=32)
sizes = st.none() | st.integers(0, MAX_BLOCK_SIZE)
sig40 = st.text(HEX, min_size=40, max_size=40)
expiries = st.integers(0, 0xFFFFFFFF)
clusters = st.text(LOWER_ALNUM, min_size=5, max_size=5)
other_hints = st.from_regex(r"[B-QS-Z][A-Za-z0-9@_-]{0,20}", fullmatch=True)
a_hints = st.builds(lambda s, e: f"A{s}@{e:08x}", sig40, expiries)
r_hints = st.builds(lambda c, s, e: f"R{c}-{s}@{e:08x}", clusters, sig40, expiries)
# Tokens and keys: any non-empty text that UTF-8 can encode.
secrets = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)


@st.composite
def locator_objects(draw, with_a: bool | None = None, with_r: bool | None = None):
    hints = draw(st.lists(other_hints, max_size=4))
    for wanted, strategy in ((with_a, a_hints), (with_r, r_hints)):
        if wanted is None:
            wanted = draw(st.booleans())
        if wanted:
            hints.insert(draw(st.integers(0, len(hints))), draw(strategy))
    return Locator(draw(hashes), draw(sizes), tuple(hints))


def signing_params():
    """(now, ttl) pairs whose expiry fits 8 hex digits."""
    return st.integers(0, 0xFFFFFFFF - 10**8).flatmap(
        lambda now: st.tuples(st.just(now), st.integers(0, 10**8))
    )


class ParseLocatorTests(SynchronousTestCase):
    """parse_locator accepts exactly the grammar of spec 2.1."""

    def assertRejected(self, text: str, fragment: str) -> None:
        error = self.assertRaises(LocatorError, parse_locator, text)
        self.assertIn(fragment, str(error))

    def test_bareHash(self) -> None:
        """A bare 32-hex hash parses with no size and no hints."""
        self.assertEqual(parse_locator(HASH), Locator(HASH, None, ()))

    def test_hashAndSize(self) -> None:
        """The size right after the hash becomes .size, not a hint."""
        self.assertEqual(parse_locator(LOCATOR), Locator(HASH, 3, ()))

    def test_hintsInOrder(self) -> None:
        """Hints keep their order and lose their leading '+'."""
        loc = parse_locator(HASH + "+3+K@xyzzy+A" + V2_SIG + "@70dbd880+Zfoo")
        self.assertEqual(loc.hints, ("K@xyzzy", "A" + V2_SIG + "@70dbd880", "Zfoo"))

    def test_oneLetterHint(self) -> None:
        """Spec 2.1 allows a hint that is just its type letter."""
        self.assertEqual(parse_locator(LOCATOR + "+B").hints, ("B",))

    def test_hintsWithoutSize(self) -> None:
        """Hints may follow the hash directly when there is no size."""
        loc = parse_locator(HASH + "+K@xyzzy")
        self.assertEqual((loc.size, loc.hints), (None, ("K@xyzzy",)))

    def test_formatsBackExactly(self) -> None:
        """str() of a parsed locator is the original text."""
        text = V2_SIGNED + "+K@zzzzz-bi6l4-000000000000000+Zfoo_bar-1"
        self.assertEqual(str(parse_locator(text)), text)

    def test_emptyBlock(self) -> None:
        """The empty block parses and is recognised as such."""
        loc = parse_locator(EMPTY_BLOCK_HASH + "+0")
        self.assertTrue(loc.is_empty_block)
        self.assertFalse(parse_locator(LOCATOR).is_empty_block)

    def test_maxSize(self) -> None:
        """Sizes up to 64 MiB are accepted."""
        self.assertEqual(parse_locator(f"{HASH}+{MAX_BLOCK_SIZE}").size, MAX_BLOCK_SIZE)

    def test_tooLarge(self) -> None:
        """A size above 64 MiB is rejected, saying so."""
        self.assertRejected(f"{HASH}+{MAX_BLOCK_SIZE + 1}", "maximum block size")

    def test_hugeSize(self) -> None:
        """An absurdly long size is rejected without parsing it as an int."""
        self.assertRejected(HASH + "+" + "9" * 5000, "maximum block size")

    def test_leadingZeroSize(self) -> None:
        """A size with leading zeros is rejected (it would not round-trip)."""
        self.assertRejected(HASH + "+03", "leading zeros")

    def test_empty(self) -> None:
        """The empty string is not a locator."""
        self.assertRejected("", "empty")

    def test_notString(self) -> None:
        """Bytes are refused with a clear message."""
        self.assertRejected(LOCATOR.encode(), "str")  # type: ignore[arg-type]

    def test_uppercaseHash(self) -> None:
        """Uppercase hex in the hash is rejected."""
        self.assertRejected(HASH.upper() + "+3", "32 lowercase hex")

    def test_shortHash(self) -> None:
        """A 31-character hash is rejected."""
        self.assertRejected(HASH[:31] + "+3", "32 lowercase hex")

    def test_longHash(self) -> None:
        """A 33-character hash is rejected."""
        self.assertRejected(HASH + "0+3", "32 lowercase hex")

    def test_trailingPlus(self) -> None:
        """A trailing '+' is rejected."""
        self.assertRejected(LOCATOR + "+", "ends with '+'")

    def test_doublePlus(self) -> None:
        """An empty part ('++') is rejected."""
        self.assertRejected(HASH + "++3", "empty hint")

    def test_secondSize(self) -> None:
        """A digit-led hint after the first position is rejected."""
        self.assertRejected(LOCATOR + "+4", "starts with a digit")

    def test_sizeAfterHint(self) -> None:
        """The size must come directly after the hash."""
        self.assertRejected(HASH + "+K@xyzzy+3", "starts with a digit")

    def test_lowercaseHint(self) -> None:
        """A hint must start with an uppercase letter."""
        self.assertRejected(LOCATOR + "+kfoo", "[A-Z]")

    def test_badHintCharacter(self) -> None:
        """A hint may not contain characters outside [A-Za-z0-9@_-]."""
        self.assertRejected(LOCATOR + "+Zfo.o", "[A-Z]")

    def test_nonAsciiDigits(self) -> None:
        """Unicode digits are not decimal sizes."""
        self.assertRejected(HASH + "+\u0663", "[A-Z]")

    def test_trailingNewline(self) -> None:
        """A trailing newline is not silently accepted."""
        self.assertRejected(LOCATOR + "\n", "leading zeros")

    def test_shortPermissionSignature(self) -> None:
        """An +A hint with a 39-hex signature is rejected."""
        self.assertRejected(LOCATOR + "+A" + V2_SIG[:39] + "@70dbd880", "A<40 lowercase hex>")

    def test_shortPermissionExpiry(self) -> None:
        """An +A hint with a 7-hex expiry is rejected."""
        self.assertRejected(LOCATOR + "+A" + V2_SIG + "@0dbd880", "@<8 lowercase hex>")

    def test_uppercasePermission(self) -> None:
        """An +A hint with uppercase hex is rejected."""
        self.assertRejected(LOCATOR + "+A" + V2_SIG.upper() + "@70dbd880", "permission hint")

    def test_twoPermissionHints(self) -> None:
        """Two +A hints are ambiguous and rejected."""
        self.assertRejected(V2_SIGNED + "+A" + V2_SIG + "@70dbd880", "more than one +A")

    def test_badRemoteHint(self) -> None:
        """An +R hint must be R<5 [a-z0-9]>-<40 hex>@<8 hex>."""
        self.assertRejected(LOCATOR + "+RZZZZZ-" + V2_SIG + "@70dbd880", "remote hint")
        self.assertRejected(LOCATOR + "+Rfoo", "remote hint")

    def test_twoRemoteHints(self) -> None:
        """Two +R hints are ambiguous and rejected."""
        self.assertRejected(V2_REMOTE + "+Rzbbbb-" + V2_SIG + "@70dbd880", "more than one +R")

    def test_longInputIsTruncatedInMessage(self) -> None:
        """Error messages do not echo arbitrarily long input."""
        error = self.assertRaises(LocatorError, parse_locator, LOCATOR + "+Z" + "x" * 10000 + ".")
        self.assertLess(len(str(error)), 300)

    def test_isValueError(self) -> None:
        """LocatorError is a ValueError."""
        self.assertTrue(issubclass(LocatorError, ValueError))

    @given(locator_objects())
    def test_roundTrip(self, loc: Locator) -> None:
        """parse_locator(str(loc)) == loc for any valid locator."""
        self.assertEqual(parse_locator(str(loc)), loc)
        self.assertEqual(str(parse_locator(str(loc))), str(loc))

    @given(st.text(HEX + "+AKRZ@-_0123456789xyz", max_size=60))
    def test_anyTextRoundTripsOrFails(self, text: str) -> None:
        """Arbitrary text either fails with LocatorError or formats back exactly."""
        try:
            loc = parse_locator(text)
        except LocatorError:
            return
        self.assertEqual(str(loc), text)


class LocatorObjectTests(SynchronousTestCase):
    """The Locator value type and its helpers."""

    def test_constructorValidates(self) -> None:
        """Building a Locator by hand applies the same rules as parsing."""
        self.assertRaises(LocatorError, Locator, "x" * 32, 3, ())
        self.assertRaises(LocatorError, Locator, HASH, -1, ())
        self.assertRaises(LocatorError, Locator, HASH, MAX_BLOCK_SIZE + 1, ())
        self.assertRaises(LocatorError, Locator, HASH, 3, ("3",))
        self.assertRaises(LocatorError, Locator, HASH, 3, ("",))
        self.assertRaises(LocatorError, Locator, HASH, True, ())

    def test_hintsListBecomesTuple(self) -> None:
        """Hints given as a list are stored as a tuple (the value stays hashable)."""
        loc = Locator(HASH, 3, ["K@xyzzy"])  # type: ignore[arg-type]
        self.assertEqual(loc.hints, ("K@xyzzy",))
        hash(loc)

    def test_permission(self) -> None:
        """.permission gives (signature, expiry as int)."""
        self.assertEqual(parse_locator(V2_SIGNED).permission, (V2_SIG, EXPIRY))
        self.assertIsNone(parse_locator(LOCATOR).permission)

    def test_remote(self) -> None:
        """.remote gives (cluster, signature, expiry as int)."""
        self.assertEqual(parse_locator(V2_REMOTE).remote, ("zzzzz", V2_SIG, EXPIRY))
        self.assertIsNone(parse_locator(V2_SIGNED).remote)

    def test_withoutHintTypes(self) -> None:
        """without_hint_types drops the named types and keeps the rest in order."""
        loc = parse_locator(V2_SIGNED + "+K@xyzzy+Zfoo")
        self.assertEqual(str(loc.without_hint_types("A", "R")), LOCATOR + "+K@xyzzy+Zfoo")
        self.assertEqual(str(loc.without_hint_types("K")), V2_SIGNED + "+Zfoo")

    def test_withoutHintTypesWantsLetters(self) -> None:
        """without_hint_types refuses multi-letter 'types'."""
        self.assertRaises(ValueError, parse_locator(LOCATOR).without_hint_types, "AK")

    def test_withHints(self) -> None:
        """with_hints appends validated hints at the end."""
        loc = parse_locator(LOCATOR).with_hints("K@xyzzy", "Zfoo")
        self.assertEqual(str(loc), LOCATOR + "+K@xyzzy+Zfoo")
        self.assertRaises(LocatorError, parse_locator(LOCATOR).with_hints, "bad")

    def test_withoutHintsAndSize(self) -> None:
        """without_hints keeps hash+size; with_size replaces the size."""
        loc = parse_locator(V2_SIGNED + "+Zfoo")
        self.assertEqual(str(loc.without_hints()), LOCATOR)
        self.assertEqual(str(loc.with_size(None).without_hints()), HASH)

    def test_hintsOfType(self) -> None:
        """hints_of_type lists the hints of one type in order."""
        loc = parse_locator(LOCATOR + "+K@xyzzy+Zfoo+K@zbbbb")
        self.assertEqual(loc.hints_of_type("K"), ("K@xyzzy", "K@zbbbb"))


class StripClusterHintsTests(SynchronousTestCase):
    """strip_cluster_hints removes +K@<cluster> as keepproxy does."""

    def test_removesClusterHintAtEnd(self) -> None:
        """A trailing +K@xxxxx is removed."""
        self.assertEqual(strip_cluster_hints(LOCATOR + "+K@zzzzz"), LOCATOR)

    def test_removesClusterHintInMiddle(self) -> None:
        """A +K@xxxxx followed by another hint is removed, the other kept."""
        self.assertEqual(strip_cluster_hints(LOCATOR + "+K@zzzzz" + V2_SIGNED[34:]), V2_SIGNED)

    def test_removesAdjacentClusterHints(self) -> None:
        """Two adjacent cluster hints are both removed."""
        self.assertEqual(strip_cluster_hints(LOCATOR + "+K@zzzzz+K@zbbbb"), LOCATOR)

    def test_keepsServiceHint(self) -> None:
        """The 27-character +K@<service uuid> form is kept."""
        text = LOCATOR + "+K@zzzzz-bi6l4-000000000000000"
        self.assertEqual(strip_cluster_hints(text), text)

    def test_keepsLongerHint(self) -> None:
        """+K@ followed by six characters is not a cluster hint."""
        text = LOCATOR + "+K@zzzzzz"
        self.assertEqual(strip_cluster_hints(text), text)

    def test_noHints(self) -> None:
        """A locator without K hints is unchanged."""
        self.assertEqual(strip_cluster_hints(V2_SIGNED), V2_SIGNED)


class SignatureVectorTests(SynchronousTestCase):
    """Spec 12.1 signing vectors, bit-exact."""

    def test_v1Token(self) -> None:
        """Signing with the v1 token gives the v1 vector."""
        self.assertEqual(sign_locator(LOCATOR, V1, KEY, TTL, NOW_FOR_EXPIRY), V1_SIGNED)

    def test_v2Token(self) -> None:
        """Signing with the v2 token gives the v2 vector (verbatim token)."""
        self.assertEqual(sign_locator(LOCATOR, V2, KEY, TTL, NOW_FOR_EXPIRY), V2_SIGNED)

    def test_v2TokenOneHourTTL(self) -> None:
        """A 1h TTL ('e10') changes the signature to the vector value."""
        self.assertEqual(
            signature(HASH, V2, EXPIRY, KEY, 3600), "fc559ffa8fb84595c013f62dafed65b845a407b3"
        )

    def test_remoteForm(self) -> None:
        """The +R form of the v2 vector as issued by zzzzz."""
        self.assertEqual(to_remote(V2_SIGNED, "zzzzz"), V2_REMOTE)

    def test_upstreamAnchor(self) -> None:
        """Arvados' own Go SDK test vector (expiry 7fffffff, TTL 2 weeks)."""
        self.assertEqual(
            sign_locator(LOCATOR, UPSTREAM_TOKEN, UPSTREAM_KEY, TTL, 0x7FFFFFFF - TTL),
            LOCATOR + "+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff",
        )

    def test_signatureFunction(self) -> None:
        """signature() alone gives the v2 vector's HMAC."""
        self.assertEqual(signature(HASH, V2, EXPIRY, KEY, TTL), V2_SIG)

    def test_floatTTLTruncated(self) -> None:
        """A fractional TTL is signed as whole seconds."""
        self.assertEqual(signature(HASH, V2, EXPIRY, KEY, TTL + 0.9), V2_SIG)

    def test_negativeTTL(self) -> None:
        """A negative TTL is a configuration error."""
        self.assertRaises(ValueError, signature, HASH, V2, EXPIRY, KEY, -1)


class VerificationVectorTests(SynchronousTestCase):
    """Spec 12.1 verification table."""

    def test_v2LocatorV2Token(self) -> None:
        """The v2-signed locator verifies with the v2 token."""
        self.assertIsNone(verify_locator(V2_SIGNED, V2, KEY, TTL, NOW))

    def test_v2LocatorV1Token(self) -> None:
        """The v2-signed locator does not verify with the v1 form of the token."""
        self.assertRaises(SignatureInvalid, verify_locator, V2_SIGNED, V1, KEY, TTL, NOW)

    def test_clusterHintBeforePermission(self) -> None:
        """+K@xyzzy inserted before +A does not matter."""
        text = LOCATOR + "+K@xyzzy+A" + V2_SIG + "@70dbd880"
        self.assertIsNone(verify_locator(text, V2, KEY, TTL, NOW))

    def test_hintAfterPermission(self) -> None:
        """+Zfoo after +A does not matter."""
        self.assertIsNone(verify_locator(V2_SIGNED + "+Zfoo", V2, KEY, TTL, NOW))

    def test_wrongSize(self) -> None:
        """The size is not signed: +999 instead of +3 still verifies."""
        text = V2_SIGNED.replace("+3+", "+999+")
        self.assertIsNone(verify_locator(text, V2, KEY, TTL, NOW))

    def test_noSize(self) -> None:
        """A signed locator without size verifies too."""
        self.assertIsNone(verify_locator(HASH + V2_SIGNED[34:], V2, KEY, TTL, NOW))

    def test_expiredNotResigned(self) -> None:
        """Expiry changed to 00000001 without re-signing: expired, not invalid."""
        text = V2_SIGNED.replace("@70dbd880", "@00000001")
        self.assertRaises(SignatureExpired, verify_locator, text, V2, KEY, TTL, NOW)

    def test_expiredResigned(self) -> None:
        """A correctly signed locator with expiry 00000001 is expired."""
        text = sign_locator(LOCATOR, V2, KEY, TTL, 1 - TTL)
        self.assertTrue(text.endswith("@00000001"))
        self.assertRaises(SignatureExpired, verify_locator, text, V2, KEY, TTL, NOW)

    def test_39HexSignature(self) -> None:
        """A 39-hex signature does not match the grammar: reported missing."""
        text = LOCATOR + "+A" + V2_SIG[:39] + "@70dbd880"
        self.assertRaises(SignatureMissing, verify_locator, text, V2, KEY, TTL, NOW)


class VerifyLocatorTests(SynchronousTestCase):
    """verify_locator's other rules."""

    def test_unsigned(self) -> None:
        """No +A hint: SignatureMissing."""
        self.assertRaises(SignatureMissing, verify_locator, LOCATOR, V2, KEY, TTL, NOW)

    def test_remoteOnly(self) -> None:
        """A +R hint is not a local signature: SignatureMissing."""
        self.assertRaises(SignatureMissing, verify_locator, V2_REMOTE, V2, KEY, TTL, NOW)

    def test_acceptsLocatorObject(self) -> None:
        """A Locator object verifies like its text."""
        self.assertIsNone(verify_locator(parse_locator(V2_SIGNED), V2, KEY, TTL, NOW))

    def test_expiryEqualToNow(self) -> None:
        """A signature expiring exactly now is still valid."""
        self.assertIsNone(verify_locator(V2_SIGNED, V2, KEY, TTL, EXPIRY))

    def test_expiredOneSecondLater(self) -> None:
        """One second past the expiry the signature is expired."""
        self.assertRaises(SignatureExpired, verify_locator, V2_SIGNED, V2, KEY, TTL, EXPIRY + 1)

    def test_expiredBeforeHMAC(self) -> None:
        """An expired *bogus* signature is reported as expired."""
        text = LOCATOR + "+A" + "0" * 40 + "@00000001"
        self.assertRaises(SignatureExpired, verify_locator, text, V2, KEY, TTL, NOW)

    def test_differentTTL(self) -> None:
        """A verifier with another configured TTL rejects the signature."""
        self.assertRaises(SignatureInvalid, verify_locator, V2_SIGNED, V2, KEY, 3600, NOW)

    def test_differentKey(self) -> None:
        """A verifier with another key rejects the signature."""
        self.assertRaises(SignatureInvalid, verify_locator, V2_SIGNED, V2, KEY + "x", TTL, NOW)

    def test_emptyKey(self) -> None:
        """With no key nothing verifies (no HMAC with an empty key is trusted)."""
        self.assertRaises(SignatureInvalid, verify_locator, V2_SIGNED, V2, "", TTL, NOW)

    def test_emptyToken(self) -> None:
        """With no token nothing verifies."""
        self.assertRaises(SignatureInvalid, verify_locator, V2_SIGNED, "", KEY, TTL, NOW)

    def test_malformedIsMissing(self) -> None:
        """A locator that does not parse is reported as SignatureMissing, with the reason."""
        error = self.assertRaises(
            SignatureMissing, verify_locator, "nonsense", V2, KEY, TTL, NOW
        )
        self.assertIn("32 lowercase hex", str(error))

    def test_hierarchy(self) -> None:
        """All three failures are SignatureErrors, and not ValueErrors."""
        for cls in (SignatureMissing, SignatureExpired, SignatureInvalid):
            self.assertTrue(issubclass(cls, SignatureError))
        self.assertFalse(issubclass(SignatureError, ValueError))

    def test_messagesDoNotLeakToken(self) -> None:
        """Failure messages never contain the token or the key."""
        cases = [LOCATOR, V2_SIGNED.replace("@70dbd880", "@00000001"), V2_SIGNED]
        for text in cases:
            try:
                verify_locator(text, "secret-token-x", "secret-key-y", TTL, NOW)
            except SignatureError as error:
                self.assertNotIn("secret-token-x", str(error))
                self.assertNotIn("secret-key-y", str(error))
            else:
                self.fail("should not verify")


class SignLocatorTests(SynchronousTestCase):
    """sign_locator's placement and edge rules."""

    def test_replacesExistingSignature(self) -> None:
        """An existing +A is removed; the new one goes at the very end."""
        text = LOCATOR + "+A" + "0" * 40 + "@00000001+K@xyzzy+Zfoo"
        signed = sign_locator(text, V2, KEY, TTL, NOW_FOR_EXPIRY)
        self.assertEqual(signed, LOCATOR + "+K@xyzzy+Zfoo+A" + V2_SIG + "@70dbd880")

    def test_sizeNotSigned(self) -> None:
        """The signature is the same whatever the size hint says."""
        signed = sign_locator(HASH + "+999", V2, KEY, TTL, NOW_FOR_EXPIRY)
        self.assertEqual(signed, HASH + "+999+A" + V2_SIG + "@70dbd880")

    def test_acceptsLocatorObject(self) -> None:
        """A Locator object signs like its text."""
        self.assertEqual(
            sign_locator(parse_locator(LOCATOR), V2, KEY, TTL, NOW_FOR_EXPIRY), V2_SIGNED
        )

    def test_emptyKey(self) -> None:
        """With an empty key the locator comes back unchanged."""
        self.assertEqual(sign_locator(LOCATOR, V2, "", TTL, NOW), LOCATOR)
        self.assertEqual(sign_locator(V1_SIGNED, V2, "", TTL, NOW), V1_SIGNED)

    def test_emptyToken(self) -> None:
        """With an empty token the locator comes back unchanged."""
        self.assertEqual(sign_locator(LOCATOR, "", KEY, TTL, NOW), LOCATOR)

    def test_fractionalNow(self) -> None:
        """Expiry is int(now + ttl): fractions are dropped."""
        self.assertEqual(sign_locator(LOCATOR, V2, KEY, TTL, NOW_FOR_EXPIRY + 0.99), V2_SIGNED)

    def test_expiryCap(self) -> None:
        """expiry_cap lowers the expiry (trash_at), but never raises it."""
        capped = sign_locator(LOCATOR, V2, KEY, TTL, NOW_FOR_EXPIRY, expiry_cap=NOW)
        self.assertEqual(parse_locator(capped).permission[1], NOW)  # type: ignore[index]
        self.assertIsNone(verify_locator(capped, V2, KEY, TTL, NOW))
        uncapped = sign_locator(LOCATOR, V2, KEY, TTL, NOW_FOR_EXPIRY, expiry_cap=EXPIRY + 5)
        self.assertEqual(uncapped, V2_SIGNED)

    def test_expiryOutOfRange(self) -> None:
        """An expiry that does not fit 8 hex digits is refused."""
        self.assertRaises(ValueError, sign_locator, LOCATOR, V2, KEY, TTL, 0xFFFFFFFF)
        self.assertRaises(ValueError, sign_locator, LOCATOR, V2, KEY, TTL, -TTL - 5)

    def test_malformedInput(self) -> None:
        """A malformed locator raises LocatorError."""
        self.assertRaises(LocatorError, sign_locator, "nope", V2, KEY, TTL, NOW)

    @given(locator_objects(), secrets, secrets, signing_params())
    def test_signThenVerify(self, loc: Locator, token: str, key: str, params) -> None:
        """Any locator signed for any token/key verifies with them while unexpired."""
        now, ttl = params
        signed = sign_locator(loc, token, key, ttl, now)
        self.assertIsNone(verify_locator(signed, token, key, ttl, now))

    @given(locator_objects(), secrets, secrets, secrets, signing_params())
    def test_otherTokenFails(self, loc: Locator, token: str, other: str, key: str, params) -> None:
        """A signature made for one token is invalid for any other token."""
        assume(token != other)
        now, ttl = params
        signed = sign_locator(loc, token, key, ttl, now)
        self.assertRaises(SignatureInvalid, verify_locator, signed, other, key, ttl, now)

    @given(locator_objects(), secrets, secrets, secrets, signing_params())
    def test_otherKeyFails(self, loc: Locator, token: str, key: str, other: str, params) -> None:
        """A signature made with one key is invalid under any other key."""
        assume(key != other)
        now, ttl = params
        signed = sign_locator(loc, token, key, ttl, now)
        self.assertRaises(SignatureInvalid, verify_locator, signed, token, other, ttl, now)

    @given(locator_objects(), secrets, secrets, signing_params())
    def test_sdkFormat(self, loc: Locator, token: str, key: str, params) -> None:
        """Signed locators (with size) have the shape the Python SDK demands, +A last."""
        now, ttl = params
        if loc.size is None:
            loc = loc.with_size(0)
        # Spec 2.1 allows one-letter hints; the SDK does not (manifests reject them).
        assume(all(len(h) > 1 for h in loc.hints))
        signed = sign_locator(loc, token, key, ttl, now)
        self.assertTrue(SDK_BLOCK_RE.fullmatch(signed), signed)
        hints = signed.split("+")[2:]
        for hint in hints:
            self.assertTrue(SDK_HINT_RE.fullmatch(hint), hint)
        self.assertTrue(SDK_A_RE.fullmatch(hints[-1]), hints[-1])
        self.assertEqual([h for h in hints if h[0] == "A"], [hints[-1]])

    @given(locator_objects(), secrets, secrets, signing_params())
    def test_keepsOtherHints(self, loc: Locator, token: str, key: str, params) -> None:
        """Signing keeps every non-A hint, in order, and the size."""
        now, ttl = params
        signed = parse_locator(sign_locator(loc, token, key, ttl, now))
        self.assertEqual(signed.without_hint_types("A"), loc.without_hint_types("A"))

    @given(locator_objects(), secrets, secrets, signing_params())
    def test_resignIdempotent(self, loc: Locator, token: str, key: str, params) -> None:
        """Signing a signed locator again with the same inputs changes nothing."""
        now, ttl = params
        once = sign_locator(loc, token, key, ttl, now)
        self.assertEqual(sign_locator(once, token, key, ttl, now), once)


class RemoteConversionTests(SynchronousTestCase):
    """to_remote / from_remote (spec 2.6, 5.3)."""

    def test_toRemoteVector(self) -> None:
        """+A becomes +R<cluster>- in place."""
        self.assertEqual(to_remote(V2_SIGNED + "+Zfoo", "zzzzz"), V2_REMOTE + "+Zfoo")

    def test_toRemoteUnsigned(self) -> None:
        """A locator without +A is returned unchanged."""
        self.assertEqual(to_remote(LOCATOR, "zzzzz"), LOCATOR)

    def test_toRemoteReplacesOldRemote(self) -> None:
        """An older +R is dropped when the +A is converted."""
        text = V2_SIGNED + "+Rzbbbb-" + "1" * 40 + "@70dbd880"
        self.assertEqual(to_remote(text, "zzzzz"), V2_REMOTE)

    def test_toRemoteBadCluster(self) -> None:
        """The cluster must be 5 characters of [a-z0-9]."""
        self.assertRaises(ValueError, to_remote, V2_SIGNED, "ZZZZZ")
        self.assertRaises(ValueError, to_remote, V2_SIGNED, "zzzz")

    def test_fromRemoteVector(self) -> None:
        """+R<cluster>- becomes +A again, with the cluster returned."""
        self.assertEqual(from_remote(V2_REMOTE), ("zzzzz", V2_SIGNED))

    def test_fromRemoteDropsLocalSignature(self) -> None:
        """Any +A is dropped; the converted hint stays where the +R was."""
        text = LOCATOR + "+A" + "1" * 40 + "@70dbd880+K@xyzzy+Rzzzzz-" + V2_SIG + "@70dbd880+Zfoo"
        self.assertEqual(
            from_remote(text),
            ("zzzzz", LOCATOR + "+K@xyzzy+A" + V2_SIG + "@70dbd880+Zfoo"),
        )

    def test_fromRemoteVerifiesWithSaltedToken(self) -> None:
        """The converted locator verifies on the remote with the token it signed for."""
        _, local = from_remote(V2_REMOTE)
        self.assertIsNone(verify_locator(local, V2, KEY, TTL, NOW))

    def test_fromRemoteWithoutRemoteHint(self) -> None:
        """No +R hint: LocatorError."""
        self.assertRaises(LocatorError, from_remote, V2_SIGNED)

    @given(locator_objects(with_a=True, with_r=False), clusters)
    def test_roundTrip(self, loc: Locator, cluster: str) -> None:
        """from_remote(to_remote(x, c)) == (c, x) for a locator with +A and no +R."""
        self.assertEqual(from_remote(to_remote(loc, cluster)), (cluster, str(loc)))

    @settings(max_examples=50)
    @given(locator_objects(with_a=True), clusters)
    def test_remoteHasNoPermission(self, loc: Locator, cluster: str) -> None:
        """After to_remote there is no +A left and .remote names the cluster."""
        remote = parse_locator(to_remote(loc, cluster))
        self.assertIsNone(remote.permission)
        self.assertEqual(remote.remote[0], cluster)  # type: ignore[index]
        self.assertEqual(remote.remote[1:], loc.permission)  # type: ignore[index]
