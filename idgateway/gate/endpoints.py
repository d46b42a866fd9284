"""The gateway's own endpoints under /oauth2/ on every route with a login.

``start?rd=``, ``callback`` (the route's redirect_path), ``sign_out``,
``userinfo`` and ``auth`` (nginx auth_request / Traefik forwardAuth).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from idgateway.gate import logout_pages
from idgateway.gate.answers import origin, send_json, send_redirect
from idgateway.gate.needed_claims import missing_claims
from idgateway.gate.rules import safe_redirect
from idgateway.gate.session_check import secure_origin
from idgateway.gate.step_up import claims_satisfy
from idgateway.http.paths import AmbiguousPath, PathReading
from idgateway.observe import access_log as observe
from idgateway.observe.metrics import METRICS, OAUTH_ERRORS  # metrics hook
from idgateway.oidc.client import (
    TokenEndpointError,
    end_session_url,
    exchange_code,
    fetch_userinfo,
)
from idgateway.oidc.tokens import TokenError, validate_id_token, validate_logout_token
from idgateway.redis.errors import RedisUnavailable
from idgateway.server.answers import (
    send_error,
    send_provider_unavailable,
    send_sessions_unavailable,
)
from idgateway.sessions.cookie import parse_cookie_header
from idgateway.sessions.flows import FlowCookies
from idgateway.sessions.model import Session

if TYPE_CHECKING:
    from idgateway.gate.contracts import Forwarder, GatewayView, RouteView
    from idgateway.gate.session_check import RouteLogin
    from idgateway.server.channel import GatewayRequest

_log = Logger(namespace="idgateway.gate.endpoints")

# Identity headers that carry a token: kept out of /oauth2/auth answers (lower case).
_TOKEN_HEADERS = frozenset(
    {b"x-forwarded-access-token", b"oidc_access_token", b"oidc_id_token", b"authorization"}
)
# Claims only a signed ID token may bring: userinfo's are ignored.
_ID_TOKEN_ONLY_CLAIMS = frozenset(
    {"acr", "amr", "auth_time", "sid", "iss", "aud", "azp", "nonce", "exp", "iat", "nbf", "jti"}
)
# A pushed request (PAR) whose flow is at least this old may have expired at
# the provider: its invalid_request_uri starts a new login instead of an error.
PAR_RESTART_AFTER = 10.0
# A provider's error code is shown (audit log, error page) up to this length.
_MAX_LOGGED_CODE = 64

# ID token claims that only matter while validating; not kept in the session.
_TECHNICAL_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "jti", "at_hash", "c_hash", "nonce", "azp", "isk"}
)


def dispatch(
    login: RouteLogin,
    resource: Forwarder,
    request: GatewayRequest,
    state: GatewayView,
    runtime: RouteView,
    host: bytes,
    path: str,
) -> None:
    tls = secure_origin(resource, request, state)
    if path == login.redirect_path:
        defer.ensureDeferred(callback(login, request, host, tls)).addErrback(
            _unexpected, request, "login callback"
        )
    elif path == "/oauth2/start":
        rd = _query(request).get("rd", "/")
        target = safe_redirect(
            rd, host=host.decode("latin-1"), allowed=login.oidc.allowed_redirects
        )
        login.begin_login(request, host, tls, return_to=target or "/")
    elif path == "/oauth2/sign_out":
        _run(sign_out(login, request, host, tls), request, "sign-out")
    elif path == "/oauth2/userinfo":
        _run(userinfo(login, request, tls), request, "userinfo")
    elif path == "/oauth2/auth":
        _run(auth_request(login, request, tls, state, runtime, host), request, "auth request")
    elif path == "/oauth2/backchannel_logout":
        defer.ensureDeferred(backchannel_logout(login, request, state)).addErrback(
            _unexpected, request, "back-channel logout"
        )
    elif path == "/oauth2/frontchannel_logout":
        defer.ensureDeferred(frontchannel_logout(login, request, state, tls)).addErrback(
            _unexpected, request, "front-channel logout"
        )
    else:
        send_error(request, 404, "No such gateway endpoint.", request_id=request.request_id)


def _run(work: Any, request: GatewayRequest, what: str) -> None:
    defer.ensureDeferred(work).addErrback(_unexpected, request, what)


def _query(request: GatewayRequest) -> dict[str, str]:
    raw = request.uri.partition(b"?")[2].decode("latin-1")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _login_failed(
    request: GatewayRequest, login: RouteLogin, status: int, reason: str, detail: str
) -> None:
    observe.login_failed(request, route=login.route.name, reason=reason)  # audit hook
    METRICS.login_failed(login.route.name, reason)  # metrics hook
    if reason == "session_store_unavailable":
        METRICS.session_store_error(login.route.name)  # metrics hook
    send_error(request, status, detail, error=reason, request_id=request.request_id)


async def callback(login: RouteLogin, request: GatewayRequest, host: bytes, tls: bool) -> None:
    params = _query(request)
    flows: FlowCookies = login.flows[tls]
    cookies = parse_cookie_header(request.requestHeaders.getRawHeaders(b"cookie", []))
    now = login.clock.seconds()
    flow, clear_flow = flows.take(params.get("state", ""), cookies, now)
    for value in clear_flow:
        request.responseHeaders.addRawHeader(b"set-cookie", value)
    if params.get("error") == "invalid_request_uri" and flow is None and "state" not in params:
        # The provider no longer knows the pushed request, so it cannot say its
        # state: the login is this browser's newest (its cookie goes now).
        flow, clear_newest = flows.take_newest(cookies, now)
        for value in clear_newest:
            request.responseHeaders.addRawHeader(b"set-cookie", value)
    if (
        params.get("error") == "invalid_request_uri"
        and flow is not None
        and now - flow.created_at >= PAR_RESTART_AFTER
    ):
        # The pushed request expired before the browser reached the provider
        # (WSO2 keeps it 60 s): start over where the user was going. Only for
        # a flow of ours old enough to have expired: the new one is younger, so
        # a provider that keeps refusing gets the error page, never a loop.
        _log.info(
            "route {route}: the pushed authorization request expired before the sign-in; "
            "starting a new one [{request_id}]",
            route=login.route.name,
            request_id=request.request_id.decode(),
        )
        login.begin_login(request, host, tls, return_to=flow.return_to)
        return
    if "error" in params:
        # Anyone can send a browser here with ?error=<anything>: the provider's
        # code goes to the audit log and the error page, never into a metric
        # label (70 made-up codes would fill the label pool and hide the
        # gateway's own reasons behind "other").
        provider_code = params["error"][:_MAX_LOGGED_CODE]
        reason = provider_code if provider_code.replace("_", "").isalnum() else "error"
        observe.login_failed(request, route=login.route.name, reason=reason)  # audit hook
        METRICS.login_failed(login.route.name, "provider_error")  # metrics hook
        send_error(
            request,
            403 if reason == "access_denied" else 401,
            "Sign-in was refused or cancelled at the identity provider.",
            error=reason,
            request_id=request.request_id,
        )
        return
    if flow is None:
        _login_failed(
            request,
            login,
            400,
            "bad_state",
            "This sign-in link has expired or was already used. Go back and try again.",
        )
        return
    metadata = login.provider.client.metadata
    if metadata is None:
        _login_failed(
            request, login, 503, "provider_unavailable", "The identity provider cannot be reached."
        )
        return
    if "iss" in params and params["iss"] != metadata.issuer:
        _login_failed(
            request, login, 400, "wrong_issuer", "The sign-in answer came from the wrong issuer."
        )
        return
    code = params.get("code")
    if not code:
        _login_failed(
            request, login, 400, "no_code", "The sign-in answer carried no authorization code."
        )
        return
    try:
        tokens = await exchange_code(
            login.token_http,
            metadata,
            login.credentials,
            code=code,
            redirect_uri=origin(host, tls) + login.redirect_path,
            code_verifier=flow.code_verifier,
            clock=login.clock,
        )
    except TokenEndpointError as error:
        _login_failed(
            request,
            login,
            502,
            "token_" + (error.error if error.error in OAUTH_ERRORS else "provider_error"),
            "The identity provider refused to complete the sign-in.",
        )
        return
    if not tokens.id_token:
        _login_failed(request, login, 502, "no_id_token", "The identity provider sent no ID token.")
        return
    try:
        claims = await validate_id_token(
            tokens.id_token,
            provider=login.provider.client,
            client_id=login.oidc.client_id,
            nonce=flow.nonce,
            now=login.clock.seconds(),
            access_token=tokens.access_token,
        )
    except TokenError as error:
        _login_failed(
            request, login, 401, "id_token_" + error.reason, "The sign-in could not be verified."
        )
        return
    asked_userinfo = _should_ask_userinfo(login, claims, metadata.userinfo_endpoint)
    if asked_userinfo:
        try:
            extra = await fetch_userinfo(
                login.provider.http,
                metadata,
                access_token=tokens.access_token,
                clock=login.clock,
            )
        except Exception:
            _login_failed(
                request, login, 502, "userinfo_failed", "The identity provider's user info failed."
            )
            return
        if extra.get("sub") != claims.get("sub"):
            _login_failed(
                request, login, 401, "userinfo_sub_mismatch", "The sign-in could not be verified."
            )
            return
        # Userinfo is not signed: it adds claims, it never speaks for how or
        # when the user authenticated, nor for the session (step-up, logout).
        unsigned = {k: v for k, v in extra.items() if k not in _ID_TOKEN_ONLY_CLAIMS}
        claims = {**unsigned, **claims}
    if request.finished or request.client_gone:
        return
    now = login.clock.seconds()
    if flow.step_up and not claims_satisfy(claims, flow.acr_values, flow.max_age, now):
        # The provider did not give what the path asked for (a lower acr, an
        # old auth_time): refuse, never send the browser round again.
        _log.warn(
            "route {route}: step-up refused: the provider answered acr {acr!r}, auth_time "
            "{auth_time!r} for acr_values {wanted!r}, max_age {max_age!r} [{request_id}]",
            route=login.route.name,
            acr=claims.get("acr"),
            auth_time=claims.get("auth_time"),
            wanted=" ".join(flow.acr_values),
            max_age=flow.max_age,
            request_id=request.request_id.decode(),
        )
        _login_failed(
            request,
            login,
            403,
            "step_up_failed",
            "The identity provider did not confirm the stronger or more recent sign-in "
            "this page needs.",
        )
        return
    kept = {k: v for k, v in claims.items() if k not in _TECHNICAL_CLAIMS}
    _hint_missing_claims(login, claims, asked_userinfo, metadata.userinfo_endpoint is not None)
    user = claims.get(login.oidc.user_claim)
    if not user:
        _log.warn(
            "route {route}: the sign-in has no {claim!r} claim (user_claim); using sub. {fix}",
            route=login.route.name,
            claim=login.oidc.user_claim,
            fix=_sentence(
                _claim_fix(login, asked_userinfo, metadata.userinfo_endpoint is not None)
            ),
        )
        user = claims["sub"]
    minimal = login.session_settings.minimal
    session = Session(
        id=os.urandom(16).hex(),
        route=login.route.name,
        sub=str(claims["sub"]),
        user=str(user),
        claims=kept,
        created_at=now,
        last_seen=now,
        provider_sid=claims.get("sid"),
        id_token=tokens.id_token,
        access_token=tokens.access_token,
        access_expires_at=now + tokens.expires_in if tokens.expires_in else None,
        refresh_token=None if minimal else tokens.refresh_token,
        tokens_at=now,
    )
    _note_provider_limits(login, session, tokens.expires_in)
    target = safe_redirect(
        flow.return_to, host=host.decode("latin-1"), allowed=login.oidc.allowed_redirects, tls=tls
    )
    try:
        if flow.step_up:
            session, new_cookies = await _upgraded(login, request, tls, session)
        else:
            new_cookies = await login.start_session(session, tls)
    except RedisUnavailable:
        _login_failed(
            request, login, 503, "session_store_unavailable", "Sessions are unavailable right now."
        )
        return
    # audit hook (and the access log's user for this callback request)
    request.idgw_user = session.user
    observe.login_succeeded(request, route=login.route.name, user=session.user)
    METRICS.login_succeeded(login.route.name)  # metrics hook
    if request.finished or request.client_gone:
        return
    send_redirect(request, target or "/", new_cookies)


async def _upgraded(
    login: RouteLogin, request: GatewayRequest, tls: bool, session: Session
) -> tuple[Session, list[bytes]]:
    """A step-up login upgrades the browser's session of the same user in place
    (same id, same start: its limits and revocations still apply); another
    user's, or none, gives a new session as any login does."""
    current, chunks, session_id = await login.current_session(request, tls)
    if current is None or current.sub != session.sub:
        return session, await login.start_session(session, tls)
    upgraded = attrs.evolve(session, id=current.id, created_at=current.created_at)
    return upgraded, await login.replace_session(upgraded, tls, chunks, session_id)


def _should_ask_userinfo(
    login: RouteLogin, claims: dict[str, Any], userinfo_endpoint: str | None
) -> bool:
    """``userinfo: true`` asks always, ``auto`` when the ID token lacks a claim
    the route needs; never without an endpoint to ask."""
    if userinfo_endpoint is None or login.oidc.userinfo is False:
        return False
    if login.oidc.userinfo is True:
        return True
    return bool(missing_claims(claims, login.needed_claims))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _claim_fix(login: RouteLogin, asked_userinfo: bool, has_userinfo: bool) -> str:
    """The setting that brings a missing claim, for the log."""
    if login.oidc.userinfo is False and has_userinfo:
        return (
            "if the provider puts it in userinfo, set oidc.userinfo: auto (or true); "
            "else request the scope that carries it (oidc.scopes)"
        )
    where = "the ID token and userinfo lack it" if asked_userinfo else "the ID token lacks it"
    return (
        f"{where}: request the scope that carries it (oidc.scopes) and have the "
        "provider release it to this application"
    )


def _hint_missing_claims(
    login: RouteLogin, claims: dict[str, Any], asked_userinfo: bool, has_userinfo: bool
) -> None:
    """Warn once per route and claim that a needed claim never came (rules
    reading it refuse the user with 403), naming the setting that fixes it."""
    for claim in missing_claims(claims, login.needed_claims):
        if claim == login.oidc.user_claim or claim in login.hinted_claims:
            continue  # user_claim has its own warning at every login
        login.hinted_claims.add(claim)
        _log.warn(
            "route {route}: the sign-in has no {claim!r} claim, which the route's headers "
            "or rules read; {fix} (logged once per claim)",
            route=login.route.name,
            claim=claim,
            fix=_claim_fix(login, asked_userinfo, has_userinfo),
        )


def _note_provider_limits(login: RouteLogin, session: Session, expires_in: int | None) -> None:
    """What a login shows about the provider that configuration cannot: tokens
    too short for the refresh leeway, ID tokens without ``sid``. Once per provider."""
    handle = login.provider
    leeway = login.session_settings.refresh_leeway
    if expires_in is not None and expires_in < 2 * leeway and "short_tokens" not in handle.noted:
        handle.noted.add("short_tokens")
        _log.warn(
            "provider {provider}: access tokens live {lifetime}s, less than twice "
            "session.refresh_leeway ({leeway}s) of route {route}: refreshing at half their "
            "lifetime instead (at most once a minute); lengthen the token lifetime at the "
            "provider or shorten refresh_leeway",
            provider=handle.settings.name,
            lifetime=expires_in,
            leeway=f"{leeway:g}",
            route=login.route.name,
        )
    if session.provider_sid is None and "no_sid" not in handle.noted:
        handle.noted.add("no_sid")
        _log.warn(
            "provider {provider}: its ID tokens carry no sid, so the provider cannot end this "
            "session by sid (route {route}): back-channel logout tokens must name the sub, "
            "and front-channel logout works only where the browser sends the session cookie",
            provider=handle.settings.name,
            route=login.route.name,
        )


async def sign_out(login: RouteLogin, request: GatewayRequest, host: bytes, tls: bool) -> None:
    """Sign out at once, unless another site sent the browser: then confirm first
    (a POST carrying the confirmation form's token; see logout_pages)."""
    session, chunks, session_id = await login.current_session(request, tls)
    bound = session.id if session is not None else None
    now = login.clock.seconds()
    if request.method == b"POST":
        token = await logout_pages.posted_token(request)
        if not logout_pages.token_valid(login.keyring, login.route.name, bound, token, now):
            _log.info(
                "route {route}: sign-out refused: no valid confirmation token [{request_id}]",
                route=login.route.name,
                request_id=request.request_id.decode(),
            )
            logout_pages.send_refused(request)
            return
    elif logout_pages.is_cross_site(request, origin(host, tls)):
        token = logout_pages.form_token(login.keyring, login.route.name, bound, now)
        logout_pages.send_confirmation(request, token)
        return
    clear = await login.end_session(tls, chunks, session_id, session)
    back = login.oidc.post_logout_redirect or "/"
    if login.oidc.post_logout_redirect is None:
        # The provider sends the browser back to "/": show it the signed-out
        # page there once, rather than a new login.
        clear = [*clear, login.codecs[tls].signed_out_marker()]
    if back.startswith("/"):
        back = origin(host, tls) + back
    metadata = login.provider.client.metadata
    target = None
    if metadata is not None and session is not None:
        target = end_session_url(
            metadata,
            id_token_hint=session.id_token,
            post_logout_redirect_uri=back,
            state=os.urandom(16).hex(),
            client_id=login.oidc.client_id,
        )
    METRICS.logout(login.route.name, "sign_out")  # metrics hook
    if session is not None:
        request.idgw_user = session.user  # observe hook
        observe.signed_out(request, route=login.route.name, user=session.user)  # audit hook
    send_redirect(request, target or back, clear)


async def userinfo(login: RouteLogin, request: GatewayRequest, tls: bool) -> None:
    session, _, _ = await login.current_session(request, tls)
    if session is None:
        send_json(request, 401, {"error": "unauthenticated"})
        return
    claims = dict(session.claims)
    send_json(
        request,
        200,
        {
            "user": session.user,
            "sub": session.sub,
            "email": claims.get(login.oidc.email_claim),
            "groups": claims.get(login.oidc.groups_claim),
            "claims": claims,
            "expires_at": int(session.created_at + login.session_settings.max_duration),
        },
    )


async def auth_request(
    login: RouteLogin,
    request: GatewayRequest,
    tls: bool,
    state: GatewayView,
    runtime: RouteView,
    host: bytes = b"",
) -> None:
    """For nginx auth_request and Traefik forwardAuth: 202 + identity, 401 or 403.

    The original request (X-Forwarded-Uri or X-Original-URI, X-Forwarded-Method)
    is judged exactly as the gate judges a proxied request: the same canonical
    path, readings, public paths and rules; an ambiguous one is refused (400).
    Those headers are believed only from ``trusted_proxies``; from anyone else
    the /oauth2/auth request itself is judged.

    Token headers (access token, ID token, Authorization) are left out unless
    the route sets forward_auth.pass_tokens and the peer is a trusted proxy.
    """
    from idgateway.gate.rules import authorization_failure

    original = original_request(request, state, runtime)
    if original is None:
        return
    method, reading = original.method, original.reading
    if original.forwarded and login.is_public(method, reading):
        send_json(request, 202, {"public": True})
        return
    session, _, _ = await login.current_session(request, tls)
    if session is None:
        send_json(request, 401, {"error": "unauthenticated"})
        return
    if authorization_failure(
        login.rules_for(reading),
        session.claims,
        email_claim=login.oidc.email_claim,
        groups_claim=login.oidc.groups_claim,
    ):
        send_json(request, 403, {"error": "forbidden"})
        return
    headers = login.identity.auth_request_headers(session)
    if not (login.auth.forward_auth.pass_tokens and _trusted_peer(request, state)):
        # Tokens never go to the browser: a same-origin script (an XSS in the
        # app) can fetch this endpoint and read the answer's headers.
        headers = [(name, value) for name, value in headers if name.lower() not in _TOKEN_HEADERS]
    if login.assertion is not None and _trusted_peer(request, state):
        # The route's signed identity assertion, for the proxy that asks to pass on
        # (auth_request_set); like tokens, never to others: a script could read it here.
        headers.append(
            login.assertion.session_header(
                session,
                host,
                tls,
                login.clock.seconds(),
                email_claim=login.oidc.email_claim,
                groups_claim=login.oidc.groups_claim,
            )
        )
    send_json(request, 202, {"user": session.user}, headers=headers)


@attrs.frozen
class OriginalRequest:
    """What /oauth2/auth is asked about: the method and the path as the gate reads it."""

    method: bytes
    reading: PathReading
    # Named by a trusted proxy (X-Forwarded-Uri...), not the /oauth2/auth request itself.
    forwarded: bool


def original_request(
    request: GatewayRequest, state: GatewayView, runtime: RouteView
) -> OriginalRequest | None:
    """The original request of a forward-auth call, read exactly as the gate reads a
    proxied one; None when it was ambiguous (then answered with 400 here). One
    copy for the session and the token gate: both must judge the same path."""
    try:
        forwarded = _forwarded_request(request, state)
    except AmbiguousForward as why:
        send_json(request, 400, {"error": "ambiguous_forward", "message": str(why)})
        return None
    method, raw_path = forwarded if forwarded is not None else (request.method, request.path)
    try:
        reading = runtime.paths.read(raw_path)
    except AmbiguousPath as why:
        send_json(
            request,
            400,
            {"error": "ambiguous_path", "message": f"The original path is ambiguous: {why}."},
        )
        return None
    return OriginalRequest(method, reading, forwarded is not None)


def _trusted_peer(request: GatewayRequest, state: GatewayView | None) -> bool:
    """Whether the peer is in trusted_proxies (may name another request, get tokens)."""
    peer = getattr(request.client, "host", None)
    return state is not None and peer is not None and state.trusted.trusts(peer)


def _logout_error(request: GatewayRequest, login: RouteLogin, description: str) -> None:
    """OpenID Back-Channel Logout 1.0, 2.8: 400 with a JSON error."""
    _log.warn(
        "route {route}: back-channel logout refused: {why} [{request_id}]",
        route=login.route.name,
        why=description,
        request_id=request.request_id.decode(),
    )
    send_json(request, 400, {"error": "invalid_request", "error_description": description})


async def backchannel_logout(
    login: RouteLogin, request: GatewayRequest, state: GatewayView
) -> None:
    """WSO2 POSTs logout_token=<JWT>: end every session of its sid (or sub)."""
    if request.method != b"POST" or request.body is None:
        _logout_error(request, login, "expected a POST with a logout_token form field")
        return
    try:
        raw = await request.body.collect(64 * 1024)
    except Exception:
        _logout_error(request, login, "request body too large")
        return
    form = parse_qs(raw.decode("latin-1"))
    tokens = form.get("logout_token", [])
    if len(tokens) != 1:
        _logout_error(request, login, "exactly one logout_token is required")
        return
    try:
        claims = await validate_logout_token(
            tokens[0],
            provider=login.provider.client,
            client_id=login.oidc.client_id,
            now=login.clock.seconds(),
        )
    except TokenError as error:
        _logout_error(request, login, f"invalid logout token ({error.reason})")
        return
    expires = float(claims.get("exp", login.clock.seconds() + 120))
    if not await state.replay.first_use(str(claims["iss"]), str(claims["jti"]), expires):
        _logout_error(request, login, "logout token already used")
        return
    sid, sub = claims.get("sid"), claims.get("sub")
    # A sub-only token ends the sessions that began before it arrived: not
    # before its iat, which a provider clock behind ours (within the token
    # leeway) would move back, sparing sessions begun in the meantime.
    try:
        ended = await login.end_sessions(sid=sid, sub=sub, since=None)
    except RedisUnavailable as error:
        if login.store is not None:
            # The sessions live in Redis and could not be deleted: not done.
            _log.warn(
                "route {route}: back-channel logout not performed: {error} [{request_id}]",
                route=login.route.name,
                error=str(error),
                request_id=request.request_id.decode(),
            )
            send_json(
                request,
                503,
                {"error": "temporarily_unavailable", "error_description": "sessions unavailable"},
                headers=[(b"retry-after", b"5")],
            )
            return
        # Cookie sessions: this process has the revocation; the others learn
        # of it when Redis is back (they reload the list on reconnecting).
        _log.warn(
            "route {route}: back-channel logout remembered by this process only: {error} "
            "[{request_id}]",
            route=login.route.name,
            error=str(error),
            request_id=request.request_id.decode(),
        )
        ended = "revoked in this process"
    # audit hook: sid and sub are logged as hashes
    observe.backchannel_logout(request, route=login.route.name, sid=sid, sub=sub, ended=ended)
    METRICS.logout(login.route.name, "backchannel")  # metrics hook
    request.setResponseCode(200)
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    request.responseHeaders.setRawHeaders(b"content-length", [b"0"])
    request.end_response_early()
    request.finish()


async def frontchannel_logout(
    login: RouteLogin, request: GatewayRequest, state: GatewayView, tls: bool
) -> None:
    """The provider loads this in an iframe with ?iss=&sid= (oidc.frontchannel_logout).

    With the route's session cookie: that session ends if ``iss`` is the
    provider's and ``sid`` is the session's own (the provider's iframe always
    sends both; a link from another site, which the browser sends the Lax
    cookie on, cannot know the sid). Without: the sessions of ``sid`` end, if
    ``iss`` is the provider's. The answer never tells whether a sid existed.
    """
    if not login.oidc.frontchannel_logout:
        # Off: as if the endpoint did not exist.
        send_error(request, 404, "No such gateway endpoint.", request_id=request.request_id)
        return
    if request.method not in (b"GET", b"HEAD"):
        send_error(
            request,
            405,
            "Front-channel logout is a GET.",
            request_id=request.request_id,
            extra_headers={b"allow": b"GET, HEAD"},
        )
        return
    params = _query(request)
    metadata = login.provider.client.metadata
    iss, sid = params.get("iss"), params.get("sid") or None
    if metadata is None:
        send_provider_unavailable(
            request, "Front-channel logout is unavailable right now.", request.request_id
        )
        return
    if iss is not None and iss != metadata.issuer:
        send_error(request, 400, "iss is not this route's provider.", request_id=request.request_id)
        return
    session, chunks, session_id = await login.current_session(request, tls)
    clear: list[bytes] = []
    if session is not None:
        if iss is not None and sid is not None and sid == session.provider_sid:
            clear = await login.end_session(tls, chunks, session_id, session)
            METRICS.logout(login.route.name, "frontchannel")  # metrics hook
    elif sid is None or iss is None:
        send_error(
            request,
            400,
            "Without the session cookie, both iss and sid are needed.",
            request_id=request.request_id,
        )
        return
    else:
        revocation = login.revocation
        if not revocation.admit_unverified(login.route.name):
            # Unverifiable, and each adds a revocation (or, with Redis sessions,
            # a lookup that empties this process's cache of loaded sessions):
            # a flood must not grow them or slow everyone down.
            _log.warn(
                "route {route}: front-channel logouts without a cookie over budget; "
                "refused [{request_id}]",
                route=login.route.name,
                request_id=request.request_id.decode(),
            )
            send_error(
                request,
                429,
                "Too many logout requests; try again in a minute.",
                request_id=request.request_id,
                extra_headers={b"retry-after": b"60"},
            )
            return
        await login.end_sessions(sid=sid, sub=None, verified=False)
        METRICS.logout(login.route.name, "frontchannel")  # metrics hook
    request.setResponseCode(200)
    out = request.responseHeaders
    out.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
    out.setRawHeaders(b"cache-control", [b"no-cache, no-store"])
    out.setRawHeaders(b"content-length", [b"%d" % len(logout_pages.FRONTCHANNEL_PAGE)])
    for value in clear:
        out.addRawHeader(b"set-cookie", value)
    request.end_response_early()
    if request.method != b"HEAD":
        request.write(logout_pages.FRONTCHANNEL_PAGE)
    request.finish()


class AmbiguousForward(ValueError):
    """The forwarded request cannot be named one way only."""


def _forwarded_request(request: GatewayRequest, state: GatewayView) -> tuple[bytes, bytes] | None:
    """For /oauth2/auth: (method, path) of the original request that nginx or
    Traefik pass along, or None to judge the /oauth2/auth request itself.

    Only a peer in trusted_proxies may name another request: from anyone else
    (a browser script, a client reaching the gateway directly) the headers are
    ignored, and logged. nginx passes a client's own headers through to its
    auth subrequest, so two headers naming different paths, or one header
    twice, are refused (AmbiguousForward) rather than one of them believed;
    and without X-Forwarded-Method the method is unknown, so only public
    paths open to every method match.
    """
    headers = request.requestHeaders
    forwarded = headers.getRawHeaders(b"x-forwarded-uri") or []
    original = headers.getRawHeaders(b"x-original-uri") or []
    if not forwarded and not original:
        return None
    if not _trusted_peer(request, state):
        _log.info(
            "auth request from {peer}, not a trusted proxy: X-Forwarded-Uri ignored, "
            "the request itself is judged [{request_id}]",
            peer=getattr(request.client, "host", None) or "unix",
            request_id=request.request_id.decode(),
        )
        return None
    paths = {value.partition(b"?")[0] for value in (*forwarded, *original)}
    if len(forwarded) > 1 or len(original) > 1 or len(paths) > 1:
        raise AmbiguousForward(
            "X-Forwarded-Uri and X-Original-URI name more than one path; let the proxy set "
            'exactly one (nginx: proxy_set_header X-Forwarded-Uri "";)'
        )
    methods = headers.getRawHeaders(b"x-forwarded-method") or []
    if len(methods) > 1:
        raise AmbiguousForward("X-Forwarded-Method is given more than once")
    # b"" matches no method-specific public path: "GET /items" must not open
    # POST /items because the proxy did not say which method it was.
    method = methods[0].strip().upper() if methods else b""
    return method, paths.pop()


def _unexpected(failure: Any, request: GatewayRequest, what: str) -> None:
    if failure.check(RedisUnavailable):
        if not request.finished and not request.client_gone:
            send_sessions_unavailable(request, request.request_id)
        return
    _log.failure(
        "unexpected error in {what} [{request_id}]",
        failure,
        what=what,
        request_id=request.request_id.decode(),
    )
    if not request.finished and not request.client_gone:
        send_error(
            request, 500, "Something went wrong on the gateway.", request_id=request.request_id
        )
