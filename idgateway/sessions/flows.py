"""Per-login state cookies: state, nonce, PKCE verifier and return URL.

Every login gets its own short-lived cookie named after its state, so logins
started in several tabs each find their own. The cookie is sealed with the
route's key ring (the browser cannot read the verifier or nonce) and bound
to the route, its provider and client id and its name; it is deleted when
the callback takes it, and starting a login evicts the oldest flows beyond
``max_flows`` as well as expired or unreadable ones (a bounded number per
response), so cookies never pile up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from idgateway.sessions.cookie import (
    HOST_PREFIX,
    cookie_attributes,
    deletion_value,
    set_cookie_value,
)
from idgateway.sessions.keys import KeyRing

_FORMAT = 1
_STATE_BYTES = 32
_NONCE_BYTES = 32
# 64 bytes -> 86 base64url characters, inside RFC 7636's 43..128.
_VERIFIER_BYTES = 64
# Hash bytes in a flow cookie's name: 9 bytes -> 12 base64url characters.
_NAME_HASH_BYTES = 9
# At most this many flow-cookie deletions per response. A browser holds at
# most max_flows (5 by default) plus a few expired ones; anything beyond is
# forged or left over, and deleting each one would let a request of 780 fake
# cookies (15 KB) draw 781 Set-Cookie headers (87 KB). The rest expire.
MAX_CLEARED_FLOWS = 8
# Flow cookies looked at (opened) per login start; the rest are left alone.
_MAX_EXAMINED_FLOWS = 32


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class LoginFlow:
    """One login in progress, between /oauth2/start and the callback."""

    state: str
    nonce: str
    code_verifier: str
    return_to: str
    created_at: float
    # A step-up login (paths[].login): what the new ID token must show, and
    # that the session it finishes is upgraded in place.
    acr_values: tuple[str, ...] = ()
    max_age: float | None = None

    @property
    def step_up(self) -> bool:
        return bool(self.acr_values) or self.max_age is not None


class FlowCookies:
    """Makes, finds and removes a route's login-flow cookies.

    ``max_return_to`` bounds the return URL (in UTF-8 bytes) so one flow
    cookie stays well inside a browser's 4 KB per cookie.
    """

    def __init__(
        self,
        route_id: str,
        keyring: KeyRing,
        secure: bool,
        *,
        prefix: str = "_idgw_flow",
        lifetime: float = 600,
        max_flows: int = 5,
        path: str = "/",
        host_prefix: bool = True,
        max_return_to: int = 2048,
        binding: bytes = b"",
    ) -> None:
        if not prefix or any(not (c.isascii() and (c.isalnum() or c in "_-.")) for c in prefix):
            raise ValueError(
                f"flow cookie prefix {prefix!r} must be letters, digits, '_', '-', '.'"
            )
        if lifetime <= 0:
            raise ValueError(f"flow lifetime must be positive, not {lifetime}")
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, not {max_flows}")
        if not path.startswith("/") or any(c in path for c in ";, \t\r\n"):
            raise ValueError(f"flow cookie path {path!r} must start with '/' and have no ';'")
        self.route_id = route_id
        self.lifetime = lifetime
        self.max_flows = max_flows
        self.max_return_to = max_return_to
        self._keyring = keyring
        effective = HOST_PREFIX + prefix if host_prefix and secure and path == "/" else prefix
        self._base = (effective + "_").encode("ascii")
        self._own_bases = tuple({self._base, (prefix + "_").encode("ascii")})
        self._route = route_id.encode("utf-8")
        # The provider and client id (sessions.binding): a login started
        # before a reload that changed them does not finish after it.
        self._binding = binding
        self._max_age = math.ceil(lifetime)
        self._attributes = cookie_attributes(path=path, secure=secure, same_site="Lax")

    # -- names -------------------------------------------------------------

    def cookie_name_for(self, state: str) -> bytes:
        """``[__Host-]prefix_`` + a short hash of ``state``."""
        digest = hashlib.sha256(state.encode("utf-8", "surrogatepass")).digest()
        return self._base + base64.urlsafe_b64encode(digest[:_NAME_HASH_BYTES])

    def is_own_cookie(self, name: bytes) -> bool:
        """True for flow cookies (never sent upstream)."""
        return name.startswith(self._own_bases)

    def _associated_data(self, name: bytes) -> bytes:
        return b"idgateway login flow\x00%s\x00%s\x00%s" % (self._route, self._binding, name)

    # -- making ------------------------------------------------------------

    def new_flow(
        self,
        return_to: str,
        now: float,
        random: Callable[[int], bytes] = os.urandom,
        *,
        acr_values: tuple[str, ...] = (),
        max_age: float | None = None,
    ) -> LoginFlow:
        """A fresh flow with random state, nonce and PKCE verifier.

        A ``return_to`` longer than ``max_return_to`` loses its query (and
        fragment), or becomes ``"/"`` if its path alone is still too long:
        the browser would silently drop an oversized cookie.
        """
        if self._too_long(return_to):
            return_to = return_to.partition("?")[0].partition("#")[0]
            if self._too_long(return_to):
                return_to = "/"
        return LoginFlow(
            state=_b64url(random(_STATE_BYTES)),
            nonce=_b64url(random(_NONCE_BYTES)),
            code_verifier=_b64url(random(_VERIFIER_BYTES)),
            return_to=return_to,
            created_at=now,
            acr_values=acr_values,
            max_age=max_age,
        )

    def _too_long(self, return_to: str) -> bool:
        return len(return_to.encode("utf-8", "surrogatepass")) > self.max_return_to

    @staticmethod
    def code_challenge(verifier: str) -> str:
        """PKCE S256: base64url(SHA-256(verifier)) without padding (RFC 7636 4.2)."""
        return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())

    def _seal(self, name: bytes, flow: LoginFlow) -> bytes:
        fields: list[Any] = [
            _FORMAT,
            flow.state,
            flow.nonce,
            flow.code_verifier,
            flow.return_to,
            flow.created_at,
        ]
        if flow.step_up:
            fields.append([list(flow.acr_values), flow.max_age])
        plaintext = json.dumps(fields, separators=(",", ":")).encode("ascii")
        return self._keyring.seal(plaintext, self._associated_data(name))

    def _open(self, name: bytes, value: bytes) -> LoginFlow | None:
        plaintext = self._keyring.open(value, self._associated_data(name))
        if plaintext is None:
            return None
        try:
            data = json.loads(plaintext)
            version, state, nonce, verifier, return_to, created_at = data[:6]
            step_up = data[6] if len(data) == 7 else [[], None]
            acr_values, max_age = step_up
        except (ValueError, TypeError):
            return None
        if (
            len(data) > 7
            or not isinstance(acr_values, list)
            or not all(isinstance(a, str) for a in acr_values)
            or not (max_age is None or (isinstance(max_age, int | float) and max_age >= 0))
            or isinstance(max_age, bool)
        ):
            return None
        if (
            version != _FORMAT
            or not all(isinstance(s, str) for s in (state, nonce, verifier, return_to))
            or not isinstance(created_at, int | float)
            or isinstance(created_at, bool)
        ):
            return None
        return LoginFlow(
            state,
            nonce,
            verifier,
            return_to,
            float(created_at),
            acr_values=tuple(acr_values),
            max_age=None if max_age is None else float(max_age),
        )

    def _expired(self, flow: LoginFlow, now: float) -> bool:
        return now - flow.created_at > self.lifetime

    def set_cookie(
        self, flow: LoginFlow, existing: Mapping[bytes, bytes], now: float
    ) -> list[bytes]:
        """Set-Cookie for ``flow``, then deletions keeping at most ``max_flows`` in all.

        Of the existing flow cookies the newest ``max_flows - 1`` stay; the
        older ones are deleted, then expired ones, then unreadable ones
        (retired key, garbage), at most ``MAX_CLEARED_FLOWS`` in all and
        looking at no more than ``_MAX_EXAMINED_FLOWS`` of them.
        """
        name = self.cookie_name_for(flow.state)
        headers = [set_cookie_value(name, self._seal(name, flow), self._attributes, self._max_age)]
        alive: list[tuple[float, bytes]] = []
        expired: list[bytes] = []
        unreadable: list[bytes] = []
        examined = 0
        for other, value in existing.items():
            if other == name or not other.startswith(self._base):
                continue
            examined += 1
            if examined > _MAX_EXAMINED_FLOWS:
                break
            found = self._open(other, value)
            if found is None:
                unreadable.append(other)
            elif self._expired(found, now):
                expired.append(other)
            else:
                alive.append((found.created_at, other))
        alive.sort(reverse=True)
        # Real flows beyond the cap matter most: they are what keeps the count bounded.
        doomed = [other for _, other in alive[self.max_flows - 1 :]] + expired + unreadable
        headers.extend(
            deletion_value(other, self._attributes) for other in doomed[:MAX_CLEARED_FLOWS]
        )
        return headers

    # -- taking ------------------------------------------------------------

    def take_newest(
        self, cookies: Mapping[bytes, bytes], now: float
    ) -> tuple[LoginFlow | None, list[bytes]]:
        """The newest unexpired flow of this browser, and the deletion of its
        cookie: for a provider answer that carries no ``state`` (an expired
        pushed request), so the login it belonged to can be started again once.
        """
        newest: tuple[float, bytes, LoginFlow] | None = None
        examined = 0
        for name, value in cookies.items():
            if not name.startswith(self._base):
                continue
            examined += 1
            if examined > _MAX_EXAMINED_FLOWS:
                break
            flow = self._open(name, value)
            if flow is None or self._expired(flow, now):
                continue
            if newest is None or flow.created_at > newest[0]:
                newest = (flow.created_at, name, flow)
        if newest is None:
            return None, []
        return newest[2], [deletion_value(newest[1], self._attributes)]

    def take(
        self, state: str, cookies: Mapping[bytes, bytes], now: float
    ) -> tuple[LoginFlow | None, list[bytes]]:
        """The flow for ``state`` if its cookie is present, ours, unexpired and matching.

        Always returns the deletion of that cookie: a flow is used once.
        """
        name = self.cookie_name_for(state)
        deletion = [deletion_value(name, self._attributes)]
        value = cookies.get(name)
        if value is None:
            return None, deletion
        flow = self._open(name, value)
        if flow is None or self._expired(flow, now):
            return None, deletion
        if not hmac.compare_digest(
            flow.state.encode("utf-8", "surrogatepass"), state.encode("utf-8", "surrogatepass")
        ):
            return None, deletion
        return flow, deletion
