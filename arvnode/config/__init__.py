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

from arvnode.config.effective import mask_secrets
from arvnode.config.loader import config_from_string, load_config, startup_problems
from arvnode.config.model import (
    DEFAULT_CONFIG_PATH,
    MASK,
    URL,
    APIConfig,
    ArvNodeConfig,
    CollectionsConfig,
    Config,
    ConfigError,
    KeepproxyPermission,
    KeepproxySettings,
    LoginConfig,
    PostgreSQLConfig,
    RemoteCluster,
    ServiceConfig,
    ServicesConfig,
    StorageClass,
    TestUser,
    TLSConfig,
    UsersConfig,
    VolumeConfig,
)
from arvnode.config.units import format_duration, parse_duration, parse_size

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MASK",
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
    "startup_problems",
]
