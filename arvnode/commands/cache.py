"""``arvnode cache drop --token-uuid U | --user-uuid U``: forget cached token answers.

Why a call to the running node and not a database edit: the caches are in
the node's memory (remote-token validations, the short positive cache of
local tokens), so only the node can drop them. The command reads the
config for the controller's URL (``Services.Controller.ExternalURL``) and
the ``SystemRootToken``, and sends ``POST /_arvnode/cache/drop`` over HTTPS
(see :mod:`arvnode.api.cache_admin`). The next use of a dropped token is
checked again at once: with its issuer for a remote token, so a token
revoked (or a user deactivated) on its home cluster stops working here now
instead of within ``Login.RemoteTokenRefresh``.

Each node has its own cache: with several nodes behind a load balancer,
pass ``--url`` once per node (their internal URLs).
"""
from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from arvnode.commands._common import add_store_options, load_or_report


def register(subparsers: Any) -> None:
    """Add the ``cache`` command group to the ``arvnode`` parser."""
    parser = subparsers.add_parser("cache", help="drop cached token answers on a running node")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    drop = actions.add_parser(
        "drop", help="forget a token or all of a user's tokens; the next use is checked again")
    add_store_options(drop)
    which = drop.add_mutually_exclusive_group(required=True)
    which.add_argument("--token-uuid", metavar="UUID", help="an api_client_authorization uuid")
    which.add_argument("--user-uuid", metavar="UUID", help="a user uuid (all of their tokens)")
    drop.add_argument("--url", action="append", metavar="URL",
                      help="controller URL of a node (repeatable; default: "
                           "Services.Controller.ExternalURL)")
    drop.add_argument("--ca-file", metavar="PATH",
                      help="CA certificate to trust (default: the system's; with --data, "
                           "DIR/tls/ca.pem if present)")
    drop.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    drop.set_defaults(func=run_drop)


def run_drop(args: argparse.Namespace) -> int:
    path, config = load_or_report(args)
    if config is None:
        return 1
    urls = list(args.url or ())
    if not urls:
        external = config.services.controller.external_url
        if external is None or external.port == 0:
            print(f"{path}: Services.Controller.ExternalURL is not a usable address; "
                  "pass --url", file=sys.stderr)
            return 1
        urls = [str(external)]
    if not config.system_root_token:
        print(f"{path}: SystemRootToken is not set", file=sys.stderr)
        return 1
    ca_file = args.ca_file
    if ca_file is None and args.data and os.path.exists(os.path.join(args.data, "tls", "ca.pem")):
        ca_file = os.path.join(args.data, "tls", "ca.pem")
    insecure = bool(args.insecure or config.tls.insecure)
    form = {"token_uuid": args.token_uuid} if args.token_uuid else {"user_uuid": args.user_uuid}
    failures = 0
    for url in urls:
        try:
            status, body = _post(url, config.system_root_token, form,
                                 insecure=insecure, ca_file=ca_file)
        except (OSError, ValueError) as e:  # refused, TLS failure, bad URL (URLError is OSError)
            print(f"{url}: {_describe(e)}", file=sys.stderr)
            failures += 1
            continue
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if status != 200:
            errors = doc.get("errors") if isinstance(doc, dict) else None
            text = "; ".join(map(str, errors)) if isinstance(errors, list) else body[:200].decode(
                "utf-8", "replace")
            print(f"{url}: {status}: {text}", file=sys.stderr)
            failures += 1
            continue
        print(f"{url}: dropped {doc.get('dropped', 0)} cached answer(s)")
    return 1 if failures else 0


def _describe(error: Exception) -> str:
    """The error, and for a certificate the node's client does not trust
    (a private CA, the embedded default's own) what to pass: the bare
    CERTIFICATE_VERIFY_FAILED does not say that this command has its own
    option for it."""
    text = f"{error.__class__.__name__}: {error}"
    reason = getattr(error, "reason", error)
    if isinstance(reason, ssl.SSLCertVerificationError):
        text += ("; pass --ca-file PATH (the CA that issued the node's certificate), "
                 "or set SSL_CERT_FILE")
    return text


def _post(url: str, token: str, form: dict[str, str], *,
          insecure: bool, ca_file: str | None, timeout: float = 60.0) -> tuple[int, bytes]:
    """One blocking HTTPS POST (a one-shot command needs no reactor).

    Not Twisted: its TLS layer flushes writes through the global reactor,
    which a command running on a private one never runs.
    """
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        url.rstrip("/") + "/_arvnode/cache/drop", data=urlencode(form).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
