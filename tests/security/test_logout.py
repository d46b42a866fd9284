"""Logout endpoints against the real gateway, the WSO2-shaped provider and Redis.

Each attack is a parametrised case: front-channel logout used against users
(forged iss, other users' sids, a flood of made-up sids), sign-out by another
site (links, forged forms), copied cookies after sign-out, sub-only logout
tokens, logout tokens with made-up kids against the logins' JWKS budget, and
a reload that raises max_duration.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import time
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.http_helpers import header_values
from tests.login_env import (
    APP2_SECRET,
    Client,
    registered_client,
    session_key,
    two_tenant_config,
    wait_until_login_offered,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

APP3_SECRET = "app3-client-secret"
JSON = {"Accept": "application/json"}
# The gateway's JWKS refetch interval here (30 s in production, which the unit
# tests check): long enough that this module's whole unknown-kid case runs
# within one interval, so a logout refetch that used up the logins' budget
# would still fail it; short enough that the other cases have outlasted it.
JWKS_REFETCH = 10.0


def gateway_yaml(
    port: int, op: ProviderProcess, backend: int, redis: str, max_duration: str
) -> str:
    return f"""
redis: {{url: '{redis}'}}
listeners:
  - address: 127.0.0.1:{port}
providers:
  wso2: {{discovery_url: {op.discovery_url()}, ca_file: {op.ca_file}}}
  acme: {{issuer: {op.issuer("acme.com")}, ca_file: {op.ca_file}}}
routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{backend}
    oidc:
      provider: wso2
      client_id: app1-client
      client_secret: app1-client-secret
      user_claim: username
      frontchannel_logout: true
    session: {{keys: [{KEY1}], inactivity_timeout: 1h, max_duration: {max_duration}}}
    # Sends OIDC_CLAIM_sid upstream: how an application (or its logs) learns sids.
    headers: mod_auth_openidc
  - name: app2
    hosts: [app2.localhost]
    upstream: http://127.0.0.1:{backend}
    oidc:
      provider: acme
      client_id: app2-client
      client_secret: {APP2_SECRET}
      client_auth: client_secret_post
      user_claim: username
    session: {{keys: [{session_key()}]}}
  - name: app3
    hosts: [app3.localhost]
    upstream: http://127.0.0.1:{backend}
    oidc:
      provider: wso2
      client_id: app3-client
      client_secret: {APP3_SECRET}
      user_claim: username
    session: {{keys: [{KEY3}], max_duration: 1h}}
"""


KEY1 = session_key()
KEY3 = session_key()


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("logout")
    port = free_port()
    provider_config = two_tenant_config(port)
    provider_config["tenants"]["carbon.super"]["clients"].append(
        registered_client("app3-client", APP3_SECRET, "app3.localhost", port, "client_secret_basic")
    )
    with (
        ProviderProcess(tmp / "op", provider_config) as op,
        BackendProcess(name="echo") as backend,
        RedisProcess(tmp / "redis") as redis,
    ):
        config = tmp / "gateway.yaml"
        config.write_text(gateway_yaml(port, op, backend.port, redis.url, "24h"))
        gateway = GatewayProcess(
            config,
            tmp / "gateway.log",
            provider_timings={"jwks_min_refetch_interval": JWKS_REFETCH},
        ).start([port])
        try:
            wait_until_login_offered(port, ("app1.localhost", "app2.localhost", "app3.localhost"))
            # (a route offers logins once its provider's JWKS was fetched)
            discovered = time.monotonic()
            yield Env(op, gateway, port, redis, backend.port, discovered)
        finally:
            gateway.stop()


class Env:
    def __init__(
        self,
        op: ProviderProcess,
        gateway: GatewayProcess,
        port: int,
        redis: RedisProcess,
        backend: int,
        discovered: float,
    ) -> None:
        self.op, self.gateway, self.port, self.redis = op, gateway, port, redis
        self.backend, self.discovered = backend, discovered

    def client(self, host: str = "app1.localhost") -> Client:
        return Client(self.port, host)

    def alice(self, host: str = "app1.localhost", user: str = "alice") -> Client:
        client = self.client(host)
        status, body = client.login(self.op, "/echo", user, f"{user}123")
        assert status == 200, body
        return client

    def keys(self, pattern: str) -> list[bytes]:
        return list(self.redis.call("KEYS", pattern))


def signed_in(client: Client) -> bool:
    status = client.get("/echo", JSON)[0]
    assert status in (200, 401), status
    return status == 200


def copy_of(client: Client) -> Client:
    other = Client(client.port, client.host.split(":")[0])
    other.cookies = dict(client.cookies)
    return other


def sid_of(client: Client) -> str:
    """The provider sid, as the mod_auth_openidc header preset hands it upstream."""
    status, _, body = client.get("/echo", JSON)
    assert status == 200
    (sid,) = header_values(json.loads(body), "oidc_claim_sid")
    return str(sid)


def post(
    client: Client, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = client.connection()
    try:
        all_headers = {
            "Host": client.host,
            "Content-Type": "application/x-www-form-urlencoded",
            **(headers or {}),
        }
        if client.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        conn.request("POST", path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def issuer(env: Env) -> str:
    return env.op.issuer()


# -- front-channel logout ------------------------------------------------------------


def test_frontchannel_logout_is_off_unless_the_route_asks(environment: Env) -> None:
    env = environment
    carol = env.alice("app2.localhost", "carol")
    acme = env.op.issuer("acme.com")
    for query in ("", f"?iss={quote(acme)}&sid=x", f"?iss={quote(acme)}"):
        status, _, body = carol.get("/oauth2/frontchannel_logout" + query)
        # Exactly what an unknown gateway endpoint answers.
        assert status == 404, body
        assert b"No such gateway endpoint." in body
    assert env.client("app2.localhost").get("/oauth2/no_such_endpoint")[0] == 404
    assert signed_in(carol)


def test_frontchannel_logout_with_a_cookie_ends_only_that_session(environment: Env) -> None:
    env = environment
    first, second = env.alice(), env.alice()
    copy = copy_of(first)
    query = urlencode({"iss": issuer(env), "sid": sid_of(first)})
    status, _, body = first.get(f"/oauth2/frontchannel_logout?{query}")
    assert status == 200 and b"Signed out." in body
    assert not signed_in(first)
    assert not signed_in(copy)  # the session itself ended, not only this cookie
    assert signed_in(second)


@pytest.mark.parametrize("query", ["", "iss", "sid"], ids=["nothing", "iss-only", "sid-only"])
def test_a_link_from_another_site_cannot_end_a_session_through_frontchannel_logout(
    environment: Env, query: str
) -> None:
    """A top-level link carries the Lax cookie but cannot know the session's sid."""
    env = environment
    user = env.alice()
    params = {"iss": issuer(env)} if query == "iss" else {}
    if query == "sid":
        params = {"sid": sid_of(user)}  # (without iss: still not the provider's iframe)
    status, _, _ = user.get(
        f"/oauth2/frontchannel_logout?{urlencode(params)}", {"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 200
    assert signed_in(user)


@pytest.mark.parametrize(
    "sid_of_other", [True, False], ids=["sid-of-another-session", "made-up-sid"]
)
def test_frontchannel_logout_with_a_cookie_and_another_sid_ends_nothing(
    environment: Env, sid_of_other: bool
) -> None:
    env = environment
    mine, other = env.alice(), env.alice()
    sid = sid_of(other) if sid_of_other else uuid.uuid4().hex
    query = urlencode({"iss": issuer(env), "sid": sid})
    status, _, _ = mine.get(f"/oauth2/frontchannel_logout?{query}")
    assert status == 200
    assert signed_in(mine)
    assert signed_in(other)  # with a cookie, only that cookie's session may end


def _wrong_issuers(env: Env) -> list[str]:
    right = issuer(env)
    return [
        "https://evil.example/oauth2/token",
        env.op.issuer("acme.com"),  # the right provider's other tenant
        right + "/",
        right.upper(),
        right.replace("https://", "http://"),
        right + "%00",
        "",
    ]


@pytest.mark.parametrize("wrong", range(8))
def test_frontchannel_logout_without_a_cookie_needs_the_providers_iss(
    environment: Env, wrong: int
) -> None:
    env = environment
    victim = env.alice()
    sid = sid_of(victim)
    stranger = env.client()
    if wrong < 7:
        query = f"iss={quote(_wrong_issuers(env)[wrong], safe='%')}&sid={quote(sid)}"
    else:
        query = f"sid={quote(sid)}"  # no iss at all
    status, _, body = stranger.get(f"/oauth2/frontchannel_logout?{query}")
    assert status == 400, body
    assert signed_in(victim)


def test_frontchannel_logout_without_a_cookie_ends_the_sids_sessions(environment: Env) -> None:
    env = environment
    victim, bystander = env.alice(), env.alice()
    copy = copy_of(victim)
    sid = sid_of(victim)
    stranger = env.client()
    real = stranger.get(
        f"/oauth2/frontchannel_logout?{urlencode({'iss': issuer(env), 'sid': sid})}"
    )
    assert real[0] == 200
    made_up = stranger.get(
        f"/oauth2/frontchannel_logout?{urlencode({'iss': issuer(env), 'sid': uuid.uuid4().hex})}"
    )
    # The answer does not tell whether the sid existed.
    assert made_up[0] == real[0] and made_up[2] == real[2]
    assert sorted(k.lower() for k in made_up[1].keys()) == sorted(k.lower() for k in real[1].keys())
    assert not signed_in(victim) and not signed_in(copy)
    assert signed_in(bystander)


def test_a_flood_of_made_up_sids_stays_bounded(environment: Env) -> None:
    env = environment
    before = len(env.keys("idgw:revoked-fc:app1:*"))
    stranger = env.client()
    started = time.monotonic()
    statuses = []
    bodies = set()
    for _ in range(150):
        query = urlencode({"iss": issuer(env), "sid": uuid.uuid4().hex})
        status, _, body = stranger.get(f"/oauth2/frontchannel_logout?{query}")
        statuses.append(status)
        if status == 200:
            bodies.add(body)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0, "the budget never ran out"
    accepted = statuses.count(200)
    # A burst of 30, then one every 2 seconds (per route and process).
    assert accepted <= 30 + elapsed * 0.5 + 1
    # Unproven sids are kept apart from the proven ones (idgw:revoked-fc:).
    assert len(env.keys("idgw:revoked-fc:app1:*")) - before == accepted
    assert len(bodies) == 1
    # Every key expires, no later than the longest max_duration (24 h).
    for key in env.keys("idgw:revoked-fc:app1:*"):
        assert 0 < env.redis.call("PTTL", key) <= 24 * 3600 * 1000
    # Users with cookies are not affected by the budget.
    user = env.alice()
    query = urlencode({"iss": issuer(env), "sid": sid_of(user)})
    assert user.get(f"/oauth2/frontchannel_logout?{query}")[0] == 200
    assert not signed_in(user)


# -- sign-out --------------------------------------------------------------------------


def _cross_site_headers(env: Env) -> list[dict[str, str]]:
    own = f"http://app1.localhost:{env.port}"
    return [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "Cross-Site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": own},  # the browser's word wins
        {"Sec-Fetch-Site": "something-new"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Referer": f"{own}.evil.example/page"},
        {"Referer": f"http://app1.localhost:{env.port}@evil.example/"},
        {"Origin": own.replace("http://", "https://")},
        {"Origin": f"http://app2.localhost:{env.port}"},  # another route of this gateway
    ]


@pytest.mark.parametrize("case", range(11))
def test_a_cross_site_sign_out_asks_first(environment: Env, case: int) -> None:
    env = environment
    user = env.alice()
    status, headers, body = user.get("/oauth2/sign_out", _cross_site_headers(env)[case])
    assert status == 200, body
    assert b'<form method="post" action="/oauth2/sign_out">' in body
    assert re.search(rb'name="csrf" value="[A-Za-z0-9_-]{40,}"', body)
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    assert headers.get("Set-Cookie") is None
    assert signed_in(user)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: no browser headers at all
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-site", "Origin": "ORIGIN"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar, a bookmark
        {"Origin": "ORIGIN"},
        {"Referer": "ORIGIN/some/page?x=1"},
    ],
    ids=["no-headers", "same-origin", "same-site", "none", "origin", "referer"],
)
def test_a_same_site_sign_out_is_immediate(environment: Env, headers: dict[str, str]) -> None:
    env = environment
    user = env.alice()
    own = f"http://app1.localhost:{env.port}"
    headers = {k: v.replace("ORIGIN", own) for k, v in headers.items()}
    status, response, _ = user.get("/oauth2/sign_out", headers)
    assert status == 302
    assert response["Location"].startswith(env.op.base_url + "/oidc/logout?")
    assert not signed_in(user)


def _confirmation_token(client: Client) -> str:
    status, _, body = client.get("/oauth2/sign_out", {"Sec-Fetch-Site": "cross-site"})
    assert status == 200
    match = re.search(rb'name="csrf" value="([^"]+)"', body)
    assert match
    return match.group(1).decode()


def test_the_confirmation_form_signs_out_everywhere(environment: Env) -> None:
    env = environment
    user = env.alice()
    copy = copy_of(user)
    token = _confirmation_token(user)
    status, headers, _ = post(user, "/oauth2/sign_out", f"csrf={token}".encode())
    assert status == 302
    assert headers["Location"].startswith(env.op.base_url + "/oidc/logout?")
    assert any("Max-Age=0" in value for value in headers.get_all("Set-Cookie") or [])
    assert not signed_in(copy)


def _bad_post(env: Env, user: Client, case: int) -> bytes:
    if case == 3:  # another session's token
        return b"csrf=" + _confirmation_token(env.alice()).encode()
    if case == 4:  # another route's token (same provider, same user)
        return b"csrf=" + _confirmation_token(env.alice("app3.localhost")).encode()
    token = _confirmation_token(user)
    return [
        b"",
        b"csrf=",
        b"csrf=garbage",
        b"",
        b"",
        f"csrf={token}&csrf={token}".encode(),  # repeated
        b"csrf=" + token[:-2].encode(),  # truncated
        b"token=" + token.encode(),  # wrong field
        b"csrf=" + token.encode() + b"&pad=" + b"x" * 8000,  # oversize form
    ][case]


@pytest.mark.parametrize(
    "case",
    range(9),
    ids=[
        "empty",
        "blank",
        "garbage",
        "other-session",
        "other-route",
        "repeated",
        "truncated",
        "wrong-field",
        "oversize",
    ],
)
def test_a_sign_out_post_without_a_valid_token_is_refused(environment: Env, case: int) -> None:
    env = environment
    user = env.alice()
    body = _bad_post(env, user, case)
    status, headers, page = post(user, "/oauth2/sign_out", body)
    assert status == 403, page
    assert b"could not be confirmed" in page
    assert headers.get("Set-Cookie") is None
    assert signed_in(user)


def test_a_copied_cookie_is_dead_after_sign_out(environment: Env) -> None:
    env = environment
    user = env.alice()
    copy = copy_of(user)
    before = len(env.keys("idgw:revoked-id:app1:*"))
    assert user.get("/oauth2/sign_out")[0] == 302
    assert not signed_in(user)
    assert not signed_in(copy)
    assert copy.get("/oauth2/userinfo")[0] == 401
    assert copy.get("/oauth2/auth")[0] == 401
    assert len(env.keys("idgw:revoked-id:app1:*")) == before + 1
    # Signing in again works.
    assert signed_in(env.alice())


# -- back-channel logout ----------------------------------------------------------------


def test_a_sub_only_logout_token_ends_the_subjects_cookie_sessions(environment: Env) -> None:
    env = environment
    first, second = env.alice(), env.alice()
    bob = env.alice(user="bob")
    token = env.op.logout_token(client_id="app1-client", username="alice")
    status, _, body = post(
        env.client(), "/oauth2/backchannel_logout", f"logout_token={token}".encode()
    )
    assert status == 200, body
    assert not signed_in(first) and not signed_in(second)
    assert signed_in(bob)
    assert "sub revoked" in env.gateway.log()
    # A login after the logout is a new session: it works.
    time.sleep(1.1)  # the token's iat has a one-second resolution
    assert signed_in(env.alice())
    # The same token again is a replay.
    status, _, body = post(
        env.client(), "/oauth2/backchannel_logout", f"logout_token={token}".encode()
    )
    assert status == 400 and b"already used" in body


# -- reload ------------------------------------------------------------------------


def test_a_reload_raising_max_duration_keeps_revoked_sessions_revoked(environment: Env) -> None:
    env = environment
    signed_out = env.alice()
    copy = copy_of(signed_out)
    before = set(env.keys("idgw:revoked-id:app1:*"))
    assert signed_out.get("/oauth2/sign_out")[0] == 302
    (key,) = set(env.keys("idgw:revoked-id:app1:*")) - before
    assert env.redis.call("PTTL", key) <= 24 * 3600 * 1000
    config = env.gateway.config_path
    config.write_text(config.read_text().replace("max_duration: 24h", "max_duration: 72h"))
    reloads = env.gateway.log().count("configuration reloaded")
    env.gateway.signal(signal.SIGHUP)
    _wait_for(lambda: env.gateway.log().count("configuration reloaded") > reloads)
    assert not signed_in(copy)
    # Redis follows, for processes that start later.
    _wait_for(lambda: env.redis.call("PTTL", key) > 48 * 3600 * 1000)
    # Lowered again: new revocations last no longer than the new max_duration.
    config.write_text(config.read_text().replace("max_duration: 72h", "max_duration: 2h"))
    reloads = env.gateway.log().count("configuration reloaded")
    env.gateway.signal(signal.SIGHUP)
    _wait_for(lambda: env.gateway.log().count("configuration reloaded") > reloads)
    user = env.alice()
    before = set(env.keys("idgw:revoked-id:app1:*"))
    assert user.get("/oauth2/sign_out")[0] == 302
    (key,) = set(env.keys("idgw:revoked-id:app1:*")) - before
    assert 0 < env.redis.call("PTTL", key) <= 2 * 3600 * 1000
    assert not signed_in(copy)


# -- JWKS budget (last: it rotates the provider's keys) ----------------------------------


def test_unknown_kid_logout_tokens_leave_logins_their_jwks_refetch(environment: Env) -> None:
    env = environment
    # The gateway fetched the JWKS at start; logins may refetch JWKS_REFETCH
    # after that (by now, the other cases have usually taken longer).
    time.sleep(max(0.0, env.discovered + JWKS_REFETCH - time.monotonic()))
    first_logout = time.monotonic()
    for n in range(5):
        token = env.op.logout_token(client_id="app1-client", sid=f"s{n}", kid=f"made-up-{n}")
        status, _, body = post(
            env.client(), "/oauth2/backchannel_logout", f"logout_token={token}".encode()
        )
        assert status == 400 and b"unknown_kid" in body
    # The provider rotates its key: the next login's ID token has a new kid,
    # which the gateway must still be allowed to fetch.
    env.op.rotate_keys()
    assert signed_in(env.alice())
    # Within one interval of the logout tokens' refetch: had it counted against
    # the logins' budget, the login's refetch would have been refused.
    assert time.monotonic() - first_logout < JWKS_REFETCH, "too slow to tell; run again"


def _wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_back_channel_logout_is_not_lost_while_redis_stalls(environment: Env) -> None:
    """Redis paused while the provider posts: the logout still ends the
    session (this process remembers it) and the answer is a 200, not a 503."""
    import threading

    env = environment
    user = env.alice()
    token = env.op.logout_token(client_id="app1-client", sid=sid_of(user))
    pause = threading.Thread(target=env.redis.call, args=("CLIENT", "PAUSE", "3000", "ALL"))
    pause.start()
    time.sleep(0.3)
    try:
        status, _, body = post(
            env.client(), "/oauth2/backchannel_logout", f"logout_token={token}".encode()
        )
    finally:
        pause.join()
    assert status == 200, body
    assert not signed_in(user)
