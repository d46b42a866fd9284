"""Relying party calls (authorize/logout URLs, token and userinfo requests) and the HTTP client."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import attrs
import pytest
from OpenSSL import SSL
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from idgateway.oidc.client import (
    RESERVED_AUTHORIZE_PARAMETERS,
    ClientCredentials,
    TokenEndpointError,
    TokenResponse,
    UserinfoError,
    authorize_url,
    basic_authorization,
    end_session_url,
    exchange_code,
    fetch_userinfo,
    refresh_tokens,
)
from idgateway.oidc.http import (
    HTTPFailure,
    UnverifiedTLSPolicy,
    VerifyingTLSPolicy,
    make_http_client,
    send,
)
from idgateway.oidc.provider import ProviderMetadata
from idgateway.server.tls import TLSConfigurationError
from tests.certs import CA, Leaf, make_ca
from tests.unit.test_oidc_provider import (
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    FakeWSO2,
    ready_provider,
    resolve,
)

CODE = "a5f1c9e2-7d3b-3c4a-8e6f-1b2d3c4e5f6a"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
REDIRECT_URI = "https://app.example.com/oauth2/callback"


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metadata(fake: FakeWSO2) -> ProviderMetadata:
    provider = ready_provider(fake)
    assert provider.metadata is not None
    return provider.metadata


def creds(method: str = "client_secret_basic") -> ClientCredentials:
    return ClientCredentials(CLIENT_ID, CLIENT_SECRET, method)


def http_for(fake: Resource) -> HTTPClient:
    return StubTreq(fake)  # type: ignore[return-value]


def exchange(
    fake: FakeWSO2,
    metadata: ProviderMetadata,
    clock: Clock,
    method: str = "client_secret_basic",
) -> TokenResponse:
    return resolve(
        exchange_code(
            http_for(fake),
            metadata,
            creds(method),
            code=CODE,
            redirect_uri=REDIRECT_URI,
            code_verifier=VERIFIER,
            clock=clock,
        )
    )


def exchange_error(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> TokenEndpointError:
    with pytest.raises(TokenEndpointError) as caught:
        exchange(fake, metadata, clock)
    message = str(caught.value)
    for secret in (CODE, VERIFIER, CLIENT_SECRET):
        assert secret not in message
    return caught.value


# ---------------------------------------------------------------------------
# Authorization and logout URLs


def query_of(url: str) -> dict[str, str]:
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    assert len(pairs) == len(dict(pairs)), "a parameter appears twice"
    return dict(pairs)


def test_authorize_url(metadata: ProviderMetadata) -> None:
    url = authorize_url(
        metadata,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT_URI,
        scopes=["openid", "profile", "groups"],
        state="st&te",
        nonce="n0nce",
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        extra={"prompt": "login", "fidp": "Google", "max_age": "300"},
    )
    assert url.startswith(f"{BASE}/oauth2/authorize?")
    assert query_of(url) == {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile groups",
        "state": "st&te",
        "nonce": "n0nce",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "prompt": "login",
        "fidp": "Google",
        "max_age": "300",
    }


def test_authorize_url_adds_openid_scope(metadata: ProviderMetadata) -> None:
    url = authorize_url(
        metadata,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT_URI,
        scopes=["profile", "profile"],
        state="s",
        nonce="n",
        code_challenge="c",
    )
    assert query_of(url)["scope"] == "openid profile"


@pytest.mark.parametrize("name", sorted(RESERVED_AUTHORIZE_PARAMETERS))
def test_extra_parameters_cannot_override_security_ones(
    metadata: ProviderMetadata, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        authorize_url(
            metadata,
            client_id=CLIENT_ID,
            redirect_uri=REDIRECT_URI,
            scopes=["openid"],
            state="s",
            nonce="n",
            code_challenge="c",
            extra={name: "plain"},
        )


def test_authorize_endpoint_with_its_own_query() -> None:
    metadata = ProviderMetadata(
        issuer="i",
        authorization_endpoint="https://idp/authorize?tenant=acme",
        token_endpoint="t",
        jwks_uri="j",
    )
    url = authorize_url(
        metadata,
        client_id="c",
        redirect_uri="r",
        scopes=["openid"],
        state="s",
        nonce="n",
        code_challenge="x",
    )
    assert url.startswith("https://idp/authorize?tenant=acme&response_type=code&")


def test_end_session_url(metadata: ProviderMetadata) -> None:
    url = end_session_url(
        metadata,
        id_token_hint="eyJ.x.y",
        post_logout_redirect_uri="https://app.example.com/",
        state="bye",
        client_id=CLIENT_ID,
    )
    assert url is not None and url.startswith(f"{BASE}/oidc/logout?")
    assert query_of(url) == {
        "id_token_hint": "eyJ.x.y",
        "post_logout_redirect_uri": "https://app.example.com/",
        "state": "bye",
        "client_id": CLIENT_ID,
    }
    bare = end_session_url(
        metadata, id_token_hint=None, post_logout_redirect_uri=None, state=None, client_id="c"
    )
    assert bare == f"{BASE}/oidc/logout?client_id=c"


def test_end_session_url_without_endpoint(metadata: ProviderMetadata) -> None:
    without = attrs.evolve(metadata, end_session_endpoint=None)
    assert (
        end_session_url(
            without, id_token_hint="x", post_logout_redirect_uri=None, state=None, client_id="c"
        )
        is None
    )


# ---------------------------------------------------------------------------
# Token endpoint


def test_exchange_code_with_client_secret_basic(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock
) -> None:
    tokens = exchange(fake, metadata, clock)
    assert tokens == TokenResponse(
        access_token="4f3a7c1e-8f2d-3b6a-9c1e-0d2f4a6b8c0e",
        token_type="Bearer",
        expires_in=3600,
        refresh_token="9b8a7c6d-5e4f-3a2b-1c0d-e9f8a7b6c5d4",
        id_token="header.payload.signature",
        scope="openid profile",
    )
    received = fake.last("token")
    assert received.method == "POST"
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert received.form == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": VERIFIER,
    }
    scheme, _, encoded = received.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    # RFC 6749 2.3.1: form-urlencoded before base64.
    assert password == "s3cr%3Aet%2B%2F+wi%26th%3Dodd+chars"
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)
    assert CLIENT_SECRET not in received.body.decode()


def test_exchange_code_with_client_secret_post(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock
) -> None:
    tokens = exchange(fake, metadata, clock, "client_secret_post")
    assert tokens.access_token
    received = fake.last("token")
    assert "authorization" not in received.headers
    assert received.form == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": VERIFIER,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


def test_unknown_auth_method_is_refused() -> None:
    with pytest.raises(ValueError, match="private_key_jwt"):
        ClientCredentials("c", "s", "private_key_jwt")


def test_secrets_stay_out_of_reprs() -> None:
    text = repr(creds()) + repr(
        TokenResponse(
            access_token="AT-secret",
            token_type="Bearer",
            expires_in=1,
            refresh_token="RT-secret",
            id_token="IDT-secret",
            scope=None,
        )
    )
    for secret in (CLIENT_SECRET, "AT-secret", "RT-secret", "IDT-secret"):
        assert secret not in text


def test_basic_authorization_plain_credentials() -> None:
    expected = "Basic " + base64.b64encode(b"client:secret").decode()
    assert basic_authorization("client", "secret") == expected


def test_invalid_grant(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> None:
    fake.token_reply = (
        400,
        {},
        {"error": "invalid_grant", "error_description": "Invalid authorization code received"},
    )
    error = exchange_error(fake, metadata, clock)
    assert (error.error, error.status) == ("invalid_grant", 400)
    assert error.description == "Invalid authorization code received"


def test_invalid_client(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> None:
    fake.token_reply = (
        401,
        {"WWW-Authenticate": 'Basic realm="wso2"'},
        {"error": "invalid_client", "error_description": "Client Authentication failed."},
    )
    error = exchange_error(fake, metadata, clock)
    assert (error.error, error.status) == ("invalid_client", 401)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"<html>oops</html>", "server_error"),
        (502, b"", "server_error"),
        (503, b"<html>maintenance</html>", "temporarily_unavailable"),
        (400, b"<html>bad</html>", "invalid_response"),
        (302, b"", "invalid_response"),
        (200, b"<html>login page</html>", "invalid_response"),
        (200, {"token_type": "Bearer"}, "invalid_response"),
        (200, {"access_token": "x", "token_type": "mac"}, "invalid_response"),
        (200, ["not", "an", "object"], "invalid_response"),
    ],
)
def test_unusable_token_responses(
    fake: FakeWSO2,
    metadata: ProviderMetadata,
    clock: Clock,
    status: int,
    body: Any,
    expected: str,
) -> None:
    fake.token_reply = (
        status,
        {"content-type": "text/html"} if isinstance(body, bytes) else {},
        body,
    )
    error = exchange_error(fake, metadata, clock)
    assert (error.error, error.status) == (expected, status)


def test_token_endpoint_timeout(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> None:
    fake.hang = True
    pending = exchange_code(
        http_for(fake),
        metadata,
        creds(),
        code=CODE,
        redirect_uri=REDIRECT_URI,
        code_verifier=VERIFIER,
        timeout=7,
        clock=clock,
    )
    result = defer.ensureDeferred(pending)
    assert not result.called
    clock.advance(7)
    failure = result.result
    result.addErrback(lambda _: None)
    assert isinstance(failure, Failure)
    error = failure.value
    assert isinstance(error, TokenEndpointError)
    assert (error.error, error.status) == ("temporarily_unavailable", 0)
    assert "7 s" in error.description


def test_token_endpoint_unreachable(metadata: ProviderMetadata, clock: Clock) -> None:
    class Refusing:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            return defer.fail(net_error.ConnectionRefusedError("refused"))

    with pytest.raises(TokenEndpointError) as caught:
        resolve(
            exchange_code(
                Refusing(),  # type: ignore[arg-type]
                metadata,
                creds(),
                code=CODE,
                redirect_uri=REDIRECT_URI,
                code_verifier=VERIFIER,
                clock=clock,
            )
        )
    assert caught.value.error == "temporarily_unavailable"
    assert "ConnectionRefusedError" in caught.value.description


def test_refresh_returns_the_rotated_refresh_token(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock
) -> None:
    fake.token_reply = (
        200,
        {},
        {
            "access_token": "new-access",
            "refresh_token": "rotated-refresh",
            "id_token": "new.id.token",
            "token_type": "Bearer",
            "expires_in": "3600",
        },
    )
    tokens = resolve(
        refresh_tokens(
            http_for(fake), metadata, creds("client_secret_post"), refresh_token="old", clock=clock
        )
    )
    assert (tokens.access_token, tokens.refresh_token, tokens.expires_in) == (
        "new-access",
        "rotated-refresh",
        3600,
    )
    assert tokens.scope is None
    assert fake.last("token").form == {
        "grant_type": "refresh_token",
        "refresh_token": "old",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


def test_refresh_without_a_new_refresh_token(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock
) -> None:
    fake.token_reply = (200, {}, {"access_token": "a", "token_type": "bearer"})
    tokens = resolve(
        refresh_tokens(http_for(fake), metadata, creds(), refresh_token="old", clock=clock)
    )
    assert tokens.refresh_token is None and tokens.expires_in is None and tokens.id_token is None
    assert fake.last("token").headers["authorization"].startswith("Basic ")


def test_refresh_with_a_dead_refresh_token(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock
) -> None:
    fake.token_reply = (
        400,
        {},
        {"error": "invalid_grant", "error_description": "Persisted access token data not found"},
    )
    with pytest.raises(TokenEndpointError) as caught:
        resolve(refresh_tokens(http_for(fake), metadata, creds(), refresh_token="x", clock=clock))
    assert caught.value.error == "invalid_grant"


# ---------------------------------------------------------------------------
# Userinfo


def userinfo(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock, **kw: Any) -> Any:
    return resolve(
        fetch_userinfo(http_for(fake), metadata, access_token="the-access-token", clock=clock, **kw)
    )


def test_userinfo(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> None:
    claims = userinfo(fake, metadata, clock, expected_sub="6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1")
    assert claims == {"sub": "6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1", "username": "alice"}
    received = fake.last("userinfo")
    assert received.method == "GET"
    assert received.headers["authorization"] == "Bearer the-access-token"


def test_userinfo_invalid_token(fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock) -> None:
    fake.userinfo_reply = (
        401,
        {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'},
        b"",
    )
    with pytest.raises(UserinfoError) as caught:
        userinfo(fake, metadata, clock)
    assert (caught.value.error, caught.value.status) == ("invalid_token", 401)
    assert "the-access-token" not in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ((200, {}, {"sub": "someone-else"}), "sub_mismatch"),
        ((200, {"content-type": "application/jwt"}, b"a.b.c"), "invalid_response"),
        ((200, {}, b"not json"), "invalid_response"),
        ((200, {}, ["x"]), "invalid_response"),
        ((500, {}, b""), "server_error"),
        ((403, {}, {"error": "insufficient_scope"}), "insufficient_scope"),
    ],
)
def test_userinfo_errors(
    fake: FakeWSO2, metadata: ProviderMetadata, clock: Clock, reply: Any, expected: str
) -> None:
    fake.userinfo_reply = reply
    with pytest.raises(UserinfoError) as caught:
        userinfo(fake, metadata, clock, expected_sub="6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1")
    assert caught.value.error == expected


def test_userinfo_without_endpoint(fake: FakeWSO2, metadata: ProviderMetadata) -> None:
    with pytest.raises(UserinfoError):
        userinfo(fake, attrs.evolve(metadata, userinfo_endpoint=None), Clock())


# ---------------------------------------------------------------------------
# http.py: send, make_http_client and the TLS policies


class Big(Resource):
    isLeaf = True

    def __init__(self, size: int, chunked: bool) -> None:
        super().__init__()
        self.size, self.chunked = size, chunked

    def render_GET(self, request: Request) -> bytes | int:
        if self.chunked:
            # No Content-Length: the cap must hold while reading.
            request.write(b"x" * self.size)
            request.finish()
            return NOT_DONE_YET
        return b"x" * self.size


@pytest.mark.parametrize("chunked", [False, True])
def test_send_caps_the_body(clock: Clock, chunked: bool) -> None:
    http = http_for(Big(2000, chunked))
    ok = resolve(send(http, "GET", "https://p/x", clock=clock, timeout=5, max_body=2000))
    assert ok.status == 200 and len(ok.body) == 2000
    with pytest.raises(HTTPFailure) as caught:
        resolve(send(http, "GET", "https://p/x", clock=clock, timeout=5, max_body=1999))
    assert caught.value.kind == "too_large"


def test_send_does_not_follow_redirects(clock: Clock) -> None:
    class Redirect(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            request.redirect(b"https://elsewhere/")
            return b""

    result = resolve(send(http_for(Redirect()), "GET", "https://p/", clock=clock, timeout=5))
    assert result.status == 302


def test_make_http_client(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    ca = make_ca(tmp_path)
    client = make_http_client(reactor, ca_file=str(ca.cert_path), insecure_skip_verify=False)
    assert isinstance(client, HTTPClient)
    pool = client._agent._pool  # type: ignore[attr-defined]
    assert pool.persistent and pool.maxPersistentPerHost == 10
    assert pool.cachedConnectionTimeout == 15
    assert isinstance(client._agent._endpointFactory._policyForHTTPS, VerifyingTLSPolicy)  # type: ignore[attr-defined]
    insecure = make_http_client(reactor, ca_file=None, insecure_skip_verify=True, pool_size=3)
    assert insecure._agent._pool.maxPersistentPerHost == 3  # type: ignore[attr-defined]
    assert isinstance(insecure._agent._endpointFactory._policyForHTTPS, UnverifiedTLSPolicy)  # type: ignore[attr-defined]


def test_make_http_client_refuses_a_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigurationError):
        make_http_client(
            MemoryReactorClock(), ca_file=str(tmp_path / "nope.pem"), insecure_skip_verify=False
        )
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing\n")
    with pytest.raises(TLSConfigurationError):
        make_http_client(MemoryReactorClock(), ca_file=str(empty), insecure_skip_verify=False)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    def __init__(self, leaf: Leaf) -> None:
        self.context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.context.use_certificate_chain_file(str(leaf.cert_path))
        self.context.use_privatekey_file(str(leaf.key_path))

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.handshake_done = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.lost = reason


def handshake(leaf: Leaf, client: IOpenSSLClientConnectionCreator) -> Recorder:
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        ServerTLS(leaf), False, ServerFactory.forProtocol(Recorder), clock=clock
    )
    client_factory = TLSMemoryBIOFactory(
        client, True, ClientFactory.forProtocol(Recorder), clock=clock
    )
    server_tls = server_factory.buildProtocol(None)
    client_tls = client_factory.buildProtocol(None)
    client_side = client_tls.wrappedProtocol
    assert isinstance(client_side, Recorder)
    connectedServerAndClient(lambda: server_tls, lambda: client_tls, clock=clock)
    return client_side


@pytest.fixture
def provider_leaf(tmp_path: Path) -> tuple[CA, Leaf]:
    ca = make_ca(tmp_path / "wso2")
    return ca, ca.issue(tmp_path / "wso2", ["localhost", "127.0.0.1"], key_type="rsa")


def test_verifying_policy_trusts_the_configured_bundle(
    provider_leaf: tuple[CA, Leaf], tmp_path: Path
) -> None:
    ca, leaf = provider_leaf
    other = make_ca(tmp_path / "other", "other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.cert_path.read_bytes() + ca.cert_path.read_bytes())
    policy = VerifyingTLSPolicy(str(bundle))
    assert handshake(leaf, policy.creatorForNetloc(b"localhost", 9443)).handshake_done
    assert handshake(leaf, policy.creatorForNetloc(b"127.0.0.1", 9443)).handshake_done


def test_verifying_policy_refuses_other_cas_and_names(
    provider_leaf: tuple[CA, Leaf], tmp_path: Path
) -> None:
    ca, leaf = provider_leaf
    other = make_ca(tmp_path / "other", "other CA")
    untrusted = handshake(
        leaf, VerifyingTLSPolicy(str(other.cert_path)).creatorForNetloc(b"localhost", 9443)
    )
    assert not untrusted.handshake_done and untrusted.lost is not None
    wrong_name = handshake(
        leaf, VerifyingTLSPolicy(str(ca.cert_path)).creatorForNetloc(b"wso2.example.com", 9443)
    )
    assert not wrong_name.handshake_done


def test_unverified_policy_accepts_anything(provider_leaf: tuple[CA, Leaf]) -> None:
    _, leaf = provider_leaf
    policy = UnverifiedTLSPolicy()
    assert handshake(leaf, policy.creatorForNetloc(b"wso2.example.com", 9443)).handshake_done
    assert handshake(leaf, policy.creatorForNetloc(b"10.0.0.1", 9443)).handshake_done
