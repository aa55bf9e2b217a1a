"""Trash inheritance and delete-after-trash, as SQL both engines run the same.

Arvados' rule: when a project's ``trash_at`` has passed, the project *and
everything it owns, directly or through sub-projects*, is hidden from the
API (until the project is untrashed); when its ``delete_at`` has passed,
all of that is gone for good. Arvados keeps a ``trashed_groups`` table up
to date on every write; arvnode instead works the set out when it reads,
from the groups table alone, so that a ``trash_at`` or ``delete_at`` set
in the future takes effect the moment the clock passes it, with no timer
and no second table to keep consistent across nodes sharing a database.

The set is usually empty (nothing in the trash), and the groups table is
small next to collections, so the one recursive query a read costs is
cheap; a row owned by a user (the common case) needs no query at all in
:func:`owner_state`.

Functions here run on a store worker thread with the store's ``_Cursor``.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from arvnode import ids

_GROUP_INFIX = f"-{ids.INFIX['groups']}-"

# Every group in the trash (own trash_at passed) or past its delete_at, and
# every group below one; ``gone`` is 1 when a delete_at on the way down has
# passed. UNION (not UNION ALL) de-duplicates rows, so an ownership cycle
# terminates: each uuid appears at most twice (gone 0 and 1).
_DEAD_GROUPS = """
WITH RECURSIVE dead(uuid, gone) AS (
    SELECT uuid, CASE WHEN delete_at IS NOT NULL AND delete_at <= ? THEN 1 ELSE 0 END
      FROM groups
     WHERE (trash_at IS NOT NULL AND trash_at <= ?) OR (delete_at IS NOT NULL AND delete_at <= ?)
    UNION
    SELECT g.uuid, d.gone FROM groups g JOIN dead d ON g.owner_uuid = d.uuid
)
SELECT uuid, MAX(gone) FROM dead GROUP BY uuid
"""

# A group and its ancestors through ownership: the earliest trash_at and
# delete_at among them.
_ANCESTRY = """
WITH RECURSIVE up(uuid, owner_uuid, trash_at, delete_at) AS (
    SELECT uuid, owner_uuid, trash_at, delete_at FROM groups WHERE uuid = ?
    UNION
    SELECT g.uuid, g.owner_uuid, g.trash_at, g.delete_at FROM groups g JOIN up ON g.uuid = up.owner_uuid
)
SELECT MIN(trash_at), MIN(delete_at) FROM up
"""

# Every project below a user or group (any depth), for recursive contents.
_DESCENDANTS = """
WITH RECURSIVE below(uuid) AS (
    SELECT uuid FROM groups WHERE owner_uuid = ? AND group_class = 'project'
    UNION
    SELECT g.uuid FROM groups g JOIN below b ON g.owner_uuid = b.uuid
     WHERE g.group_class = 'project'
)
SELECT uuid FROM below
"""


def dead_groups(cur: Any, now: float) -> dict[str, bool]:
    """uuid -> gone for every group hidden by the trash at ``now`` (see the module doc).

    gone False: trashed (own trash_at or an ancestor's has passed), back on
    untrash; gone True: past a delete_at, its own or an ancestor's.
    """
    return {str(u): bool(g) for u, g in cur.all(_DEAD_GROUPS, (now, now, now))}


def owner_state(cur: Any, owner_uuid: str | None, now: float) -> tuple[bool, bool]:
    """(trashed, gone) inherited from ``owner_uuid`` and the projects above it."""
    if not owner_uuid or _GROUP_INFIX not in owner_uuid:
        return False, False
    row = cur.one(_ANCESTRY, (owner_uuid,))
    if row is None:
        return False, False
    trash_at, delete_at = row
    gone = delete_at is not None and float(delete_at) <= now
    trashed = gone or (trash_at is not None and float(trash_at) <= now)
    return trashed, gone


def descendant_projects(cur: Any, uuid: str) -> list[str]:
    """Every project owned by ``uuid`` directly or through other projects."""
    return sorted(str(r[0]) for r in cur.all(_DESCENDANTS, (uuid,)))


# -- purge -------------------------------------------------------------------


def _in(postgresql: bool, col: str, values: Sequence[str]) -> tuple[str, list[Any]]:
    """``col IN values`` as one bound parameter (SQLite caps parameters per statement)."""
    if postgresql:
        return f"{col} = ANY(?)", [list(values)]
    return f"{col} IN (SELECT value FROM json_each(?))", [json.dumps(list(values))]


def purge(cur: Any, now: float, *, postgresql: bool) -> dict[str, int]:
    """Delete for good what is past its delete_at, and what such projects hold.

    Collections past their own delete_at; groups past theirs or below one
    that is; the collections, workflows and links those groups own; and the
    links (permission, tag, ...) that point at or from anything deleted, so
    no grant outlives its object. Returns the number of rows per table.
    """
    gone_groups = sorted(u for u, gone in dead_groups(cur, now).items() if gone)
    counts = {"collections": 0, "groups": 0, "workflows": 0, "links": 0}
    clause = "(delete_at IS NOT NULL AND delete_at <= ?)"
    params: list[Any] = [now]
    if gone_groups:
        owned, p = _in(postgresql, "owner_uuid", gone_groups)
        clause = f"({clause} OR {owned})"
        params += p
    collections = [str(r[0]) for r in cur.all(f"SELECT uuid FROM collections WHERE {clause}",
                                                params)]
    removed: list[str] = collections + gone_groups
    if gone_groups:
        owned, p = _in(postgresql, "owner_uuid", gone_groups)
        workflows = [str(r[0]) for r in cur.all(f"SELECT uuid FROM workflows WHERE {owned}", p)]
        removed += workflows
        counts["workflows"] = _delete(cur, "workflows", workflows, postgresql)
        counts["groups"] = _delete(cur, "groups", gone_groups, postgresql)
    counts["collections"] = _delete(cur, "collections", collections, postgresql)
    if removed:
        links: set[str] = set()
        for col in ("owner_uuid", "head_uuid", "tail_uuid"):
            sql, p = _in(postgresql, col, removed)
            links.update(str(r[0]) for r in cur.all(f"SELECT uuid FROM links WHERE {sql}", p))
        counts["links"] = _delete(cur, "links", sorted(links), postgresql)
    return counts


def _delete(cur: Any, table: str, uuids: Iterable[str], postgresql: bool) -> int:
    values = list(uuids)
    if not values:
        return 0
    sql, p = _in(postgresql, "uuid", values)
    cur.execute(f"DELETE FROM {table} WHERE {sql}", p)
    return len(values)


def split(dead: Mapping[str, bool], include_trash: bool) -> list[str]:
    """The dead groups a read must hide: all of them, or only the gone ones with include_trash."""
    return sorted(u for u, gone in dead.items() if gone or not include_trash)
