"""TLS inside Twisted: certificates for the embedded default, a server
context that SIGHUP can reload, and the client policy for remote clusters.

Why a reloadable context factory: operators renew certificates (ACME every
60-90 days) without restarting a gateway that may be streaming 64 MiB
blocks. ``TLSMemoryBIOFactory`` asks its context factory for a context on
every new connection, so swapping the context makes new connections use the
new certificate while open ones keep theirs.

Why no ALPN: libcurl (the Python SDK's Keep transport) picks ``h2`` when it
is offered, and neither listener speaks HTTP/2 (client-surface §3).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TLSConfigError(Exception):
    """Certificate or key unusable; the message names the file and why."""


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"TLS.{what}: cannot read {path!r}: {e.strerror}") from e


def load_server_options(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Certificate chain (leaf first) + key → options with TLS 1.2 as the floor."""
    try:
        certs = x509.load_pem_x509_certificates(_read_pem(cert_path, "Certificate"))
    except ValueError as e:
        raise TLSConfigError(f"TLS.Certificate: {cert_path!r} holds no PEM certificate") from e
    try:
        key = serialization.load_pem_private_key(_read_pem(key_path, "Key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(
            f"TLS.Key: {key_path!r} holds no unencrypted PEM private key"
        ) from e
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(certs[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in certs[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    try:
        options.getContext()  # fails now, not on the first client, if key ≠ cert
    except SSL.Error as e:
        raise TLSConfigError(
            f"TLS.Key: {key_path!r} does not match the certificate in {cert_path!r}"
        ) from e
    return options


class ReloadableServerTLS:
    """An old-style context factory whose context ``reload()`` can replace."""

    log = Logger()

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._options = load_server_options(cert_path, key_path)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def reload(self) -> bool:
        """Re-read certificate and key; keep the old ones if the new are bad."""
        try:
            self._options = load_server_options(self.cert_path, self.key_path)
        except TLSConfigError as e:
            self.log.error("TLS reload failed, keeping the current certificate: {error}", error=str(e))
            return False
        self.log.info("TLS certificate reloaded from {path}", path=self.cert_path)
        return True


@implementer(IPolicyForHTTPS)
class InsecurePolicy:
    """Client TLS without verification, for a remote with ``Insecure: true``."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def client_policy(*, insecure: bool, ca_file: str | None = None) -> IPolicyForHTTPS:
    """Verifying (service-identity hostname checks) unless ``insecure``.

    ``ca_file`` adds a private CA as the trust root (tests, private PKI);
    otherwise the platform's trust store is used.
    """
    if insecure:
        return InsecurePolicy()
    if ca_file:
        pem = _read_pem(ca_file, "CA")
        roots = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                 for c in x509.load_pem_x509_certificates(pem)]
        trust = ssl.trustRootFromCertificates(roots)
        return BrowserLikePolicyForHTTPS(trustRoot=trust)
    return BrowserLikePolicyForHTTPS()


# --- certificates for the embedded default and for tests --------------------


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_ca_and_server(
    directory: Path,
    *,
    common_name: str,
    hosts: tuple[str, ...] = ("127.0.0.1", "::1", "localhost"),
    now: datetime.datetime | None = None,
    days: int = 3650,
) -> dict[str, Path]:
    """A self-signed CA and a server certificate for ``hosts``.

    Writes ``ca.pem``, ``ca.key``, ``server.pem`` (leaf + CA chain) and
    ``server.key`` into ``directory`` (keys mode 0600) and returns their
    paths. IP hosts get IP SANs: the SDK refuses a CN-only certificate for
    127.0.0.1 (client-surface §3).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} arvnode CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths = {
        "ca": directory / "ca.pem",
        "ca_key": directory / "ca.key",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    _write_private(paths["ca_key"], ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    paths["cert"].write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    _write_private(paths["key"], key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    return paths
