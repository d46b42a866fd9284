"""TLS for the gateway: SNI-aware listener contexts and verified upstream clients.

Listeners get one ``OpenSSL.SSL.Context`` per configured certificate; the
context a handshake starts on (the first certificate's) switches to the right
one in its server-name callback. Upstream connections always verify the
server, against a configured CA bundle or the platform's trust store.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from idgateway._twisted.tls_direct import GatewayTLS
from idgateway.config.model import CertificatePair, TLSSettings

if TYPE_CHECKING:
    from idgateway._twisted.tls import IOpenSSLTrustRoot

HTTP_1_1 = b"http/1.1"
H2 = b"h2"

MIN_VERSIONS: dict[str, int] = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

# Sessions are only resumed by contexts that share this; every context we make
# serves the same application, so one constant is right.
_SESSION_ID_CONTEXT = b"idgateway"

_SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION  # CRIME
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
    | SSL.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a cheap DoS
)


class TLSConfigurationError(ValueError):
    """A certificate, key or TLS setting could not be loaded; names the culprit."""


def normalise_server_name(name: str | bytes) -> str:
    """Lower case without a trailing dot, the form SNI lookups compare."""
    if isinstance(name, bytes):
        # SNI carries A-labels; anything else cannot match a certificate anyway.
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


@attrs.frozen
class ContextTable:
    """Contexts for one version of the TLS settings, swapped in as a whole.

    Opaque outside this module: make one with ``SNIServerContexts.prepare``.
    """

    settings: TLSSettings
    # One per settings.certificates entry, same order.
    contexts: tuple[SSL.Context, ...]
    default: SSL.Context
    # host name -> context, for exact names.
    exact: dict[str, SSL.Context]
    # "example.com" -> context, for a certificate naming "*.example.com".
    wildcard: dict[str, SSL.Context]

    def context_for(self, server_name: str) -> SSL.Context:
        context = self.exact.get(server_name)
        if context is not None:
            return context
        # A wildcard stands for exactly one whole left-most label, so the only
        # wildcard that can match is the one for the name minus its first label.
        first_label, dot, parent = server_name.partition(".")
        if first_label and dot and parent:
            context = self.wildcard.get(parent)
            if context is not None:
                return context
        return self.default


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerContexts:
    """Server-side TLS for one listener, choosing the certificate by SNI.

    A client that names a host covered by a certificate gets that certificate
    (exact names before wildcards); any other client gets the first one.
    """

    log = Logger()

    def __init__(self, settings: TLSSettings, *, http2: bool = False) -> None:
        # ALPN offers h2 before http/1.1 (the listener's http2).
        self.http2 = http2
        self._table = _build_table(settings, http2)

    @property
    def settings(self) -> TLSSettings:
        return self._table.settings

    def reload(self, settings: TLSSettings) -> None:
        """Use new certificates for new handshakes; raise and keep the old on error."""
        self.install(self.prepare(settings, http2=self.http2))

    @staticmethod
    def prepare(settings: TLSSettings, *, http2: bool = False) -> ContextTable:
        """Load everything ``settings`` names, or raise TLSConfigurationError.

        With ``install``, lets a reload touching several listeners load all of
        them before switching any.
        """
        return _build_table(settings, http2)

    def install(self, table: ContextTable) -> None:
        # One assignment: a handshake sees either the old table or the new one.
        self._table = table

    def certificate_for(self, server_name: str | None) -> CertificatePair:
        """The certificate pair a handshake with this SNI name would present."""
        table = self._table
        context = table.default
        if server_name is not None:
            context = table.context_for(normalise_server_name(server_name))
        index = next(i for i, candidate in enumerate(table.contexts) if candidate is context)
        return table.settings.certificates[index]

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._table.default, None)


def _build_table(settings: TLSSettings, http2: bool = False) -> ContextTable:
    if not settings.certificates:
        raise TLSConfigurationError("a TLS listener needs at least one certificate")
    if settings.min_version not in MIN_VERSIONS:
        raise TLSConfigurationError(
            f"unsupported TLS min_version {settings.min_version!r} "
            f"(expected one of {', '.join(MIN_VERSIONS)})"
        )
    contexts = tuple(_server_context(pair, settings, http2) for pair in settings.certificates)
    exact: dict[str, SSL.Context] = {}
    wildcard: dict[str, SSL.Context] = {}
    for pair, context in zip(settings.certificates, contexts, strict=True):
        for hostname in pair.hostnames or _certificate_dns_names(pair.cert):
            name = normalise_server_name(hostname)
            if name.startswith("*."):
                # Earlier certificates win, so the config order settles overlaps.
                wildcard.setdefault(name[2:], context)
            elif "*" in name:
                SNIServerContexts.log.warn(
                    "Ignoring unsupported wildcard {name!r} in {cert}", name=name, cert=pair.cert
                )
            else:
                exact.setdefault(name, context)
    default = contexts[0]
    table = ContextTable(
        settings=settings, contexts=contexts, default=default, exact=exact, wildcard=wildcard
    )
    default.set_tlsext_servername_callback(functools.partial(_switch_context, table))
    return table


def _switch_context(table: ContextTable, connection: SSL.Connection) -> None:
    # Runs inside OpenSSL: an exception here would abort the handshake.
    server_name = connection.get_servername()
    if server_name is None:
        return
    context = table.context_for(normalise_server_name(server_name))
    if context is not table.default:
        connection.set_context(context)


def _select_http_1_1(
    connection: SSL.Connection, offered: list[bytes]
) -> bytes | SSL._NoOverlappingProtocols:
    # A client that wants only something else still gets a handshake (and the
    # HTTP/1.1 it will then most likely speak), rather than a fatal alert.
    return HTTP_1_1 if HTTP_1_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _select_h2(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    # h2 first, as browsers expect; then as _select_http_1_1.
    return H2 if H2 in offered else _select_http_1_1(connection, offered)


def _server_context(
    pair: CertificatePair, settings: TLSSettings, http2: bool = False
) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(MIN_VERSIONS[settings.min_version])
    context.set_options(_SERVER_OPTIONS)
    # Frees per-connection buffers while idle: many keep-alive clients.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    if settings.ciphers:
        try:
            context.set_cipher_list(settings.ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as error:
            raise TLSConfigurationError(
                f"invalid TLS cipher list {settings.ciphers!r}: {_describe(error)}"
            ) from error
    try:
        context.use_certificate_chain_file(pair.cert)
    except SSL.Error as error:
        raise TLSConfigurationError(
            f"cannot load certificate chain {pair.cert}: {_describe(error)}"
        ) from error
    mismatch = f"private key {pair.key} does not match certificate {pair.cert}"
    try:
        context.use_privatekey_file(pair.key)
    except SSL.Error as error:
        reason = _describe(error)
        # OpenSSL already compares the key with the certificate while loading it.
        message = (
            mismatch if "mismatch" in reason else f"cannot load private key {pair.key}: {reason}"
        )
        raise TLSConfigurationError(message) from error
    try:
        context.check_privatekey()
    except SSL.Error as error:
        raise TLSConfigurationError(mismatch) from error
    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_alpn_select_callback(_select_h2 if http2 else _select_http_1_1)
    return context


def _describe(error: Exception) -> str:
    # pyOpenSSL errors carry a list of (library, function, reason) tuples.
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        reasons = [str(entry[-1]) for entry in details if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(reasons)
    return str(error)


def sni_server_name(transport: object) -> str | None:
    """The SNI host name the client sent on this connection, normalised, or None.

    ``transport`` is ``request.channel.transport``. Plain TCP, and TLS clients
    that sent no SNI (e.g. those connecting to an IP address), give None.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    if not isinstance(handle, SSL.Connection):
        return None
    server_name = handle.get_servername()
    if server_name is None:
        return None
    return normalise_server_name(server_name)


def client_tls_options(hostname: str, ca_file: str | None) -> IOpenSSLClientConnectionCreator:
    """TLS for an https upstream, verifying its certificate for ``hostname``.

    ``hostname`` may be a DNS name (sent as SNI) or an IP address (matched
    against IP SANs, no SNI). ``ca_file`` is a PEM bundle to trust instead of
    the platform's store. The result is cached and may be shared by any
    number of connections; a changed CA file is noticed by its mtime and size.
    Raises TLSConfigurationError if the CA file is unreadable or holds no
    certificates.
    """
    signature = _file_signature(ca_file) if ca_file is not None else None
    return _cached_client_tls_options(hostname, ca_file, signature)


@functools.lru_cache(maxsize=256)
def _cached_client_tls_options(
    hostname: str, ca_file: str | None, _signature: tuple[int, int] | None
) -> IOpenSSLClientConnectionCreator:
    trust_root = platformTrust() if ca_file is None else _trust_root_from_file(ca_file)
    return optionsForClientTLS(hostname, trustRoot=trust_root, acceptableProtocols=[HTTP_1_1])


def _file_signature(path: str) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except OSError as error:
        raise TLSConfigurationError(f"cannot read CA file {path}: {error.strerror}") from error
    return status.st_mtime_ns, status.st_size


def trust_root_from_file(path: str) -> IOpenSSLTrustRoot:
    """The certificates of a PEM bundle as a trust root (TLSConfigurationError if unusable)."""
    return _trust_root_from_file(path)


def _trust_root_from_file(path: str) -> IOpenSSLTrustRoot:
    try:
        with open(path, "rb") as file:
            pem = file.read()
        certificates = x509.load_pem_x509_certificates(pem)
    except OSError as error:
        raise TLSConfigurationError(f"cannot read CA file {path}: {error.strerror}") from error
    except ValueError as error:
        raise TLSConfigurationError(f"no PEM certificates in CA file {path}") from error
    return trustRootFromCertificates(_twisted_certificates(certificates))


def _twisted_certificates(certificates: Iterable[x509.Certificate]) -> list[Certificate]:
    return [Certificate(X509.from_cryptography(certificate)) for certificate in certificates]


def certificate_expiry(pair: CertificatePair) -> datetime:
    """When the pair's leaf certificate (the first in its chain file) expires, in UTC."""
    return _leaf_certificate(pair.cert).not_valid_after_utc


def _certificate_dns_names(cert_path: str) -> tuple[str, ...]:
    # Only for pairs built without the host names config.load_config reads.
    try:
        extension = _leaf_certificate(cert_path).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return ()
    names: Sequence[str] = extension.value.get_values_for_type(x509.DNSName)
    return tuple(normalise_server_name(name) for name in names)


def _leaf_certificate(cert_path: str) -> x509.Certificate:
    try:
        with open(cert_path, "rb") as file:
            pem = file.read()
        return x509.load_pem_x509_certificate(pem)
    except OSError as error:
        raise TLSConfigurationError(
            f"cannot read certificate {cert_path}: {error.strerror}"
        ) from error
    except ValueError as error:
        raise TLSConfigurationError(f"no PEM certificate in {cert_path}") from error


class GatewayTLSFactory(TLSMemoryBIOFactory):
    """TLS for the gateway's listeners (server side) with TurnBufferedTLS
    connections, their records moved by direct OpenSSL calls (GatewayTLS)."""

    protocol = GatewayTLS  # type: ignore[assignment]

    def buildProtocol(self, addr: Any) -> Any:
        # The Site may refuse the connection (max_connections): then there is
        # nothing to wrap, and twisted's port closes the socket.
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
