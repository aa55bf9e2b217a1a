"""Typed reading of the plain data by key path: every problem becomes one
line naming the path, the bad value and what was expected; what is read is
remembered so the rest can be reported as unknown keys."""
from __future__ import annotations

import difflib
import json
import re
import string
from typing import Any, Callable, Mapping

import attrs

from arvnode.config.model import _Path, T, URL
from arvnode.config.units import parse_duration, parse_size


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SECRET_CHARS = frozenset(string.ascii_letters + string.digits)


def _dotted(path: _Path) -> str:
    return ".".join(p if _PLAIN_KEY.match(p) else json.dumps(p) for p in path)


def _show(value: Any) -> str:
    """A short description of a (non-secret) value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        text = json.dumps(value)
        if len(text) > 70:
            text = text[:66] + '..."'
        return f"the string {text}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return f"a {type(value).__name__} {str(value)[:40]!r}"


def _show_secret(value: Any) -> str:
    """Describe a secret's shape, never its content."""
    if isinstance(value, str):
        return f"a {len(value)}-character string (value not shown)"
    if value is None or isinstance(value, (bool, Mapping, list)):
        return _show(value)
    return f"a {type(value).__name__} (value not shown)"


@attrs.define
class _Section:
    """A mapping found at ``path`` (empty if absent)."""

    data: Mapping[str, Any]
    path: _Path


@attrs.define
class _Reader:
    """Reads typed values out of the plain data, remembering what was used.

    ``consumed`` paths are used with everything below them; ``entered``
    paths are sections whose children are looked at one by one. Whatever is
    neither is an unknown key.
    """

    source: str
    lines: Mapping[_Path, int]
    # (line, sequence, message): reported in file order.
    _problems: list[tuple[int, int, str]] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)
    consumed: set[_Path] = attrs.Factory(set)
    entered: set[_Path] = attrs.Factory(set)
    asked: dict[_Path, set[str]] = attrs.Factory(dict)

    def locate(self, path: _Path) -> tuple[int, str]:
        """Where ``path`` is in the file (for a missing key: its section),
        as a line number (0 if unknown) and a parenthesised note."""
        line = self.lines.get(path)
        if line:
            return line, f" ({self.source}, line {line})"
        for end in range(len(path) - 1, 0, -1):
            line = self.lines.get(path[:end])
            if line:
                return line, f" ({self.source}, in {_dotted(path[:end])} at line {line})"
        return 0, f" ({self.source})"

    def where(self, path: _Path) -> str:
        return self.locate(path)[1]

    @property
    def problems(self) -> list[str]:
        """Problem lines, in the order of the file."""
        return [message for _, _, message in sorted(self._problems)]

    def bad(self, path: _Path, got: str, expected: str) -> None:
        line, where = self.locate(path)
        message = f"{_dotted(path)}: got {got}; expected {expected}{where}"
        self._problems.append((line, len(self._problems), message))

    def warn(self, path: _Path, message: str) -> None:
        self.warnings.append(f"{_dotted(path)}: {message}{self.where(path)}")

    def raw(self, sec: _Section, key: str) -> tuple[Any, _Path]:
        """The value under ``key`` (None if absent), marked as used."""
        path = sec.path + (key,)
        self.asked.setdefault(sec.path, set()).add(key)
        if key in sec.data:
            self.consumed.add(path)
        return sec.data.get(key), path

    def section(self, sec: _Section, key: str, expected: str = "a mapping") -> _Section:
        path = sec.path + (key,)
        self.asked.setdefault(sec.path, set()).add(key)
        value = sec.data.get(key)
        if value is None:
            if key in sec.data:
                self.consumed.add(path)  # present but empty: known, nothing to read
            return _Section({}, path)
        if not isinstance(value, Mapping):
            self.consumed.add(path)
            self.bad(path, _show(value), expected)
            return _Section({}, path)
        self.entered.add(path)
        return _Section(value, path)

    def entries(
        self, sec: _Section, key: str, expected: str, granular: bool = False
    ) -> list[tuple[str, Any, _Path]]:
        """User-named entries of a map; ``SAMPLE`` entries (documentation in
        Arvados' defaults) are skipped. With ``granular`` the caller reads
        each entry's keys itself, so unused ones are reported as unknown;
        otherwise every entry counts as used whole."""
        sub = self.section(sec, key, expected)
        found = []
        for k, v in sub.data.items():
            path = sub.path + (k,)
            if k == "SAMPLE" or not granular:
                self.consumed.add(path)
            else:
                self.entered.add(path)
            if k != "SAMPLE":
                found.append((k, v, path))
        return found

    def typed(
        self,
        sec: _Section,
        key: str,
        default: T,
        convert: Callable[[Any], T],
        expected: str,
    ) -> T:
        value, path = self.raw(sec, key)
        if value is None:
            return default
        try:
            return convert(value)
        except (ValueError, TypeError) as e:
            got = _show(value)
            reason = str(e)
            self.bad(path, f"{got}{' (' + reason + ')' if reason else ''}", expected)
            return default

    def boolean(self, sec: _Section, key: str, default: bool) -> bool:
        return self.typed(sec, key, default, _to_bool, "true or false")

    def integer(self, sec: _Section, key: str, default: int, minimum: int | None = 0) -> int:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        return self.typed(sec, key, default, lambda v: _to_int(v, minimum), expected)

    def duration(self, sec: _Section, key: str, default: float, positive: bool = False) -> float:
        def convert(v: Any) -> float:
            seconds = parse_duration(v)
            if seconds < 0 or (positive and seconds == 0):
                raise ValueError("must be positive" if positive else "must not be negative")
            return seconds

        qualifier = "a positive" if positive else "a"
        return self.typed(
            sec, key, default, convert,
            f'{qualifier} duration with a unit, such as "300ms", "5m" or "1h30m"',
        )

    def size(self, sec: _Section, key: str, default: int, minimum: int = 0) -> int:
        def convert(v: Any) -> int:
            n = parse_size(v)
            if n < minimum:
                raise ValueError(f"less than {minimum}")
            return n

        return self.typed(sec, key, default, convert, 'a size in bytes, such as 1048576 or "64MiB"')

    def text(self, sec: _Section, key: str, default: str = "") -> str:
        return self.typed(sec, key, default, _to_str, "a string")

    def secret(self, sec: _Section, key: str, required: bool = False) -> str:
        value, path = self.raw(sec, key)
        if value is None or value == "":
            if required:
                self.bad(path, "nothing" if value is None else "an empty string",
                         "a secret of letters and digits (32 or more); it is required")
            return ""
        return self.check_secret(path, value)

    def check_secret(self, path: _Path, value: Any) -> str:
        if not isinstance(value, str) or isinstance(value, bool):
            self.bad(path, _show_secret(value), "a string of letters and digits")
            return ""
        if not set(value) <= _SECRET_CHARS:
            self.bad(path, _show_secret(value) + " with characters outside [a-zA-Z0-9]",
                     "only letters and digits")
            return ""
        if len(value) < 32:
            self.warn(path, f"secret is only {len(value)} characters; 32 or more recommended")
        return value

    def url(self, path: _Path, value: Any, allow_port_zero: bool = False) -> URL | None:
        if not isinstance(value, str):
            self.bad(path, _show(value), "a URL string such as https://host:port/")
            return None
        try:
            return URL.parse(value, allow_port_zero=allow_port_zero)
        except ValueError as e:
            self.bad(path, f"{_show(value)} ({e})", "a URL such as https://host:port/")
            return None

    def unknown_keys(self, data: Mapping[str, Any], path: _Path = ()) -> list[str]:
        found: list[str] = []
        for key, value in data.items():
            p = path + (key,)
            if p in self.consumed:
                continue
            if p in self.entered:
                if isinstance(value, Mapping):
                    found.extend(self.unknown_keys(value, p))
                continue
            found.append(_dotted(p))
            known = sorted(self.asked.get(path, ()))
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close and close[0] not in data:
                self.warn(p, f"not a key arvnode reads; did you mean {close[0]}?")
        return found


def _to_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("")
    return v


def _to_int(v: Any, minimum: int | None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("not a whole number")
        v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"less than {minimum}")
    return v


def _to_str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("")
    return v
