"""The embedded default: a complete one-machine cluster from nothing.

``twistd arvnode`` without ``--config`` (or ``arvnode init``) creates a
state directory holding an ordinary Arvados-shaped ``config.yml`` plus what
it points to: TLS files, the SQLite database, the block directory and the
admin token. Keeping the generated configuration as a plain config file
means the embedded node runs through exactly the same code as a configured
one, and an operator who outgrows it can read, copy and edit that file.

Layout (directory 0700, secrets 0600)::

    config.yml      cluster id, SystemRootToken, ManagementToken, BlobSigningKey, ...
    tls/            ca.pem (give this to clients as SSL_CERT_FILE), server.pem/.key
    keep/           the directory volume
    arvnode.sqlite  users, tokens, records
    admin-token     the admin user's API token (v2 form)
    env.sh          the three export lines a client needs
"""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any

import yaml

from arvnode import ids

CONFIG_NAME = "config.yml"
ADMIN_TOKEN_NAME = "admin-token"
ENV_NAME = "env.sh"
DEFAULT_DATA_DIR = "arvnode-data"
DEFAULT_CONTROLLER_PORT = 8443
DEFAULT_KEEPPROXY_PORT = 25107


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    """The conventional port if it is free now, else any free one.

    The choice is written into config.yml, so later starts use the same port
    and the printed ARVADOS_API_HOST stays valid.
    """
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_config(data_dir: Path, rng: random.Random, controller_port: int, keepproxy_port: int) -> dict[str, Any]:
    cluster = ids.new_cluster_id(rng)
    controller = f"https://127.0.0.1:{controller_port}/"
    keepproxy = f"http://127.0.0.1:{keepproxy_port}/"
    return {
        "Clusters": {
            cluster: {
                "SystemRootToken": ids.random_alnum(rng, 50),
                "ManagementToken": ids.random_alnum(rng, 50),
                "Services": {
                    "Controller": {"ExternalURL": controller, "InternalURLs": {controller: {}}},
                    "Keepproxy": {"ExternalURL": keepproxy, "InternalURLs": {keepproxy: {}}},
                },
                "Collections": {
                    "BlobSigningKey": ids.random_alnum(rng, 50),
                    "BlobSigningTTL": "336h",
                    # One directory volume stores one copy; advertising 2 would
                    # make every SDK upload fail (client-surface §7.3).
                    "DefaultReplication": 1,
                },
                "Users": {"AnonymousUserToken": ids.random_alnum(rng, 50)},
                "TLS": {
                    "Certificate": str(data_dir / "tls" / "server.pem"),
                    "Key": str(data_dir / "tls" / "server.key"),
                },
                "Volumes": {
                    f"{cluster}-nyw5e-000000000000000": {
                        "Driver": "Directory",
                        "DriverParameters": {"Root": str(data_dir / "keep")},
                        "Replication": 1,
                        "StorageClasses": {"default": True},
                    }
                },
                "ArvNode": {"DataDirectory": str(data_dir)},
            }
        }
    }


def ensure_state_dir(
    data_dir: str | os.PathLike[str],
    rng: random.Random,
    *,
    controller_port: int = DEFAULT_CONTROLLER_PORT,
    keepproxy_port: int = DEFAULT_KEEPPROXY_PORT,
) -> Path:
    """Create the state directory if needed; return the path of its config.

    Idempotent: an existing config.yml is never regenerated, so the cluster
    id, tokens, certificate and data survive restarts.
    """
    from arvnode.tls import generate_ca_and_server

    root = Path(data_dir).absolute()
    config_path = root / CONFIG_NAME
    if config_path.exists():
        return config_path
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    (root / "keep").mkdir(mode=0o700, exist_ok=True)
    # SQLite creates its -wal/-shm files with the database file's mode.
    os.close(os.open(root / "arvnode.sqlite", os.O_WRONLY | os.O_CREAT, 0o600))
    cfg = build_config(root, rng, _pick_port(controller_port), _pick_port(keepproxy_port))
    cluster = next(iter(cfg["Clusters"]))
    generate_ca_and_server(root / "tls", common_name=cluster)
    header = (
        "# arvnode embedded default, generated by `arvnode init`.\n"
        "# An ordinary Arvados-shaped config: edit it, or copy it to /etc/arvados/config.yml.\n"
    )
    # Written last: its presence means the directory is complete.
    _write_private(config_path, header + yaml.safe_dump(cfg, sort_keys=False))
    return config_path


def env_lines(api_host: str, token: str, ca_file: str) -> str:
    return (
        f"export ARVADOS_API_HOST={api_host}\n"
        f"export ARVADOS_API_TOKEN={token}\n"
        f"export SSL_CERT_FILE={ca_file}\n"
    )


async def ensure_admin_token(store: Any, data_dir: Path) -> str:
    """The admin user's token, created on first start and kept in a file.

    If the file's token no longer works (revoked by an operator), a new one
    is issued, so the printed environment always works.
    """
    path = data_dir / ADMIN_TOKEN_NAME
    if path.exists():
        token = path.read_text().strip()
        if token and await store.find_token(token) is not None:
            return token
    users = [u for u in await store.list_users() if u.username == "admin"]
    if users:
        user = users[0]
    else:
        user = await store.create_user(
            email="admin@localhost", username="admin", first_name="Admin",
            last_name="User", is_admin=True, is_active=True,
        )
    record = await store.create_token(user.uuid)
    token = record.v2
    _write_private(path, token + "\n")
    return token


def write_env_file(data_dir: Path, text: str) -> Path:
    path = data_dir / ENV_NAME
    _write_private(path, text)
    return path
