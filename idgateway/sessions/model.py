"""The session a login creates, independent of where it is stored."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Session:
    """A logged-in user on one route.

    Times are POSIX seconds from the gateway's clock. ``claims`` holds only
    what the route needs (identity headers, authorization rules, /userinfo).
    """

    # The gateway's own id for this session (random, 128 bits, hex).
    id: str
    route: str
    sub: str
    # The value of the route's user_claim (WSO2 samples use "username").
    user: str
    claims: dict[str, Any]
    created_at: float
    last_seen: float
    # The provider's session id (ID token "sid"), for back-channel logout.
    provider_sid: str | None = None
    id_token: str | None = None
    access_token: str | None = None
    access_expires_at: float | None = None
    refresh_token: str | None = None
    # When the current tokens were obtained (login or last refresh): with
    # access_expires_at, the access token's real lifetime, which bounds the
    # refresh leeway (a 60 s token is not refreshed at once with a 60 s leeway).
    tokens_at: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Session:
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})
