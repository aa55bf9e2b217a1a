"""``/arvados/v1/collections``: manifests checked on the way in, signed on the way out.

On write: the manifest must parse (422 naming the line), and unless the
caller is an admin every non-empty block must carry a valid ``+A``
signature for the caller's token, verbatim (403, as Arvados' Rails
``check_signatures``; spec arvados-wire 2.5, 6.3). The manifest is stored
without ``+A`` hints and its portable data hash computed per spec 6.2.

On read: every manifest returned (get, list, create, update) is signed
again for the caller's token, expiring at ``min(now + BlobSigningTTL,
trash_at)``, so the SDK can hand the locators straight to Keep. A trashed
collection's manifest is not signed.

Get by portable data hash answers a synthetic record (uuid = the PDH), as
Arvados does, from the newest readable collection with that hash.
"""
from __future__ import annotations

from typing import Any

from arvnode import ids
from arvnode.api.permissions import PermissionDenied
from arvnode.api.resources.base import Ctx, ObjectResource, with_select
from arvnode.api.resources.trash import Trashable
from arvnode.http.resource import HTTPError
from arvnode.keep.manifest import (
    ManifestError,
    ManifestSignatureError,
    check_manifest_signatures,
    parse_manifest,
    portable_data_hash,
    sign_manifest,
    strip_permission_hints,
)
from arvnode.store.errors import NotFound
from arvnode.store.kinds import from_api_time

class Collections(Trashable, ObjectResource):
    resource = "collections"
    singular = "collection"
    filesystem_names = True

    def check_uuid(self, text: str, action: str | None = None) -> str:
        if action is None and ids.PDH_RE.match(text):
            return text
        if ids.UUID_RE.match(text) or "+" not in text:
            return super().check_uuid(text, action)
        raise HTTPError(422, f"{text!r} is neither a collection UUID nor a portable data hash "
                             "(<32 hex>+<size>)")

    # -- reading --------------------------------------------------------------

    def output(self, ctx: Ctx, record: dict[str, Any]) -> dict[str, Any]:
        text = record.get("manifest_text")
        deps = self.deps
        if not text or record.get("is_trashed") or not deps.blob_signing or not ctx.token:
            return record
        cap = None
        if record.get("trash_at"):
            cap = int(from_api_time(record["trash_at"]))
        out = dict(record)
        out["manifest_text"] = sign_manifest(text, ctx.token, deps.signing_key,
                                             deps.signing_ttl, ctx.now, expiry_cap=cap)
        return out

    def list_query(self, ctx: Ctx, query: Any) -> Any:
        # Signing needs to know whether a row is trashed and when it will be.
        if query.select is not None and "manifest_text" in query.select:
            return with_select(query, "trash_at", "is_trashed")
        return query

    async def get(self, ctx: Ctx, uuid: str) -> dict[str, Any]:
        if not ids.PDH_RE.match(uuid):
            return await super().get(ctx, uuid)
        found = await self.store.find_collections_by_pdh(uuid, readable=await self.readable(ctx))
        if not found:
            raise NotFound(f"collection {uuid} not found")
        newest = found[0]
        synthetic = {
            "uuid": uuid,
            "portable_data_hash": uuid,
            "manifest_text": newest.get("manifest_text", ""),
            "name": None,
            "description": None,
            "owner_uuid": None,
            "properties": {},
            "replication_desired": newest.get("replication_desired"),
            "storage_classes_desired": newest.get("storage_classes_desired", ["default"]),
            "trash_at": None,
            "delete_at": None,
            "is_trashed": False,
        }
        body = self.present(ctx, synthetic)
        body.pop("href", None)
        return body

    # -- writing --------------------------------------------------------------

    def _manifest(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        """Validate, check signatures, strip and hash ``values['manifest_text']``."""
        text = values.get("manifest_text")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise HTTPError(422, "manifest_text must be a string")
        try:
            streams = parse_manifest(text)
        except ManifestError as e:
            raise HTTPError(422, f"invalid manifest_text: {e}") from e
        deps = self.deps
        if deps.blob_signing and not ctx.access.is_admin:
            for line_no, stream in enumerate(streams, start=1):
                for loc in stream.locators:
                    if loc.remote is not None and loc.permission is None:
                        raise PermissionDenied(
                            f"invalid manifest_text: line {line_no}: locator "
                            f"{loc.hash}+{loc.size} has a remote (+R) signature; fetch it with "
                            "X-Keep-Signature: local to get a local one first")
            try:
                check_manifest_signatures(text, ctx.token, deps.signing_key, deps.signing_ttl,
                                          ctx.now)
            except ManifestSignatureError as e:
                raise PermissionDenied(
                    f"permission denied: manifest_text {e} (blocks must carry a valid +A "
                    "signature for your token, as returned by Keep or by this API)") from e
        pdh = portable_data_hash(text)
        given = values.get("portable_data_hash")
        if given not in (None, "") and given != pdh:
            raise HTTPError(422, f"portable_data_hash {given!r} does not match the manifest "
                                 f"(computed {pdh})")
        files = {(s.name, f.name) for s in streams for f in s.files if f.name != "."}
        values = dict(values)
        values["manifest_text"] = strip_permission_hints(text)
        values["portable_data_hash"] = pdh
        values["file_count"] = len(files)
        values["file_size_total"] = sum(f.size for s in streams for f in s.files)
        return values

    async def prepare_create(self, ctx: Ctx, values: dict[str, Any]) -> dict[str, Any]:
        values = self._manifest(ctx, values)
        return self._trash_defaults(ctx, values)

    async def prepare_update(self, ctx: Ctx, record: dict[str, Any],
                             changes: dict[str, Any]) -> dict[str, Any]:
        if "manifest_text" in changes:
            changes = self._manifest(ctx, changes)
        elif "portable_data_hash" in changes:
            if changes["portable_data_hash"] != record.get("portable_data_hash"):
                raise HTTPError(422, "portable_data_hash can only change with manifest_text")
            del changes["portable_data_hash"]
        if "trash_at" in changes and changes["trash_at"] is None:
            changes.setdefault("delete_at", None)
        return self._trash_defaults(ctx, changes)

__all__ = ["Collections"]
