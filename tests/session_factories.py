"""Session records for the session store and revocation tests."""

from __future__ import annotations

from typing import Any

from idgateway.sessions.model import Session

NOW = 1_700_000_000.0


def make_session(route: str = "app", **changes: Any) -> Session:
    """A signed-in session with every token, created and last seen at NOW."""
    values: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "route": route,
        "sub": "user-1",
        "user": "alice.wonderland@example.com",
        "claims": {"email": "alice.wonderland@example.com", "groups": ["admins"]},
        "created_at": NOW,
        "last_seen": NOW,
        "provider_sid": "provider-sid-1",
        "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "access_token": "access-token-value",
        "access_expires_at": NOW + 3600,
        "refresh_token": "refresh-token-value",
    }
    values.update(changes)
    return Session(**values)


def minimal_session(**changes: Any) -> Session:
    """A session with no tokens, as the revocation tests need."""
    fields: dict[str, Any] = {
        "id": "id-1",
        "route": "app",
        "sub": "alice",
        "user": "alice",
        "claims": {},
        "created_at": 1_000_000.0,
        "last_seen": 1_000_000.0,
        "provider_sid": "sid-1",
    }
    fields.update(changes)
    return Session(**fields)
