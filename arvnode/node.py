"""The one place that wires a node together.

``build_node(config, reactor)`` turns a validated :class:`arvnode.config.Config`
into a service tree; it does no I/O. Starting the tree does the I/O in a
fixed order — thread pools, database (migrations, system records), volumes,
then the listeners — so a node never accepts a request it cannot serve.
Stopping reverses it: listeners close and drain first (grace period), then
volumes, database and pools.

Every collaborator is built here and passed down; nothing below this module
reaches for the global reactor, a global registry or a singleton, so tests
run several nodes in one process.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from arvnode import embedded
from arvnode.api.service import advertised_url, build_controller_site
from arvnode.auth.refresh import RemoteTokenRefresh
from arvnode.auth.remote_tokens import RemoteTokens
from arvnode.auth.tokens import Authenticator
from arvnode.config import Config, format_duration
from arvnode.keep.balance import BalanceMetrics, Balancer
from arvnode.keep.balance_service import BalancerService, balancer_role
from arvnode.keep.service import build_keepproxy_site
from arvnode.keep.keepstore import build_keepstore_site, keepstore_role, mounted_here
from arvnode.keep.trash import EmptyTrashService, TrashPolicy
from arvnode.keep.volumes.upstream import build_upstreams, registered_keepstores
from arvnode.keep.volumes import build_volume
from arvnode.remote.client import RemoteClient
from arvnode.remote.forward import Forwarder
from arvnode.remote.keep import RemoteKeep
from arvnode.services import HTTPListener, OrderedMultiService
from arvnode.store import Store, open_store
from arvnode.store.sweeper import TrashSweeper
from arvnode.tls import ReloadableServerTLS, client_policy
from arvnode.web.metrics import NodeMetrics

DEFAULT_STATE_DIR = "/var/lib/arvnode"
# Asking an issuer about a token happens on a client's request: wait at most
# this long (or API.RequestTimeout if shorter) before answering 502/504.
REMOTE_TOKEN_CHECK_TIMEOUT = 30.0


class ThreadPools(Service):
    """Bounded thread pools for blocking work: file I/O, hashing, commits.

    Separate pools so a burst of disk writes cannot starve md5, neither can
    starve the database pool (which adbapi owns), and a slow fsync/rename
    at the end of one upload does not hold up the writes of the others
    (DESIGN section 3).
    """

    def __init__(self, io_threads: int = 8, hash_threads: int = 2, commit_threads: int = 4) -> None:
        self.io = ThreadPool(minthreads=1, maxthreads=io_threads, name="arvnode-io")
        self.hashing = ThreadPool(minthreads=1, maxthreads=hash_threads, name="arvnode-hash")
        self.commit = ThreadPool(minthreads=1, maxthreads=commit_threads, name="arvnode-commit")

    def startService(self) -> None:
        super().startService()
        for pool in (self.io, self.hashing, self.commit):
            pool.start()

    def stopService(self) -> None:
        super().stopService()
        for pool in (self.io, self.hashing, self.commit):
            pool.stop()


class StartupError(Exception):
    """An operator's problem found while starting (a state directory that
    cannot be created ...): logged as one line saying what to fix, since a
    traceback would only bury the path."""


class StoreService(Service):
    def __init__(self, store: Any, config: Config, state_dir: Path | None = None) -> None:
        self.store = store
        self._config = config
        # With SQLite, the database lives in the state directory: create it
        # (private to the node's user) rather than fail with SQLite's
        # "unable to open database file".
        self._state_dir = state_dir

    async def start_async(self) -> None:
        if self._state_dir is not None:
            try:
                self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise StartupError(
                    f"ArvNode.DataDirectory: cannot create {str(self._state_dir)!r}: "
                    f"{e.strerror or e}") from None
        await self.store.start()
        await self.store.ensure_system_records(
            system_root_token=self._config.system_root_token,
            anonymous_token=self._config.users.anonymous_user_token,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self.store.stop())


class VolumesService(Service):
    def __init__(self, volumes: list[Any]) -> None:
        self.volumes = volumes

    async def start_async(self) -> None:
        for volume in self.volumes:
            await volume.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([maybeDeferred(v.stop) for v in self.volumes])


class RemoteClientService(Service):
    """Closes the pooled connections to remote clusters at shutdown."""

    def __init__(self, client: RemoteClient) -> None:
        self.client = client

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self.client.close())


def _oidc_provider(node: Any, config: Config, reactor: Any) -> Any:
    """The OpenID Connect provider of a cluster that logs users in with one
    (not a LoginCluster satellite), or None. Its requests go through a
    RemoteClient of their own (the provider is one pseudo-remote), so they
    get the same deadlines, body limits and TLS rules as calls to clusters."""
    settings = config.login.oidc
    login_cluster = config.login.login_cluster
    if settings is None or (login_cluster and login_cluster != config.cluster_id):
        return None
    from arvnode.auth.oidc import CLIENT_KEY, OIDCProvider
    from arvnode.config.model import RemoteCluster, URL

    issuer = URL.parse(settings.issuer)
    client = RemoteClient(
        reactor=reactor, clock=reactor, local_cluster=config.cluster_id,
        remotes={CLIENT_KEY: RemoteCluster(host=issuer.netloc, scheme=issuer.scheme,
                                           insecure=config.tls.insecure)},
        timeout=min(config.api.request_timeout, REMOTE_TOKEN_CHECK_TIMEOUT),
    )
    service = RemoteClientService(client)
    service.setName("oidc-client")
    service.setServiceParent(node)
    return OIDCProvider(settings, client, reactor)


def _access_tokens(provider: Any, config: Config, store: Any, reactor: Any) -> Any:
    """The provider's access tokens as API tokens (``AcceptAccessToken``), or None."""
    if provider is None or not provider.settings.accept_access_token:
        return None
    from arvnode.auth.access_tokens import AccessTokens

    return AccessTokens(provider=provider, store=store, clock=reactor,
                        system_root_token=config.system_root_token, users_config=config.users,
                        scope=provider.settings.accept_access_token_scope)


class Node(OrderedMultiService):
    """The top service of one arvnode process."""

    log = Logger()

    # Set by build_node (tests and the CLI reach the parts through them).
    metrics: NodeMetrics
    store: Store
    balancer: Balancer | None
    remote_client: RemoteClient
    remote_tokens: RemoteTokens
    forwarder: Forwarder
    remote_keep: RemoteKeep
    authenticator: Authenticator

    def __init__(
        self,
        config: Config,
        *,
        state_dir: Path,
        embedded_mode: bool,
        on_fatal: Callable[[Failure], None],
        announce: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.config = config
        self.state_dir = state_dir
        self.embedded_mode = embedded_mode
        self._on_fatal = on_fatal
        self._announce = announce
        self._started: Deferred[None] | None = None
        # Set by build_node: keep_services records of type disk, read at start.
        self.discover_keepstores: Callable[[], Awaitable[list[Any]]] | None = None
        self.keep_proxy: Any = None
        self.admin_token: str | None = None

    @property
    def listeners(self) -> list[HTTPListener]:
        return [s for s in self if isinstance(s, HTTPListener)]

    def startService(self) -> None:
        if self.config.unknown_keys:
            # Once, as one line: a real Arvados config has hundreds of keys
            # for services arvnode does not run.
            self.log.warn(
                "config keys not used by arvnode ({n}): {keys}",
                n=len(self.config.unknown_keys), keys=", ".join(self.config.unknown_keys),
            )
        for warning in getattr(self.config, "warnings", ()):
            self.log.warn("config: {problem}", problem=warning)
        super().startService()  # sync parts: thread pools
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._fatal)

    def started(self) -> Deferred[None]:
        """Fires when every listener is up (tests await this)."""
        assert self._started is not None, "node not started"
        d: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
            return result

        self._started.addBoth(relay)
        return d

    async def _start(self) -> None:
        store_service: StoreService = self.getServiceNamed("store")  # type: ignore[assignment]
        await store_service.start_async()
        volumes: VolumesService = self.getServiceNamed("volumes")  # type: ignore[assignment]
        if self.discover_keepstores is not None:
            registered = await self.discover_keepstores()
            if registered:
                self.log.info("keepproxy: using {n} registered disk keep service(s): {uuids}",
                              n=len(registered), uuids=", ".join(v.uuid for v in registered))
                volumes.volumes.extend(registered)
                self.keep_proxy.volumes.extend(registered)
        await volumes.start_async()
        if self.embedded_mode:
            self.admin_token = await embedded.ensure_admin_token(store_service.store, self.state_dir)
        for listener in self.listeners:
            await listener.listen()
        if self.embedded_mode and self.admin_token:
            controller: HTTPListener = self.getServiceNamed("controller")  # type: ignore[assignment]
            text = embedded.env_lines(
                f"127.0.0.1:{controller.port}", self.admin_token,
                str(self.state_dir / "tls" / "ca.pem"),
            )
            embedded.write_env_file(self.state_dir, text)
            self._announce(text)
        self.log.info("arvnode cluster {cluster} is up", cluster=self.config.cluster_id)

    def _fatal(self, failure: Failure) -> None:
        if failure.check(CannotListenError, StartupError):
            # An operator's problem (port taken, address not on this host),
            # not a bug: one line naming the address, no traceback.
            self.log.critical("arvnode failed to start: {error}", error=str(failure.value))
        else:
            self.log.failure("arvnode failed to start", failure)
        self._on_fatal(failure)

    def reload_tls(self) -> None:
        for listener in self.listeners:
            if listener.tls is not None:
                listener.tls.reload()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)  # already stopped (a second stop is a no-op)
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # Listeners first, together: stop accepting, drain, cut after grace.
        await DeferredList([maybeDeferred(l.stopService) for l in self.listeners])
        for service in reversed(list(self)):
            if not isinstance(service, HTTPListener):
                await maybeDeferred(service.stopService)


def build_volumes(config: Config, reactor: Any, *, rng: random.Random, pools: ThreadPools,
                  keepstore_url: str | None = None) -> tuple[Any, list[Any], list[Any]]:
    """``(own keepstore URL or None, local volumes, upstream keepstores)`` of this node.

    Not started. One function so that ``arvnode keep balance`` works on the
    very volumes the node would mount. Keepstore role and upstream
    keepstores: docs/scale-out.md; a volume with AccessViaHosts is mounted
    only by the keepstore(s) it names.
    """
    own_keepstore, upstream_urls = keepstore_role(
        config.services.keepstore, has_local_volumes=bool(config.volumes), own_url=keepstore_url)
    volumes = [
        build_volume(uuid, vc, reactor=reactor, threadpool=pools.io, rng=rng,
                     commit_threadpool=pools.commit,
                     trash_policy=TrashPolicy.from_config(config.collections))
        for uuid, vc in sorted(config.volumes.items())
        if mounted_here(vc.access_via_hosts, own_keepstore)
    ]
    upstreams = build_upstreams(
        config.cluster_id, config.services.keepstore, upstream_urls,
        reactor=reactor, clock=reactor, token=config.system_root_token,
        signing_key=config.collections.blob_signing_key,
        signing_ttl=config.collections.blob_signing_ttl,
        storage_classes=config.default_storage_classes,
        tls_policy=client_policy(insecure=config.tls.insecure),
    )
    return own_keepstore, volumes, upstreams


def _add_balancer(node: Node, config: Config, reactor: Any, store: Any, volumes: list[Any],
                  metrics: NodeMetrics, own_keepstore: Any) -> None:
    """The "balancer" service, on the one node of the cluster that runs it
    (:func:`arvnode.keep.balance_service.balancer_role`). ``volumes`` is the
    volumes service's list, which grows by the keepstores found at start;
    added after it, the balancer stops (waiting for a pass) before the
    volumes and the store do."""
    here, why = balancer_role(config, own_keepstore=own_keepstore)
    node.balancer = None
    if not here:
        Node.log.info("balancer not run on this node: {why}", why=why)
        return
    c = config.collections
    node.balancer = Balancer(
        store, volumes, clock=reactor, signing_ttl=c.blob_signing_ttl, blob_trash=c.blob_trash,
        trash_concurrency=c.blob_trash_concurrency, timeout=c.balance_timeout,
        metrics=BalanceMetrics(metrics.registry))
    # In the config's own spelling (6h0m0s), not 21600.0s.
    Node.log.info("balancer runs on this node every {period} (Collections.BalancePeriod): {why}",
                  period=format_duration(c.balance_period), why=why)
    BalancerService(node.balancer, clock=reactor, period=c.balance_period).setServiceParent(node)


def _listen_url(service: Any, name: str) -> Any:
    """The address to bind: the first InternalURL (or its ListenURL)."""
    if not service.internal_urls:
        raise ValueError(f"Services.{name}.InternalURLs: no URL to listen on")
    return service.listen_url(service.internal_urls[0])


def build_node(
    config: Config,
    reactor: Any,
    *,
    rng: random.Random | None = None,
    embedded_mode: bool = False,
    on_fatal: Callable[[Failure], None] = lambda f: None,
    announce: Callable[[str], None] = lambda text: None,
    keepstore_url: str | None = None,
) -> Node:
    """Build (without starting) the service tree of one node.

    ``keepstore_url`` names the ``Services.Keepstore.InternalURLs`` entry this
    node serves (Arvados' ``ARVADOS_SERVICE_INTERNAL_URL``; ``""`` = none);
    by default the role follows :func:`arvnode.keep.keepstore.keepstore_role`.
    """
    rng = rng or random.SystemRandom()
    state_dir = Path(config.arvnode.data_directory or DEFAULT_STATE_DIR)
    node = Node(config, state_dir=state_dir, embedded_mode=embedded_mode,
                on_fatal=on_fatal, announce=announce)
    metrics = NodeMetrics()
    node.metrics = metrics

    pools = ThreadPools()
    pools.setName("threadpools")
    pools.setServiceParent(node)

    store = open_store(
        reactor,
        cluster_id=config.cluster_id,
        postgresql=dict(config.postgresql.connection) or None,
        sqlite_path=str(state_dir / "arvnode.sqlite"),
        clock=reactor,
        rng=rng,
        max_threads=config.postgresql.connection_pool if config.postgresql.connection else 1,
    )
    store_service = StoreService(
        store, config, state_dir=None if config.postgresql.connection else state_dir)
    store_service.setName("store")
    store_service.setServiceParent(node)
    node.store = store
    # Deletes what is past its delete_at ("trash-sweeper"); added after the
    # store so it stops (waiting for a round in flight) before the store does.
    TrashSweeper(store, clock=reactor).setServiceParent(node)

    own_keepstore, volumes, upstreams = build_volumes(
        config, reactor, rng=rng, pools=pools, keepstore_url=keepstore_url)
    volumes_service = VolumesService(volumes + upstreams)
    volumes_service.setName("volumes")
    volumes_service.setServiceParent(node)
    # Deletes the local volumes' trashed blocks past BlobTrashLifetime
    # ("blob-trash-sweeper", arvnode/keep/trash.py); added after the volumes
    # so it stops before them. Off as in Arvados: BlobTrash false or interval 0.
    if volumes and config.collections.blob_trash and config.collections.blob_trash_check_interval > 0:
        EmptyTrashService(lambda: volumes, clock=reactor,
                          interval=config.collections.blob_trash_check_interval,
                          ).setServiceParent(node)
    _add_balancer(node, config, reactor, store, volumes_service.volumes, metrics, own_keepstore)

    # Federation: one client for every remote cluster, remote-token
    # validation behind the authenticator, and the refresh timer.
    remote_client = RemoteClient(
        reactor=reactor, clock=reactor, local_cluster=config.cluster_id,
        remotes=config.remote_clusters, timeout=config.api.request_timeout,
    )
    remote_tokens = RemoteTokens(
        store=store, client=remote_client, clock=reactor, rng=rng,
        cluster_id=config.cluster_id, remotes=config.remote_clusters, users=config.users,
        login_cluster=config.login.login_cluster,
        refresh_interval=config.login.remote_token_refresh,
        timeout=min(config.api.request_timeout, REMOTE_TOKEN_CHECK_TIMEOUT),
    )
    remote_service = RemoteClientService(remote_client)
    remote_service.setName("remote-clients")
    remote_service.setServiceParent(node)
    refresh = RemoteTokenRefresh(
        remote_tokens, clock=reactor, rng=rng, interval=config.login.remote_token_refresh,
    )
    refresh.setServiceParent(node)
    node.remote_client = remote_client
    node.remote_tokens = remote_tokens
    node.forwarder = Forwarder(
        remote_client, local_cluster=config.cluster_id, login_cluster=config.login.login_cluster,
        # A little under API.RequestTimeout, so a slow remote is a 504 naming
        # it rather than our own request timeout (arvnode/api/federation.py).
        timeout=config.api.request_timeout * 0.9,
    )
    node.remote_keep = RemoteKeep(remote_client, reactor)
    oidc_provider = _oidc_provider(node, config, reactor)

    authenticator = Authenticator(
        store, reactor, cache_ttl=config.arvnode.token_cache_ttl, remote=remote_tokens,
        access_tokens=_access_tokens(oidc_provider, config, store, reactor),
    )
    node.authenticator = authenticator

    tls: ReloadableServerTLS | None = None

    def tls_for(url: Any) -> ReloadableServerTLS | None:
        nonlocal tls
        if url.scheme != "https":
            return None
        if tls is None:
            tls = ReloadableServerTLS(config.tls.certificate, config.tls.key)
        return tls

    grace = config.arvnode.shutdown_grace_period

    async def ping_store() -> None:
        await store.ping()

    controller_site = build_controller_site(
        clock=reactor, rng=rng, metrics=metrics,
        management_token=config.management_token,
        health_checks={"ping": ping_store},
        max_concurrent=config.api.max_concurrent_requests,
        max_queued=config.api.max_queued_requests,
        request_timeout=config.api.request_timeout,
        store=store, authenticator=authenticator, config=config,
        remote_client=remote_client, forwarder=node.forwarder, oidc_provider=oidc_provider,
        # Callables: with port 0 the advertised port is the one bound at start.
        keepproxy_url=lambda: advertised_url(config.services.keepproxy, keepproxy),
        controller_url=lambda: advertised_url(config.services.controller, controller),
    )
    url = _listen_url(config.services.controller, "Controller")
    controller = HTTPListener(reactor, host=url.host, port=url.port, site=controller_site,
                              tls=tls_for(url), grace_period=grace)
    controller.setName("controller")
    controller.setServiceParent(node)

    async def keep_ping() -> None:
        return None

    kp = config.arvnode.keepproxy
    keep_site = build_keepproxy_site(
        reactor=reactor, clock=reactor, rng=rng,
        authenticate=authenticator.authenticate,
        volumes=volumes + upstreams,
        signing_key=config.collections.blob_signing_key,
        signing_ttl=config.collections.blob_signing_ttl,
        blob_signing=config.collections.blob_signing,
        default_replication=config.collections.default_replication,
        permission=config.collections.keepproxy_permission,
        system_root_token=config.system_root_token,
        management_token=config.management_token,
        metrics=metrics,
        hash_pool=pools.hashing,
        upload_window=kp.upload_window,
        max_inflight_bytes=kp.max_inflight_bytes,
        idle_timeout=kp.idle_timeout,
        # No StorageClasses in the config: every volume is of class "default".
        default_classes=config.default_storage_classes or ("default",),
    )
    url = _listen_url(config.services.keepproxy, "Keepproxy")
    keep_site.proxy.remote_keep = node.remote_keep
    node.keep_proxy = keep_site.proxy

    async def discover_keepstores() -> list[Any]:
        if own_keepstore is not None:
            # A keepstore host serves its own volumes; the records of type
            # disk include itself, and using itself upstream would count one
            # copy twice.
            return []
        return await registered_keepstores(
            store, exclude={v.uuid for v in volumes + upstreams},
            reactor=reactor, clock=reactor, token=config.system_root_token,
            signing_key=config.collections.blob_signing_key,
            signing_ttl=config.collections.blob_signing_ttl,
            storage_classes=config.default_storage_classes,
            tls_policy=client_policy(insecure=config.tls.insecure),
        )

    node.discover_keepstores = discover_keepstores
    keepproxy = HTTPListener(reactor, host=url.host, port=url.port, site=keep_site,
                             tls=tls_for(url), grace_period=grace)
    keepproxy.setName("keepproxy")
    keepproxy.setServiceParent(node)

    if own_keepstore is not None:
        keepstore_site = build_keepstore_site(
            reactor=reactor, clock=reactor, rng=rng, volumes=volumes,
            signing_key=config.collections.blob_signing_key,
            signing_ttl=config.collections.blob_signing_ttl,
            blob_signing=config.collections.blob_signing,
            default_classes=config.default_storage_classes,
            system_root_token=config.system_root_token,
            management_token=config.management_token,
            metrics=metrics, hash_pool=pools.hashing,
            upload_window=kp.upload_window, max_inflight_bytes=kp.max_inflight_bytes,
            idle_timeout=kp.idle_timeout,
            blob_trash=config.collections.blob_trash,
            trash_concurrency=config.collections.blob_trash_concurrency,
            tls_policy=client_policy(insecure=config.tls.insecure),
        )
        url = config.services.keepstore.listen_url(own_keepstore)
        keepstore = HTTPListener(reactor, host=url.host, port=url.port, site=keepstore_site,
                                 tls=tls_for(url), grace_period=grace)
        keepstore.setName("keepstore")
        keepstore.setServiceParent(node)
    return node



