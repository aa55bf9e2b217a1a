"""The validated configuration: frozen attrs classes, and :class:`ConfigError`."""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Iterable, Mapping, TypeVar
from urllib.parse import urlsplit

from attrs import field, frozen


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
    # Services.Keepbalance: where arvnode's built-in balancer runs.
    keepbalance: ServiceConfig = ServiceConfig()


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
    # Block trash and garbage collection (Arvados' names and defaults).
    # blob_trash false: nothing is ever trashed. A trashed block stays
    # recoverable for blob_trash_lifetime (0: deleted at once).
    blob_trash: bool = True
    blob_trash_lifetime: float = 336 * 3600.0
    # How often each local volume deletes its expired trash (0: never).
    blob_trash_check_interval: float = 24 * 3600.0
    blob_trash_concurrency: int = 4
    blob_delete_concurrency: int = 4
    # The built-in balancer's period (0: disabled) and per-run time limit.
    balance_period: float = 6 * 3600.0
    balance_timeout: float = 6 * 3600.0


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
class OpenIDConnectConfig:
    """``Login.OpenIDConnect`` (or ``Login.Google``, which is this with
    Google's issuer): log users in with an OpenID Connect provider."""

    enable: bool = False
    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    email_claim: str = "email"
    # "": the provider's email claim is trusted as is.
    email_verified_claim: str = "email_verified"
    # "": the user name comes from the email address.
    username_claim: str = ""
    accept_access_token: bool = False
    accept_access_token_scope: str = ""
    # Extra query parameters of the authorization request (prompt, hd ...).
    authentication_request_parameters: Mapping[str, str] = field(factory=dict, converter=_freeze)


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
    openid_connect: OpenIDConnectConfig = OpenIDConnectConfig()
    # Login.Google, read into the same shape (its issuer is fixed).
    google: OpenIDConnectConfig = OpenIDConnectConfig()

    @property
    def oidc(self) -> OpenIDConnectConfig | None:
        """The enabled OpenID Connect login (OpenIDConnect or Google), or None."""
        for method in (self.openid_connect, self.google):
            if method.enable:
                return method
        return None


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
