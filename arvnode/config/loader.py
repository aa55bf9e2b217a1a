"""From a file or a string to a :class:`Config`: pick the cluster, read every
section, collect the problems; and what else stops a node from starting."""
from __future__ import annotations

import json
from typing import Any, Mapping

import attrs

from arvnode.config.model import Config, ConfigError
from arvnode.config.reader import _Reader, _Section, _show
from arvnode.config.sections import (
    _api,
    _arvnode,
    _collections,
    _login,
    _postgresql,
    _remote_clusters,
    _services,
    _storage_classes,
    _tls,
    _users,
    _volumes,
)
from arvnode.config.yamlsource import _parse_yaml
from arvnode.ids import CLUSTER_ID_RE


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
                "expected exactly one, or the one to use named with --cluster"
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
