"""The demo back end's check of the gateway's signed identity assertion.

Done the way an application would do it, with PyJWT (an independent JOSE
library, in the test extras that ``make demo`` installs), against the JWKS the
gateway publishes: the page then shows whether the identity it received is
proven. Without PyJWT the page says so instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AssertionCheck:
    """Verifies the assertion header of a request against the gateway's JWKS."""

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str,
        host: str | None = None,
        header: str = "X-Idgateway-Assertion",
    ) -> None:
        self.jwks_url = jwks_url
        self.audience = audience
        self.header = header.lower()
        self.error: str | None = None
        self._jwks: Any = None
        try:
            import jwt
        except ImportError:
            self.error = "PyJWT is not installed (pip install 'PyJWT[crypto]')"
            return
        self._jwt = jwt
        # The demo's gateway is local: the rare fetch (on an unknown kid, or every
        # 5 minutes) may block this little server for a moment.
        self._jwks = jwt.PyJWKClient(
            jwks_url, headers={"Host": host} if host else {}, lifespan=300, timeout=3
        )

    def check(self, headers: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
        """None without an assertion header; else what the verification found."""
        token = next((v for n, v in headers if n.lower().replace("_", "-") == self.header), None)
        if token is None:
            return None
        if self._jwks is None:
            return {"verified": False, "error": self.error}
        jwt = self._jwt
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["ES256", "EdDSA"],
                audience=self.audience,
                leeway=30,
                options={"require": ["iss", "aud", "sub", "iat", "exp"]},
            )
        except Exception as error:  # any failure is the answer: not verified, and why
            return {"verified": False, "error": f"{type(error).__name__}: {error}"}
        return {
            "verified": True,
            "kid": jwt.get_unverified_header(token).get("kid"),
            "jwks": self.jwks_url,
            "claims": claims,
        }
