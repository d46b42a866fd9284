"""The relying party's calls to a provider: authorize and logout URLs, token and userinfo requests.

Plain functions over a provider's ``ProviderMetadata`` and a treq client (see
``idgateway.oidc.http``). Failures raise ``TokenEndpointError`` or
``UserinfoError`` with an OAuth-style ``error`` code; nothing here logs, and
no message ever holds a secret, a code or a token.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime

from idgateway.config.auth import RESERVED_AUTHORIZE_PARAMETERS
from idgateway.oidc.client_assertion import ASSERTION_TYPE, ClientAssertionSigner
from idgateway.oidc.http import HTTPFailure, HTTPResult, count_error, send
from idgateway.oidc.provider import ProviderMetadata

CLIENT_SECRET_BASIC = "client_secret_basic"
CLIENT_SECRET_POST = "client_secret_post"
PRIVATE_KEY_JWT = "private_key_jwt"
TLS_CLIENT_AUTH = "tls_client_auth"
CLIENT_AUTH_METHODS = (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST, PRIVATE_KEY_JWT, TLS_CLIENT_AUTH)

# Provider-supplied error descriptions are shown in logs: keep them short.
_MAX_DESCRIPTION = 300

# expires_in: a ten-year lifetime is already absurd; more is refused, as is a
# decimal string longer than that (int() of thousands of digits is slow).
_MAX_EXPIRES_IN = 10 * 366 * 86400
_DECIMAL = re.compile(r"[0-9]{1,10}")


@attrs.frozen
class ClientCredentials:
    client_id: str
    client_secret: str = attrs.field(default="", repr=False)
    auth_method: str = attrs.field(default=CLIENT_SECRET_BASIC)
    # private_key_jwt: signs a fresh assertion per call; and its aud.
    signer: ClientAssertionSigner | None = attrs.field(default=None, repr=False)
    assertion_audience: str = "token_endpoint"

    @auth_method.validator
    def _check_auth_method(self, attribute: object, value: str) -> None:
        if value not in CLIENT_AUTH_METHODS:
            raise ValueError(
                f"unsupported client auth method {value!r} "
                f"(expected one of {', '.join(CLIENT_AUTH_METHODS)})"
            )
        if value == PRIVATE_KEY_JWT and self.signer is None:
            raise ValueError("private_key_jwt needs a signer (oidc.private_key_file)")

    def authenticate(
        self, metadata: ProviderMetadata, form: dict[str, str], now: float
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(form, headers) for a call to the token, PAR or introspection endpoint."""
        if self.auth_method == CLIENT_SECRET_BASIC:
            return form, {"Authorization": basic_authorization(self.client_id, self.client_secret)}
        if self.auth_method == CLIENT_SECRET_POST:
            return {**form, "client_id": self.client_id, "client_secret": self.client_secret}, {}
        if self.auth_method == PRIVATE_KEY_JWT:
            assert self.signer is not None
            audience = (
                metadata.issuer if self.assertion_audience == "issuer" else metadata.token_endpoint
            )
            assertion = self.signer.assertion(
                self.client_id,
                audience,
                now,
                metadata.token_endpoint_auth_signing_alg_values_supported,
            )
            return {
                **form,
                "client_id": self.client_id,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }, {}
        # tls_client_auth: the TLS connection (the route's client certificate)
        # authenticates; the form names the client.
        return {**form, "client_id": self.client_id}, {}


@attrs.frozen
class TokenResponse:
    access_token: str = attrs.field(repr=False)
    token_type: str
    expires_in: int | None
    # None when the provider sent none; after a refresh, keep the old one then.
    refresh_token: str | None = attrs.field(repr=False)
    id_token: str | None = attrs.field(repr=False)
    scope: str | None


class ProviderCallError(Exception):
    """A call to the provider failed.

    ``error`` is the provider's OAuth error code (``invalid_grant``...) or ours:
    ``server_error`` (5xx), ``temporarily_unavailable`` (503, timeout,
    connection failure), ``invalid_response`` (a reply we cannot use).
    ``status`` is the HTTP status, 0 when there was no response.
    """

    def __init__(self, error: str, description: str, status: int) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class TokenEndpointError(ProviderCallError):
    """The token endpoint refused or failed a code exchange or refresh."""


class UserinfoError(ProviderCallError):
    """The userinfo endpoint refused or failed (``invalid_token``, ``sub_mismatch``...)."""


def authorize_url(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    nonce: str,
    code_challenge: str,
    extra: Mapping[str, str] = {},  # noqa: B006 - never mutated
) -> str:
    """The authorization code request (with PKCE S256) to send the browser to.

    ``openid`` is added to ``scopes`` when missing. ``extra`` parameters
    (``prompt``, ``acr_values``, ``fidp``, ``max_age``...) are appended; one
    named in RESERVED_AUTHORIZE_PARAMETERS raises ValueError.
    """
    parameters = authorization_parameters(
        client_id=client_id,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state,
        nonce=nonce,
        code_challenge=code_challenge,
        extra=extra,
    )
    return _with_query(metadata.authorization_endpoint, parameters)


def authorization_parameters(
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    nonce: str,
    code_challenge: str,
    extra: Mapping[str, str] = {},  # noqa: B006 - never mutated
) -> list[tuple[str, str]]:
    """The parameters of an authorization request, for the URL or a PAR body."""
    clashes = sorted(RESERVED_AUTHORIZE_PARAMETERS.intersection(extra))
    if clashes:
        raise ValueError(f"extra authorization parameters may not set {', '.join(clashes)}")
    scope_list = list(dict.fromkeys(scopes))
    if "openid" not in scope_list:
        scope_list.insert(0, "openid")
    return [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", " ".join(scope_list)),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", code_challenge),
        ("code_challenge_method", "S256"),
        *extra.items(),
    ]


class PushedRequestError(ProviderCallError):
    """The PAR endpoint refused or failed, or answered something unusable."""


# A request_uri is an opaque reference, not a place to smuggle a URL of its own.
_REQUEST_URI = re.compile(r"[\x21-\x7e]{1,512}")


async def push_authorization_request(
    http: HTTPClient,
    metadata: ProviderMetadata,
    creds: ClientCredentials,
    parameters: Sequence[tuple[str, str]],
    *,
    timeout: float = 10,
    clock: IReactorTime,
) -> str:
    """RFC 9126: POST the authorization request with client authentication; the
    ``request_uri`` the provider answered (``201`` with ``request_uri`` and
    ``expires_in``). PushedRequestError otherwise."""
    endpoint = metadata.pushed_authorization_request_endpoint
    if endpoint is None:
        raise PushedRequestError("invalid_request", "the provider has no PAR endpoint", 0)
    form, headers = creds.authenticate(metadata, dict(parameters), clock.seconds())
    if creds.auth_method != CLIENT_SECRET_BASIC:
        form["client_id"] = creds.client_id
    try:
        result = await send(
            http,
            "POST",
            endpoint,
            clock=clock,
            timeout=timeout,
            headers=headers,
            data=form,
            call="par",
        )
    except HTTPFailure as failure:
        raise PushedRequestError("temporarily_unavailable", str(failure), 0) from None
    if result.status not in (200, 201):
        error, description = _error_of(result)
        raise PushedRequestError(
            error or _status_error(result.status),
            description or f"HTTP {result.status} from the PAR endpoint",
            result.status,
        )
    try:
        body = result.json()
    except ValueError:
        count_error(http, "par", "invalid")  # metrics hook
        raise PushedRequestError("invalid_response", "PAR response is not JSON", 200) from None
    request_uri = body.get("request_uri") if isinstance(body, dict) else None
    if not isinstance(request_uri, str) or not _REQUEST_URI.fullmatch(request_uri):
        count_error(http, "par", "invalid")  # metrics hook
        raise PushedRequestError("invalid_response", "PAR response lacks request_uri", 200)
    return request_uri


def authorization_request_url(
    metadata: ProviderMetadata, parameters: Sequence[tuple[str, str]]
) -> str:
    """The authorize endpoint with ``parameters`` (from authorization_parameters)."""
    return _with_query(metadata.authorization_endpoint, parameters)


def pushed_authorize_url(metadata: ProviderMetadata, *, client_id: str, request_uri: str) -> str:
    """Where the browser goes after a PAR: only ``client_id`` and ``request_uri``."""
    return _with_query(
        metadata.authorization_endpoint, [("client_id", client_id), ("request_uri", request_uri)]
    )


def end_session_url(
    metadata: ProviderMetadata,
    *,
    id_token_hint: str | None,
    post_logout_redirect_uri: str | None,
    state: str | None,
    client_id: str,
) -> str | None:
    """The RP-initiated logout URL, or None when the provider has no end_session_endpoint."""
    if metadata.end_session_endpoint is None:
        return None
    parameters = [
        (name, value)
        for name, value in (
            ("id_token_hint", id_token_hint),
            ("post_logout_redirect_uri", post_logout_redirect_uri),
            ("state", state),
            ("client_id", client_id),
        )
        if value is not None
    ]
    return _with_query(metadata.end_session_endpoint, parameters)


def _with_query(endpoint: str, parameters: Sequence[tuple[str, str]]) -> str:
    scheme, netloc, path, query, _ = urlsplit(endpoint)
    # An endpoint URL may carry its own query (rare); keep it, add ours after it.
    existing = parse_qsl(query, keep_blank_values=True)
    return urlunsplit(
        (scheme, netloc, path, urlencode([*existing, *parameters], quote_via=quote), "")
    )


async def exchange_code(
    http: HTTPClient,
    metadata: ProviderMetadata,
    creds: ClientCredentials,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    timeout: float = 10,
    clock: IReactorTime,
) -> TokenResponse:
    """Trade an authorization code (and its PKCE verifier) for tokens."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    return await _token_request(http, metadata, creds, form, timeout, clock, "token")


async def refresh_tokens(
    http: HTTPClient,
    metadata: ProviderMetadata,
    creds: ClientCredentials,
    *,
    refresh_token: str,
    timeout: float = 10,
    clock: IReactorTime,
) -> TokenResponse:
    """Use a refresh token. WSO2 rotates them: store the returned ``refresh_token``.

    When the response has none (``refresh_token`` None), the old one stays valid.
    """
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await _token_request(http, metadata, creds, form, timeout, clock, "refresh")


async def fetch_userinfo(
    http: HTTPClient,
    metadata: ProviderMetadata,
    *,
    access_token: str,
    timeout: float = 10,
    clock: IReactorTime,
    expected_sub: str | None = None,
) -> dict[str, Any]:
    """The userinfo claims for ``access_token`` (a JSON object).

    With ``expected_sub`` (the ID token's ``sub``), a response about anyone
    else raises UserinfoError("sub_mismatch"), as OpenID Connect Core 5.3.2
    requires. Signed (JWT) userinfo responses are not supported.
    """
    if metadata.userinfo_endpoint is None:
        raise UserinfoError("invalid_request", "the provider has no userinfo endpoint", 0)
    url = metadata.userinfo_endpoint
    try:
        result = await send(
            http,
            "GET",
            url,
            clock=clock,
            timeout=timeout,
            headers={"Authorization": f"Bearer {access_token}"},
            call="userinfo",
        )
    except HTTPFailure as failure:
        raise UserinfoError("temporarily_unavailable", str(failure), 0) from None
    try:
        return _userinfo_claims(result, expected_sub)
    except UserinfoError as error:
        if error.status < 400:
            # send counted 4xx and 5xx; this answer came but was unusable.
            count_error(http, "userinfo", "invalid")  # metrics hook
        raise


def _userinfo_claims(result: HTTPResult, expected_sub: str | None) -> dict[str, Any]:
    if result.status != 200:
        error, description = _error_of(result)
        if result.status == 401:
            error = _bearer_error(result) or error or "invalid_token"
        raise UserinfoError(
            error or _status_error(result.status),
            description or f"HTTP {result.status} from the userinfo endpoint",
            result.status,
        )
    content_type = (result.header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == "application/jwt":
        raise UserinfoError("invalid_response", "signed userinfo responses are not supported", 200)
    try:
        claims = result.json()
    except ValueError:
        raise UserinfoError("invalid_response", "userinfo response is not JSON", 200) from None
    if not isinstance(claims, dict):
        raise UserinfoError("invalid_response", "userinfo response is not a JSON object", 200)
    if expected_sub is not None and claims.get("sub") != expected_sub:
        raise UserinfoError("sub_mismatch", "userinfo is about another subject", 200)
    return claims


async def _token_request(
    http: HTTPClient,
    metadata: ProviderMetadata,
    creds: ClientCredentials,
    form: dict[str, str],
    timeout: float,
    clock: IReactorTime,
    call: str,
) -> TokenResponse:
    form, headers = creds.authenticate(metadata, form, clock.seconds())
    try:
        result = await send(
            http,
            "POST",
            metadata.token_endpoint,
            clock=clock,
            timeout=timeout,
            headers=headers,
            data=form,
            call=call,
        )
    except HTTPFailure as failure:
        raise TokenEndpointError("temporarily_unavailable", str(failure), 0) from None
    try:
        return _token_answer(result)
    except TokenEndpointError as error:
        if error.status < 400:
            # send counted 4xx and 5xx; this answer came but was unusable.
            count_error(http, call, "invalid")  # metrics hook
        raise


def _token_answer(result: HTTPResult) -> TokenResponse:
    if result.status != 200:
        error, description = _error_of(result)
        raise TokenEndpointError(
            error or _status_error(result.status),
            description or f"HTTP {result.status} from the token endpoint",
            result.status,
        )
    return _token_response(result)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header for client_secret_basic (RFC 6749 section 2.3.1).

    Id and secret are form-urlencoded before being joined and base64-encoded.
    """
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _token_response(result: HTTPResult) -> TokenResponse:
    try:
        body = result.json()
    except ValueError:
        raise TokenEndpointError("invalid_response", "token response is not JSON", 200) from None
    if not isinstance(body, dict):
        raise TokenEndpointError("invalid_response", "token response is not a JSON object", 200)
    access_token = body.get("access_token")
    token_type = body.get("token_type")
    if not isinstance(access_token, str) or not access_token:
        raise TokenEndpointError("invalid_response", "token response lacks access_token", 200)
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise TokenEndpointError("invalid_response", "token response lacks token_type Bearer", 200)
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_in=_expires_in(body.get("expires_in")),
        refresh_token=_optional_string(body.get("refresh_token")),
        id_token=_optional_string(body.get("id_token")),
        scope=_optional_string(body.get("scope")),
    )


def _expires_in(value: object) -> int | None:
    """The token's lifetime in whole seconds, None when the provider gave none.

    A number that is not finite and positive (``1e400`` parses as infinity,
    ``-5``, ``0``, ``"NaN"``, ``"abc"``, ``true``) is a provider error, not a
    lifetime to guess at: it would make a token expire never or at once.
    Decimal strings (``"3600"``) are tolerated, within ``_MAX_EXPIRES_DIGITS``.
    """
    if value is None:
        return None
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= _MAX_EXPIRES_IN
    ):
        raise TokenEndpointError(
            "invalid_response", "expires_in is not a finite positive number of seconds", 200
        )
    return max(1, int(value))


def _optional_string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_of(result: HTTPResult) -> tuple[str | None, str]:
    """The OAuth ``error`` and ``error_description`` of an error response, if it has them."""
    try:
        body = result.json()
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) and error else None,
        description[:_MAX_DESCRIPTION] if isinstance(description, str) else "",
    )


def _bearer_error(result: HTTPResult) -> str | None:
    # WWW-Authenticate: Bearer error="invalid_token", error_description="..."
    challenge = result.header("WWW-Authenticate") or ""
    marker = 'error="'
    start = challenge.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = challenge.find('"', start)
    if end < 0:
        return None
    return challenge[start:end] or None


def _status_error(status: int) -> str:
    if status == 503:
        return "temporarily_unavailable"
    if status >= 500:
        return "server_error"
    return "invalid_response"
