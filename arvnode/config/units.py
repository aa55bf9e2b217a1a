"""Go-style durations (``5m``, ``1h30m``) and sizes (``64MiB``), as Arvados' config uses."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation


_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([a-z\u00b5\u03bc]+)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: object) -> float:
    """Seconds in a Go/Arvados duration: ``"5m"``, ``"1h30m"``, ``"300ms"``,
    ``"1.5h"``, ``"0"``. A bare number other than 0 is refused, as Arvados
    does, because ``300`` could mean seconds or nanoseconds.

    @raise ValueError: with a message that says what was wrong.
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration string, not true/false")
    if isinstance(text, (int, float)):
        if text == 0:
            return 0.0
        raise ValueError("duration without unit")
    if not isinstance(text, str):
        raise ValueError("expected a duration string")
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    if not s:
        raise ValueError("empty duration")
    sign = 1
    if s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if re.fullmatch(r"\d+\.?\d*|\.\d+", s):
        raise ValueError("duration without unit")
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError("not a duration (expected e.g. 300ms, 5m, 1h30m)")
        number, unit = m.groups()
        if unit not in _NS:
            raise ValueError(f"unknown duration unit {unit!r} (use ns, us, ms, s, m or h)")
        total += Decimal(number) * _NS[unit]
        pos = m.end()
    if total > _MAX_NS:
        raise ValueError("duration too large")
    return sign * float(int(total) / Decimal(1_000_000_000))


def format_duration(seconds: float) -> str:
    """The Go ``time.Duration.String()`` spelling of ``seconds``
    (``336h0m0s``, ``5m0s``, ``1.5s``, ``300ms``, ``0s``), which
    :func:`parse_duration` reads back."""
    ns = round(seconds * 1_000_000_000)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(value: int, scale: int) -> str:
        whole, rest = divmod(value, scale)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(scale)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}us"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, _NS["h"])
    minutes, rest = divmod(rest, _NS["m"])
    secs = frac(rest, _NS["s"])
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


_SIZE_UNITS = {"": 1, "B": 1}
for _i, _p in enumerate("KMGTPE", start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "B"] = 1000**_i
    _SIZE_UNITS[_p + "IB"] = _SIZE_UNITS[_p + "I"] = 1024**_i
del _i, _p
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(text: object) -> int:
    """Bytes in a size: ``1048576``, ``"64MiB"``, ``"4MB"``, ``"2 GiB"``.
    ``K/M/G/T/P/E`` and ``KB``... are powers of 1000, ``KiB``... powers of 1024.

    @raise ValueError: with a message that says what was wrong.
    """
    if isinstance(text, bool):
        raise ValueError("expected a size, not true/false")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("size is negative")
        return text
    if isinstance(text, float):
        if text != text or text < 0 or not text.is_integer():
            raise ValueError("size must be a whole, non-negative number of bytes")
        return int(text)
    if not isinstance(text, str):
        raise ValueError("expected a size such as 64MiB")
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError("not a size (expected e.g. 1048576, 64MiB, 4MB)")
    number, unit = m.groups()
    factor = _SIZE_UNITS.get(unit.upper())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} (use B, KB, KiB, MB, MiB, GB, GiB ...)")
    try:
        value = Decimal(number) * factor
    except InvalidOperation as e:  # pragma: no cover - the regex prevents it
        raise ValueError("not a size") from e
    if value != value.to_integral_value():
        raise ValueError("size is not a whole number of bytes")
    return int(value)
