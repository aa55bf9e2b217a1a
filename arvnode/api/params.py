"""Request parameters, merged the way the Arvados controller merges them.

Why one place: googleapiclient puts list parameters in the query string as
JSON text and record attributes in a flat JSON body; curl users and other
SDKs send form bodies or wrap attributes under the singular resource name
(``{"collection": {...}}``). Every handler must see the same thing whatever
the client did, and every malformed input must become a 4xx that names the
problem before any handler runs (spec client-surface 4.5, arvados-wire 7.1).
"""
from __future__ import annotations

import json
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from arvnode.http.resource import HTTPError

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"

# Keys of a flat JSON body that are request options, not record attributes.
RESERVED = frozenset({
    "alt", "api_token", "_method", "ensure_unique_name", "select", "cluster_id", "filters",
    "where", "order", "limit", "offset", "count", "distinct", "include_trash",
    "include_old_versions", "replace_files", "replace_segments", "reader_tokens",
    "bypass_federation", "async", "include", "recursive", "exclude_home_project",
    "redirect_to_new_user", "no_federation",
})

_TRUE = frozenset({"true", "t", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "f", "0", "no", "n", "off", "", "null"})


def path_segments(raw_path: bytes) -> list[str]:
    """The path split on ``/`` with each segment percent-decoded.

    A PDH arrives as ``…%2B53``; decoding per segment (not the whole path)
    keeps an encoded ``/`` inside one segment, where the UUID check then
    refuses it instead of it turning into a path separator.
    """
    text = raw_path.decode("utf-8", "replace")
    return [unquote(s) for s in text.split("/") if s != ""]


def _content_type(request: Any) -> str:
    raw = request.requestHeaders.getRawHeaders(b"content-type") or [b""]
    return raw[0].split(b";", 1)[0].strip().lower().decode("latin-1")


def _read_body(request: Any, max_size: int) -> bytes:
    if getattr(request, "body_too_large", False):
        raise HTTPError(413, f"request body is larger than API.MaxRequestSize ({max_size} bytes)")
    content = request.content
    if content is None:
        return b""
    content.seek(0, 2)
    size = content.tell()
    if size > max_size:
        raise HTTPError(413, f"request body is larger than API.MaxRequestSize ({max_size} bytes)")
    content.seek(0)
    return content.read()


def read_params(request: Any, *, max_size: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(merged parameters, decoded JSON body object or None).

    Query string first, then an urlencoded form body, then a JSON body
    (``Content-Type: application/json``, or no content type and a body that
    starts with ``{``), later sources overriding earlier ones. Query and
    form values stay strings (``parse_list_query`` decodes them); JSON body
    values are already decoded. ``api_token`` is never kept.
    """
    params: dict[str, Any] = {}
    query = urlsplit(request.uri).query
    if query:
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True,
                              encoding="utf-8", errors="strict")
        except ValueError as e:  # UnicodeDecodeError included
            raise HTTPError(400, f"malformed query string: {e}") from e
        for key, value in pairs:
            params[key] = value
    body = _read_body(request, max_size)
    json_body: dict[str, Any] | None = None
    ctype = _content_type(request)
    if body.strip():
        if ctype == _FORM:
            text = _utf8(body, "form body")
            for key, value in parse_qsl(text, keep_blank_values=True):
                params[key] = value
        elif ctype == _JSON or (ctype == "" and body.lstrip()[:1] == b"{"):
            try:
                decoded = json.loads(_utf8(body, "JSON body"))
            except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..."
                raise HTTPError(400, f"malformed JSON in request body: {e}") from e
            if not isinstance(decoded, dict):
                raise HTTPError(400, "the JSON request body must be an object, not "
                                     f"{type(decoded).__name__ if decoded is not None else 'null'}")
            json_body = decoded
            params.update(decoded)
        elif ctype.startswith("multipart/"):
            for key, values in (request.args or {}).items():
                if values:
                    params[key.decode("utf-8", "replace")] = values[-1].decode("utf-8", "replace")
        else:
            raise HTTPError(415, f"unsupported request body type {ctype!r}: send application/json")
    params.pop("api_token", None)
    return params, json_body


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"{where} is not valid UTF-8: {e}") from e


def attributes(params: Mapping[str, Any], json_body: Mapping[str, Any] | None,
               singular: str) -> dict[str, Any]:
    """The record attributes of a create/update request.

    ``params[singular]`` (a JSON object, or JSON text in a query/form) when
    present; otherwise the flat JSON body minus request options, as the
    Arvados controller does.
    """
    if singular in params:
        value = params[singular]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..."
                raise HTTPError(400, f"malformed JSON in parameter {singular!r}: {e}") from e
        if not isinstance(value, dict):
            raise HTTPError(422, f"parameter {singular!r} must be a JSON object of attributes")
        return dict(value)
    if json_body is None:
        return {}
    return {k: v for k, v in json_body.items() if k not in RESERVED}


def boolean(params: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A boolean option: JSON true/false, or ``true``/``false``/``1``/``0``... text."""
    if name not in params or params[name] is None:
        return default
    value = params[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise HTTPError(422, f"parameter {name!r} must be true or false, not {value!r}")


def json_value(params: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A parameter that may arrive as JSON text (query) or decoded (body)."""
    if name not in params:
        return default
    value = params[name]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{", '"'):
            try:
                return json.loads(stripped)
            except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..."
                raise HTTPError(400, f"malformed JSON in parameter {name!r}: {e}") from e
    return value


def select_list(params: Mapping[str, Any]) -> list[str] | None:
    """The ``select`` parameter as a list of attribute names, or None."""
    value = json_value(params, "select")
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HTTPError(422, "parameter 'select' must be a JSON array of attribute names")
    return value
