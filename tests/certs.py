"""Certificates for tests: a throwaway CA and the server certificates it signs.

Everything is written as unencrypted PEM files into a directory the test owns
(``tmp_path``), because the gateway loads certificates from files.

    ca = make_ca(tmp_path)
    app = ca.issue(tmp_path, ["app1.localhost", "127.0.0.1"])
    app.cert_path, app.key_path   # chain (leaf then CA) and key
    ca.cert_path                  # the trust anchor for clients
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Backdated so that a host clock a little behind the test's does not matter.
_CLOCK_SKEW = timedelta(days=1)
DEFAULT_LEAF_LIFETIME = timedelta(days=30)
_CA_LIFETIME = timedelta(days=365)

_unique_suffix = itertools.count(1)


@dataclass(frozen=True)
class Leaf:
    """A server certificate and its key, as files and in memory."""

    cert_path: Path
    key_path: Path
    hostnames: tuple[str, ...]
    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class CA:
    """A certificate authority that issues test server certificates."""

    name: str
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)

    def issue(
        self,
        directory: Path,
        hostnames: Sequence[str],
        *,
        name: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        expired: bool = False,
        key_type: KeyType = "ec",
        client_auth: bool = False,
    ) -> Leaf:
        """Sign a server certificate for ``hostnames`` and write it to ``directory``.

        ``client_auth=True`` lets it serve as a client certificate too (mutual TLS:
        Redis Cluster nodes on the cluster bus, tls_client_auth to a provider).

        Host names that parse as IP addresses become IP SANs, the rest DNS SANs
        (wildcards such as ``*.example.com`` included). The files are
        ``<name>.pem`` (leaf then CA) and ``<name>.key``; an explicit ``name``
        overwrites existing files (handy for reload tests), a derived one never
        does. ``expired=True`` gives a certificate that expired yesterday.
        """
        if not hostnames:
            raise ValueError("a server certificate needs at least one host name")
        now = datetime.now(UTC)
        if expired:
            not_before = not_before or now - timedelta(days=60)
            not_after = not_after or now - timedelta(days=1)
        not_before = not_before or now - _CLOCK_SKEW
        not_after = not_after or now + DEFAULT_LEAF_LIFETIME

        key = _generate_key(key_type)
        ca_key_id = x509.SubjectKeyIdentifier.from_public_key(self.private_key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key_type, ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH]
                    + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hostnames]),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
                critical=False,
            )
            .sign(self.private_key, hashes.SHA256())
        )

        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = _file_names(directory, name, hostnames[0])
        cert_path.write_bytes(_pem(certificate) + _pem(self.certificate))
        key_path.write_bytes(_key_pem(key))
        return Leaf(
            cert_path=cert_path,
            key_path=key_path,
            hostnames=tuple(hostnames),
            certificate=certificate,
            private_key=key,
        )


def make_ca(directory: Path, name: str = "idgateway test CA") -> CA:
    """A self-signed CA written to ``directory`` as ``<slug of name>.pem`` / ``.key``."""
    key = _generate_key("ec")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("ec", ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    stem = _unique_stem(directory, _slug(name))
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(_pem(certificate))
    key_path.write_bytes(_key_pem(key))
    return CA(
        name=name,
        cert_path=cert_path,
        key_path=key_path,
        certificate=certificate,
        private_key=key,
    )


def make_mismatched_pair(
    directory: Path, hostnames: Sequence[str] = ("mismatch.localhost",), ca: CA | None = None
) -> Leaf:
    """A certificate whose key file holds some other key (the loader must reject it)."""
    ca = ca or make_ca(directory, "idgateway mismatch CA")
    leaf = ca.issue(directory, hostnames)
    other_key = _generate_key("ec")
    leaf.key_path.write_bytes(_key_pem(other_key))
    return Leaf(
        cert_path=leaf.cert_path,
        key_path=leaf.key_path,
        hostnames=leaf.hostnames,
        certificate=leaf.certificate,
        private_key=other_key,
    )


def _generate_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}")


def _key_usage(key_type: KeyType, *, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        # RSA key exchange in TLS 1.2 encrypts to the certificate's key.
        key_encipherment=key_type == "rsa" and not ca,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _file_names(directory: Path, name: str | None, first_host: str) -> tuple[Path, Path]:
    stem = name if name is not None else _unique_stem(directory, _slug(first_host))
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def _unique_stem(directory: Path, stem: str) -> str:
    candidate = stem
    while (directory / f"{candidate}.pem").exists() or (directory / f"{candidate}.key").exists():
        candidate = f"{stem}-{next(_unique_suffix)}"
    return candidate


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower().replace("*", "wildcard")).strip("-")


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
