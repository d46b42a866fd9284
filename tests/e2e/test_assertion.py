"""The signed identity assertion end to end: real gateway, WSO2-shaped provider, echo
back end. The assertion the upstream received is verified with PyJWT (not the
gateway's code) against the JWKS the gateway publishes, before and after a key
rollover by SIGHUP."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from idgateway.config.signing_keys import JWKS_PATH, generate_key_file
from tests.http_helpers import header_values, request
from tests.login_env import (
    APP1_SECRET,
    Client,
    session_key,
    two_tenant_config,
    two_tenant_gateway_yaml,
    wait_until_login_offered,
)
from tests.processes import free_port
from tests.provider_process import ProviderProcess, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

HEADER = "x-idgateway-assertion"


class Environment:
    def __init__(self, tmp: Path, op: ProviderProcess, port: int, backend_port: int) -> None:
        self.tmp = tmp
        self.op = op
        self.port = port
        self.admin_port = free_port()
        self.backend_port = backend_port
        self.config = tmp / "gateway.yaml"
        self.key_a = generate_key_file(str(tmp / "assertion-a.pem"), "ec")
        self.key_b = generate_key_file(str(tmp / "assertion-b.pem"), "ed25519")
        self.app2_key = session_key()
        (tmp / "app2-secret").write_text("app2-client-secret\n")

    def write(self, *keys: str) -> None:
        routes = two_tenant_gateway_yaml(
            self.port,
            self.op,
            self.backend_port,
            self.tmp / "app2-secret",
            self.app2_key,
            app1_scopes="[openid, email, profile, groups]",
            app1_headers="oauth2-proxy",
            app1_more="    assertion: {header: X-Idgateway-Assertion, lifetime: 60s}\n",
        )
        # The proxy asking /oauth2/auth (nginx auth_request) is this machine.
        top = "trusted_proxies: [127.0.0.1]\n"
        top += f"assertion_keys: [{', '.join(keys)}]\n"
        top += f"admin: {{address: 127.0.0.1:{self.admin_port}}}\n"
        self.config.write_text(top + routes)

    def jwks(self, host: str = "app1.localhost") -> dict[str, Any]:
        status, headers, body = Client(self.port, host).get(JWKS_PATH)
        assert status == 200, body
        assert headers["Content-Type"] == "application/jwk-set+json"
        return json.loads(body)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.backends import BackendProcess
    from tests.processes import GatewayProcess

    tmp = tmp_path_factory.mktemp("assertion")
    port = free_port()
    with (
        BackendProcess(name="echo") as backend,
        ProviderProcess(tmp / "op", two_tenant_config(port)) as op,
    ):
        environment = Environment(tmp, op, port, backend.port)
        environment.write(environment.key_a.path)
        env = {"APP1_CLIENT_SECRET": APP1_SECRET, "APP1_SESSION_KEY": session_key()}
        gateway = GatewayProcess(environment.config, tmp / "gateway.log", env=env)
        gateway.start([environment.port, environment.admin_port])
        try:
            wait_until_login_offered(environment.port)
            yield environment, gateway
        finally:
            gateway.stop()


def verify(token: str, jwks: dict[str, Any], port: int, audience: str = "app1") -> dict[str, Any]:
    """What an upstream does: find the key by kid in the published set, check everything."""
    keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
    header = jwt.get_unverified_header(token)
    if header["kid"] not in keys:
        raise jwt.InvalidKeyError(f"unknown kid {header['kid']}")
    return jwt.decode(
        token,
        keys[header["kid"]].key,
        algorithms=["ES256", "EdDSA"],
        audience=audience,
        issuer=f"http://app1.localhost:{port}",
        leeway=5,
        options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
    )


def assertion_from(client: Client) -> str:
    status, _, body = client.get("/echo", {"Accept": "application/json"})
    assert status == 200, body
    (token,) = header_values(json.loads(body), HEADER)
    return token  # type: ignore[no-any-return]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def test_the_upstream_receives_an_assertion_that_verifies_against_the_published_jwks(
    environment: Any,
) -> None:
    env, _ = environment
    client = Client(env.port, "app1.localhost")
    status, body = client.login(env.op, "/echo", "alice", "alice123")
    assert status == 200
    echo = json.loads(body)
    (token,) = header_values(echo, HEADER)
    jwks = env.jwks()
    assert [key["kid"] for key in jwks["keys"]] == [env.key_a.kid]
    claims = verify(token, jwks, env.port)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims["sub"] and claims["email"] == "alice@example.com"
    assert claims["groups"] == ["engineering"]
    assert claims["exp"] - claims["iat"] == 60
    assert claims["sid"] and claims["jti"]
    # The identity headers beside it say the same.
    assert header_values(echo, "x-forwarded-email") == [claims["email"]]
    # The next request reuses it: the gateway signed once.
    assert assertion_from(client) == token


def test_the_jwks_is_public_on_every_host_and_on_the_admin_listener(environment: Any) -> None:
    env, _ = environment
    on_app1 = env.jwks("app1.localhost")
    assert env.jwks("app2.localhost") == on_app1  # app2 signs nothing, but publishes the keys
    status, headers, body = request(env.admin_port, f"127.0.0.1:{env.admin_port}", JWKS_PATH)
    assert status == 200 and json.loads(body) == on_app1
    assert headers["Content-Type"] == "application/jwk-set+json"
    status, _, body = request(env.admin_port, f"127.0.0.1:{env.admin_port}", "/status?format=json")
    assert status == 200
    assert json.loads(body)["assertion_keys"] == [
        {"path": env.key_a.path, "kid": env.key_a.kid, "alg": "ES256", "signs": True}
    ]


def test_forward_auth_hands_the_assertion_to_a_trusted_proxy(environment: Any) -> None:
    env, _ = environment
    client = Client(env.port, "app1.localhost")
    client.login(env.op, "/echo", "alice", "alice123")
    status, headers, _ = client.get("/oauth2/auth", {"X-Original-URI": "/echo"})
    assert status == 202
    token = headers["X-Idgateway-Assertion"]
    claims = verify(token, env.jwks(), env.port)
    assert claims["email"] == "alice@example.com"
    assert assertion_from(client) == token  # the one the proxied requests carry


def test_key_rollover_by_sighup(environment: Any) -> None:
    env, gateway = environment
    client = Client(env.port, "app1.localhost")
    client.login(env.op, "/echo", "alice", "alice123")
    old = assertion_from(client)
    assert jwt.get_unverified_header(old)["kid"] == env.key_a.kid

    # Step 1: the new key is published beside the old one, which still signs.
    env.write(env.key_a.path, env.key_b.path)
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: len(env.jwks()["keys"]) == 2, "the new key is published")
    assert verify(old, env.jwks(), env.port)["sub"]

    # Step 2: the new key signs; the old one is still listed, so old assertions verify.
    env.write(env.key_b.path, env.key_a.path)
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: env.jwks()["keys"][0]["kid"] == env.key_b.kid, "the new key is first")
    jwks = env.jwks()
    assert verify(old, jwks, env.port)["sub"]
    new = assertion_from(client)  # the same session: no new login
    assert jwt.get_unverified_header(new) == {"alg": "EdDSA", "kid": env.key_b.kid, "typ": "JWT"}
    assert verify(new, jwks, env.port)["sub"] == verify(old, jwks, env.port)["sub"]

    # Step 3: the old key is withdrawn: what it signed no longer verifies.
    env.write(env.key_b.path)
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: len(env.jwks()["keys"]) == 1, "the old key is withdrawn")
    jwks = env.jwks()
    with pytest.raises(jwt.InvalidKeyError):
        verify(old, jwks, env.port)
    assert verify(assertion_from(client), jwks, env.port)["sub"]
