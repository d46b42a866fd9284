"""A route's gate under test, reporting what it decided instead of acting on it.

Shared by the admitted-memo tests (tests/unit/test_gate_admitted_memo.py and
tests/unit/test_admitted_memo_review.py): login, step-up and refresh become
entries in ``holder.outcomes``, and each session cookie decode counts in
``holder.decoded``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from idgateway.gate.session_check import ProviderHandle, RouteLogin
from idgateway.oidc.provider import ProviderMetadata
from idgateway.routing.state import StateBuilder
from idgateway.sessions.model import Session


class _Provider:
    """A provider whose discovery has answered (the gate never calls it here)."""

    metadata = ProviderMetadata(
        issuer="https://127.0.0.1:9443/oauth2/token",
        authorization_endpoint="https://127.0.0.1:9443/oauth2/authorize",
        token_endpoint="https://127.0.0.1:9443/oauth2/token",
        jwks_uri="https://127.0.0.1:9443/oauth2/jwks",
    )
    ready = True
    last_error = None

    def stop(self) -> None:
        pass


class StubProviderBuilder(StateBuilder):
    """The state builder, with every route's provider a ready stub."""

    def provider_handle(self, settings: Any) -> ProviderHandle:
        return ProviderHandle(settings=settings, client=_Provider(), http=None)  # type: ignore[arg-type]


def report_decisions(holder: Any, login: RouteLogin) -> None:
    login.unauthenticated = lambda visit: holder.outcomes.append(("login",))  # type: ignore[method-assign]
    login.step_up = lambda visit, session, step_up: holder.outcomes.append(("step_up",))  # type: ignore[method-assign]

    def refreshed(session: Session, session_id: str | None = None) -> defer.Deferred[Any]:
        holder.outcomes.append(("refresh",))
        return defer.Deferred()  # (never answers: the decision is what counts)

    login.refreshed = refreshed  # type: ignore[assignment,method-assign]
    for codec in login.codecs.values():
        decode = codec.decode_with_expiry

        def counted(cookies: Any, decode: Callable[..., Any] = decode) -> Any:
            holder.decoded += 1
            return decode(cookies)

        codec.decode_with_expiry = counted  # type: ignore[method-assign]
