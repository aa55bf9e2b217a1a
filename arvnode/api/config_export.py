"""``GET /arvados/v1/config``: the public part of the cluster config.

Why it matters: every SDK tool calls this first (its KeepClient reads
``StorageClasses`` to decide which classes to request on every PUT), arv-copy
reads ``ClusterID`` and ``Collections.DefaultReplication``, and the SDK reads
``Collections.CollectionVersioning`` for ``preserve_version``. If it fails,
every tool dies before doing anything (spec client-surface §5.1).

Like Arvados' own export, this is a whitelist in Arvados' key names and
spellings (durations as Go strings such as ``336h0m0s``): only what a client
may know is copied, so no token, key or password can leak, whatever the
config holds. ``RemoteClusters`` entries carry only where a cluster is and
how to reach it.
"""
from __future__ import annotations

from typing import Any

from arvnode.config import URL, Config, format_duration

__all__ = ["exported_config"]

# Arvados' Collections.DefaultTrashLifetime and TrashSweepInterval defaults;
# arvnode does not make them configurable, so it exports Arvados' values.
_DEFAULT_TRASH_LIFETIME = 14 * 24 * 3600.0
_DEFAULT_PRESERVE_VERSION_IF_IDLE = -1.0

# Services a client may look up; those arvnode does not run export "".
_OTHER_SERVICES = ("WebDAV", "WebDAVDownload", "Websocket", "Workbench1", "Workbench2")


def _url(url: URL | None) -> str:
    return str(url) if url is not None else ""


def _storage_classes(config: Config) -> dict[str, Any]:
    classes = {
        name: {"Default": sc.default, "Priority": sc.priority}
        for name, sc in sorted(config.storage_classes.items())
    }
    # A client sends X-Keep-Storage-Classes only for Default classes; with
    # none it stops tracking classes and warns on every upload.
    return classes or {"default": {"Default": True, "Priority": 0}}


def exported_config(config: Config) -> dict[str, Any]:
    """The public configuration as Arvados exports it (plain JSON-able data)."""
    c = config
    services: dict[str, Any] = {
        "Controller": {"ExternalURL": _url(c.services.controller.external_url)},
        "Keepproxy": {"ExternalURL": _url(c.services.keepproxy.external_url)},
        "Keepstore": {"ExternalURL": _url(c.services.keepstore.external_url)},
    }
    for name in _OTHER_SERVICES:
        services[name] = {"ExternalURL": ""}
    return {
        "ClusterID": c.cluster_id,
        "StorageClasses": _storage_classes(c),
        "Collections": {
            "BlobSigning": c.collections.blob_signing,
            "BlobSigningTTL": format_duration(c.collections.blob_signing_ttl),
            "DefaultReplication": c.collections.default_replication,
            "DefaultTrashLifetime": format_duration(_DEFAULT_TRASH_LIFETIME),
            "CollectionVersioning": False,
            "PreserveVersionIfIdle": format_duration(_DEFAULT_PRESERVE_VERSION_IF_IDLE),
            "TrustAllContent": False,
            "ForwardSlashNameSubstitution": "",
        },
        "RemoteClusters": {
            cid: {
                "Host": rc.host,
                "Proxy": rc.proxy,
                "Scheme": rc.scheme,
                "Insecure": rc.insecure,
                "ActivateUsers": rc.activate_users,
            }
            for cid, rc in sorted(c.remote_clusters.items())
        },
        "Services": services,
        "Login": {"LoginCluster": c.login.login_cluster},
        "API": {
            "MaxRequestSize": c.api.max_request_size,
            "MaxItemsPerResponse": c.api.max_items_per_response,
        },
        "Users": {
            "AutoSetupNewUsers": c.users.auto_setup_new_users,
            "NewUsersAreActive": c.users.new_users_are_active,
            # AnonymousUserToken is a secret: never exported.
        },
    }
