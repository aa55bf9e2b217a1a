"""The Arvados discovery document (``/discovery/v1/apis/arvados/v1/rest``).

Why it matters: the Python SDK ships no API description. Every client
(``arv-put``, ``arv-get``, ``arvados.api()`` ...) builds its API object from
this document through googleapiclient, so the document *is* the client-side
API: a method that is not declared cannot be called, a parameter without
``type`` and ``location`` is silently dropped or sent as a Python repr, an
unresolved ``$ref`` is a KeyError the moment a resource is touched, and
``rootUrl`` decides where every later request goes (spec client-surface §4,
sdk-notes §2.3).

The names, paths, parameter names, types and locations follow the real
Arvados document (3.x), including optional parameters that other clients
pass, so that an undeclared keyword never becomes a client-side TypeError.
Descriptions are our own words. ``features`` is deliberately absent: with
``dataWrapper`` googleapiclient would wrap every body in ``{"data": ...}``.

The document is rendered from the node's config, never from the request,
and holds nothing secret; the caller may cache the serialised bytes for as
long as the config does not change.
"""
from __future__ import annotations

from typing import Any, Iterable

from arvnode import __version__
from arvnode.config import Config
from arvnode.ids import INFIX

__all__ = ["DISCOVERY_PATH", "REVISION", "SERVICE_PATH", "discovery_document", "root_url"]

DISCOVERY_PATH = "/discovery/v1/apis/arvados/v1/rest"
SERVICE_PATH = "arvados/v1/"
# The API revision of the Arvados release whose surface this follows (3.2).
REVISION = "20250402"
_DEFAULT_TRASH_LIFETIME = 14 * 24 * 3600  # Arvados' Collections.DefaultTrashLifetime (336h)
_SCOPE_RW = "https://api.arvados.org/auth/arvados"
_SCOPE_RO = "https://api.arvados.org/auth/arvados.readonly"

# ---------------------------------------------------------------------------
# Parameters


def _p(type_: str, location: str, description: str, *, required: bool = False,
       default: str | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {
        "type": type_, "required": required, "location": location, "description": description,
    }
    if default is not None:
        param["default"] = default
    return param


def _uuid_param(model: str, verb: str) -> dict[str, Any]:
    return _p("string", "path", f"The UUID of the {model} to {verb}.", required=True)


def _select() -> dict[str, Any]:
    return _p("array", "query", "Names of the attributes to return in the response.")


def _list_params() -> dict[str, dict[str, Any]]:
    return {
        "filters": _p("array", "query",
                      "Conditions [attribute, operator, operand] that every returned object meets."),
        "where": _p("object", "query",
                    "Attribute -> value (or list of values) that returned objects must match."),
        "order": _p("array", "query",
                    'Sort keys, each "<attribute> [asc|desc]", or one such string.'),
        "select": _p("array", "query", "Names of the attributes to return for each object."),
        "distinct": _p("boolean", "query",
                       "Return each distinct combination of the selected attributes once.",
                       default="false"),
        "limit": _p("integer", "query", "At most this many objects (the server may cap it).",
                    default="100"),
        "offset": _p("integer", "query", "Skip this many matching objects.", default="0"),
        "count": _p("string", "query",
                    '"exact" to report items_available, "none" to skip counting.',
                    default="exact"),
        "cluster_id": _p("string", "query", "List objects from this federated cluster."),
        "bypass_federation": _p("boolean", "query",
                                "Only this cluster's objects (admin only).", default="false"),
    }


def _include_trash(what: str = "trashed objects") -> dict[str, Any]:
    return _p("boolean", "query", f"Include {what}.", default="false")


def _ensure_unique_name() -> dict[str, Any]:
    return _p("boolean", "query",
              "If the name is taken for this owner, make it unique instead of failing.",
              default="false")


def _replace(what: str) -> dict[str, Any]:
    param = _p("object", "query", f"Edit the collection's {what} (see the Arvados "
               "collections API).")
    param["properties"] = {}
    param["additionalProperties"] = {"type": "string"}
    return param


# ---------------------------------------------------------------------------
# Methods


def _method(resource: str, name: str, path: str, http_method: str, *,
            parameters: dict[str, Any] | None = None, response: str | None,
            request_model: tuple[str, str] | None = None, read_only: bool = False,
            description: str) -> dict[str, Any]:
    parameters = parameters or {}
    method: dict[str, Any] = {
        "id": f"arvados.{resource}.{name}",
        "path": path,
        "httpMethod": http_method,
        "description": description,
        "parameters": parameters,
        "parameterOrder": [k for k, v in parameters.items() if v.get("location") == "path"],
        "response": {"$ref": response} if response else {},
        "scopes": [_SCOPE_RW, _SCOPE_RO] if read_only else [_SCOPE_RW],
    }
    if request_model is not None:
        key, model = request_model
        method["request"] = {"required": True, "properties": {key: {"$ref": model}}}
    return method


def _crud(resource: str, model: str, singular: str, *,
          only: Iterable[str] = ("get", "list", "create", "update", "delete"),
          get_extra: dict[str, Any] | None = None,
          list_extra: dict[str, Any] | None = None,
          create_extra: dict[str, Any] | None = None,
          update_extra: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The standard Arvados methods of one resource."""
    wanted = set(only)
    methods: dict[str, dict[str, Any]] = {}
    item_path = f"{resource}/{{uuid}}"
    if "get" in wanted:
        methods["get"] = _method(
            resource, "get", item_path, "GET", read_only=True, response=model,
            parameters={"uuid": _uuid_param(model, "return"), "select": _select(),
                        **(get_extra or {})},
            description=f"Get one {model} by UUID.")
    if "list" in wanted:
        methods["list"] = _method(
            resource, "list", resource, "GET", read_only=True, response=f"{model}List",
            parameters={**_list_params(), **(list_extra or {})},
            description=f"List the {model} records the caller can see.")
    if "create" in wanted:
        methods["create"] = _method(
            resource, "create", resource, "POST", response=model, request_model=(singular, model),
            parameters={"select": _select(), "ensure_unique_name": _ensure_unique_name(),
                        "cluster_id": _p("string", "query",
                                         "Create the object on this federated cluster."),
                        **(create_extra or {})},
            description=f"Create a {model}. The body holds its attributes, flat or "
                        f"under \"{singular}\".")
    if "update" in wanted:
        methods["update"] = _method(
            resource, "update", item_path, "PUT", response=model, request_model=(singular, model),
            parameters={"uuid": _uuid_param(model, "update"), "select": _select(),
                        **(update_extra or {})},
            description=f"Change attributes of a {model} (PUT or PATCH).")
    if "delete" in wanted:
        methods["delete"] = _method(
            resource, "delete", item_path, "DELETE", response=model,
            parameters={"uuid": _uuid_param(model, "delete")},
            description=f"Delete a {model}.")
    return methods


def _action(resource: str, name: str, model: str, verb: str, description: str,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``POST <resource>/{uuid}/<name>`` (trash, untrash, activate ...)."""
    return _method(resource, name, f"{resource}/{{uuid}}/{name}", "POST", response=model,
                   parameters={"uuid": _uuid_param(model, verb), **(extra or {})},
                   description=description)


def _resources() -> dict[str, Any]:
    coll_extra = {"include_trash": _include_trash("trashed collections"),
                  "include_old_versions": _p("boolean", "query",
                                             "Include past versions of collections.",
                                             default="false")}
    coll_write = {"replace_files": _replace("files and directories"),
                  "replace_segments": _replace("block segments")}
    collections = _crud(
        "collections", "Collection", "collection",
        get_extra=coll_extra, list_extra=coll_extra,
        create_extra=coll_write, update_extra=coll_write)
    collections["trash"] = _action("collections", "trash", "Collection", "trash",
                                   "Move a collection to the trash now.")
    collections["untrash"] = _action("collections", "untrash", "Collection", "untrash",
                                     "Take a collection out of the trash.")

    group_async = {"async": _p("boolean", "query",
                               "Defer the permission update (accepted, has no effect here).",
                               default="false")}
    groups = _crud("groups", "Group", "group",
                   get_extra={"include_trash": _include_trash()},
                   list_extra={"include_trash": _include_trash()},
                   create_extra=group_async, update_extra=group_async)
    groups["contents"] = _method(
        "groups", "contents", "groups/contents", "GET", read_only=True, response="Group",
        parameters={
            **_list_params(),
            "include_trash": _include_trash(),
            "uuid": _p("string", "query", "The user or project whose contents to list.",
                       default=""),
            "recursive": _p("boolean", "query", "Include the contents of sub-projects.",
                            default="false"),
            "include": _p("array", "query",
                          'Referenced objects to add under "included" (e.g. ["owner_uuid"]).'),
            "include_old_versions": _p("boolean", "query",
                                       "Include past versions of collections.", default="false"),
            "exclude_home_project": _p("boolean", "query",
                                       "Leave out what the caller's home project holds.",
                                       default="false"),
        },
        description="List the collections, projects, workflows ... a user or project owns.")
    groups["trash"] = _action("groups", "trash", "Group", "trash",
                              "Move a project and its contents to the trash.")
    groups["untrash"] = _action("groups", "untrash", "Group", "untrash",
                                "Take a project out of the trash.")

    users = _crud("users", "User", "user",
                  update_extra={"bypass_federation": _p(
                      "boolean", "query", "Only update the user on this cluster (admin only).",
                      default="false")})
    users["current"] = _method("users", "current", "users/current", "GET", response="User",
                               description="The user the request's token belongs to.")
    users["system"] = _method("users", "system", "users/system", "GET", response="User",
                              description="This cluster's system (root) user.")
    users["activate"] = _action("users", "activate", "User", "activate",
                                "Set is_active on a user (admin).")
    users["unsetup"] = _action("users", "unsetup", "User", "deactivate",
                               "Deactivate a user and remove their permissions (admin).")

    tokens = _crud("api_client_authorizations", "ApiClientAuthorization",
                   "api_client_authorization")
    tokens["current"] = _method(
        "api_client_authorizations", "current", "api_client_authorizations/current", "GET",
        response="ApiClientAuthorization",
        description="The token record used to authorize this request.")

    keep_services = _crud("keep_services", "KeepService", "keep_service")
    keep_services["accessible"] = _method(
        "keep_services", "accessible", "keep_services/accessible", "GET", read_only=True,
        response="KeepServiceList", description="The Keep services this client should use.")

    return {
        "api_client_authorizations": {"methods": tokens},
        "collections": {"methods": collections},
        "groups": {"methods": groups},
        "keep_services": {"methods": keep_services},
        "links": {"methods": _crud("links", "Link", "link")},
        "users": {"methods": users},
        "workflows": {"methods": _crud("workflows", "Workflow", "workflow")},
        "configs": {"methods": {"get": _method(
            "configs", "get", "config", "GET", read_only=True, response=None,
            description="The public part of this cluster's configuration.")}},
    }


# ---------------------------------------------------------------------------
# Schemas

_COMMON = (
    ("uuid", "string"), ("etag", "string"), ("owner_uuid", "string"),
    ("created_at", "datetime"), ("modified_at", "datetime"),
    ("modified_by_user_uuid", "string"),
)

# model -> (resource name for the uuid infix, kind, attributes beyond _COMMON)
_MODELS: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {
    "Collection": ("collections", "arvados#collection", (
        ("name", "string"), ("description", "string"), ("properties", "Hash"),
        ("portable_data_hash", "string"), ("manifest_text", "text"),
        ("replication_desired", "integer"), ("replication_confirmed", "integer"),
        ("replication_confirmed_at", "datetime"), ("storage_classes_desired", "Array"),
        ("storage_classes_confirmed", "Array"), ("storage_classes_confirmed_at", "datetime"),
        ("trash_at", "datetime"), ("delete_at", "datetime"), ("is_trashed", "boolean"),
        ("current_version_uuid", "string"), ("version", "integer"),
        ("preserve_version", "boolean"), ("file_count", "integer"),
        ("file_size_total", "integer"),
    )),
    "Group": ("groups", "arvados#group", (
        ("name", "string"), ("description", "string"), ("group_class", "string"),
        ("properties", "Hash"), ("trash_at", "datetime"), ("delete_at", "datetime"),
        ("is_trashed", "boolean"), ("frozen_by_uuid", "string"),
        ("can_write", "boolean"), ("can_manage", "boolean"),
    )),
    "User": ("users", "arvados#user", (
        ("email", "string"), ("first_name", "string"), ("last_name", "string"),
        ("full_name", "string"), ("username", "string"), ("identity_url", "string"),
        ("is_admin", "boolean"), ("is_active", "boolean"), ("prefs", "Hash"),
        ("can_write", "boolean"), ("can_manage", "boolean"),
    )),
    "Link": ("links", "arvados#link", (
        ("link_class", "string"), ("name", "string"), ("tail_uuid", "string"),
        ("head_uuid", "string"), ("properties", "Hash"),
    )),
    "ApiClientAuthorization": ("api_client_authorizations", "arvados#apiClientAuthorization", (
        ("api_token", "string"), ("expires_at", "datetime"), ("scopes", "Array"),
        ("created_by_ip_address", "string"), ("last_used_by_ip_address", "string"),
        ("last_used_at", "datetime"),
    )),
    "KeepService": ("keep_services", "arvados#keepService", (
        ("service_host", "string"), ("service_port", "integer"),
        ("service_ssl_flag", "boolean"), ("service_type", "string"),
        ("read_only", "boolean"),
    )),
    "Workflow": ("workflows", "arvados#workflow", (
        ("name", "string"), ("description", "string"), ("definition", "text"),
        ("collection_uuid", "string"),
    )),
}


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model, (resource, kind, attrs) in _MODELS.items():
        properties: dict[str, Any] = {
            "kind": {"type": "string", "default": kind},
        }
        for name, type_ in _COMMON + attrs:
            properties[name] = {"type": type_}
        schemas[model] = {
            "id": model,
            "description": f"An Arvados {model} record.",
            "type": "object",
            "uuidPrefix": INFIX[resource],
            "properties": properties,
        }
        schemas[f"{model}List"] = {
            "id": f"{model}List",
            "description": f"A page of {model} records.",
            "type": "object",
            "properties": {
                "kind": {"type": "string", "default": f"{kind}List"},
                "etag": {"type": "string"},
                "items": {"type": "array", "items": {"$ref": model}},
                "items_available": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        }
    return schemas


# ---------------------------------------------------------------------------
# The document


def root_url(config: Config) -> str:
    """The controller's external URL with a trailing slash: every API call a
    client makes after discovery goes to ``urljoin(rootUrl, servicePath)``."""
    url = config.services.controller.external_url
    if url is None:
        raise ValueError("Services.Controller.ExternalURL is not set")
    text = f"{url.scheme}://{url.netloc}{url.path}"
    return text if text.endswith("/") else text + "/"


def _remote_hosts(config: Config) -> dict[str, str]:
    return {
        cid: rc.host
        for cid, rc in sorted(config.remote_clusters.items())
        if cid != "*" and cid != config.cluster_id and rc.host
    }


def discovery_document(config: Config, controller_url: str | None = None) -> dict[str, Any]:
    """The discovery document for this node, as plain JSON-able data.

    @param controller_url: the URL clients reach the controller at, when it
        is known better than the config's ExternalURL (e.g. a port chosen at
        start); a trailing slash is added if missing.
    @raise ValueError: no ``controller_url`` and no ExternalURL in the config.
    """
    if controller_url:
        root = controller_url if controller_url.endswith("/") else controller_url + "/"
    else:
        root = root_url(config)
    return {
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "arvados:v1",
        "name": "arvados",
        "version": "v1",
        "revision": REVISION,
        "source_version": f"arvnode-{__version__}",
        "packageVersion": __version__,
        "title": "Arvados API",
        "description": "The Arvados REST API, served by an arvnode gateway.",
        "documentationLink": "https://doc.arvados.org/api/index.html",
        "protocol": "rest",
        "rootUrl": root,
        "servicePath": SERVICE_PATH,
        "baseUrl": root + SERVICE_PATH,
        "basePath": "/" + SERVICE_PATH,
        "batchPath": "batch",
        "uuidPrefix": config.cluster_id,
        "defaultCollectionReplication": config.collections.default_replication,
        "defaultTrashLifetime": _DEFAULT_TRASH_LIFETIME,
        "blobSignatureTtl": int(config.collections.blob_signing_ttl),
        "maxRequestSize": config.api.max_request_size,
        "maxItemsPerResponse": config.api.max_items_per_response,
        "dockerImageFormats": ["v2"],
        "remoteHosts": _remote_hosts(config),
        "remoteHostsViaDNS": False,
        "auth": {"oauth2": {"scopes": {
            _SCOPE_RW: {"description": "View and manage objects"},
            _SCOPE_RO: {"description": "View objects"},
        }}},
        "parameters": {
            "alt": {"type": "string", "location": "query", "default": "json", "enum": ["json"],
                    "description": "Response format (always JSON)."},
            "fields": {"type": "string", "location": "query",
                       "description": "Accepted for compatibility; ignored."},
            "key": {"type": "string", "location": "query",
                    "description": "Accepted for compatibility; ignored."},
            "oauth_token": {"type": "string", "location": "query",
                            "description": "An API token, instead of the Authorization header."},
        },
        "schemas": _schemas(),
        "resources": _resources(),
    }
