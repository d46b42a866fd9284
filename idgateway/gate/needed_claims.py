"""Which claims a route's login must bring, for ``oidc.userinfo: auto``.

Worked out once per route (the configuration is immutable): the claims naming
the user, their e-mail and groups, those of custom identity headers, and those
the route's ``authorize`` rules (and its ``paths``' rules) read. ``sub`` is
always in a valid ID token, so it is never a reason to ask userinfo.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from idgateway.config.model import AuthorizeRules, Route, RouteAuth


def needed_claims(route: Route, auth: RouteAuth) -> frozenset[str]:
    oidc = auth.oidc
    needed = {oidc.user_claim, oidc.email_claim, oidc.groups_claim}
    needed.update(claim for _header, claim in auth.headers.mapping)
    rules: list[AuthorizeRules] = [auth.authorize]
    rules.extend(path.authorize for path in route.paths if path.authorize is not None)
    for rule in rules:
        if rule.roles:
            needed.add("roles")
        needed.update(claim.claim for claim in rule.claims)
    needed.discard("sub")
    return frozenset(needed)


def missing_claims(claims: Mapping[str, Any], needed: Iterable[str]) -> list[str]:
    """The needed claims ``claims`` lacks (absent or null), sorted for stable logs."""
    return sorted(name for name in needed if claims.get(name) is None)
