"""The "balancer" service: a balance pass every ``Collections.BalancePeriod``,
on the one node of the cluster that should run it.

Which node (:func:`balancer_role`), so that exactly one runs per cluster,
and only where the database holds the cluster's collections
(:func:`holds_the_collections`):

* ``Services.Keepbalance.InternalURLs`` configured: the node whose host is
  the listen address of one of them, decided exactly as for the keepstore
  role (:func:`arvnode.keep.keepstore.keepstore_role`: ``ListenURL`` else
  the URL, "is this address bindable here").
* Not configured: a node on SQLite (the embedded default: its database is
  its own, so it is alone in its cluster) runs it; a node on PostgreSQL
  does not, since several nodes may share that database and must not all
  balance. A PostgreSQL cluster that wants the balancer names one host in
  ``Services.Keepbalance``.
* Never a keepstore node on SQLite (a gateway in front of keepstore nodes,
  each with a database of its own): its database has none of the
  collections the gateway stored, so to it every block would look
  unreferenced. The gateway, whose volumes include those keepstores,
  balances them.

``BalancePeriod`` 0 disables the service everywhere. The loop is the
periodic service of :mod:`arvnode.periodic`: the first pass
one period after start (not at start, when the node is still coming up),
a pass still running when the next is due is not overlapped, and stopping
waits for the pass in flight.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

from arvnode.keep.balance import Balancer, PassResult
from arvnode.keep.keepstore import RoleError, keepstore_role
from arvnode.periodic import PeriodicService

__all__ = ["SERVICE_NAME", "BalancerService", "balancer_role", "holds_the_collections"]

SERVICE_NAME = "balancer"


def holds_the_collections(config: Any, own_keepstore: Any) -> bool:
    """Is this node's database the cluster's collection database?

    PostgreSQL: yes (every node of the cluster shares it). SQLite: yes
    unless this node is a keepstore (``own_keepstore``, from
    :func:`keepstore_role`) behind a gateway, whose own database is empty.
    """
    return bool(config.postgresql.connection) or own_keepstore is None


def balancer_role(config: Any, *, own_keepstore: Any = None,
                  is_local: Callable[[str], bool] | None = None) -> tuple[bool, str]:
    """(does this node run the balancer, why) — the rule in the module doc."""
    if config.collections.balance_period <= 0:
        return False, "Collections.BalancePeriod is 0"
    if not holds_the_collections(config, own_keepstore):
        return False, (f"this node is keepstore {own_keepstore} with a database of its own"
                       " (SQLite): the collections are elsewhere")
    service = config.services.keepbalance
    if service.internal_urls:
        kw: dict[str, Any] = {} if is_local is None else {"is_local": is_local}
        try:
            own, _ = keepstore_role(service, has_local_volumes=True, **kw)
        except RoleError:
            # Several entries are on this host: it is a balancer host all the same.
            return True, "several Services.Keepbalance.InternalURLs are on this host"
        if own is None:
            return False, "no Services.Keepbalance.InternalURLs entry is on this host"
        return True, f"Services.Keepbalance.InternalURLs entry {own} is on this host"
    if config.postgresql.connection:
        return False, ("on PostgreSQL, which other nodes may share, and Services.Keepbalance"
                       " names no host")
    return True, "single node (SQLite database of its own)"


class BalancerService(PeriodicService):
    """Runs ``balancer.run_pass()`` every ``period`` seconds on ``clock``."""

    def __init__(self, balancer: Balancer, *, clock: IReactorTime, period: float) -> None:
        super().__init__(SERVICE_NAME, clock=clock, interval=period)
        self.balancer = balancer
        self.last: PassResult | None = None

    def startService(self) -> None:
        self.balancer.resume()
        super().startService()

    def stopService(self) -> Any:
        """Tell a pass in flight to end (it could run for BalanceTimeout), then
        wait for it: the store and volumes stop after this service."""
        self.balancer.stop()
        return super().stopService()

    async def run_round(self) -> PassResult:
        self.rounds += 1
        result = await self.balancer.run_pass()
        self.last = result
        return result
