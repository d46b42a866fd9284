"""Tokens that arrive on a refresh are as untrusted as those from the login: the
refreshed ID token is validated (and must be about the same user) before it
replaces the session's, and a token response's expires_in must make sense."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from idgateway.config.model import (
    OIDCSettings,
    RouteAuth,
    SessionSettings,
)
from idgateway.gate import session_check as gate_module
from idgateway.gate.session_check import UNAVAILABLE, RouteLogin
from idgateway.oidc.client import TokenEndpointError, TokenResponse, refresh_tokens
from idgateway.oidc.provider import ProviderClient
from idgateway.oidc.refresh import SUB_MISMATCH, validate_refreshed_id_token
from idgateway.oidc.tokens import TokenError, access_token_hash
from idgateway.sessions.model import Session
from tests.route_gates import route_login
from tests.unit.test_gate import KEY
from tests.unit.test_oidc_client import creds, http_for
from tests.unit.test_oidc_provider import (
    CLIENT_ID,
    NONCE,
    NOW,
    OTHER_RSA_KEY,
    FakeWSO2,
    b64url,
    id_token_claims,
    ready_provider,
    resolve,
    sign_jwt,
)

SUB = "6a1f1a5c-07bc-4e9a-9bd3-1c3f1f35a0d1"
NEW_ACCESS_TOKEN = "at-2"


@pytest.fixture
def fake() -> FakeWSO2:
    return FakeWSO2()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def provider(fake: FakeWSO2, clock: Clock) -> ProviderClient:
    return ready_provider(fake, clock)


def login_token(fake: FakeWSO2) -> str:
    return sign_jwt(id_token_claims(fake))


def refreshed_token(fake: FakeWSO2, **changes: Any) -> str:
    """What WSO2 answers a refresh with: no nonce, a new iat, the new access token's at_hash."""
    claims: dict[str, Any] = {
        "nonce": None,
        "at_hash": access_token_hash(NEW_ACCESS_TOKEN, "RS256"),
        **changes,
    }
    return sign_jwt(id_token_claims(fake, **claims))


def check(
    token: str,
    provider: ProviderClient,
    fake: FakeWSO2,
    previous: str | None = ...,  # type: ignore[assignment]
) -> dict[str, Any]:
    return resolve(
        validate_refreshed_id_token(
            token,
            provider=provider,
            client_id=CLIENT_ID,
            session_sub=SUB,
            previous_id_token=login_token(fake) if previous is ... else previous,
            access_token=NEW_ACCESS_TOKEN,
            now=NOW,
        )
    )


def test_a_good_refreshed_token_is_accepted(fake: FakeWSO2, provider: ProviderClient) -> None:
    assert check(refreshed_token(fake), provider, fake)["sub"] == SUB
    # A nonce, if sent again, must be the login's.
    assert check(refreshed_token(fake, nonce=NONCE), provider, fake)["sub"] == SUB


def _unsigned(fake: FakeWSO2) -> str:
    header = b64url(json.dumps({"alg": "none"}).encode())
    body = b64url(json.dumps(id_token_claims(fake, nonce=None)).encode())
    return f"{header}.{body}."


ATTACKS: dict[str, Any] = {
    "other-sub": (lambda fake: refreshed_token(fake, sub="mallory"), SUB_MISMATCH),
    "sub-differs-by-case": (lambda fake: refreshed_token(fake, sub=SUB.upper()), SUB_MISMATCH),
    "sub-with-trailing-space": (lambda fake: refreshed_token(fake, sub=SUB + " "), SUB_MISMATCH),
    "garbage": (lambda fake: "not.a.jwt", "malformed"),
    "empty-segments": (lambda fake: "..", "malformed"),
    "alg-none": (_unsigned, "alg_not_allowed"),
    "foreign-key": (
        lambda fake: sign_jwt(
            id_token_claims(fake, nonce=None), key=OTHER_RSA_KEY, kid=OTHER_RSA_KEY.kid("RS256")
        ),
        "unknown_kid",
    ),
    "wrong-issuer": (
        lambda fake: refreshed_token(fake, iss="https://evil/oauth2/token"),
        "wrong_issuer",
    ),
    "wrong-audience": (lambda fake: refreshed_token(fake, aud="other-client"), "wrong_audience"),
    "wrong-azp": (lambda fake: refreshed_token(fake, azp="other-client"), "azp_mismatch"),
    "expired": (lambda fake: refreshed_token(fake, exp=int(NOW) - 3600), "expired"),
    "no-iat": (lambda fake: refreshed_token(fake, iat=None), "missing_claim"),
    "iat-in-future": (lambda fake: refreshed_token(fake, iat=int(NOW) + 3600), "issued_in_future"),
    "another-nonce": (lambda fake: refreshed_token(fake, nonce="replayed"), "nonce_mismatch"),
    "nonce-not-a-string": (lambda fake: refreshed_token(fake, nonce=["n"]), "nonce_mismatch"),
    "at-hash-of-another-token": (
        lambda fake: refreshed_token(fake, at_hash=access_token_hash("other", "RS256")),
        "at_hash_mismatch",
    ),
    "deep-header": (lambda fake: b64url(b"[" * 5000) + ".e30.c2ln", "malformed"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_refreshed_tokens_that_are_refused(
    attack: str, fake: FakeWSO2, provider: ProviderClient
) -> None:
    make, reason = ATTACKS[attack]
    with pytest.raises(TokenError) as caught:
        check(make(fake), provider, fake)
    assert caught.value.reason == reason


def test_a_nonce_needs_the_login_tokens_nonce_to_compare_with(
    fake: FakeWSO2, provider: ProviderClient
) -> None:
    token = refreshed_token(fake, nonce=NONCE)
    for previous in (None, "not.a.jwt", sign_jwt(id_token_claims(fake, nonce=None))):
        with pytest.raises(TokenError) as caught:
            check(token, provider, fake, previous)
        assert caught.value.reason == "nonce_mismatch"


# ---------------------------------------------------------------------------
# The gate: an invalid refreshed ID token ends the refresh as "refused"


def make_login(provider: ProviderClient, clock: Clock) -> RouteLogin:
    auth = RouteAuth(
        oidc=OIDCSettings(provider="wso2", client_id=CLIENT_ID, client_secret="s"),
        session=SessionSettings(keys=(KEY,)),
    )
    issuer = provider.metadata.issuer  # type: ignore[union-attr]
    return route_login(auth, clock, client=provider, issuer=issuer)


def session(fake: FakeWSO2) -> Session:
    return Session(
        id="s1",
        route="app1",
        sub=SUB,
        user="alice",
        claims={},
        created_at=NOW,
        last_seen=NOW,
        id_token=login_token(fake),
        access_token="at-1",
        access_expires_at=NOW + 30,
        refresh_token="rt-1",
    )


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    answers: list[object] = []

    async def fake_refresh(http, metadata, creds, *, refresh_token, clock=None, timeout=10):  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(gate_module, "refresh_tokens", fake_refresh)
    return answers


def answer(id_token: str | None) -> TokenResponse:
    return TokenResponse(
        access_token=NEW_ACCESS_TOKEN,
        token_type="Bearer",
        expires_in=300,
        refresh_token="rt-2",
        id_token=id_token,
        scope=None,
    )


def refresh(login: RouteLogin, old: Session) -> Any:
    return defer.ensureDeferred(login.refreshed(old)).result  # type: ignore[attr-defined]


def test_gate_stores_a_valid_refreshed_id_token(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock, token_endpoint: list[object]
) -> None:
    login, old = make_login(provider, clock), session(fake)
    token = refreshed_token(fake)
    token_endpoint.append(answer(token))
    new = refresh(login, old)
    assert isinstance(new, Session)
    assert new.id_token == token and new.access_token == NEW_ACCESS_TOKEN
    assert new.refresh_token == "rt-2"


@pytest.mark.parametrize("attack", ["other-sub", "garbage", "wrong-audience", "expired"])
def test_gate_refuses_the_refresh_and_never_stores_the_token(
    attack: str,
    fake: FakeWSO2,
    provider: ProviderClient,
    clock: Clock,
    token_endpoint: list[object],
) -> None:
    login, old = make_login(provider, clock), session(fake)
    token_endpoint.append(answer(ATTACKS[attack][0](fake)))
    # Refused: the user logs in again; nothing of the answer reaches the session.
    assert refresh(login, old) is None


def test_gate_keeps_the_old_id_token_when_the_refresh_sends_none(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock, token_endpoint: list[object]
) -> None:
    login, old = make_login(provider, clock), session(fake)
    token_endpoint.append(answer(None))
    new = refresh(login, old)
    assert isinstance(new, Session) and new.id_token == old.id_token


def test_gate_provider_not_ready_while_validating_is_unavailable(
    fake: FakeWSO2, provider: ProviderClient, clock: Clock, token_endpoint: list[object]
) -> None:
    login, old = make_login(provider, clock), session(fake)
    token_endpoint.append(answer(refreshed_token(fake)))
    provider._keys = None  # keys lost (not ready) between the token call and validation
    assert refresh(login, old) is UNAVAILABLE


# ---------------------------------------------------------------------------
# expires_in: a finite positive number, or a provider error (502), never a 500


def token_body(expires_in_json: str) -> bytes:
    return (
        b'{"access_token": "at", "token_type": "Bearer", "id_token": "h.p.s", "expires_in": '
        + expires_in_json.encode()
        + b"}"
    )


@pytest.mark.parametrize(
    "value",
    [
        "1e400",
        "-1e400",
        '"NaN"',
        '"Infinity"',
        "-5",
        "0",
        '"abc"',
        '"-5"',
        '"3600s"',
        '"\u00b2"',
        '"' + "9" * 5000 + '"',
        "9" * 5000,
        "true",
        "[3600]",
        '{"s": 3600}',
        "1e12",
    ],
)
def test_bad_expires_in_is_a_provider_error(value: str, fake: FakeWSO2, clock: Clock) -> None:
    fake.token_reply = (200, {}, token_body(value))
    with pytest.raises(TokenEndpointError) as caught:
        resolve(
            refresh_tokens(
                http_for(fake), provider_metadata(fake), creds(), refresh_token="rt", clock=clock
            )
        )
    assert caught.value.error == "invalid_response"
    # Python's json refuses integers of over 4300 digits itself ("not JSON").
    assert "expires_in" in caught.value.description or value == "9" * 5000


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3600", 3600), ('"3600"', 3600), ("3600.7", 3600), ("null", None), ("1.5", 1), ("0.4", 1)],
)
def test_good_expires_in(value: str, seconds: int | None, fake: FakeWSO2, clock: Clock) -> None:
    fake.token_reply = (200, {}, token_body(value))
    tokens = resolve(
        refresh_tokens(
            http_for(fake), provider_metadata(fake), creds(), refresh_token="rt", clock=clock
        )
    )
    assert tokens.expires_in == seconds


def test_missing_expires_in_is_no_lifetime(fake: FakeWSO2, clock: Clock) -> None:
    fake.token_reply = (200, {}, b'{"access_token": "at", "token_type": "Bearer"}')
    tokens = resolve(
        refresh_tokens(
            http_for(fake), provider_metadata(fake), creds(), refresh_token="rt", clock=clock
        )
    )
    assert tokens.expires_in is None


def test_deeply_nested_token_response_is_a_provider_error(fake: FakeWSO2, clock: Clock) -> None:
    fake.token_reply = (200, {}, b'{"access_token": ' + b"[" * 5000 + b"}")
    with pytest.raises(TokenEndpointError) as caught:
        resolve(
            refresh_tokens(
                http_for(fake), provider_metadata(fake), creds(), refresh_token="rt", clock=clock
            )
        )
    assert caught.value.error == "invalid_response"


def provider_metadata(fake: FakeWSO2) -> Any:
    from idgateway.oidc.provider import ProviderMetadata

    return ProviderMetadata.from_document(fake.discovery)
