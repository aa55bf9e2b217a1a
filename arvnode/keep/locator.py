"""Keep block locators and their permission signatures.

Why this module exists: every Keep request and every manifest carries
locators, and Arvados clients, keepstores and controllers only interoperate
if arvnode parses, signs and verifies them bit-for-bit the way Arvados does
(spec ``arvados-wire.md`` section 2).  Getting any detail wrong (the TTL in
the HMAC, the verbatim token, checking expiry before the HMAC, where the new
``+A`` goes) silently breaks clients, so the rules live in one place, as pure
functions: no I/O, no clock (``now`` is always passed in), no global state.

Tokens and signing keys are inputs here; nothing in this module logs or
formats them into error messages.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from typing import Iterable

import attrs
from attrs import field, frozen

__all__ = [
    "MAX_BLOCK_SIZE",
    "EMPTY_BLOCK_HASH",
    "EMPTY_BLOCK_LOCATOR",
    "LocatorError",
    "SignatureError",
    "SignatureMissing",
    "SignatureExpired",
    "SignatureInvalid",
    "Locator",
    "parse_locator",
    "strip_cluster_hints",
    "signature",
    "sign_locator",
    "verify_locator",
    "to_remote",
    "from_remote",
]

#: Largest block Keep stores: 64 MiB (spec 2.1).
MAX_BLOCK_SIZE = 67108864
#: md5 of the empty string: the block every empty file refers to.
EMPTY_BLOCK_HASH = "d41d8cd98f00b204e9800998ecf8427e"
EMPTY_BLOCK_LOCATOR = EMPTY_BLOCK_HASH + "+0"

_MAX_EXPIRY = 0xFFFFFFFF  # what fits the 8 hex digits of a +A / +R hint

_HASH_RE = re.compile(r"[0-9a-f]{32}")
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_HINT_RE = re.compile(r"[A-Z][A-Za-z0-9@_-]*")
_PERMISSION_RE = re.compile(r"A([0-9a-f]{40})@([0-9a-f]{8})")
_REMOTE_RE = re.compile(r"R([a-z0-9]{5})-([0-9a-f]{40})@([0-9a-f]{8})")
_CLUSTER_RE = re.compile(r"[a-z0-9]{5}")
# keepproxy drops "+K@<cluster>" (exactly five characters) but keeps the
# 27-character "+K@<keep service uuid>" form.
_CLUSTER_HINT_RE = re.compile(r"\+K@[a-z0-9]{5}(?=\+|$)")


def _show(text: str, limit: int = 100) -> str:
    """``repr`` of a client-supplied string, shortened for error messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


class LocatorError(ValueError):
    """A locator does not follow the grammar of spec 2.1.

    The message says what exactly is wrong, so it can go back to the client
    (keepstore answers 400 ``invalid locator``).
    """


class SignatureError(Exception):
    """Base for the three ways a permission signature can fail to verify."""


class SignatureMissing(SignatureError):
    """No usable ``+A`` hint (keepstore: 400 ``invalid signature``)."""


class SignatureExpired(SignatureError):
    """The ``+A`` expiry is in the past (keepstore: 401 ``expired signature``).

    Reported even if the signature itself is bogus: expiry is checked first.
    """


class SignatureInvalid(SignatureError):
    """The HMAC does not match this token, key and TTL (400)."""


def _check_hash(hash: str) -> None:
    if not isinstance(hash, str) or not _HASH_RE.fullmatch(hash):
        raise LocatorError(
            f"hash {_show(str(hash))} is not 32 lowercase hex digits"
        )


def _check_size(size: int | None) -> None:
    if size is None:
        return
    if type(size) is not int:
        raise LocatorError(f"size must be an int or None, not {type(size).__name__}")
    if size < 0 or size > MAX_BLOCK_SIZE:
        raise LocatorError(
            f"size {size} is outside 0..{MAX_BLOCK_SIZE} (the maximum block size)"
        )


def _check_hints(hints: tuple[str, ...]) -> None:
    seen_a = seen_r = False
    for position, hint in enumerate(hints, start=1):
        if not isinstance(hint, str):
            raise LocatorError(f"hint {position} is not a string")
        if hint == "":
            raise LocatorError(f"hint {position} is empty")
        if "0" <= hint[0] <= "9":
            raise LocatorError(
                f"hint {_show(hint)} starts with a digit: a size is only allowed"
                " directly after the hash"
            )
        if not _HINT_RE.fullmatch(hint):
            raise LocatorError(
                f"hint {_show(hint)} does not match [A-Z][A-Za-z0-9@_-]*"
            )
        if hint[0] == "A":
            if not _PERMISSION_RE.fullmatch(hint):
                raise LocatorError(
                    f"permission hint {_show(hint)} is not"
                    " A<40 lowercase hex>@<8 lowercase hex>"
                )
            if seen_a:
                raise LocatorError("more than one +A permission hint")
            seen_a = True
        elif hint[0] == "R":
            if not _REMOTE_RE.fullmatch(hint):
                raise LocatorError(
                    f"remote hint {_show(hint)} is not"
                    " R<5 [a-z0-9]>-<40 lowercase hex>@<8 lowercase hex>"
                )
            if seen_r:
                raise LocatorError("more than one +R remote hint")
            seen_r = True


def _hash_validator(_inst: object, _attr: object, value: str) -> None:
    _check_hash(value)


def _size_validator(_inst: object, _attr: object, value: int | None) -> None:
    _check_size(value)


def _hints_validator(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    _check_hints(value)


def _hints_tuple(hints: Iterable[str]) -> tuple[str, ...]:
    # A typed ``tuple``: with bare ``converter=tuple`` the attrs plugin of
    # mypy cannot tell what ``Locator(hints=...)`` accepts.
    return tuple(hints)


@frozen
class Locator:
    """A parsed, valid locator: ``hash[+size][+hint...]``.

    ``hints`` holds each hint without its leading ``+``, in the original
    order; the size is not a hint.  Construction validates everything, so a
    :class:`Locator` always formats to a locator that :func:`parse_locator`
    accepts, and ``parse_locator(str(loc)) == loc``.
    """

    hash: str = field(validator=_hash_validator)
    size: int | None = field(default=None, validator=_size_validator)
    hints: tuple[str, ...] = field(
        default=(), converter=_hints_tuple, validator=_hints_validator
    )

    def __str__(self) -> str:
        text = self.hash
        if self.size is not None:
            text += f"+{self.size}"
        for hint in self.hints:
            text += "+" + hint
        return text

    @property
    def permission(self) -> tuple[str, int] | None:
        """``(signature, expiry)`` of the ``+A`` hint, or None."""
        for hint in self.hints:
            if hint[0] == "A":
                match = _PERMISSION_RE.fullmatch(hint)
                assert match is not None  # guaranteed by validation
                return match[1], int(match[2], 16)
        return None

    @property
    def remote(self) -> tuple[str, str, int] | None:
        """``(cluster, signature, expiry)`` of the ``+R`` hint, or None."""
        for hint in self.hints:
            if hint[0] == "R":
                match = _REMOTE_RE.fullmatch(hint)
                assert match is not None  # guaranteed by validation
                return match[1], match[2], int(match[3], 16)
        return None

    @property
    def is_empty_block(self) -> bool:
        """True for ``d41d8cd98f00b204e9800998ecf8427e`` with size 0 or no size."""
        return self.hash == EMPTY_BLOCK_HASH and self.size in (None, 0)

    def hints_of_type(self, hint_type: str) -> tuple[str, ...]:
        """The hints whose type letter is ``hint_type``, in order."""
        return tuple(h for h in self.hints if h[0] == hint_type)

    def without_hint_types(self, *hint_types: str) -> "Locator":
        """A copy without any hint whose type letter is in ``hint_types``."""
        for hint_type in hint_types:
            if len(hint_type) != 1:
                raise ValueError(f"hint type must be one letter, got {hint_type!r}")
        return attrs.evolve(
            self, hints=tuple(h for h in self.hints if h[0] not in hint_types)
        )

    def without_hints(self) -> "Locator":
        """``hash[+size]`` only: the portable form used in PDHs."""
        return attrs.evolve(self, hints=())

    def with_hints(self, *hints: str) -> "Locator":
        """A copy with ``hints`` (no leading ``+``) appended at the end."""
        return attrs.evolve(self, hints=self.hints + tuple(hints))

    def with_size(self, size: int | None) -> "Locator":
        """A copy with the size replaced (or removed, with None)."""
        return attrs.evolve(self, size=size)


def parse_locator(text: str) -> Locator:
    """Parse ``text`` strictly per spec 2.1 or raise :class:`LocatorError`.

    Accepted: 32 lowercase hex digits; optionally ``+<size>`` right after
    (decimal, no leading zeros, at most :data:`MAX_BLOCK_SIZE`); then hints
    ``+[A-Z][A-Za-z0-9@_-]*``.  ``+A`` and ``+R`` hints must have their exact
    shape and may each appear once.  Empty parts (``++``, a trailing ``+``)
    and digit-led hints after the size position are rejected.
    """
    if not isinstance(text, str):
        raise LocatorError(f"locator must be a str, not {type(text).__name__}")
    if text == "":
        raise LocatorError("locator is empty")
    parts = text.split("+")
    _check_hash(parts[0])
    if parts[-1] == "" and len(parts) > 1:
        raise LocatorError(f"locator {_show(text)} ends with '+'")
    if "" in parts[1:]:
        raise LocatorError(f"locator {_show(text)} has an empty hint ('++')")
    rest = parts[1:]
    size: int | None = None
    if rest and "0" <= rest[0][:1] <= "9":
        size_text = rest.pop(0)
        if not _SIZE_RE.fullmatch(size_text):
            raise LocatorError(
                f"size {_show(size_text)} is not a decimal number without"
                " leading zeros"
            )
        if len(size_text) > len(str(MAX_BLOCK_SIZE)) or int(size_text) > MAX_BLOCK_SIZE:
            raise LocatorError(
                f"size {_show(size_text)} exceeds the maximum block size"
                f" {MAX_BLOCK_SIZE}"
            )
        size = int(size_text)
    return Locator(parts[0], size, tuple(rest))


def _coerce(locator: str | Locator) -> Locator:
    if isinstance(locator, Locator):
        return locator
    return parse_locator(locator)


def strip_cluster_hints(text: str) -> str:
    """Remove ``+K@<5-char cluster>`` hints from a locator string.

    This is what keepproxy does before forwarding: the 5-character form
    names a whole cluster (legacy), which means nothing to the keepstores
    behind the proxy.  The 27-character ``+K@<keep service uuid>`` form is
    kept.  Works on text so it can run before strict parsing; unlike
    keepproxy's single-pass regex it also removes adjacent repeats.
    """
    return _CLUSTER_HINT_RE.sub("", text)


def _ttl_seconds(ttl: float | int) -> int:
    seconds = int(ttl)
    if seconds < 0:
        raise ValueError("blob signing TTL must not be negative")
    return seconds


def signature(hash: str, token: str, expiry: int, key: str, ttl: float | int) -> str:
    """The 40-hex HMAC-SHA1 of ``hash@token@<expiry %08x>@<ttl hex>`` (spec 2.3).

    ``token`` is used verbatim (a v1 secret and its v2 form sign
    differently); ``ttl`` is the *configured* BlobSigningTTL in seconds
    (fractions dropped), which is part of the message, so clusters with
    different TTLs reject each other's signatures.  Strings are UTF-8.
    """
    message = f"{hash}@{token}@{expiry:08x}@{_ttl_seconds(ttl):x}"
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).hexdigest()


def sign_locator(
    locator: str | Locator,
    token: str,
    key: str,
    ttl: float | int,
    now: float,
    *,
    expiry_cap: int | None = None,
) -> str:
    """Sign ``locator`` for ``token``; return the signed locator text.

    Expiry is ``int(now + ttl)``, lowered to ``expiry_cap`` when given (the
    controller caps at the collection's ``trash_at``).  Any existing ``+A``
    hint is removed and the new one appended after all other hints; the size
    is not part of the signature.  With an empty ``key`` or ``token`` the
    locator is returned as given, without a new signature (as Arvados does).
    """
    loc = _coerce(locator)
    if not key or not token:
        return str(loc)
    expiry = int(now + ttl)
    if expiry_cap is not None:
        expiry = min(expiry, int(expiry_cap))
    if not 0 <= expiry <= _MAX_EXPIRY:
        raise ValueError(f"expiry {expiry} does not fit in 8 hex digits")
    sig = signature(loc.hash, token, expiry, key, ttl)
    hints = tuple(h for h in loc.hints if h[0] != "A") + (f"A{sig}@{expiry:08x}",)
    return str(attrs.evolve(loc, hints=hints))


def verify_locator(
    locator: str | Locator, token: str, key: str, ttl: float | int, now: float
) -> None:
    """Return None if ``locator`` carries a valid ``+A`` for ``token``.

    Raises, in this order of checks: :class:`SignatureMissing` (no ``+A``,
    or a locator text that does not parse, which is how keepstore's regex
    sees it too; parse first yourself to tell the two apart),
    :class:`SignatureExpired` (expiry < now, decided before the HMAC), and
    :class:`SignatureInvalid` (HMAC mismatch, or no key / no token to check
    with).  Other hints, their position and the size do not matter.
    """
    if isinstance(locator, Locator):
        loc = locator
    else:
        try:
            loc = parse_locator(locator)
        except LocatorError as exc:
            raise SignatureMissing(f"no valid signature: {exc}") from exc
    permission = loc.permission
    if permission is None:
        raise SignatureMissing("locator has no +A permission hint")
    sig, expiry = permission
    if expiry < now:
        raise SignatureExpired("permission signature has expired")
    if not key:
        raise SignatureInvalid("no blob signing key to verify with")
    if not token:
        raise SignatureInvalid("no token to verify the signature with")
    expected = signature(loc.hash, token, expiry, key, ttl)
    if not hmac.compare_digest(expected, sig):
        raise SignatureInvalid("permission signature does not match")


def _check_cluster(cluster: str) -> None:
    if not isinstance(cluster, str) or not _CLUSTER_RE.fullmatch(cluster):
        raise ValueError(f"cluster id must be 5 characters of [a-z0-9], got {cluster!r}")


def to_remote(locator: str | Locator, cluster: str) -> str:
    """Turn ``+A<sig>@<exp>`` into ``+R<cluster>-<sig>@<exp>`` (spec 2.6).

    Used when handing out a manifest fetched from remote ``cluster``: the
    signature was made there, for the salted token.  The new hint takes the
    place of the ``+A``; any older ``+R`` is dropped since it would be
    ambiguous.  A locator without ``+A`` is returned unchanged.
    """
    _check_cluster(cluster)
    loc = _coerce(locator)
    if loc.permission is None:
        return str(loc)
    hints = []
    for hint in loc.hints:
        if hint[0] == "A":
            hints.append(f"R{cluster}-{hint[1:]}")
        elif hint[0] != "R":
            hints.append(hint)
    return str(attrs.evolve(loc, hints=tuple(hints)))


def from_remote(locator: str | Locator) -> tuple[str, str]:
    """``(cluster, locator text)`` for fetching a ``+R`` block from its cluster.

    Any ``+A`` is dropped and ``R<cluster>-<sig>@<exp>`` becomes
    ``A<sig>@<exp>`` in place (spec 5.3); the result verifies on ``cluster``
    with the client's token salted for it.  Raises :class:`LocatorError`
    when there is no ``+R`` hint.  (Keepstore treats a locator that has
    both ``+A`` and ``+R`` as local; deciding that is the caller's job.)
    """
    loc = _coerce(locator)
    remote = loc.remote
    if remote is None:
        raise LocatorError("locator has no +R remote hint")
    hints = []
    for hint in loc.hints:
        if hint[0] == "R":
            hints.append("A" + hint[7:])
        elif hint[0] != "A":
            hints.append(hint)
    return remote[0], str(attrs.evolve(loc, hints=tuple(hints)))
