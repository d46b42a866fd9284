"""The WSO2-shaped test provider's API side: client-credentials tokens (JWT per
client, "Token type: JWT", or opaque), DPoP-bound tokens, introspection as WSO2
answers it, and the /_test/ hooks the bearer attack suite uses."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_provider_shape import jwt_parts, verify_jwt
from tests.provider_process import ProviderProcess
from tests.security.test_bearer import _post_json, b64url, ec_key, proof, public_jwk

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

SECRET = "s3cret"


def _client(client_id: str, fmt: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": SECRET,
        "redirect_uris": ["http://unused.localhost/cb"],
        "grant_types": ["authorization_code", "client_credentials"],
        "access_token_format": fmt,
        **extra,
    }


@pytest.fixture(scope="module")
def op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderProcess]:
    config = {
        "tenants": {
            "carbon.super": {
                "api_scopes": ["orders:read"],
                "clients": [
                    _client("svc-jwt", "jwt", access_token_audiences=["orders"]),
                    _client("svc-opaque", "opaque"),
                ],
            }
        }
    }
    with ProviderProcess(Path(tmp_path_factory.mktemp("op-bearer")), config) as provider:
        yield provider


def token(op: ProviderProcess, client_id: str, headers: dict[str, str] | None = None) -> Any:
    answer = op.request(
        "POST",
        op.endpoint("/oauth2/token"),
        form={"grant_type": "client_credentials", "scope": "orders:read"},
        basic_auth=(client_id, SECRET),
        headers=headers or {},
    )
    assert answer.status == 200, answer
    return answer.json()


def introspect(op: ProviderProcess, value: str) -> Any:
    answer = op.request(
        "POST",
        op.endpoint("/oauth2/introspect"),
        form={"token": value},
        basic_auth=("svc-opaque", SECRET),
    )
    assert answer.status == 200, answer
    return answer.json()


def test_discovery_advertises_introspection(op: ProviderProcess) -> None:
    document = op.get_json(op.discovery_url())
    assert document["introspection_endpoint"] == op.endpoint("/oauth2/introspect")


def test_a_jwt_client_credentials_token_looks_like_wso2s(op: ProviderProcess) -> None:
    answer = token(op, "svc-jwt")
    assert answer["token_type"] == "Bearer" and answer["scope"] == "orders:read"
    jwks = op.get_json(op.endpoint("/oauth2/jwks"))
    header, claims = verify_jwt(answer["access_token"], jwks)
    assert header["typ"] == "at+jwt" and header["kid"].endswith("_RS256")
    assert claims["aut"] == "APPLICATION" and claims["sub"] == "svc-jwt"
    assert claims["aud"] == ["svc-jwt", "orders"] and claims["azp"] == "svc-jwt"
    assert claims["iss"] == op.issuer() and claims["scope"] == "orders:read"
    assert "cnf" not in claims
    # It introspects as the stored token it stands for.
    assert introspect(op, answer["access_token"])["active"] is True


def test_an_opaque_token_introspects_as_wso2_answers(op: ProviderProcess) -> None:
    value = token(op, "svc-opaque")["access_token"]
    assert value.count(".") != 2
    answer = introspect(op, value)
    assert answer["active"] is True and answer["client_id"] == "svc-opaque"
    assert answer["aut"] == "APPLICATION" and answer["token_type"] == "Bearer"
    assert answer["scope"] == "orders:read" and "username" not in answer
    assert introspect(op, "not-a-token") == {"active": False}


def test_a_dpop_proof_at_the_token_endpoint_binds_the_token(op: ProviderProcess) -> None:
    key = ec_key()
    url = op.endpoint("/oauth2/token")
    answer = token(op, "svc-jwt", {"DPoP": proof(key, "POST", url)})
    assert answer["token_type"] == "DPoP"
    jwk = public_jwk(key)
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    thumbprint = b64url(hashlib.sha256(canonical.encode()).digest())
    _, claims = jwt_parts(answer["access_token"])
    assert claims["cnf"] == {"jkt": thumbprint}
    introspected = introspect(op, answer["access_token"])
    assert introspected["cnf"] == {"jkt": thumbprint} and introspected["token_type"] == "DPoP"


def test_the_test_hooks(op: ProviderProcess) -> None:
    signed = _post_json(op, "/_test/sign", {"claims": {"sub": "x", "exp": "now+60"}})["token"]
    header, claims = verify_jwt(signed, op.get_json(op.endpoint("/oauth2/jwks")))
    assert header["alg"] == "RS256" and claims["iss"] == op.issuer()
    assert isinstance(claims["exp"], int)
    value = token(op, "svc-opaque")["access_token"]
    for mode, expected in (("inactive", 200), ("500", 500), ("garbage", 200)):
        assert op.request("POST", op.endpoint(f"/_test/introspection?mode={mode}")).status == 200
        try:
            answer = op.request(
                "POST",
                op.endpoint("/oauth2/introspect"),
                form={"token": value},
                basic_auth=("svc-opaque", SECRET),
            )
        finally:
            op.request("POST", op.endpoint("/_test/introspection?mode=normal"))
        assert answer.status == expected, (mode, answer)
        if mode == "garbage":
            with pytest.raises(ValueError):
                answer.json()
    assert introspect(op, value)["active"] is True
