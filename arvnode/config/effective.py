"""The effective configuration as plain data, secrets masked (what
``arvnode config check`` prints)."""
from __future__ import annotations

from typing import Any, Mapping

from arvnode.config.model import Config, MASK, ServiceConfig
from arvnode.config.sections import _SECRET_PARAM
from arvnode.config.units import format_duration


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
            "Keepbalance": _service_dict(c.services.keepbalance, False),
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
            "BlobTrash": c.collections.blob_trash,
            "BlobTrashLifetime": format_duration(c.collections.blob_trash_lifetime),
            "BlobTrashCheckInterval": format_duration(c.collections.blob_trash_check_interval),
            "BlobTrashConcurrency": c.collections.blob_trash_concurrency,
            "BlobDeleteConcurrency": c.collections.blob_delete_concurrency,
            "BalancePeriod": format_duration(c.collections.balance_period),
            "BalanceTimeout": format_duration(c.collections.balance_timeout),
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
            "OpenIDConnect": _oidc(c.login.openid_connect),
            "Google": {
                "Enable": c.login.google.enable,
                "ClientID": c.login.google.client_id,
                "ClientSecret": _mask(c.login.google.client_secret),
                "AuthenticationRequestParameters": dict(
                    c.login.google.authentication_request_parameters),
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


def _oidc(o: Any) -> dict[str, Any]:
    return {
        "Enable": o.enable,
        "Issuer": o.issuer,
        "ClientID": o.client_id,
        "ClientSecret": _mask(o.client_secret),
        "EmailClaim": o.email_claim,
        "EmailVerifiedClaim": o.email_verified_claim,
        "UsernameClaim": o.username_claim,
        "AcceptAccessToken": o.accept_access_token,
        "AcceptAccessTokenScope": o.accept_access_token_scope,
        "AuthenticationRequestParameters": dict(o.authentication_request_parameters),
    }


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
