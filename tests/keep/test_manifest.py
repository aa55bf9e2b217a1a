"""Tests for arvnode.keep.manifest (spec arvados-wire.md 6, vectors 12.3)."""
from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from arvnode.keep.locator import (
    SignatureError,
    SignatureExpired,
    SignatureInvalid,
    SignatureMissing,
    parse_locator,
    sign_locator,
)
from arvnode.keep.manifest import (
    FileSegment,
    ManifestError,
    ManifestSignatureError,
    Stream,
    check_manifest_signatures,
    format_manifest,
    locators,
    parse_manifest,
    portable_data_hash,
    rewrite_remote,
    sign_manifest,
    strip_permission_hints,
    strip_signatures,
    unescape,
    validate_manifest,
)

HASH = "acbd18db4cc2f85cedef654fccc4a4d8"
KEY = "exampleblobsigningkey0123456789abcdefghijklmnopqrstuvwxyz"
V1 = "3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"
V2 = "v2/zzzzz-gj3su-077z32aux8dg2s1/" + V1
EXPIRY = 1893456000
TTL = 1209600
NOW_FOR_EXPIRY = EXPIRY - TTL
NOW = 1700000000
V2_SIG = "ff0a8a06369007a323419829ed30fff4782ba84d"

FOO = f". {HASH}+3 0:3:foo.txt\n"
FOO_SIGNED = f". {HASH}+3+A{V2_SIG}@70dbd880 0:3:foo.txt\n"
FOO_REMOTE = f". {HASH}+3+Rzzzzz-{V2_SIG}@70dbd880 0:3:foo.txt\n"
TWO_STREAMS = (
    ". 37b51d194a7513e45b56f6524f2d51f2+3 acbd18db4cc2f85cedef654fccc4a4d8+3"
    " 0:3:bar.txt 3:3:foo.txt\n"
    "./sub\\040dir d41d8cd98f00b204e9800998ecf8427e+0 0:0:empty\n"
)
EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"

SDK_BLOCK_RE = re.compile(r"[0-9a-f]{32}\+\d+(\+\S+)*")
SDK_HINT_RE = re.compile(r"[A-Z][A-Za-z0-9@_-]+")
SDK_A_RE = re.compile(r"A[0-9a-f]{40}@[0-9a-f]{8}")

# --- strategies: valid manifests ---------------------------------------------
HEX = "0123456789abcdef"
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABC0123456789_-.é"
components = (
    st.text(NAME_CHARS, min_size=1, max_size=8)
    | st.builds(lambda a, b: a + "\\040" + b, st.text(NAME_CHARS, max_size=3), st.text(NAME_CHARS, max_size=3))
).filter(lambda c: c not in (".", ".."))
block_hints = st.lists(
    st.from_regex(r"K@[a-z0-9]{5}|Zx[a-z0-9]{0,4}", fullmatch=True)
    | st.builds(lambda s, e: f"A{s}@{e:08x}", st.text(HEX, min_size=40, max_size=40), st.integers(0, 0xFFFFFFFF)),
    max_size=2,
    unique_by=lambda h: h[0],
)


@st.composite
def streams(draw) -> Stream:
    parts = draw(st.lists(components, max_size=3))
    name = "/".join(["."] + parts)
    blocks = draw(
        st.lists(
            st.builds(
                lambda h, size, hints: parse_locator(f"{h}+{size}" + "".join("+" + x for x in hints)),
                st.text(HEX, min_size=32, max_size=32),
                st.integers(0, 2000),
                block_hints,
            ),
            min_size=1,
            max_size=4,
        )
    )
    total = sum(b.size for b in blocks)
    files = []
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, total))
        size = draw(st.integers(0, total - position))
        fname = "/".join(draw(st.lists(components, min_size=1, max_size=2)))
        files.append(FileSegment(position, size, fname))
    return Stream(name, blocks, files)


manifests = st.lists(streams(), max_size=4).map(format_manifest)


class PortableDataHashVectorTests(SynchronousTestCase):
    """Spec 12.3 vectors, bit-exact."""

    def test_empty(self) -> None:
        """The empty manifest's PDH is the empty block locator."""
        self.assertEqual(portable_data_hash(""), "d41d8cd98f00b204e9800998ecf8427e+0")

    def test_oneFile(self) -> None:
        """One stream, one block, one file."""
        self.assertEqual(portable_data_hash(FOO), "83367e8913dcec0bf3fc25ed5a27eacb+49")

    def test_signedOneFile(self) -> None:
        """The +A signature does not enter the PDH."""
        self.assertEqual(portable_data_hash(FOO_SIGNED), "83367e8913dcec0bf3fc25ed5a27eacb+49")

    def test_twoStreamsWithEscape(self) -> None:
        """Two streams, an escaped space and the empty block."""
        self.assertEqual(portable_data_hash(TWO_STREAMS), "a9ef11c40f15ab3672453843e2496e08+154")


class StripSignaturesTests(SynchronousTestCase):
    """strip_signatures keeps hash+size only, everything else byte for byte."""

    def test_dropsEveryHint(self) -> None:
        """+A, +R, +K and others are all dropped."""
        text = f". {HASH}+3+K@xyzzy+A{V2_SIG}@70dbd880+Zfoo {HASH}+3+Rzzzzz-{V2_SIG}@70dbd880 0:6:f\n"
        self.assertEqual(strip_signatures(text), f". {HASH}+3 {HASH}+3 0:6:f\n")

    def test_remoteVectorSameAsLocal(self) -> None:
        """The +R form has the same PDH as the local one."""
        self.assertEqual(portable_data_hash(FOO_REMOTE), portable_data_hash(FOO))

    def test_streamNameAndFilesUntouched(self) -> None:
        """Only locator tokens change; a hex-looking file name does not."""
        text = f"./{HASH}+x {HASH}+3+Zfoo 0:3:{HASH}+q\n"
        self.assertEqual(strip_signatures(text), f"./{HASH}+x {HASH}+3 0:3:{HASH}+q\n")

    def test_unicodeLength(self) -> None:
        """The PDH length counts UTF-8 bytes, not characters."""
        text = f". {HASH}+3 0:3:é\n"
        self.assertEqual(portable_data_hash(text).split("+")[1], str(len(text.encode())))

    @given(manifests)
    def test_idempotent(self, text: str) -> None:
        """Stripping twice is the same as stripping once."""
        once = strip_signatures(text)
        self.assertEqual(strip_signatures(once), once)

    @given(manifests)
    def test_strippedIsValid(self, text: str) -> None:
        """The portable manifest of a valid manifest is valid and hint-free."""
        stripped = strip_signatures(text)
        validate_manifest(stripped)
        for loc in locators(stripped):
            self.assertEqual(loc.hints, ())

    @given(manifests, st.text(min_size=1, max_size=30), st.integers(0, 10**6))
    def test_pdhInvariantUnderSigning(self, text: str, token: str, ttl: int) -> None:
        """Signing, re-signing and +R rewriting never change the PDH."""
        pdh = portable_data_hash(text)
        signed = sign_manifest(text, token, KEY, ttl, NOW)
        self.assertEqual(portable_data_hash(signed), pdh)
        self.assertEqual(portable_data_hash(sign_manifest(signed, V2, KEY, TTL, NOW)), pdh)
        self.assertEqual(portable_data_hash(rewrite_remote(signed, "zbbbb")), pdh)

    def test_stripPermissionHintsOnly(self) -> None:
        """strip_permission_hints drops +A only (how manifests are stored)."""
        text = f". {HASH}+3+K@xyzzy+A{V2_SIG}@70dbd880+Zfoo 0:3:f\n"
        self.assertEqual(strip_permission_hints(text), f". {HASH}+3+K@xyzzy+Zfoo 0:3:f\n")


class ParseManifestTests(SynchronousTestCase):
    """parse_manifest / validate_manifest: valid inputs."""

    def test_empty(self) -> None:
        """The empty string is a valid, empty manifest."""
        self.assertEqual(parse_manifest(""), [])

    def test_vector(self) -> None:
        """The 12.3 two-stream vector parses into its parts."""
        first, second = parse_manifest(TWO_STREAMS)
        self.assertEqual(first.name, ".")
        self.assertEqual([str(loc) for loc in first.locators], ["37b51d194a7513e45b56f6524f2d51f2+3", HASH + "+3"])
        self.assertEqual(first.files, (FileSegment(0, 3, "bar.txt"), FileSegment(3, 3, "foo.txt")))
        self.assertEqual(first.size, 6)
        self.assertEqual(second.name, "./sub\\040dir")
        self.assertEqual(unescape(second.name), "./sub dir")

    def test_specExample(self) -> None:
        """The spec 6.1 example with empty files is valid."""
        validate_manifest(". 930625b054ce894ac40596c3f5a0d947+33 0:0:a 0:0:b 0:33:output.txt\n")

    def test_emptyDirectoryMarker(self) -> None:
        """'0:0:.' marks an empty directory."""
        validate_manifest(f"./d {EMPTY_BLOCK} 0:0:.\n")

    def test_fileNameWithSlash(self) -> None:
        """A file name may contain '/' between components."""
        validate_manifest(f". {HASH}+3 0:3:a/b/c.txt\n")

    def test_fileNameWithColon(self) -> None:
        """A name may contain a raw ':' after the size field."""
        self.assertEqual(parse_manifest(f". {HASH}+3 0:3:a:b\n")[0].files[0].name, "a:b")

    def test_filesSpanningBlocks(self) -> None:
        """A file may span blocks; the limit is the stream's total size."""
        validate_manifest(f". {HASH}+3 {HASH}+3 2:4:f\n")

    def test_signedAndRemoteLocators(self) -> None:
        """Signed and +R locators are fine in a manifest."""
        validate_manifest(FOO_SIGNED + FOO_REMOTE)

    def test_unescapeNonAscii(self) -> None:
        """Escaped UTF-8 bytes decode to the character."""
        self.assertEqual(unescape("caf\\303\\251"), "café")
        self.assertEqual(unescape("a\\134b"), "a\\b")

    @given(manifests)
    def test_roundTrip(self, text: str) -> None:
        """format_manifest(parse_manifest(t)) == t for valid manifests."""
        self.assertEqual(format_manifest(parse_manifest(text)), text)


class ManifestErrorTests(SynchronousTestCase):
    """Each rule violation raises ManifestError naming the line and the problem."""

    def assertInvalid(self, text: str, line: int, fragment: str) -> None:
        error = self.assertRaises(ManifestError, parse_manifest, text)
        self.assertEqual(error.line, line)
        self.assertTrue(str(error).startswith(f"line {line}: "), str(error))
        self.assertIn(fragment, str(error))

    def test_isValueError(self) -> None:
        """ManifestError is a ValueError."""
        self.assertTrue(issubclass(ManifestError, ValueError))

    def test_noTrailingNewline(self) -> None:
        """The last line must end with a newline."""
        self.assertInvalid(FOO + FOO[:-1], 2, "newline")

    def test_emptyLine(self) -> None:
        """Empty lines are refused."""
        self.assertInvalid(FOO + "\n" + FOO, 2, "empty line")

    def test_doubleSpace(self) -> None:
        """Tokens are separated by exactly one space."""
        self.assertInvalid(f".  {HASH}+3 0:3:f\n", 1, "empty token")

    def test_trailingSpace(self) -> None:
        """No space before the newline."""
        self.assertInvalid(f". {HASH}+3 0:3:f \n", 1, "empty token")

    def test_tab(self) -> None:
        """Control characters such as tab are refused."""
        self.assertInvalid(f".\t{HASH}+3 0:3:f\n", 1, "control character")

    def test_carriageReturn(self) -> None:
        """CRLF line ends are refused."""
        self.assertInvalid(f". {HASH}+3 0:3:f\r\n", 1, "control character")

    def test_streamNameWithoutDot(self) -> None:
        """Stream names start with '.'."""
        self.assertInvalid(f"foo {HASH}+3 0:3:f\n", 1, "does not start with '.'")

    def test_streamNameDotPrefix(self) -> None:
        """'.foo' is not './foo'."""
        self.assertInvalid(f".foo {HASH}+3 0:3:f\n", 1, "does not start with '.'")

    def test_streamNameTrailingSlash(self) -> None:
        """No trailing slash in a stream name."""
        self.assertInvalid(f"./a/ {HASH}+3 0:3:f\n", 1, "component")

    def test_streamNameDotDot(self) -> None:
        """No '..' component in a stream name."""
        self.assertInvalid(f"./a/.. {HASH}+3 0:3:f\n", 1, "component")

    def test_streamNameBadEscape(self) -> None:
        """A backslash must start a 3-digit octal escape."""
        self.assertInvalid(f"./a\\x {HASH}+3 0:3:f\n", 1, "backslash")

    def test_escapeTooLarge(self) -> None:
        """Escapes above \\377 are refused."""
        self.assertInvalid(f". {HASH}+3 0:3:a\\777\n", 1, "above")

    def test_noLocator(self) -> None:
        """At least one locator per line."""
        self.assertInvalid(". 0:0:f\n", 1, "no locator")

    def test_onlyName(self) -> None:
        """A line with just a stream name has no locator."""
        self.assertInvalid(".\n", 1, "no locator")

    def test_noFileToken(self) -> None:
        """At least one file token per line."""
        self.assertInvalid(f". {HASH}+3\n", 1, "no file token")

    def test_badLocator(self) -> None:
        """A malformed locator is reported with the locator's own error."""
        self.assertInvalid(f". {HASH.upper()}+3 0:3:f\n", 1, "32 lowercase hex")

    def test_locatorWithoutSize(self) -> None:
        """Locators in manifests must carry a size."""
        self.assertInvalid(f". {HASH} 0:3:f\n", 1, "no size hint")

    def test_oneLetterHint(self) -> None:
        """A one-letter hint is refused (the Python SDK would reject it)."""
        self.assertInvalid(f". {HASH}+3+B 0:3:f\n", 1, "one-letter hint")

    def test_locatorAfterFiles(self) -> None:
        """Locators must all come before the file tokens."""
        self.assertInvalid(f". {HASH}+3 0:3:f {HASH}+3\n", 1, "after file tokens")

    def test_badFileToken(self) -> None:
        """File tokens are position:size:name with decimal numbers."""
        self.assertInvalid(f". {HASH}+3 0:x:f\n", 1, "position:size:name")
        self.assertInvalid(f". {HASH}+3 0:3:\n", 1, "position:size:name")

    def test_fileBeyondStream(self) -> None:
        """A file may not extend past the stream's total size."""
        self.assertInvalid(f". {HASH}+3 1:3:f\n", 1, "past the end of the stream (3 bytes)")

    def test_fileNameLeadingSlash(self) -> None:
        """File names may not start with '/'."""
        self.assertInvalid(f". {HASH}+3 0:3:/f\n", 1, "component")

    def test_fileNameDoubleSlash(self) -> None:
        """File names may not contain '//'."""
        self.assertInvalid(f". {HASH}+3 0:3:a//f\n", 1, "component")

    def test_fileNameDotDot(self) -> None:
        """File names may not contain '..' components."""
        self.assertInvalid(f". {HASH}+3 0:3:a/../f\n", 1, "component")

    def test_nonEmptyDirectoryMarker(self) -> None:
        """'.' as a file name is only the empty-directory marker (size 0)."""
        self.assertInvalid(f". {HASH}+3 0:3:.\n", 1, "empty directory")

    def test_lineNumberOfLaterLine(self) -> None:
        """Errors on later lines report that line's number."""
        self.assertInvalid(FOO + FOO + f". {HASH}+3 0:4:f\n", 3, "past the end")

    def test_loneSurrogate(self) -> None:
        """Text that cannot be UTF-8 encoded is refused, not crashed on."""
        self.assertInvalid(f". {HASH}+3 0:3:\udc80\n", 1, "UTF-8")

    def test_notString(self) -> None:
        """Bytes are a programming error."""
        self.assertRaises(TypeError, parse_manifest, FOO.encode())


class LocatorsTests(SynchronousTestCase):
    """locators() lists every block in order."""

    def test_order(self) -> None:
        """All locators of all streams, in manifest order."""
        self.assertEqual(
            [str(loc) for loc in locators(TWO_STREAMS)],
            ["37b51d194a7513e45b56f6524f2d51f2+3", HASH + "+3", EMPTY_BLOCK],
        )

    def test_validatesEagerly(self) -> None:
        """A malformed manifest raises at call time, not on iteration."""
        self.assertRaises(ManifestError, locators, "nonsense\n")


class SignManifestTests(SynchronousTestCase):
    """sign_manifest re-signs every locator."""

    def test_vector(self) -> None:
        """Signing the 12.3 manifest for the v2 token gives the 12.1 signature."""
        self.assertEqual(sign_manifest(FOO, V2, KEY, TTL, NOW_FOR_EXPIRY), FOO_SIGNED)

    def test_resignsOldSignature(self) -> None:
        """An old +A is replaced, not kept alongside."""
        old = FOO.replace("+3 ", f"+3+A{'0' * 40}@00000001 ")
        self.assertEqual(sign_manifest(old, V2, KEY, TTL, NOW_FOR_EXPIRY), FOO_SIGNED)

    def test_expiryCap(self) -> None:
        """With expiry_cap (trash_at) before now+ttl, the cap is the expiry."""
        signed = sign_manifest(FOO, V2, KEY, TTL, NOW, expiry_cap=NOW + 60)
        loc = next(locators(signed))
        self.assertEqual(loc.permission[1], NOW + 60)  # type: ignore[index]

    def test_expiryCapLater(self) -> None:
        """A cap after now+ttl does not extend the expiry."""
        self.assertEqual(
            sign_manifest(FOO, V2, KEY, TTL, NOW_FOR_EXPIRY, expiry_cap=EXPIRY + 999), FOO_SIGNED
        )

    def test_noKeyOrToken(self) -> None:
        """Without key or token the manifest comes back unchanged."""
        self.assertEqual(sign_manifest(FOO, V2, "", TTL, NOW), FOO)
        self.assertEqual(sign_manifest(FOO_SIGNED, "", KEY, TTL, NOW), FOO_SIGNED)

    def test_empty(self) -> None:
        """The empty manifest signs to itself."""
        self.assertEqual(sign_manifest("", V2, KEY, TTL, NOW), "")

    def test_invalid(self) -> None:
        """A malformed manifest raises ManifestError."""
        self.assertRaises(ManifestError, sign_manifest, f". {HASH} 0:3:f\n", V2, KEY, TTL, NOW)

    @given(manifests, st.text(min_size=1, max_size=30))
    def test_sdkFormat(self, text: str, token: str) -> None:
        """Every locator of a signed manifest has the shape the Python SDK demands."""
        signed = sign_manifest(text, token, KEY, TTL, NOW)
        for line in signed.splitlines():
            for token_text in line.split(" ")[1:]:
                if ":" in token_text:
                    continue
                self.assertTrue(SDK_BLOCK_RE.fullmatch(token_text), token_text)
                hints = token_text.split("+")[2:]
                for hint in hints:
                    self.assertTrue(SDK_HINT_RE.fullmatch(hint), hint)
                self.assertTrue(SDK_A_RE.fullmatch(hints[-1]), hints[-1])

    @given(manifests, st.text(min_size=1, max_size=30))
    def test_signedManifestChecks(self, text: str, token: str) -> None:
        """A freshly signed manifest passes check_manifest_signatures."""
        signed = sign_manifest(text, token, KEY, TTL, NOW)
        self.assertIsNone(check_manifest_signatures(signed, token, KEY, TTL, NOW))


class RewriteRemoteTests(SynchronousTestCase):
    """rewrite_remote turns +A into +R<cluster>- (spec 2.6)."""

    def test_vector(self) -> None:
        """The 12.1 +R vector inside a manifest."""
        self.assertEqual(rewrite_remote(FOO_SIGNED, "zzzzz"), FOO_REMOTE)

    def test_unsignedUntouched(self) -> None:
        """Locators without +A stay as they are."""
        self.assertEqual(rewrite_remote(TWO_STREAMS, "zzzzz"), TWO_STREAMS)

    def test_otherHintsKept(self) -> None:
        """Other hints keep their place around the rewritten one."""
        text = f". {HASH}+3+K@xyzzy+A{V2_SIG}@70dbd880+Zfoo 0:3:f\n"
        self.assertEqual(
            rewrite_remote(text, "zbbbb"), f". {HASH}+3+K@xyzzy+Rzbbbb-{V2_SIG}@70dbd880+Zfoo 0:3:f\n"
        )

    def test_badCluster(self) -> None:
        """The cluster id is validated."""
        self.assertRaises(ValueError, rewrite_remote, FOO_SIGNED, "Z")

    def test_invalid(self) -> None:
        """A malformed manifest raises ManifestError."""
        self.assertRaises(ManifestError, rewrite_remote, "x\n", "zzzzz")


class CheckManifestSignaturesTests(SynchronousTestCase):
    """check_manifest_signatures: the save-time permission check."""

    def sign(self, text: str) -> str:
        return sign_manifest(text, V2, KEY, TTL, NOW)

    def test_signedOK(self) -> None:
        """A manifest signed for the caller's token passes."""
        self.assertIsNone(check_manifest_signatures(FOO_SIGNED, V2, KEY, TTL, NOW))

    def test_empty(self) -> None:
        """The empty manifest passes."""
        self.assertIsNone(check_manifest_signatures("", V2, KEY, TTL, NOW))

    def test_unsignedEmptyBlock(self) -> None:
        """The empty block may be unsigned (arv-put sends it so for empty files)."""
        text = f". {EMPTY_BLOCK} 0:0:empty\n"
        self.assertIsNone(check_manifest_signatures(text, V2, KEY, TTL, NOW))

    def test_emptyBlockNextToSignedBlocks(self) -> None:
        """Unsigned empty block plus signed data blocks passes."""
        text = self.sign(f". {HASH}+3 0:3:f\n") + f"./e {EMPTY_BLOCK} 0:0:empty\n"
        self.assertIsNone(check_manifest_signatures(text, V2, KEY, TTL, NOW))

    def test_remoteLocatorsAccepted(self) -> None:
        """+R locators are acceptable as they are."""
        self.assertIsNone(check_manifest_signatures(FOO_REMOTE, V2, KEY, TTL, NOW))

    def test_unsigned(self) -> None:
        """An unsigned data block fails as missing, naming the block and line."""
        text = FOO_SIGNED + f"./x {HASH}+3 0:3:f\n"
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, text, V2, KEY, TTL, NOW
        )
        self.assertIsInstance(error.error, SignatureMissing)
        self.assertEqual((error.line, error.locator), (2, HASH + "+3"))
        self.assertIn(f"line 2: locator {HASH}+3", str(error))

    def test_firstOffenderNamed(self) -> None:
        """With several bad locators the first one is reported."""
        other = "37b51d194a7513e45b56f6524f2d51f2+3"
        text = f". {other} {HASH}+3 0:6:f\n"
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, text, V2, KEY, TTL, NOW
        )
        self.assertEqual(error.locator, other)

    def test_otherToken(self) -> None:
        """Signed for another token: invalid."""
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, FOO_SIGNED, V1, KEY, TTL, NOW
        )
        self.assertIsInstance(error.error, SignatureInvalid)

    def test_expired(self) -> None:
        """Past the expiry: expired."""
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, FOO_SIGNED, V2, KEY, TTL, EXPIRY + 1
        )
        self.assertIsInstance(error.error, SignatureExpired)

    def test_isSignatureError(self) -> None:
        """ManifestSignatureError is a SignatureError, chained to the cause."""
        self.assertTrue(issubclass(ManifestSignatureError, SignatureError))
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, FOO, V2, KEY, TTL, NOW
        )
        self.assertIs(error.__cause__, error.error)

    def test_messageHidesSignatureAndToken(self) -> None:
        """The message names the block by hash+size, without signature or token."""
        error = self.assertRaises(
            ManifestSignatureError, check_manifest_signatures, FOO_SIGNED, V1, KEY, TTL, NOW
        )
        self.assertNotIn(V2_SIG, str(error))
        self.assertNotIn(V1, str(error))

    def test_malformed(self) -> None:
        """A malformed manifest raises ManifestError, not a signature error."""
        self.assertRaises(ManifestError, check_manifest_signatures, "x\n", V2, KEY, TTL, NOW)

    def test_localAndRemoteHintsVerifiedAsLocal(self) -> None:
        """A locator with both +A and +R is treated as local: its +A must verify."""
        signed = sign_locator(f"{HASH}+3+Rzzzzz-{V2_SIG}@70dbd880", V1, KEY, TTL, NOW)
        text = f". {signed} 0:3:f\n"
        self.assertIsNone(check_manifest_signatures(text, V1, KEY, TTL, NOW))
        self.assertRaises(ManifestSignatureError, check_manifest_signatures, text, V2, KEY, TTL, NOW)
