"""Collection manifests: validation, signing and portable data hashes.

Why: a collection is its manifest text.  arvnode must (a) refuse manifests
the Arvados SDKs would choke on, with an error that says which line is
wrong, (b) check on save that the caller may read every block it references
(its ``+A`` signatures), (c) store it unsigned and compute the same portable
data hash as Arvados, bit for bit, and (d) sign it again for whoever reads
it, or rewrite it with ``+R`` hints when it came from a remote cluster.
Spec ``arvados-wire.md`` section 6 and ``client-surface.md`` 5.5-5.6.

Everything here is a pure function on text; ``now`` is passed in.  Tokens
and keys never appear in error messages.
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Iterable, Iterator

from attrs import field, frozen

from arvnode.keep.locator import (
    Locator,
    LocatorError,
    SignatureError,
    parse_locator,
    sign_locator,
    to_remote,
    verify_locator,
)

__all__ = [
    "ManifestError",
    "ManifestSignatureError",
    "FileSegment",
    "Stream",
    "parse_manifest",
    "validate_manifest",
    "format_manifest",
    "unescape",
    "strip_signatures",
    "strip_permission_hints",
    "portable_data_hash",
    "locators",
    "sign_manifest",
    "rewrite_remote",
    "check_manifest_signatures",
]

_ESCAPE_RE = re.compile(r"\\([0-7]{3})")
_BAD_ESCAPE_RE = re.compile(r"\\(?![0-7]{3})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FILE_RE = re.compile(r"([0-9]{1,19}):([0-9]{1,19}):(.+)")
_LOCATOR_PREFIX_RE = re.compile(r"[0-9a-f]{32}(?:\+|$)")


class ManifestError(ValueError):
    """The manifest text is malformed.

    ``line`` is the 1-based line number, ``reason`` says what is wrong; the
    message is ``line <n>: <reason>``.
    """

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class ManifestSignatureError(SignatureError):
    """A locator in a manifest failed its signature check.

    ``locator`` is the offending locator text, ``line`` its 1-based line,
    ``error`` the underlying :class:`SignatureMissing` /
    :class:`SignatureExpired` / :class:`SignatureInvalid`.  The message names
    the block by ``hash+size`` only.
    """

    def __init__(self, line: int, locator: str, error: SignatureError) -> None:
        name = "+".join(locator.split("+")[:2])  # hash+size: no signature
        super().__init__(f"line {line}: locator {name}: {error}")
        self.line = line
        self.locator = locator
        self.error = error


@frozen
class FileSegment:
    """``position:size:name``: bytes ``[position, position+size)`` of the stream.

    ``name`` is as written in the manifest (escaped); see :func:`unescape`.
    """

    position: int
    size: int
    name: str

    def __str__(self) -> str:
        return f"{self.position}:{self.size}:{self.name}"


def _locator_tuple(locators: Iterable[Locator]) -> tuple[Locator, ...]:
    # Typed ``tuple`` converters: mypy's attrs plugin cannot infer what a
    # bare ``converter=tuple`` accepts.
    return tuple(locators)


def _segment_tuple(files: Iterable[FileSegment]) -> tuple[FileSegment, ...]:
    return tuple(files)


@frozen
class Stream:
    """One manifest line.  ``name`` is as written (escaped, e.g. ``./a\\040b``)."""

    name: str
    locators: tuple[Locator, ...] = field(converter=_locator_tuple)
    files: tuple[FileSegment, ...] = field(converter=_segment_tuple)

    @property
    def size(self) -> int:
        """Total bytes of the stream: the sum of its blocks' sizes."""
        return sum(loc.size or 0 for loc in self.locators)

    def to_line(self) -> str:
        """The manifest line, with its trailing newline."""
        tokens = [self.name, *map(str, self.locators), *map(str, self.files)]
        return " ".join(tokens) + "\n"


def unescape(text: str) -> str:
    """Decode the ``\\NNN`` octal escapes of a stream or file name.

    Escapes stand for bytes; the result is decoded as UTF-8 (bytes that are
    not valid UTF-8 become surrogate escapes rather than errors).  Raises
    :class:`ValueError` for an escape above ``\\377``.
    """
    if "\\" not in text:
        return text
    out = bytearray()
    pos = 0
    for match in _ESCAPE_RE.finditer(text):
        value = int(match[1], 8)
        if value > 0xFF:
            raise ValueError(f"escape {match[0]!r} is above \\377")
        out += text[pos : match.start()].encode("utf-8", "surrogateescape")
        out.append(value)
        pos = match.end()
    out += text[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def _check_escapes(line_no: int, what: str, text: str) -> None:
    if _BAD_ESCAPE_RE.search(text):
        raise ManifestError(
            line_no, f"{what} {text!r} has a backslash not followed by 3 octal digits"
        )
    for match in _ESCAPE_RE.finditer(text):
        if int(match[1], 8) > 0o377:
            raise ManifestError(line_no, f"{what} {text!r} has escape {match[0]!r} above \\377")


def _check_stream_name(line_no: int, name: str) -> None:
    _check_escapes(line_no, "stream name", name)
    if name != "." and not name.startswith("./"):
        raise ManifestError(line_no, f"stream name {name!r} does not start with '.'")
    for component in name.split("/")[1:]:
        if unescape(component) in ("", ".", ".."):
            raise ManifestError(
                line_no,
                f"stream name {name!r} has an empty, '.' or '..' component",
            )


def _check_file_name(line_no: int, token: str, name: str, size: int) -> None:
    _check_escapes(line_no, "file name", name)
    if name == ".":
        if size != 0:
            raise ManifestError(
                line_no, f"file token {token!r}: '.' (empty directory) must have size 0"
            )
        return
    for component in name.split("/"):
        if unescape(component) in ("", ".", ".."):
            raise ManifestError(
                line_no,
                f"file token {token!r}: name has an empty, '.' or '..' component"
                " (leading, trailing or double '/')",
            )


def _parse_line(line_no: int, line: str) -> Stream:
    if line == "":
        raise ManifestError(line_no, "empty line")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(line_no, "text is not encodable as UTF-8") from None
    control = _CONTROL_RE.search(line)
    if control:
        raise ManifestError(
            line_no, f"control character {control[0]!r} (write it as an octal escape)"
        )
    tokens = line.split(" ")
    if "" in tokens:
        raise ManifestError(
            line_no, "empty token (leading, trailing or repeated space)"
        )
    name = tokens[0]
    _check_stream_name(line_no, name)
    index = 1
    locs: list[Locator] = []
    while index < len(tokens) and ":" not in tokens[index]:
        token = tokens[index]
        try:
            loc = parse_locator(token)
        except LocatorError as exc:
            raise ManifestError(line_no, f"bad locator {token!r}: {exc}") from None
        if loc.size is None:
            raise ManifestError(line_no, f"locator {token!r} has no size hint")
        for hint in loc.hints:
            if len(hint) < 2:
                # Spec 2.1 allows it, but the Python SDK's manifest parser
                # wants [A-Z][A-Za-z0-9@_-]+ and would refuse the collection.
                raise ManifestError(
                    line_no, f"locator {token!r} has a one-letter hint {hint!r}"
                )
        locs.append(loc)
        index += 1
    if not locs:
        raise ManifestError(line_no, "no locator after the stream name")
    if index == len(tokens):
        raise ManifestError(line_no, "no file token after the locators")
    stream_size = sum(loc.size or 0 for loc in locs)
    files: list[FileSegment] = []
    for token in tokens[index:]:
        match = _FILE_RE.fullmatch(token)
        if not match:
            if ":" not in token:
                raise ManifestError(
                    line_no, f"{token!r} after file tokens (locators must come first)"
                )
            raise ManifestError(
                line_no, f"file token {token!r} is not position:size:name"
            )
        position, size, fname = int(match[1]), int(match[2]), match[3]
        if position + size > stream_size:
            raise ManifestError(
                line_no,
                f"file token {token!r} ends at byte {position + size}, past the"
                f" end of the stream ({stream_size} bytes)",
            )
        _check_file_name(line_no, token, fname, size)
        files.append(FileSegment(position, size, fname))
    return Stream(name, locs, files)


def parse_manifest(text: str) -> list[Stream]:
    """Parse and validate ``text``; raise :class:`ManifestError` if malformed.

    Rules: zero or more lines, each ending in ``\\n`` and non-empty; tokens
    separated by single spaces; no control characters; stream name ``.``
    or ``./...`` (escapes ``\\NNN`` allowed, no empty / ``.`` / ``..``
    components); at least one locator, each valid per spec 2.1, with a
    size and no one-letter hint (the Python SDK refuses those); then at
    least one ``position:size:name`` token lying within the stream's total
    size.  The empty string is a valid, empty manifest.
    """
    if not isinstance(text, str):
        raise TypeError(f"manifest must be a str, not {type(text).__name__}")
    if text == "":
        return []
    lines = text.split("\n")
    if lines[-1] != "":
        raise ManifestError(len(lines), "line does not end with a newline")
    return [_parse_line(n, line) for n, line in enumerate(lines[:-1], start=1)]


def validate_manifest(text: str) -> None:
    """Raise :class:`ManifestError` unless ``text`` is a valid manifest."""
    parse_manifest(text)


def format_manifest(streams: list[Stream]) -> str:
    """The manifest text of ``streams`` (inverse of :func:`parse_manifest`)."""
    return "".join(stream.to_line() for stream in streams)


def _map_locator_tokens(text: str, fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to every locator-looking token, keeping all else as is.

    A locator token is any token after the first on its line that starts
    with 32 lowercase hex digits followed by ``+`` or the end of the token.
    """
    out_lines = []
    for line in text.split("\n"):
        tokens = line.split(" ")
        for i in range(1, len(tokens)):
            if _LOCATOR_PREFIX_RE.match(tokens[i]):
                tokens[i] = fn(tokens[i])
        out_lines.append(" ".join(tokens))
    return "\n".join(out_lines)


def _portable_token(token: str) -> str:
    parts = token.split("+")
    if len(parts) > 1 and parts[1][:1].isascii() and parts[1][:1].isdigit():
        return parts[0] + "+" + parts[1]
    return parts[0]


def strip_signatures(text: str) -> str:
    """The portable manifest: every locator reduced to ``hash+size``.

    Drops *every* hint after the size (``+A``, ``+R``, ``+K`` ...) and
    keeps everything else byte for byte (spec 6.2).  Works on text without
    validating it, so it is total and idempotent.
    """
    return _map_locator_tokens(text, _portable_token)


def strip_permission_hints(text: str) -> str:
    """``text`` with only the ``+A`` hints removed: how manifests are stored.

    Other hints (``+K``, ``+R`` ...) are kept (spec 6.3).  Validates first.
    """
    validate_manifest(text)
    return _map_locator_tokens(
        text, lambda token: str(parse_locator(token).without_hint_types("A"))
    )


def portable_data_hash(text: str) -> str:
    """``md5_hex(stripped) + "+" + len(stripped)`` of the portable manifest."""
    stripped = strip_signatures(text).encode("utf-8")
    return f"{hashlib.md5(stripped).hexdigest()}+{len(stripped)}"


def locators(text: str) -> Iterator[Locator]:
    """Every locator of the manifest, in order; validates eagerly."""
    streams = parse_manifest(text)
    return (loc for stream in streams for loc in stream.locators)


def sign_manifest(
    text: str,
    token: str,
    key: str,
    ttl: float | int,
    now: float,
    expiry_cap: int | None = None,
) -> str:
    """Re-sign every locator for ``token`` (spec 6.3).

    Each locator loses its old ``+A`` and gets a new one at its end, expiring
    at ``min(now + ttl, expiry_cap)`` (``expiry_cap`` is the collection's
    ``trash_at`` in Unix seconds, if any).  With an empty key or token the
    text is returned unchanged.  Raises :class:`ManifestError` if invalid.
    """
    validate_manifest(text)
    if not key or not token:
        return text
    return _map_locator_tokens(
        text,
        lambda tok: sign_locator(tok, token, key, ttl, now, expiry_cap=expiry_cap),
    )


def rewrite_remote(text: str, cluster: str) -> str:
    """Turn every ``+A`` into ``+R<cluster>-`` (spec 2.6).

    For a manifest fetched from remote ``cluster`` and handed to a local
    client: its keepstore (or arvnode) will fetch those blocks from
    ``cluster`` with the client's token salted for it.  Validates first.
    """
    validate_manifest(text)
    return _map_locator_tokens(text, lambda tok: to_remote(tok, cluster))


def check_manifest_signatures(
    text: str, token: str, key: str, ttl: float | int, now: float
) -> None:
    """Check the caller may reference every block of ``text``.

    Every locator must carry a valid ``+A`` for ``token``, except the empty
    block (``d41d8cd98f00b204e9800998ecf8427e+0``, which holds no data) and
    remote locators (``+R`` without ``+A``), which are accepted as they are.
    Raises :class:`ManifestError` if the text is malformed, else
    :class:`ManifestSignatureError` naming the first offending locator.
    """
    for line_no, stream in enumerate(parse_manifest(text), start=1):
        for loc in stream.locators:
            if loc.is_empty_block:
                continue
            if loc.remote is not None and loc.permission is None:
                continue
            try:
                verify_locator(loc, token, key, ttl, now)
            except SignatureError as exc:
                raise ManifestSignatureError(line_no, str(loc), exc) from exc
