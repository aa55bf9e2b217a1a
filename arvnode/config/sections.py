"""One function per part of a cluster's section (Services, Collections, TLS,
Login, RemoteClusters, API, PostgreSQL, Users, Volumes, StorageClasses,
ArvNode), each turning it into its frozen config class."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from arvnode.config.model import (
    APIConfig,
    ArvNodeConfig,
    CollectionsConfig,
    _implicit_classes,
    KeepproxyPermission,
    KeepproxySettings,
    LoginConfig,
    OpenIDConnectConfig,
    PostgreSQLConfig,
    RemoteCluster,
    ServiceConfig,
    ServicesConfig,
    StorageClass,
    TestUser,
    TLSConfig,
    URL,
    UsersConfig,
    VolumeConfig,
)
from arvnode.config.reader import _Reader, _Section, _show, _show_secret, _to_str
from arvnode.ids import CLUSTER_ID_RE, UUID_RE


_SERVICE_KEYS = {
    "controller": "Controller", "keepproxy": "Keepproxy", "keepstore": "Keepstore",
    "keepbalance": "Keepbalance",
}


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
        blob_trash=r.boolean(sec, "BlobTrash", True),
        blob_trash_lifetime=r.duration(sec, "BlobTrashLifetime", 336 * 3600.0),
        blob_trash_check_interval=r.duration(sec, "BlobTrashCheckInterval", 24 * 3600.0),
        blob_trash_concurrency=r.integer(sec, "BlobTrashConcurrency", 4, minimum=1),
        blob_delete_concurrency=r.integer(sec, "BlobDeleteConcurrency", 4, minimum=1),
        balance_period=r.duration(sec, "BalancePeriod", 6 * 3600.0),
        balance_timeout=r.duration(sec, "BalanceTimeout", 6 * 3600.0, positive=True),
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
    value, path = r.raw(sec, "Key")
    if isinstance(value, str) and "-----BEGIN" in value:
        # Inline key material: refused without echoing any of it.
        r.bad(path, f"inline PEM key material ({len(value)} characters, not shown)", expected)
        key = ""
    else:
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
    test_enable = r.boolean(test, "Enable", False)
    oidc = _openid_connect(r, r.section(sec, "OpenIDConnect"))
    google = _openid_connect(r, r.section(sec, "Google"), issuer=GOOGLE_ISSUER)
    enabled = [name for name, on in (("Login.Test.Enable", test_enable),
                                     ("Login.OpenIDConnect.Enable", oidc.enable),
                                     ("Login.Google.Enable", google.enable)) if on]
    if len(enabled) > 1:
        r.bad(sec.path, f"Enable: true in each of {', '.join(enabled)}",
              "at most one login method enabled (set the others' Enable to false)")
    return LoginConfig(
        remote_token_refresh=r.duration(sec, "RemoteTokenRefresh", 300.0, positive=True),
        login_cluster=r.typed(
            sec, "LoginCluster", "", _cluster_id, 'a cluster id of 5 characters [a-z0-9], or ""'
        ),
        trusted_clients=tuple(trusted),
        token_lifetime=r.duration(sec, "TokenLifetime", 0.0),
        trust_private_networks=r.boolean(sec, "TrustPrivateNetworks", False),
        test_enable=test_enable,
        test_users=users,
        openid_connect=oidc,
        google=google,
    )


GOOGLE_ISSUER = "https://accounts.google.com"


def _issuer(v: Any) -> str:
    """An https URL; http only on a loopback host (an in-test provider)."""
    if not isinstance(v, str):
        raise ValueError("")
    url = URL.parse(v)
    if url.scheme != "https" and url.host not in ("localhost", "::1") and not url.host.startswith("127."):
        raise ValueError("http is allowed only for a loopback address")
    return v


def _openid_connect(r: _Reader, sec: _Section, issuer: str = "") -> OpenIDConnectConfig:
    """``Login.OpenIDConnect``, or ``Login.Google`` when ``issuer`` is given
    (Arvados' Google login is OpenID Connect with Google's issuer and the
    standard claims)."""
    enable = r.boolean(sec, "Enable", False)
    if not issuer:
        issuer = r.typed(sec, "Issuer", "", _issuer,
                         "the provider's https URL, e.g. https://keycloak.example.org/realms/main")
    client_id = r.text(sec, "ClientID")
    value, path = r.raw(sec, "ClientSecret")
    secret = ""
    if isinstance(value, str):
        secret = value
    elif value is not None:
        r.bad(path, _show_secret(value), "a string")
    params: dict[str, str] = {}
    for key, val, ppath in r.entries(sec, "AuthenticationRequestParameters",
                                     "a mapping of query parameter to value"):
        if not isinstance(val, str):
            r.bad(ppath, _show(val), "a string")
        else:
            params[key] = val
    if enable:
        for key, got in (("Issuer", issuer), ("ClientID", client_id), ("ClientSecret", secret)):
            if not got and not (key == "Issuer" and sec.data.get("Issuer")):
                r.bad(sec.path + (key,), "nothing", f"the provider's {key} (required with Enable: true)")
    if sec.path[-1] == "Google":
        alternate, apath = r.raw(sec, "AlternateEmailAddresses")
        if alternate is True and enable:
            r.warn(apath, "arvnode does not ask Google's People API: only the ID token's email is used")
        return OpenIDConnectConfig(enable=enable, issuer=issuer, client_id=client_id,
                                   client_secret=secret, authentication_request_parameters=params)
    return OpenIDConnectConfig(
        enable=enable,
        issuer=issuer,
        client_id=client_id,
        client_secret=secret,
        email_claim=r.text(sec, "EmailClaim", "email") or "email",
        email_verified_claim=r.text(sec, "EmailVerifiedClaim", "email_verified"),
        username_claim=r.text(sec, "UsernameClaim"),
        accept_access_token=r.boolean(sec, "AcceptAccessToken", False),
        accept_access_token_scope=r.text(sec, "AcceptAccessTokenScope"),
        authentication_request_parameters=params,
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
        # Positive: 0 would cancel every request at once (and the remote
        # calls' timeouts derive from it), so it is refused, not "no limit".
        request_timeout=r.duration(sec, "RequestTimeout", 300.0, positive=True),
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
            if params.data.get("IAMRole") and params.data.get("AccessKeyID"):
                r.warn(params.path + ("IAMRole",),
                       "ignored: AccessKeyID and SecretAccessKey are given (static keys win, as in Arvados)")
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
