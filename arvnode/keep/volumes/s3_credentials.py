"""Where an S3 volume's credentials come from, and keeping them fresh.

Arvados' semantics (``DriverParameters``, see :mod:`.s3_params`):

* ``AccessKeyID`` + ``SecretAccessKey``: static keys, as before.
* Both empty, ``IAMRole: <name>``: the instance metadata service's
  temporary credentials of that role (IMDSv2: a session token first).
* Both empty, no ``IAMRole``: botocore's providers in order: the
  environment (``AWS_ACCESS_KEY_ID`` ...), the container credentials
  endpoint (ECS/EKS), the instance metadata service.

Why botocore's providers and not our own HTTP calls: IMDSv2 tokens, the v1
fallback, the container endpoint's rules and expiry parsing are botocore's
well-trodden code. They block (urllib3), so every load and refresh runs in
the node's io thread pool, never on the reactor thread, and only one at a
time per volume (:attr:`S3Credentials._pending`); requests that need
credentials meanwhile wait on it.

Refresh without stalls: botocore's ``RefreshableCredentials`` says when
credentials are due (15 minutes before expiry, advisory; 10 minutes,
mandatory). In the advisory window requests keep signing with the current
credentials while one refresh runs in the background; only in the mandatory
window (or before the first load) do they wait for it. The check itself
reads no network and runs on the reactor.

The instance metadata credentials tell time by the volume's clock (an
``IReactorTime``) through ``RefreshableCredentials``' ``time_fetcher``, so
tests drive expiry with ``task.Clock``; that is why :class:`_ClockedIMDSProvider`
builds them instead of ``InstanceMetadataProvider.load``.

A failure to get credentials is an :class:`S3Error` naming the volume and
where it looked, at request time (the keepproxy answers 502/503): a
metadata service that is down at start must not stop the node. Nothing
secret is logged or put in a message: only the source and botocore's reason.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping

from botocore.credentials import (
    ContainerProvider,
    CredentialResolver,
    Credentials,
    EnvProvider,
    InstanceMetadataProvider,
    ReadOnlyCredentials,
    RefreshableCredentials,
)
from botocore.utils import METADATA_BASE_URL, InstanceMetadataFetcher
from dateutil.parser import parse as parse_date
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from arvnode.keep.volumes.s3_params import S3Parameters

__all__ = ["S3Credentials", "METADATA_ENDPOINT_ENV"]

#: botocore's own variable for another metadata service address (tests).
METADATA_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
#: Below this many seconds to expiry, requests wait for new credentials
#: (botocore's mandatory refresh window).
MANDATORY_REFRESH = 10 * 60
#: Instance metadata: seconds per request and attempts (it is a link-local
#: service; a slow answer means it is not there).
METADATA_TIMEOUT = 2.0
METADATA_ATTEMPTS = 2


class _RoleFetcher(InstanceMetadataFetcher):
    """botocore's IMDS fetcher, for the role Arvados' ``IAMRole`` names
    rather than whichever role the listing shows (Arvados: "setting it
    explicitly may protect you from using the wrong credentials")."""

    def __init__(self, role_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._role_name = role_name

    def _get_iam_role(self, token: str | None = None) -> str:
        return self._role_name


class _ClockedIMDSProvider(InstanceMetadataProvider):
    """``InstanceMetadataProvider`` whose credentials tell time by ``now``."""

    def __init__(self, fetcher: InstanceMetadataFetcher, now: Any) -> None:
        super().__init__(iam_role_fetcher=fetcher)
        self._fetcher = fetcher
        self._now = now

    def load(self) -> RefreshableCredentials | None:
        metadata = self._fetcher.retrieve_iam_role_credentials()
        if not metadata:
            return None
        return RefreshableCredentials(
            access_key=metadata["access_key"],
            secret_key=metadata["secret_key"],
            token=metadata["token"],
            expiry_time=parse_date(metadata["expiry_time"]),
            refresh_using=self._fetcher.retrieve_iam_role_credentials,
            method=self.METHOD,
            time_fetcher=self._now,
        )


class NoCredentials(Exception):
    """No provider had credentials."""


class S3Credentials:
    """The credentials one volume signs with (see module docstring).

    ``environ`` is read for the default chain and the metadata address
    (default ``os.environ``); ``threadpool`` runs botocore's blocking calls.
    """

    log = Logger()

    def __init__(
        self,
        params: S3Parameters,
        *,
        name: str,
        reactor: Any,
        threadpool: Any,
        clock: IReactorTime,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name
        self._reactor = reactor
        self._pool = threadpool
        self._clock = clock
        self._static: ReadOnlyCredentials | None = None
        self._creds: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._pending: Deferred[Any] | None = None
        self._waiters: list[Deferred[ReadOnlyCredentials]] = []
        #: Completed loads and refreshes (for tests and metrics).
        self.fetches = 0
        if not params.uses_role:
            self._static = Credentials(params.access_key, params.secret_key).get_frozen_credentials()
            self.source = "static keys (AccessKeyID)"
            return
        env = dict(os.environ if environ is None else environ)
        self.metadata_url = env.get(METADATA_ENDPOINT_ENV) or METADATA_BASE_URL
        kwargs = dict(timeout=METADATA_TIMEOUT, num_attempts=METADATA_ATTEMPTS,
                      base_url=self.metadata_url, env=env)
        if params.iam_role:
            imds = _ClockedIMDSProvider(_RoleFetcher(params.iam_role, **kwargs), self._now)
            self._resolver = CredentialResolver([imds])
            self.source = (f"IAM role {params.iam_role!r} from the instance metadata service"
                           f" at {self.metadata_url}")
        else:
            imds = _ClockedIMDSProvider(InstanceMetadataFetcher(**kwargs), self._now)
            self._resolver = CredentialResolver(
                [EnvProvider(environ=env), ContainerProvider(environ=env), imds]
            )
            self.source = ("the default chain (environment, container credentials, instance"
                           f" metadata service at {self.metadata_url})")

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)

    def current(self) -> "Deferred[ReadOnlyCredentials]":
        """Credentials to sign one request with; fires at once unless a load
        or a mandatory refresh is needed. Each call gets its own Deferred
        (cancelling it leaves the shared refresh alone)."""
        if self._static is not None:
            return succeed(self._static)
        creds, frozen = self._creds, self._frozen
        if creds is not None and frozen is not None:
            if not self._due(creds, None):
                return succeed(frozen)
            if not self._due(creds, MANDATORY_REFRESH):
                self._fetch()  # advisory: refresh in the background
                return succeed(frozen)
        waiter: Deferred[ReadOnlyCredentials] = Deferred()
        self._waiters.append(waiter)
        self._fetch()
        return waiter

    @staticmethod
    def _due(creds: Credentials, within: float | None) -> bool:
        """Reads only the expiry and the clock: safe on the reactor thread."""
        return isinstance(creds, RefreshableCredentials) and creds.refresh_needed(within)

    def _fetch(self) -> None:
        if self._pending is not None:
            return  # never two at once
        self._pending = deferToThreadPool(self._reactor, self._pool, self._load_or_refresh,
                                          self._creds)
        self._pending.addBoth(self._fetched)

    def _load_or_refresh(self, creds: Credentials | None) -> tuple[Credentials, ReadOnlyCredentials]:
        """In a pool thread: botocore may do network I/O here."""
        if creds is None:
            creds = self._resolver.load_credentials()
            if creds is None:
                raise NoCredentials("none found")
        return creds, creds.get_frozen_credentials()

    def _fetched(self, result: Any) -> None:
        self._pending = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            error = self._error(result)
            self.log.warn("{error}", error=str(error))
            for w in waiters:
                if not w.called:
                    w.errback(error)
            return
        creds, frozen = result
        self.fetches += 1
        if frozen is not self._frozen:
            self.log.info("volume {name}: S3 credentials {what} from {source}", name=self._name,
                          what="loaded" if self._creds is None else "refreshed", source=self.source)
        self._creds, self._frozen = creds, frozen
        for w in waiters:
            if not w.called:
                w.callback(frozen)

    def _error(self, f: Failure) -> Exception:
        from arvnode.keep.volumes.s3_client import S3Error

        reason = str(f.value) or type(f.value).__name__
        return S3Error(f"volume {self._name}: no S3 credentials from {self.source}: {reason}")
