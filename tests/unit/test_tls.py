"""TLS contexts, exercised with real handshakes over in-memory connections."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from idgateway.config.model import CertificatePair, TLSSettings
from idgateway.server.tls import (
    SNIServerContexts,
    TLSConfigurationError,
    certificate_expiry,
    client_tls_options,
    sni_server_name,
)
from tests.certs import CA, Leaf, make_ca, make_mismatched_pair


def pair_for(leaf: Leaf) -> CertificatePair:
    return CertificatePair(
        cert=str(leaf.cert_path), key=str(leaf.key_path), hostnames=leaf.hostnames
    )


def settings_for(
    *leaves: Leaf, min_version: str = "1.2", ciphers: str | None = None
) -> TLSSettings:
    return TLSSettings(
        certificates=tuple(pair_for(leaf) for leaf in leaves),
        min_version=min_version,
        ciphers=ciphers,
    )


@attrs.frozen
class Handshake:
    """What a client saw after an in-memory handshake with the server."""

    serial: int
    alpn: bytes
    version: str


class HandshakeFailed(Exception):
    pass


def handshake(
    server: IOpenSSLServerConnectionCreator,
    *,
    server_name: bytes | None = None,
    alpn: Sequence[bytes] = (),
    max_version: int | None = None,
    ciphers: bytes | None = None,
    server_connection: SSL.Connection | None = None,
) -> Handshake:
    """Drive a pyOpenSSL client against ``server`` through memory BIOs.

    The client does not verify the server: these tests look at which
    certificate the server presents, not at whether a client would trust it.
    """
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        client_context.set_max_proto_version(max_version)
    if ciphers is not None:
        client_context.set_cipher_list(ciphers)
    if alpn:
        client_context.set_alpn_protos(list(alpn))
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    if server_name is not None:
        client.set_tlsext_host_name(server_name)
    if server_connection is None:
        server_connection = server.serverConnectionForTLS(None)  # type: ignore[arg-type]
    server_connection.set_accept_state()

    done = {"client": False, "server": False}
    for _ in range(20):
        for side, connection in (("client", client), ("server", server_connection)):
            if done[side]:
                continue
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as error:
                raise HandshakeFailed(f"{side}: {error}") from error
            else:
                done[side] = True
        moved = _shuttle(client, server_connection) + _shuttle(server_connection, client)
        if all(done.values()) and not moved:
            break
    else:
        raise AssertionError("handshake did not finish")
    certificate = client.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    return Handshake(
        serial=certificate.serial_number,
        alpn=client.get_alpn_proto_negotiated(),
        version=client.get_protocol_version_name(),
    )


def _shuttle(source: SSL.Connection, destination: SSL.Connection) -> int:
    try:
        data = source.bio_read(65536)
    except SSL.WantReadError:
        return 0
    destination.bio_write(data)
    return len(data)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path)


@pytest.fixture
def sites(ca: CA, tmp_path: Path) -> dict[str, Leaf]:
    return {
        "default": ca.issue(tmp_path, ["default.localhost"]),
        "app1": ca.issue(tmp_path, ["app1.localhost"]),
        "app2": ca.issue(tmp_path, ["app2.localhost", "127.0.0.1"], key_type="rsa"),
        "wildcard": ca.issue(tmp_path, ["*.example.com"]),
        "apex": ca.issue(tmp_path, ["example.com"]),
    }


@pytest.fixture
def contexts(sites: dict[str, Leaf]) -> SNIServerContexts:
    return SNIServerContexts(settings_for(*sites.values()))


# -- SNI selection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        (b"app1.localhost", "app1"),
        (b"app2.localhost", "app2"),
        (b"APP1.LocalHost", "app1"),
        (b"app1.localhost.", "app1"),
        (b"x.example.com", "wildcard"),
        (b"X.Example.COM", "wildcard"),
        (b"example.com", "apex"),
        (b"a.b.example.com", "default"),
        (b"unknown.localhost", "default"),
        (None, "default"),
    ],
)
def test_sni_selects_certificate(
    contexts: SNIServerContexts,
    sites: dict[str, Leaf],
    server_name: bytes | None,
    expected: str,
) -> None:
    result = handshake(contexts, server_name=server_name)
    assert result.serial == sites[expected].serial
    name = server_name.decode() if server_name is not None else None
    assert contexts.certificate_for(name) == pair_for(sites[expected])


def test_exact_name_beats_wildcard(ca: CA, tmp_path: Path) -> None:
    wildcard = ca.issue(tmp_path, ["*.example.com"])
    exact = ca.issue(tmp_path, ["www.example.com"])
    contexts = SNIServerContexts(settings_for(wildcard, exact))
    assert handshake(contexts, server_name=b"www.example.com").serial == exact.serial
    assert handshake(contexts, server_name=b"api.example.com").serial == wildcard.serial


def test_first_certificate_wins_for_a_name_listed_twice(ca: CA, tmp_path: Path) -> None:
    first = ca.issue(tmp_path, ["app1.localhost"])
    second = ca.issue(tmp_path, ["app1.localhost"])
    contexts = SNIServerContexts(settings_for(first, second))
    assert handshake(contexts, server_name=b"app1.localhost").serial == first.serial


def test_hostnames_are_read_from_the_certificate_when_not_given(ca: CA, tmp_path: Path) -> None:
    default = ca.issue(tmp_path, ["default.localhost"])
    app = ca.issue(tmp_path, ["app1.localhost", "*.apps.localhost"])
    settings = TLSSettings(
        certificates=(
            CertificatePair(cert=str(default.cert_path), key=str(default.key_path)),
            CertificatePair(cert=str(app.cert_path), key=str(app.key_path)),
        )
    )
    contexts = SNIServerContexts(settings)
    assert handshake(contexts, server_name=b"app1.localhost").serial == app.serial
    assert handshake(contexts, server_name=b"x.apps.localhost").serial == app.serial


# -- protocol settings -----------------------------------------------------------------


def test_alpn_negotiates_http_1_1(contexts: SNIServerContexts) -> None:
    result = handshake(contexts, server_name=b"app1.localhost", alpn=[b"h2", b"http/1.1"])
    assert result.alpn == b"http/1.1"


def test_alpn_without_http_1_1_still_completes(contexts: SNIServerContexts) -> None:
    result = handshake(contexts, server_name=b"app1.localhost", alpn=[b"h2"])
    assert result.alpn == b""


def test_min_version_1_3_refuses_tls_1_2_client(sites: dict[str, Leaf]) -> None:
    contexts = SNIServerContexts(settings_for(sites["app1"], min_version="1.3"))
    with pytest.raises(HandshakeFailed, match="unsupported protocol"):
        handshake(contexts, max_version=SSL.TLS1_2_VERSION)
    assert handshake(contexts).version == "TLSv1.3"


def test_min_version_1_2_accepts_tls_1_2_client(contexts: SNIServerContexts) -> None:
    result = handshake(contexts, server_name=b"app2.localhost", max_version=SSL.TLS1_2_VERSION)
    assert result.version == "TLSv1.2"


def test_cipher_list_is_applied(sites: dict[str, Leaf]) -> None:
    contexts = SNIServerContexts(
        settings_for(sites["app1"], ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    )
    tls_1_2 = SSL.TLS1_2_VERSION
    assert handshake(contexts, max_version=tls_1_2).version == "TLSv1.2"
    with pytest.raises(HandshakeFailed, match="no shared cipher"):
        handshake(contexts, max_version=tls_1_2, ciphers=b"ECDHE-ECDSA-AES256-GCM-SHA384")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_version": "1.1"}, "min_version"),
        ({"ciphers": "NO-SUCH-CIPHER"}, "cipher"),
        ({"certificates": ()}, "at least one certificate"),
    ],
)
def test_invalid_settings_are_refused(
    sites: dict[str, Leaf], change: dict[str, object], message: str
) -> None:
    settings = attrs.evolve(settings_for(sites["app1"]), **change)  # type: ignore[arg-type]
    with pytest.raises(TLSConfigurationError, match=message):
        SNIServerContexts(settings)


def test_mismatched_key_is_refused(tmp_path: Path) -> None:
    leaf = make_mismatched_pair(tmp_path)
    with pytest.raises(TLSConfigurationError, match="does not match"):
        SNIServerContexts(settings_for(leaf))


def test_missing_files_are_refused(sites: dict[str, Leaf], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    good = pair_for(sites["app1"])
    with pytest.raises(TLSConfigurationError, match="missing.pem"):
        SNIServerContexts(TLSSettings(certificates=(attrs.evolve(good, cert=missing),)))
    with pytest.raises(TLSConfigurationError, match="missing.pem"):
        SNIServerContexts(TLSSettings(certificates=(attrs.evolve(good, key=missing),)))


# -- reload ----------------------------------------------------------------------------


def test_reload_swaps_certificates(ca: CA, tmp_path: Path) -> None:
    old = ca.issue(tmp_path, ["app1.localhost"], name="app1")
    contexts = SNIServerContexts(settings_for(old))
    in_flight = contexts.serverConnectionForTLS(None)  # type: ignore[arg-type]

    new = ca.issue(tmp_path, ["app1.localhost"], name="app1")
    assert new.cert_path == old.cert_path
    contexts.reload(settings_for(new))

    assert handshake(contexts, server_name=b"app1.localhost").serial == new.serial
    # A connection accepted before the reload finishes with what it started with.
    finished = handshake(contexts, server_name=b"app1.localhost", server_connection=in_flight)
    assert finished.serial == old.serial


def test_prepare_then_install(ca: CA, tmp_path: Path) -> None:
    old = ca.issue(tmp_path, ["app1.localhost"])
    new = ca.issue(tmp_path, ["app1.localhost"])
    contexts = SNIServerContexts(settings_for(old))
    prepared = SNIServerContexts.prepare(settings_for(new))
    assert handshake(contexts, server_name=b"app1.localhost").serial == old.serial
    contexts.install(prepared)
    assert handshake(contexts, server_name=b"app1.localhost").serial == new.serial
    assert contexts.settings == settings_for(new)


def test_failed_reload_keeps_old_certificates(ca: CA, sites: dict[str, Leaf]) -> None:
    contexts = SNIServerContexts(settings_for(sites["app1"]))
    broken = make_mismatched_pair(sites["app1"].cert_path.parent, ca=ca)
    with pytest.raises(TLSConfigurationError):
        contexts.reload(settings_for(sites["app2"], broken))
    assert handshake(contexts, server_name=b"app1.localhost").serial == sites["app1"].serial
    assert contexts.settings == settings_for(sites["app1"])


# -- Twisted integration: client verification and SNI from the transport ---------------


@implementer(IHandshakeListener)
class HandshakeRecorder(Protocol):
    def __init__(self) -> None:
        self.handshake_done = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.lost = reason


@attrs.define
class Connected:
    client: HandshakeRecorder
    server: HandshakeRecorder
    client_tls: TLSMemoryBIOProtocol
    server_tls: TLSMemoryBIOProtocol


def connect_over_tls(
    server_creator: IOpenSSLServerConnectionCreator,
    client_creator: IOpenSSLClientConnectionCreator,
) -> Connected:
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_creator,
        False,
        ServerFactory.forProtocol(HandshakeRecorder),
        clock=clock,
    )
    client_factory = TLSMemoryBIOFactory(
        client_creator,
        True,
        ClientFactory.forProtocol(HandshakeRecorder),
        clock=clock,
    )
    server_tls = server_factory.buildProtocol(None)
    client_tls = client_factory.buildProtocol(None)
    # Kept now: the TLS wrapper lets go of its application protocol when it closes.
    connected = Connected(
        client=client_tls.wrappedProtocol,  # type: ignore[arg-type]
        server=server_tls.wrappedProtocol,  # type: ignore[arg-type]
        client_tls=client_tls,
        server_tls=server_tls,
    )
    connectedServerAndClient(lambda: server_tls, lambda: client_tls, clock=clock)
    return connected


def peer_serial(connected: Connected) -> int:
    handle = connected.client_tls.getHandle()
    certificate = handle.get_peer_certificate(as_cryptography=True)
    return certificate.serial_number


def test_client_verifies_against_ca_file(
    ca: CA, contexts: SNIServerContexts, sites: dict[str, Leaf]
) -> None:
    connected = connect_over_tls(contexts, client_tls_options("app1.localhost", str(ca.cert_path)))
    assert connected.client.handshake_done and connected.server.handshake_done
    assert peer_serial(connected) == sites["app1"].serial
    assert connected.client_tls.negotiatedProtocol == b"http/1.1"


def test_client_accepts_a_ca_bundle(
    ca: CA, contexts: SNIServerContexts, sites: dict[str, Leaf], tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", "other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.cert_path.read_bytes() + ca.cert_path.read_bytes())
    connected = connect_over_tls(contexts, client_tls_options("x.example.com", str(bundle)))
    assert connected.client.handshake_done
    assert peer_serial(connected) == sites["wildcard"].serial


def test_client_rejects_certificate_from_another_ca(
    contexts: SNIServerContexts, tmp_path: Path
) -> None:
    other = make_ca(tmp_path / "other", "other CA")
    connected = connect_over_tls(
        contexts, client_tls_options("app1.localhost", str(other.cert_path))
    )
    assert not connected.client.handshake_done
    assert connected.client.lost is not None
    assert "certificate verify failed" in str(connected.client.lost.value)


def test_client_rejects_hostname_mismatch(ca: CA, contexts: SNIServerContexts) -> None:
    # The server falls back to its default certificate, which does not name this host.
    connected = connect_over_tls(contexts, client_tls_options("other.localhost", str(ca.cert_path)))
    assert not connected.client.handshake_done
    assert connected.client.lost is not None
    assert connected.client.lost.check(VerificationError)


def test_client_verifies_ip_san(ca: CA, tmp_path: Path) -> None:
    by_ip = ca.issue(tmp_path, ["127.0.0.1", "::1"])
    contexts = SNIServerContexts(settings_for(by_ip))

    connected = connect_over_tls(contexts, client_tls_options("127.0.0.1", str(ca.cert_path)))
    assert connected.client.handshake_done
    # No SNI is sent for an IP address.
    assert sni_server_name(connected.server_tls) is None

    assert connect_over_tls(
        contexts, client_tls_options("::1", str(ca.cert_path))
    ).client.handshake_done
    refused = connect_over_tls(contexts, client_tls_options("127.0.0.2", str(ca.cert_path)))
    assert not refused.client.handshake_done
    assert refused.client.lost is not None and refused.client.lost.check(VerificationError)


def test_client_options_are_cached_until_the_ca_file_changes(ca: CA, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    first = client_tls_options("app1.localhost", str(bundle))
    assert client_tls_options("app1.localhost", str(bundle)) is first
    assert client_tls_options("app2.localhost", str(bundle)) is not first

    other = make_ca(tmp_path / "other", "other CA")
    bundle.write_bytes(ca.cert_path.read_bytes() + other.cert_path.read_bytes())
    later = datetime.now(UTC) + timedelta(seconds=5)
    os.utime(bundle, (later.timestamp(), later.timestamp()))
    assert client_tls_options("app1.localhost", str(bundle)) is not first


def test_client_options_refuse_unusable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigurationError, match="cannot read"):
        client_tls_options("app1.localhost", str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(TLSConfigurationError, match="no PEM certificates"):
        client_tls_options("app1.localhost", str(empty))


def test_client_options_with_platform_trust() -> None:
    assert client_tls_options("example.org", None) is not None


def test_sni_server_name_from_transport(ca: CA, contexts: SNIServerContexts) -> None:
    connected = connect_over_tls(contexts, client_tls_options("App1.Localhost", str(ca.cert_path)))
    assert connected.server.handshake_done
    assert sni_server_name(connected.server_tls) == "app1.localhost"
    # What twisted.web hands the application: the wrapped protocol's transport.
    assert sni_server_name(connected.server.transport) == "app1.localhost"


class SNIEcho(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        server_name = sni_server_name(request.channel.transport)
        return repr(server_name).encode()


class ResponseCollector(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"GET / HTTP/1.1\r\nHost: app2.localhost\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_sni_server_name_from_a_twisted_web_request(ca: CA, contexts: SNIServerContexts) -> None:
    clock = Clock()
    site = Site(SNIEcho(), reactor=clock)
    server_factory = TLSMemoryBIOFactory(contexts, False, site, clock=clock)
    client_factory = TLSMemoryBIOFactory(
        client_tls_options("app2.localhost", str(ca.cert_path)),
        True,
        ClientFactory.forProtocol(ResponseCollector),
        clock=clock,
    )
    client_tls = client_factory.buildProtocol(None)
    collector = client_tls.wrappedProtocol
    assert isinstance(collector, ResponseCollector)
    connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_tls, clock=clock
    )
    assert collector.received.startswith(b"HTTP/1.1 200")
    assert collector.received.endswith(b"'app2.localhost'")


def test_sni_server_name_for_plain_transports() -> None:
    assert sni_server_name(FakeTransport(Protocol(), isServer=True)) is None
    assert sni_server_name(object()) is None

    class TCPLike:
        def getHandle(self) -> object:
            return object()

    assert sni_server_name(TCPLike()) is None


# -- certificate facts -----------------------------------------------------------------


def test_certificate_expiry(ca: CA, tmp_path: Path) -> None:
    not_after = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    leaf = ca.issue(tmp_path, ["app1.localhost"], not_after=not_after)
    assert certificate_expiry(pair_for(leaf)) == not_after

    expired = ca.issue(tmp_path, ["old.localhost"], expired=True)
    assert certificate_expiry(pair_for(expired)) < datetime.now(UTC)


def test_a_gateway_channel_asks_for_the_tls_server_name_once_per_connection(
    ca: CA, contexts: SNIServerContexts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.web.server import NOT_DONE_YET

    from idgateway._twisted.tls import TurnBufferedTLS
    from idgateway.server import channel as request_module
    from idgateway.server.channel import GatewaySite
    from idgateway.server.socket_writes import TurnWriteBuffer
    from idgateway.server.tls import GatewayTLSFactory

    asked: list[object] = []
    real = request_module.sni_server_name
    monkeypatch.setattr(
        request_module, "sni_server_name", lambda transport: asked.append(1) or real(transport)
    )

    class Echo(Resource):
        isLeaf = True

        def render(self, request: Request) -> object:  # type: ignore[override]
            request.write(repr(request.channel.tls_server_name()).encode() + b";")
            request.finish()
            return NOT_DONE_YET

    class TwoRequests(ResponseCollector):
        def connectionMade(self) -> None:
            self.transport.write(  # type: ignore[union-attr]
                b"GET /1 HTTP/1.1\r\nHost: app2.localhost\r\n\r\n"
                b"GET /2 HTTP/1.1\r\nHost: app2.localhost\r\nConnection: close\r\n\r\n"
            )

    clock = Clock()
    # The gateway's own TLS factory: its connections gather writes per turn.
    server_factory = GatewayTLSFactory(
        contexts, False, GatewaySite(Echo(), reactor=clock), clock=clock
    )
    client_tls = TLSMemoryBIOFactory(
        client_tls_options("app2.localhost", str(ca.cert_path)),
        True,
        ClientFactory.forProtocol(TwoRequests),
        clock=clock,
    ).buildProtocol(None)
    collector = client_tls.wrappedProtocol
    servers: list[Any] = []

    def server() -> Any:
        servers.append(server_factory.buildProtocol(None))
        return servers[-1]

    connectedServerAndClient(server, lambda: client_tls, clock=clock)
    assert collector.received.count(b"'app2.localhost';") == 2
    assert len(asked) == 1
    [server_tls] = servers  # (closed now: Connection: close)
    assert isinstance(server_tls, TurnBufferedTLS)
    assert isinstance(TurnBufferedTLS(server_factory, Protocol())._aggregator, TurnWriteBuffer)
