"""``Volumes.<uuid>.DriverParameters`` of an S3 volume, checked once.

Why a module of its own: the config loader (``arvnode config check``) and
the volume factory must agree on what a valid S3 volume is, and the loader
should not need botocore to find out. Keys follow
Arvados' S3 driver so an existing ``config.yml`` carries over; ``Prefix`` is
arvnode's own (several clusters or tests sharing one bucket), and so is
``ArvNodeCACertificate`` (a private CA for this bucket's endpoint only:
Arvados has no such key and trusts the system's CAs).

Credentials, as in Arvados: ``AccessKeyID`` and ``SecretAccessKey`` both
given are static keys (``IAMRole`` is then ignored, as Arvados ignores it);
both left empty mean temporary role credentials, from the instance
metadata service for the role named by ``IAMRole``, or, with no
``IAMRole``, from the first of the environment, the container credentials
endpoint and the instance metadata service that has some
(:mod:`~arvnode.keep.volumes.s3_credentials`).

Secrets are kept out of ``repr`` and out of every problem message.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from attrs import field, frozen

__all__ = ["MISSING", "S3Parameters", "S3ParameterError", "parse_s3_parameters", "s3_parameter_problems"]

#: Arvados keys that are understood and deliberately have no effect here:
#: arvnode never creates buckets (LocationConstraint) and keeps no trash
#: (RaceWindow); UseAWSS3v2Driver picked one of Arvados' two Go clients.
IGNORED_KEYS = frozenset({"LocationConstraint", "RaceWindow", "UseAWSS3v2Driver"})

SUPPORTED_KEYS = frozenset(
    {
        "Bucket",
        "Region",
        "Endpoint",
        "AccessKeyID",
        "SecretAccessKey",
        "UsePathStyle",
        "Prefix",
        "PrefixLength",
        "IndexPageSize",
        "ConnectTimeout",
        "ReadTimeout",
        "IAMRole",
        "V2Signature",
        "ArvNodeCACertificate",
    }
)

DEFAULT_REGION = "us-east-1"
#: How a problem says a required key is absent.
MISSING = ("nothing", "an empty string")
#: IAM's role-name alphabet (it also keeps the name a single URL path segment).
_ROLE_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")


@frozen
class S3Parameters:
    """One bucket and how to reach it."""

    bucket: str
    region: str
    #: ``scheme://host[:port]`` without a trailing slash.
    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    use_path_style: bool = False
    #: Put before every key (arvnode's own; e.g. ``"keep/"``).
    prefix: str = ""
    #: Arvados' PrefixLength: keys are ``<hash[:n]>/<hash>`` when n > 0.
    prefix_length: int = 0
    index_page_size: int = 1000
    connect_timeout: float = 60.0
    read_timeout: float = 600.0
    #: Arvados' IAMRole: the instance profile role to take credentials of
    #: ("" with no keys: whatever the default chain finds).
    iam_role: str = ""
    #: arvnode's ArvNodeCACertificate: PEM file of the CA(s) trusted for
    #: this endpoint instead of the system's ("" = the system's).
    ca_file: str = ""

    @property
    def uses_role(self) -> bool:
        """No static keys: temporary credentials are fetched (and refreshed)."""
        return not self.access_key

    def key(self, hash: str) -> str:
        """The object key of block ``hash``."""
        if self.prefix_length:
            return f"{self.prefix}{hash[: self.prefix_length]}/{hash}"
        return f"{self.prefix}{hash}"


class S3ParameterError(ValueError):
    """One or more DriverParameters are wrong; ``problems`` lists
    ``(key, what was found, what was expected)``."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(f"{key}: got {got}; expected {expected}" for key, got, expected in problems)
        )


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value else "an empty string"
    return f"{type(value).__name__} {value!r}"


def s3_parameter_problems(params: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Everything wrong with ``params`` (empty if valid)."""
    try:
        parse_s3_parameters(params)
    except S3ParameterError as e:
        return e.problems
    return []


def parse_s3_parameters(params: Mapping[str, Any] | None) -> S3Parameters:
    """Check and convert; raises :class:`S3ParameterError` naming every problem."""
    from arvnode.config import parse_duration  # config imports this module lazily too

    p: Mapping[str, Any] = params or {}
    problems: list[tuple[str, str, str]] = []

    def bad(key: str, got: str, expected: str) -> None:
        problems.append((key, got, expected))

    def text(key: str, default: str, required: str | None = None, secret: bool = False) -> str:
        value = p.get(key)
        if value is None or value == "":
            if required:
                bad(key, "nothing" if value is None else "an empty string", required)
            return default
        if not isinstance(value, str):
            bad(key, "a value that is not a string" if secret else _show(value), "a string")
            return default
        return value

    def boolean(key: str, default: bool) -> bool:
        value = p.get(key, default)
        if not isinstance(value, bool):
            bad(key, _show(value), "true or false")
            return default
        return value

    def integer(key: str, default: int, low: int, high: int) -> int:
        value = p.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            bad(key, _show(value), f"a whole number from {low} to {high}")
            return default
        return value

    def duration(key: str, default: float) -> float:
        value = p.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            bad(key, _show(value), f'a duration such as "30s" or "1m" ({e})')
            return default
        if seconds <= 0:
            bad(key, _show(value), "a positive duration")
            return default
        return seconds

    for key in sorted(set(p) - SUPPORTED_KEYS - IGNORED_KEYS):
        bad(key, "an unknown key", "one of " + ", ".join(sorted(SUPPORTED_KEYS)))

    bucket = text("Bucket", "", required="the name of the S3 bucket")
    if bucket and (len(bucket) > 255 or any(c in bucket for c in "/ \t\r\n?#")):
        bad("Bucket", _show(bucket), "a bucket name (no '/', spaces, '?' or '#')")
    region = text("Region", DEFAULT_REGION)
    access = text("AccessKeyID", "", secret=True)
    secret = text("SecretAccessKey", "", secret=True)
    if bool(access) != bool(secret):
        # One without the other is a typo, not a request for role credentials.
        key, other = ("SecretAccessKey", "AccessKeyID") if access else ("AccessKeyID", "SecretAccessKey")
        bad(key, "nothing" if p.get(key) is None else "an empty string",
            f"a value, since {other} is given (or leave both empty to use IAM role credentials)")
    role = text("IAMRole", "")
    if role and not _ROLE_NAME.match(role):
        bad("IAMRole", _show(role), "an IAM role name (letters, digits and +=,.@_-, up to 64)")
    ca_file = text("ArvNodeCACertificate", "")
    if p.get("V2Signature") not in (None, False):
        bad("V2Signature", _show(p.get("V2Signature")), "false: only SigV4 signing is supported")
    use_path_style = boolean("UsePathStyle", False)
    prefix = text("Prefix", "")
    if prefix.startswith("/"):
        bad("Prefix", _show(prefix), "a key prefix that does not start with '/'")
    endpoint = _endpoint(text("Endpoint", ""), region, bad)
    if ca_file and endpoint.startswith("http://"):
        bad("ArvNodeCACertificate", _show(ca_file), "no CA file: the Endpoint is http://, not https://")

    result = S3Parameters(
        bucket=bucket,
        region=region,
        endpoint=endpoint,
        access_key=access,
        secret_key=secret,
        use_path_style=use_path_style,
        prefix=prefix,
        prefix_length=integer("PrefixLength", 0, 0, 32),
        index_page_size=integer("IndexPageSize", 1000, 1, 1000),
        connect_timeout=duration("ConnectTimeout", 60.0),
        read_timeout=duration("ReadTimeout", 600.0),
        iam_role=role,
        ca_file=ca_file,
    )
    if problems:
        raise S3ParameterError(problems)
    return result


def _endpoint(raw: str, region: str, bad: Callable[[str, str, str], None]) -> str:
    """``scheme://host[:port]``; AWS's regional endpoint when empty."""
    if not raw:
        return f"https://s3.{region}.amazonaws.com"
    expected = "an http:// or https:// URL with a host and no path, such as https://s3.example.com"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        bad("Endpoint", _show(raw), expected)
        return raw
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        bad("Endpoint", _show(raw), expected)
        return raw
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}"
