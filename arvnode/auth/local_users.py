"""The local user a login vouches for: found by email, or created.

Why a module of its own: the browser logins (:mod:`arvnode.api.login`) and
OpenID Connect access tokens used as API tokens
(:mod:`arvnode.auth.access_tokens`) must map the same person to the same
user by the same rules.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from arvnode import ids
from arvnode.store.errors import Conflict, StoreUnavailable
from arvnode.store.records import UserRecord

__all__ = ["find_or_create_user"]

_log = Logger(namespace="arvnode.auth.local_users")

#: Never given to a new user: Arvados' ``Users.AutoSetupUsernameBlacklist``
#: defaults (user names become login names on shell nodes).
RESERVED_USERNAMES = frozenset({"arvados", "git", "gitolite", "gitoliteadmin", "root", "syslog"})


async def find_or_create_user(store: Any, users_config: Any, username: str, email: str,
                              first_name: str | None = None, last_name: str = "",
                              *, how: str = "login") -> UserRecord:
    """The ordinary local user with ``email`` (or, without an email, ``username``);
    created when there is none, active if ``Users.NewUsersAreActive`` or
    ``AutoSetupNewUsers``.

    Never the system or anonymous user, never a copy of another cluster's
    user, whatever the config says. :class:`StoreUnavailable` if the user
    could not be created after concurrent first logins kept colliding.
    """
    c = store.cluster_id
    special = {ids.system_user_uuid(c), ids.anonymous_user_uuid(c)}
    for _attempt in range(3):
        everyone = await store.list_users()
        users = [u for u in everyone if u.uuid[:5] == c and u.uuid not in special]
        for user in users:
            if email and user.email == email:
                return user  # type: ignore[no-any-return]
        for user in users:
            if not email and user.username == username:
                return user  # type: ignore[no-any-return]
        active = bool(users_config.new_users_are_active or users_config.auto_setup_new_users)
        taken = {u.username for u in everyone} | RESERVED_USERNAMES
        name = username if username not in taken else None
        try:
            user = await store.create_user(
                email=email, username=name, is_active=active,
                first_name=username if first_name is None else first_name, last_name=last_name)
        except Conflict:
            continue  # a concurrent first login created it: find it again
        _log.info("{how}: created user {uuid} for {name}", how=how, uuid=user.uuid, name=username)
        return user  # type: ignore[no-any-return]
    raise StoreUnavailable("could not create the user record; try again")
