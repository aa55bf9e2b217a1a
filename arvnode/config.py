"""Arvados-shaped ``config.yml`` -> one frozen, validated :class:`Config`.

Why this module exists: an operator points arvnode at the same
``/etc/arvados/config.yml`` an Arvados cluster uses, so the file has hundreds
of keys arvnode never reads (``Containers``, ``Workbench``, ``Mail`` ...).
Those must not stop the node; they are collected in
:attr:`Config.unknown_keys` and reported once. What arvnode *does* read is
checked up front, all at once: every problem is one line that names the key
path, the bad value and what was expected, so a bad config is fixed in one
edit instead of one restart per typo. Secrets are never echoed, not even in
error messages.

Parsing is separate from file reading (:func:`config_from_string`), so tests
build configs from literals. Nothing here touches the network, the reactor or
module-level state.
"""
from __future__ import annotations

import difflib
import json
import re
import string
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import urlsplit

import attrs
import yaml
from attrs import field, frozen

from arvnode.ids import CLUSTER_ID_RE, UUID_RE

__all__ = [
    "APIConfig",
    "ArvNodeConfig",
    "CollectionsConfig",
    "Config",
    "ConfigError",
    "KeepproxyPermission",
    "KeepproxySettings",
    "LoginConfig",
    "TestUser",
    "PostgreSQLConfig",
    "RemoteCluster",
    "ServiceConfig",
    "ServicesConfig",
    "StorageClass",
    "TLSConfig",
    "URL",
    "UsersConfig",
    "VolumeConfig",
    "config_from_string",
    "format_duration",
    "load_config",
    "mask_secrets",
    "parse_duration",
    "parse_size",
]

T = TypeVar("T")
_Path = tuple[str, ...]

MASK = "***"
DEFAULT_CONFIG_PATH = "/etc/arvados/config.yml"


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` holds one line per
    problem; ``str()`` joins them with newlines."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------
# Durations and sizes


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


# --------------------------------------------------------------------------
# The configuration object


def _freeze(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(value))


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")


@frozen
class URL:
    """An ``http``/``https`` service URL. ``port`` is always filled in."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, text: str, allow_port_zero: bool = False) -> URL:
        """Parse ``text``. @raise ValueError: saying what is wrong."""
        if not isinstance(text, str):
            raise ValueError("not a string")
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
            raise ValueError("no scheme:// (expected e.g. https://host:port/)")
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"scheme {scheme!r} is not http or https")
        if parts.query or parts.fragment or "?" in text or "#" in text:
            raise ValueError("query strings and fragments are not allowed")
        netloc = parts.netloc
        if "@" in netloc:
            raise ValueError("user information is not allowed")
        if netloc.startswith("["):
            end = netloc.find("]")
            if end < 0:
                raise ValueError("unterminated IPv6 address")
            host, rest = netloc[1:end], netloc[end + 1 :]
            if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
                raise ValueError("bad IPv6 address")
            if rest and not rest.startswith(":"):
                raise ValueError("bad text after IPv6 address")
            port_text = rest[1:] if rest else None
        else:
            host, sep, port_text_ = netloc.partition(":")
            port_text = port_text_ if sep else None
            if not host:
                raise ValueError("no host")
            if not _HOST_RE.match(host):
                raise ValueError(f"bad host name {host!r}")
        if port_text is None:
            port = _DEFAULT_PORTS[scheme]
        else:
            if not port_text.isdigit() or not port_text.isascii():
                raise ValueError(f"port {port_text!r} is not a number")
            port = int(port_text)
            low = 0 if allow_port_zero else 1
            if not low <= port <= 65535:
                raise ValueError(f"port {port} out of range {low}-65535")
        return cls(scheme=scheme, host=host.lower(), port=port, path=parts.path)

    @property
    def netloc(self) -> str:
        """``host[:port]``, the port omitted when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


@frozen
class ServiceConfig:
    """``Services.<Name>``: where it is reached and where it listens."""

    external_url: URL | None = None
    internal_urls: tuple[URL, ...] = ()
    # InternalURLs.<url>.ListenURL, for the entries that have one.
    listen_urls: Mapping[URL, URL] = field(factory=dict, converter=_freeze)
    # InternalURLs.<url>.Rendezvous (keepstore only), for the non-empty ones.
    rendezvous: Mapping[URL, str] = field(factory=dict, converter=_freeze)

    def listen_url(self, url: URL) -> URL:
        """The address to bind for internal URL ``url``."""
        return self.listen_urls.get(url, url)


@frozen
class ServicesConfig:
    controller: ServiceConfig = ServiceConfig()
    keepproxy: ServiceConfig = ServiceConfig()
    keepstore: ServiceConfig = ServiceConfig()


@frozen
class KeepproxyPermission:
    """``Collections.KeepproxyPermission.{User,Admin}.{Download,Upload}``."""

    user_download: bool = True
    user_upload: bool = True
    admin_download: bool = True
    admin_upload: bool = True


@frozen
class CollectionsConfig:
    blob_signing: bool = True
    blob_signing_key: str = ""
    blob_signing_ttl: float = 336 * 3600.0
    default_replication: int = 2
    keepproxy_permission: KeepproxyPermission = KeepproxyPermission()


@frozen
class TLSConfig:
    """File paths (``file://`` already stripped); ``""`` = none configured."""

    certificate: str = ""
    key: str = ""
    insecure: bool = False


@frozen
class TestUser:
    """``Login.Test.Users.<username>``: a password login for tests and demos."""

    email: str = ""
    password: str = field(default="", repr=False)


@frozen
class LoginConfig:
    remote_token_refresh: float = 300.0
    login_cluster: str = ""
    trusted_clients: tuple[str, ...] = ()
    token_lifetime: float = 0.0
    trust_private_networks: bool = False
    # Login.Test: Arvados' built-in username/password login (username → user).
    test_enable: bool = False
    test_users: Mapping[str, TestUser] = field(factory=dict, converter=_freeze)


@frozen
class RemoteCluster:
    """``RemoteClusters.<id>``; ``host`` is ``host[:port]``."""

    host: str = ""
    proxy: bool = False
    scheme: str = "https"
    insecure: bool = False
    activate_users: bool = False


@frozen
class APIConfig:
    max_concurrent_requests: int = 64
    max_queued_requests: int = 128
    request_timeout: float = 300.0
    max_request_size: int = 134217728
    max_items_per_response: int = 1000
    max_request_amplification: int = 4


@frozen
class PostgreSQLConfig:
    """An empty ``connection`` means no PostgreSQL: the node uses SQLite."""

    connection: Mapping[str, str] = field(factory=dict, converter=_freeze)
    connection_pool: int = 32


@frozen
class UsersConfig:
    anonymous_user_token: str = ""
    auto_setup_new_users: bool = False
    new_users_are_active: bool = False


@frozen
class VolumeConfig:
    """``Volumes.<uuid>``. ``driver_parameters`` is passed to the driver raw."""

    driver: str
    driver_parameters: Mapping[str, Any] = field(factory=dict, converter=_freeze)
    replication: int = 1
    read_only: bool = False
    storage_classes: tuple[str, ...] = ("default",)
    # AccessViaHosts: the keepstore InternalURLs that mount this volume
    # (empty: every node with volumes). Arvados' key; see docs/scale-out.md.
    access_via_hosts: tuple[URL, ...] = ()


@frozen
class StorageClass:
    default: bool = False
    priority: int = 0


@frozen
class KeepproxySettings:
    """``ArvNode.Keepproxy``: memory bounds for uploads."""

    upload_window: int = 8 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    idle_timeout: float = 60.0


@frozen
class ArvNodeConfig:
    """``Clusters.<id>.ArvNode``: arvnode's own settings (not an Arvados key)."""

    shutdown_grace_period: float = 30.0
    data_directory: str = ""
    token_cache_ttl: float = 2.0
    keepproxy: KeepproxySettings = KeepproxySettings()


def _implicit_classes() -> Mapping[str, StorageClass]:
    return {"default": StorageClass(default=True, priority=0)}


@frozen
class Config:
    """Everything arvnode reads from ``Clusters.<cluster_id>``."""

    cluster_id: str
    system_root_token: str
    management_token: str = ""
    services: ServicesConfig = ServicesConfig()
    collections: CollectionsConfig = CollectionsConfig()
    tls: TLSConfig = TLSConfig()
    login: LoginConfig = LoginConfig()
    remote_clusters: Mapping[str, RemoteCluster] = field(factory=dict, converter=_freeze)
    api: APIConfig = APIConfig()
    postgresql: PostgreSQLConfig = PostgreSQLConfig()
    users: UsersConfig = UsersConfig()
    volumes: Mapping[str, VolumeConfig] = field(factory=dict, converter=_freeze)
    storage_classes: Mapping[str, StorageClass] = field(
        factory=_implicit_classes, converter=_freeze
    )
    arvnode: ArvNodeConfig = ArvNodeConfig()
    # Dotted key paths in the file that arvnode does not use (not errors).
    unknown_keys: tuple[str, ...] = ()
    # Legal but suspicious settings (short secrets, likely typos ...).
    warnings: tuple[str, ...] = ()
    source: str = "<string>"

    @property
    def default_storage_classes(self) -> tuple[str, ...]:
        """Names of the classes with ``Default: true``, sorted."""
        return tuple(sorted(n for n, c in self.storage_classes.items() if c.default))


# --------------------------------------------------------------------------
# YAML -> plain data, with line numbers and duplicate-key detection


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000


class _Abort(Exception):
    """Stop building the document; the reason is already in problems."""


class _Builder:
    """Build plain Python data from a composed YAML node tree.

    Mapping keys are kept as their literal text (``01234`` stays a string, it
    does not become an octal number), the line of every key is recorded, and
    duplicate keys are reported instead of silently overwritten.
    """

    def __init__(self, loader: yaml.SafeLoader, source: str, problems: list[str]) -> None:
        self._loader = loader
        self._source = source
        self._problems = problems
        self._stack: set[int] = set()
        self._count = 0
        self.lines: dict[_Path, int] = {}

    def build(self, node: yaml.Node, path: _Path) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            self._problems.append(f"{self._source}: too many YAML nodes (alias expansion?)")
            raise _Abort()
        if isinstance(node, yaml.ScalarNode):
            return self._loader.construct_object(node, deep=True)
        if id(node) in self._stack:
            self._problems.append(
                f"{_dotted(path)}: recursive YAML alias ({self._source}, line "
                f"{node.start_mark.line + 1}); expected a finite structure"
            )
            raise _Abort()
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, path) for child in node.value]
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, path)
        finally:
            self._stack.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: _Path) -> dict[str, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                self._problems.append(
                    f"{_dotted(path + (key_node.value,))}: duplicate key (lines "
                    f"{seen[key_node.value]} and {line} of {self._source}); "
                    "expected each key once"
                )
            seen[key_node.value] = line
        self._loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problems.append(
                    f"{_dotted(path)}: a complex mapping key ({self._source}, line "
                    f"{key_node.start_mark.line + 1}); expected plain string keys"
                )
                continue
            key = str(key_node.value)
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, path + (key,))
        return result


def _leading_tab_lines(text: str) -> list[int]:
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            lines.append(number)
    return lines


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[_Path, int]]:
    """Plain data and key lines. @raise ConfigError: not YAML."""
    problems: list[str] = []
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _Builder(loader, source, problems)
        data = builder.build(node, ())
    except _Abort:
        raise ConfigError(problems) from None
    except yaml.YAMLError as e:
        tab_lines = _leading_tab_lines(text)
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        for number in tab_lines[:20]:
            problems.append(
                f"{source}, line {number}: tabs are not allowed for indentation; use spaces"
            )
        if mark is None or mark.line + 1 not in tab_lines:
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problems.append(f"{source}{where}: not valid YAML: {what}")
        raise ConfigError(problems) from None
    finally:
        loader.dispose()
    if problems:
        raise ConfigError(problems)
    return data, builder.lines


# --------------------------------------------------------------------------
# Reading values with key paths


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


# --------------------------------------------------------------------------
# The cluster section


_SERVICE_KEYS = {"controller": "Controller", "keepproxy": "Keepproxy", "keepstore": "Keepstore"}


def _services(r: _Reader, cluster: _Section) -> ServicesConfig:
    services = r.section(cluster, "Services")
    built: dict[str, ServiceConfig] = {}
    for attr, name in _SERVICE_KEYS.items():
        sec = r.section(services, name)
        external: URL | None = None
        value, path = r.raw(sec, "ExternalURL")
        if value not in (None, ""):
            # Port 0 is accepted so test nodes can bind any free port and
            # advertise the one they got.
            external = r.url(path, value, allow_port_zero=True)
            if external is not None and external.port == 0:
                r.warn(path, "port 0: the node will advertise whatever port it binds")
        internal: list[URL] = []
        listen: dict[URL, URL] = {}
        rendezvous: dict[URL, str] = {}
        for text, options, upath in r.entries(
            sec, "InternalURLs", 'a mapping of URL to options, e.g. {"https://0.0.0.0:8443": {}}',
            granular=True,
        ):
            url = r.url(upath, text, allow_port_zero=True)
            if options is not None and not isinstance(options, Mapping):
                r.bad(upath, _show(options), "a mapping of options (ListenURL, Rendezvous) or {}")
                continue
            opts = _Section(options or {}, upath)
            listen_text = r.text(opts, "ListenURL")
            listen_url = r.url(opts.path + ("ListenURL",), listen_text, True) if listen_text else None
            rdv = r.text(opts, "Rendezvous") if attr == "keepstore" else ""
            if url is None:
                continue
            if url in internal:
                r.bad(upath, _show(text), "each internal URL once")
                continue
            internal.append(url)
            if listen_url is not None:
                listen[url] = listen_url
            if rdv:
                rendezvous[url] = rdv
        built[attr] = ServiceConfig(external, tuple(internal), listen, rendezvous)
    return ServicesConfig(**built)


def _collections(r: _Reader, cluster: _Section) -> CollectionsConfig:
    sec = r.section(cluster, "Collections")
    perm = r.section(sec, "KeepproxyPermission")
    user, admin = r.section(perm, "User"), r.section(perm, "Admin")
    return CollectionsConfig(
        blob_signing=r.boolean(sec, "BlobSigning", True),
        blob_signing_key=r.secret(sec, "BlobSigningKey", required=True),
        blob_signing_ttl=r.duration(sec, "BlobSigningTTL", 336 * 3600.0, positive=True),
        default_replication=r.integer(sec, "DefaultReplication", 2, minimum=1),
        keepproxy_permission=KeepproxyPermission(
            user_download=r.boolean(user, "Download", True),
            user_upload=r.boolean(user, "Upload", True),
            admin_download=r.boolean(admin, "Download", True),
            admin_upload=r.boolean(admin, "Upload", True),
        ),
    )


def _tls_path(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("")
    if v.startswith("-----BEGIN"):
        raise ValueError("inline PEM is not supported")
    if v.startswith("file://"):
        rest = v[len("file://") :]
        if not rest.startswith("/"):
            raise ValueError("a file:// URL needs an absolute path (file:///path)")
        return rest
    if "://" in v:
        raise ValueError("only file:// URLs are supported")
    return v


def _tls(r: _Reader, cluster: _Section) -> TLSConfig:
    sec = r.section(cluster, "TLS")
    expected = "a file path or file:///path URL"
    cert = r.typed(sec, "Certificate", "", _tls_path, expected)
    key = r.typed(sec, "Key", "", _tls_path, expected)
    given = {k for k in ("Certificate", "Key") if sec.data.get(k) not in (None, "")}
    if bool(cert) != bool(key) and len(given) == 1:
        (present,) = given
        missing = "Key" if present == "Certificate" else "Certificate"
        r.bad(sec.path + (missing,), "nothing", f"a file path, since TLS.{present} is set")
    return TLSConfig(certificate=cert, key=key, insecure=r.boolean(sec, "Insecure", False))


def _cluster_id(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("")
    if v and not CLUSTER_ID_RE.match(v):
        raise ValueError("not 5 characters of [a-z0-9]")
    return v


def _login(r: _Reader, cluster: _Section) -> LoginConfig:
    sec = r.section(cluster, "Login")
    trusted: list[str] = []
    for text, _opts, path in r.entries(
        sec, "TrustedClients", 'a mapping of URL to {}, e.g. {"https://workbench.example": {}}'
    ):
        # "scheme://*.domain" (any subdomain) is allowed, as in Arvados.
        checked = text.replace("://*.", "://wildcard.", 1) if isinstance(text, str) else text
        if r.url(path, checked) is not None:
            trusted.append(text)
    test = r.section(sec, "Test")
    users: dict[str, TestUser] = {}
    for name, value, path in r.entries(
        test, "Users", "a mapping of username to {Email, Password}", granular=True
    ):
        if not isinstance(value, Mapping):
            r.bad(path, _show(value), "a mapping with Email and Password")
            continue
        entry = _Section(value, path)
        email = r.text(entry, "Email")
        password = r.typed(entry, "Password", "", _to_str, "a string")
        if not password:
            r.bad(path + ("Password",), "nothing", "a password (a login without one is refused)")
        users[name] = TestUser(email=email, password=password)
    return LoginConfig(
        remote_token_refresh=r.duration(sec, "RemoteTokenRefresh", 300.0, positive=True),
        login_cluster=r.typed(
            sec, "LoginCluster", "", _cluster_id, 'a cluster id of 5 characters [a-z0-9], or ""'
        ),
        trusted_clients=tuple(trusted),
        token_lifetime=r.duration(sec, "TokenLifetime", 0.0),
        trust_private_networks=r.boolean(sec, "TrustPrivateNetworks", False),
        test_enable=r.boolean(test, "Enable", False),
        test_users=users,
    )


def _remote_host(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("")
    if v == "":
        return v
    if "://" in v:
        raise ValueError("includes a scheme; put that in Scheme")
    url = URL.parse("https://" + v)
    if url.path:
        raise ValueError("includes a path")
    return v


def _remote_clusters(r: _Reader, cluster: _Section) -> dict[str, RemoteCluster]:
    result: dict[str, RemoteCluster] = {}
    for cid, value, path in r.entries(
        cluster, "RemoteClusters", "a mapping of cluster id to {Host, Proxy, Scheme, ...}",
        granular=True,
    ):
        if cid != "*" and not CLUSTER_ID_RE.match(cid):
            r.bad(path, f"the cluster id {json.dumps(cid)}",
                  'a cluster id of 5 characters [a-z0-9] (or "*")')
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            r.bad(path, _show(value), "a mapping with Host, Proxy, Scheme, Insecure, ActivateUsers")
            continue
        sec = _Section(value, path)
        host = r.typed(sec, "Host", "", _remote_host, "host[:port] of the remote API, without scheme")
        if cid != "*" and value.get("Host") in (None, ""):
            r.bad(path + ("Host",), "nothing", "host[:port] of the remote cluster's API (required)")
        scheme = r.typed(sec, "Scheme", "https", _to_str, '"https" or "http"') or "https"
        if scheme not in ("http", "https"):
            r.bad(path + ("Scheme",), _show(scheme), '"https" or "http"')
            scheme = "https"
        result[cid] = RemoteCluster(
            host=host,
            proxy=r.boolean(sec, "Proxy", False),
            scheme=scheme,
            insecure=r.boolean(sec, "Insecure", False),
            activate_users=r.boolean(sec, "ActivateUsers", False),
        )
    return result


def _api(r: _Reader, cluster: _Section) -> APIConfig:
    sec = r.section(cluster, "API")
    return APIConfig(
        max_concurrent_requests=r.integer(sec, "MaxConcurrentRequests", 64),
        max_queued_requests=r.integer(sec, "MaxQueuedRequests", 128),
        request_timeout=r.duration(sec, "RequestTimeout", 300.0),
        max_request_size=r.size(sec, "MaxRequestSize", 134217728, minimum=1),
        max_items_per_response=r.integer(sec, "MaxItemsPerResponse", 1000, minimum=1),
        max_request_amplification=r.integer(sec, "MaxRequestAmplification", 4, minimum=1),
    )


def _postgresql(r: _Reader, cluster: _Section) -> PostgreSQLConfig:
    sec = r.section(cluster, "PostgreSQL")
    connection: dict[str, str] = {}
    for key, value, path in r.entries(sec, "Connection", "a mapping of libpq parameter to value"):
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            got = _show_secret(value) if key == "password" else _show(value)
            r.bad(path, got, "a string")
            continue
        connection[key] = str(value)
    return PostgreSQLConfig(
        connection=connection, connection_pool=r.integer(sec, "ConnectionPool", 32, minimum=1)
    )


def _users(r: _Reader, cluster: _Section) -> UsersConfig:
    sec = r.section(cluster, "Users")
    value, path = r.raw(sec, "AnonymousUserToken")
    token = ""
    if isinstance(value, str) and value.startswith("v2/"):
        parts = value.split("/")
        if len(parts) != 3 or not UUID_RE.match(parts[1]):
            r.bad(path, _show_secret(value), "v2/<token uuid>/<secret> or a bare secret")
        else:
            token = r.check_secret(path, parts[2])
    elif value not in (None, ""):
        token = r.check_secret(path, value)
    return UsersConfig(
        anonymous_user_token=token,
        auto_setup_new_users=r.boolean(sec, "AutoSetupNewUsers", False),
        new_users_are_active=r.boolean(sec, "NewUsersAreActive", False),
    )


_VOLUME_UUID = re.compile(r"^[a-z0-9]{5}-nyw5e-[a-z0-9]{15}$")
_SECRET_PARAM = re.compile(r"secret|password|token|accesskey", re.IGNORECASE)


# Arvados' Directory driver parameters: Root, and Serialize (one I/O at a
# time per volume), which arvnode's bounded thread pool makes moot.
_DIRECTORY_PARAMETERS = frozenset({"Root", "Serialize"})


def _volumes(r: _Reader, cluster: _Section) -> dict[str, VolumeConfig]:
    result: dict[str, VolumeConfig] = {}
    for uuid, value, path in r.entries(
        cluster, "Volumes", "a mapping of volume UUID to settings", granular=True
    ):
        if not isinstance(value, Mapping):
            r.bad(path, _show(value), "a mapping with Driver, DriverParameters, ...")
            continue
        if not _VOLUME_UUID.match(uuid):
            r.warn(path, "volume id is not an Arvados volume UUID (<cluster>-nyw5e-<15 chars>)")
        sec = _Section(value, path)
        driver = r.text(sec, "Driver")
        if not driver and (value.get("Driver") is None or value.get("Driver") == ""):
            r.bad(path + ("Driver",), "nothing", 'a driver name such as "Directory" or "S3"')
        params = r.section(sec, "DriverParameters")
        if params.data:
            r.consumed.add(params.path)
        if driver == "Directory":
            for key in sorted(set(params.data) - _DIRECTORY_PARAMETERS):
                r.warn(params.path + (key,), "not a Directory driver parameter; ignored")
            root = params.data.get("Root")
            if not isinstance(root, str) or not root:
                got = _show(root) if "Root" in params.data else "nothing"
                r.bad(params.path + ("Root",), got, "the path of the volume's directory")
            elif not root.startswith("/"):
                r.warn(params.path + ("Root",),
                       "relative path: resolved against the node's working directory")
        elif driver == "S3":
            bucket = params.data.get("Bucket")
            if not isinstance(bucket, str) or not bucket:
                got = _show(bucket) if "Bucket" in params.data else "nothing"
                r.bad(params.path + ("Bucket",), got, "the name of the S3 bucket")
            from arvnode.keep.volumes.s3_params import MISSING, s3_parameter_problems

            for key, got, expected in s3_parameter_problems(params.data):
                if key == "Bucket" and (not isinstance(bucket, str) or not bucket):
                    continue  # reported just above
                if got in MISSING:  # credentials: the node refuses to start without them
                    r.warn(params.path + (key,), f"missing: {expected}; the volume cannot start")
                else:
                    r.bad(params.path + (key,), got, expected)
        classes: list[str] = []
        for name, enabled, cpath in r.entries(sec, "StorageClasses", "a mapping of class name to true"):
            if not isinstance(enabled, bool):
                r.bad(cpath, _show(enabled), "true or false")
            elif enabled:
                classes.append(name)
        via: list[URL] = []
        for text, opts, vpath in r.entries(
            sec, "AccessViaHosts", "a mapping of keepstore InternalURL to {} or {ReadOnly: bool}"
        ):
            url = r.url(vpath, text)
            if url is not None:
                via.append(url)
            if isinstance(opts, Mapping) and opts.get("ReadOnly") is True:
                r.warn(vpath + ("ReadOnly",),
                       "per-host ReadOnly is not applied by arvnode; set the volume's ReadOnly")
        result[uuid] = VolumeConfig(
            access_via_hosts=tuple(via),
            driver=driver,
            driver_parameters=params.data,
            replication=r.integer(sec, "Replication", 1, minimum=1),
            read_only=r.boolean(sec, "ReadOnly", False),
            storage_classes=tuple(classes) or ("default",),
        )
    return result


def _storage_classes(
    r: _Reader, cluster: _Section, volumes: Mapping[str, VolumeConfig]
) -> Mapping[str, StorageClass]:
    classes: dict[str, StorageClass] = {}
    for name, value, path in r.entries(
        cluster, "StorageClasses", "a mapping of class name to settings", granular=True
    ):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            r.bad(path, _show(value), "a mapping with Default and Priority")
            continue
        sec = _Section(value, path)
        classes[name] = StorageClass(
            default=r.boolean(sec, "Default", False),
            priority=r.integer(sec, "Priority", 0, minimum=None),
        )
    if not classes:
        return _implicit_classes()
    if not any(c.default for c in classes.values()):
        r.bad(cluster.path + ("StorageClasses",), "no class with Default: true",
              "at least one storage class with Default: true")
    for uuid, volume in volumes.items():
        for name in volume.storage_classes:
            if name not in classes:
                r.bad(cluster.path + ("Volumes", uuid, "StorageClasses"), f"the class {json.dumps(name)}",
                      f"a class defined in StorageClasses ({', '.join(sorted(classes))})")
    return classes


def _arvnode(r: _Reader, cluster: _Section) -> ArvNodeConfig:
    sec = r.section(cluster, "ArvNode")
    kp = r.section(sec, "Keepproxy")
    keepproxy = KeepproxySettings(
        upload_window=r.size(kp, "UploadWindow", 8 * 1024 * 1024, minimum=65536),
        max_inflight_bytes=r.size(kp, "MaxInflightBytes", 256 * 1024 * 1024, minimum=65536),
        idle_timeout=r.duration(kp, "IdleTimeout", 60.0, positive=True),
    )
    if keepproxy.upload_window > keepproxy.max_inflight_bytes:
        r.bad(kp.path + ("UploadWindow",), f"the size {keepproxy.upload_window}",
              f"at most MaxInflightBytes ({keepproxy.max_inflight_bytes})")
    result = ArvNodeConfig(
        shutdown_grace_period=r.duration(sec, "ShutdownGracePeriod", 30.0),
        data_directory=r.text(sec, "DataDirectory"),
        token_cache_ttl=r.duration(sec, "TokenCacheTTL", 2.0),
        keepproxy=keepproxy,
    )
    # ArvNode is our own section: an unknown key there is a mistake, not
    # another component's setting.
    for s in (sec, kp):
        for key in s.data:
            if key not in r.asked.get(s.path, set()):
                r.bad(s.path + (key,), "an unknown key",
                      f"one of {', '.join(sorted(r.asked.get(s.path, set())))}")
                r.consumed.add(s.path + (key,))
    return result


def _select_cluster(data: Any, cluster: str | None, source: str) -> str:
    if not isinstance(data, Mapping):
        raise ConfigError([
            f"{source}: the top level is {_show(data)}; expected a mapping with a Clusters key"
        ])
    clusters = data.get("Clusters")
    if clusters is None:
        raise ConfigError([f"Clusters: missing ({source}); expected Clusters: {{<cluster id>: {{...}}}}"])
    if not isinstance(clusters, Mapping) or not clusters:
        got = "an empty mapping" if isinstance(clusters, Mapping) else _show(clusters)
        raise ConfigError([
            f"Clusters: got {got} ({source}); expected a mapping of cluster id to settings"
        ])
    ids = sorted(clusters)
    if cluster is None:
        if len(ids) > 1:
            raise ConfigError([
                f"Clusters: {source} defines several clusters ({', '.join(ids)}); "
                "expected exactly one, or name the one to use"
            ])
        return ids[0]
    if cluster not in clusters:
        raise ConfigError([
            f"Clusters.{cluster}: not in {source} (it defines {', '.join(ids)}); "
            "expected the cluster to be configured"
        ])
    return cluster


def config_from_string(text: str, cluster: str | None = None, source: str = "<string>") -> Config:
    """Parse and validate YAML ``text``; ``source`` names it in messages.

    @raise ConfigError: listing every problem found.
    """
    data, lines = _parse_yaml(text, source)
    cid = _select_cluster(data, cluster, source)
    r = _Reader(source=source, lines=lines)
    root = _Section(data, ())
    clusters = r.section(root, "Clusters")
    for other in clusters.data:
        if other != cid:
            r.consumed.add(("Clusters", other))
    if not CLUSTER_ID_RE.match(cid):
        r.bad(("Clusters", cid), f"the cluster id {json.dumps(cid)}", "5 characters of [a-z0-9]")
    value = clusters.data[cid]
    if value is not None and not isinstance(value, Mapping):
        r.bad(("Clusters", cid), _show(value), "a mapping of cluster settings")
        raise ConfigError(r.problems)
    sec = _Section(value or {}, ("Clusters", cid))
    r.entered.add(sec.path)
    volumes = _volumes(r, sec)
    config = Config(
        cluster_id=cid,
        system_root_token=r.secret(sec, "SystemRootToken", required=True),
        management_token=r.secret(sec, "ManagementToken"),
        services=_services(r, sec),
        collections=_collections(r, sec),
        tls=_tls(r, sec),
        login=_login(r, sec),
        remote_clusters=_remote_clusters(r, sec),
        api=_api(r, sec),
        postgresql=_postgresql(r, sec),
        users=_users(r, sec),
        volumes=volumes,
        storage_classes=_storage_classes(r, sec, volumes),
        arvnode=_arvnode(r, sec),
        source=source,
    )
    login_cluster = config.login.login_cluster
    if login_cluster and login_cluster != cid and login_cluster not in config.remote_clusters:
        r.warn(sec.path + ("Login", "LoginCluster"),
               f"{login_cluster} has no RemoteClusters entry, so it cannot be reached")
    unknown = r.unknown_keys(data)
    if r.problems:
        raise ConfigError(r.problems)
    return attrs.evolve(config, unknown_keys=tuple(unknown), warnings=tuple(r.warnings))


def startup_problems(config: Config) -> list[str]:
    """What stops a valid config from starting a node: no InternalURL for
    the controller or the keepproxy, an https listener without a
    certificate, a volume whose driver arvnode lacks.

    Not load errors, because tests and tools load partial configs; the
    twistd plugin and ``arvnode config check`` both refuse these, with
    the key path, before anything starts.
    """
    prefix = f"Clusters.{config.cluster_id}."
    problems = []
    services = config.services
    https = False
    # (Keepstore URLs may be only upstreams of this node: checked at start.)
    for name, service in (("Controller", services.controller), ("Keepproxy", services.keepproxy)):
        if not service.internal_urls:
            problems.append(f"{prefix}Services.{name}.InternalURLs: got nothing; expected at least "
                            'one URL to listen on, e.g. {"https://0.0.0.0:8443": {}}')
        https = https or any(u.scheme == "https" for u in service.internal_urls)
    if https and not config.tls.certificate:
        problems.append(f"{prefix}TLS.Certificate: got nothing; expected a certificate file "
                        "(with TLS.Key), since a Services InternalURL is https")
    for uuid, volume in sorted(config.volumes.items()):
        if volume.driver not in ("Directory", "S3") and not volume.access_via_hosts:
            problems.append(f"{prefix}Volumes.{uuid}.Driver: got {json.dumps(volume.driver)}; "
                            'expected "Directory" or "S3" (the volume drivers arvnode has)')
    return problems


def load_config(path: str, cluster: str | None = None) -> Config:
    """Read and validate the config file at ``path``.

    @raise ConfigError: the file cannot be read, or is not a usable config.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{path}: cannot read config file: {reason}"]) from None
    return config_from_string(text, cluster=cluster, source=path)


# --------------------------------------------------------------------------
# Effective configuration, for display


def _service_dict(service: ServiceConfig, keepstore: bool) -> dict[str, Any]:
    internal: dict[str, Any] = {}
    for url in service.internal_urls:
        options: dict[str, Any] = {}
        if url in service.listen_urls:
            options["ListenURL"] = str(service.listen_urls[url])
        if keepstore:
            options["Rendezvous"] = service.rendezvous.get(url, "")
        internal[str(url)] = options
    return {
        "ExternalURL": str(service.external_url) if service.external_url else "",
        "InternalURLs": internal,
    }


def _mask(value: str) -> str:
    return MASK if value else ""


def mask_secrets(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data in Arvados' key names and
    spellings (durations like ``5m0s``), with every secret replaced by
    ``***`` (an unset secret stays ``""``)."""
    c = config
    perm = c.collections.keepproxy_permission
    cluster: dict[str, Any] = {
        "SystemRootToken": _mask(c.system_root_token),
        "ManagementToken": _mask(c.management_token),
        "Services": {
            "Controller": _service_dict(c.services.controller, False),
            "Keepproxy": _service_dict(c.services.keepproxy, False),
            "Keepstore": _service_dict(c.services.keepstore, True),
        },
        "Collections": {
            "BlobSigning": c.collections.blob_signing,
            "BlobSigningKey": _mask(c.collections.blob_signing_key),
            "BlobSigningTTL": format_duration(c.collections.blob_signing_ttl),
            "DefaultReplication": c.collections.default_replication,
            "KeepproxyPermission": {
                "User": {"Download": perm.user_download, "Upload": perm.user_upload},
                "Admin": {"Download": perm.admin_download, "Upload": perm.admin_upload},
            },
        },
        "TLS": {
            "Certificate": c.tls.certificate,
            "Key": c.tls.key,
            "Insecure": c.tls.insecure,
        },
        "Login": {
            "LoginCluster": c.login.login_cluster,
            "RemoteTokenRefresh": format_duration(c.login.remote_token_refresh),
            "TokenLifetime": format_duration(c.login.token_lifetime),
            "TrustedClients": {url: {} for url in c.login.trusted_clients},
            "TrustPrivateNetworks": c.login.trust_private_networks,
            "Test": {
                "Enable": c.login.test_enable,
                "Users": {name: {"Email": u.email, "Password": _mask(u.password)}
                          for name, u in c.login.test_users.items()},
            },
        },
        "RemoteClusters": {
            cid: {
                "Host": rc.host,
                "Proxy": rc.proxy,
                "Scheme": rc.scheme,
                "Insecure": rc.insecure,
                "ActivateUsers": rc.activate_users,
            }
            for cid, rc in c.remote_clusters.items()
        },
        "API": {
            "MaxConcurrentRequests": c.api.max_concurrent_requests,
            "MaxQueuedRequests": c.api.max_queued_requests,
            "RequestTimeout": format_duration(c.api.request_timeout),
            "MaxRequestSize": c.api.max_request_size,
            "MaxItemsPerResponse": c.api.max_items_per_response,
            "MaxRequestAmplification": c.api.max_request_amplification,
        },
        "PostgreSQL": {
            "Connection": {
                k: (_mask(v) if _SECRET_PARAM.search(k) else v)
                for k, v in c.postgresql.connection.items()
            },
            "ConnectionPool": c.postgresql.connection_pool,
        },
        "Users": {
            "AnonymousUserToken": _mask(c.users.anonymous_user_token),
            "AutoSetupNewUsers": c.users.auto_setup_new_users,
            "NewUsersAreActive": c.users.new_users_are_active,
        },
        "Volumes": {
            uuid: {
                "Driver": v.driver,
                "DriverParameters": _mask_params(v.driver_parameters),
                "Replication": v.replication,
                "ReadOnly": v.read_only,
                "StorageClasses": {name: True for name in v.storage_classes},
                "AccessViaHosts": {str(u): {} for u in v.access_via_hosts},
            }
            for uuid, v in c.volumes.items()
        },
        "StorageClasses": {
            name: {"Default": sc.default, "Priority": sc.priority}
            for name, sc in c.storage_classes.items()
        },
        "ArvNode": {
            "ShutdownGracePeriod": format_duration(c.arvnode.shutdown_grace_period),
            "DataDirectory": c.arvnode.data_directory,
            "TokenCacheTTL": format_duration(c.arvnode.token_cache_ttl),
            "Keepproxy": {
                "UploadWindow": c.arvnode.keepproxy.upload_window,
                "MaxInflightBytes": c.arvnode.keepproxy.max_inflight_bytes,
                "IdleTimeout": format_duration(c.arvnode.keepproxy.idle_timeout),
            },
        },
    }
    return {"Clusters": {c.cluster_id: cluster}}


def _mask_params(params: Mapping[str, Any]) -> Any:
    """A copy of driver parameters with secret-looking values masked."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out[key] = _mask_params(value)
        elif _SECRET_PARAM.search(key) and value not in (None, ""):
            out[key] = MASK
        elif isinstance(value, list):
            out[key] = list(value)
        else:
            out[key] = value
    return out
