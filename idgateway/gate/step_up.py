"""Step-up per path (``paths[].login``): is a session's login strong and recent
enough, what a new login asks for, and RFC 9470's challenge for API clients.

``acr`` and ``auth_time`` come from the signed ID token of the login that made
(or last upgraded) the session; userinfo never sets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idgateway.config.model import StepUp
from idgateway.sessions.model import Session

# A provider's clock may be this far ahead of ours when it says auth_time.
AUTH_TIME_LEEWAY = 60.0


def satisfies(session: Session, step_up: StepUp, now: float) -> bool:
    return claims_satisfy(session.claims, step_up.acr_values, step_up.max_age, now)


def claims_satisfy(
    claims: Mapping[str, Any], acr_values: tuple[str, ...], max_age: float | None, now: float
) -> bool:
    """Whether ID token claims show an ``acr`` in ``acr_values`` (if any are
    asked for) and an ``auth_time`` within ``max_age`` (if one is)."""
    if acr_values and claims.get("acr") not in acr_values:
        return False
    if max_age is not None:
        auth_time = claims.get("auth_time")
        if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
            return False
        if now - auth_time > max_age or auth_time > now + AUTH_TIME_LEEWAY:
            return False
    return True


def step_up_parameters(step_up: StepUp) -> dict[str, str]:
    """The authorization request parameters of a step-up login."""
    parameters: dict[str, str] = {}
    if step_up.acr_values:
        parameters["acr_values"] = " ".join(step_up.acr_values)
    if step_up.max_age is not None:
        parameters["max_age"] = str(int(step_up.max_age))
    return parameters


def insufficient_authentication_challenge(step_up: StepUp) -> bytes:
    """``WWW-Authenticate`` for RFC 9470's ``insufficient_user_authentication``.

    acr values and durations come from the configuration (tokens, validated
    there), never from the request, so they need no escaping beyond quoting.
    """
    parts = [
        'Bearer error="insufficient_user_authentication"',
        'error_description="A stronger or more recent sign-in is required"',
    ]
    if step_up.acr_values:
        parts.append('acr_values="' + " ".join(step_up.acr_values) + '"')
    if step_up.max_age is not None:
        parts.append(f'max_age="{int(step_up.max_age)}"')
    return ", ".join(parts).encode("ascii")
