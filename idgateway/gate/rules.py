"""Who may pass: public paths, authorization rules, and safe redirect targets.

All path matching runs on the readings of the canonical path (idgateway.http.paths),
so ``//``, ``%2F``, ``%2e%2e``, ``;params`` and the query string cannot turn a
protected path into a public one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from idgateway.config.model import AuthorizeRules, PublicPath
from idgateway.config.regex import compile_config_regex
from idgateway.http.paths import PathReading


def compile_public_paths(
    paths: Sequence[PublicPath],
) -> tuple[tuple[bytes | None, str | None, Any], ...]:
    """(method, prefix, pattern) per public path; patterns run on RE2 (linear time)."""
    return tuple(
        (
            p.method.encode("ascii") if p.method else None,
            p.prefix,
            compile_config_regex(p.regex) if p.regex else None,
        )
        for p in paths
    )


def is_public(
    rules: tuple[tuple[bytes | None, str | None, Any], ...],
    method: bytes,
    path: str,
) -> bool:
    for rule_method, prefix, pattern in rules:
        if rule_method is not None and rule_method != method:
            if not (rule_method == b"GET" and method == b"HEAD"):
                continue
        if prefix is not None and _under(path, prefix):
            return True
        if pattern is not None and pattern.search(path):
            return True
    return False



def every_reading_is_public(
    rules: tuple[tuple[bytes | None, str | None, Any], ...],
    method: bytes,
    reading: PathReading,
) -> bool:
    """Public only if every reading of the path is (see idgateway.http.paths): the
    one test the session gate, the token gate and forward-auth share."""
    for text in reading.matched:  # (folded on case-insensitive routes)
        if not is_public(rules, method, text):
            return False
    return True

def _under(path: str, prefix: str) -> bool:
    """``/healthz`` covers /healthz and /healthz/x, never /healthz-internal."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        # WSO2 sends a single group as a plain string. It is never split on
        # commas: a group named "evil,admins" must not pass as "admins".
        return [value]
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return [str(value)]


def authorization_failure(
    rules: AuthorizeRules,
    claims: Mapping[str, Any],
    *,
    email_claim: str = "email",
    groups_claim: str = "groups",
    granted_scopes: frozenset[str] | None = None,
) -> str | None:
    """None when every configured rule passes, else why the user is refused.

    ``granted_scopes``: a bearer token's scopes; None for a session, which
    therefore never passes a ``scopes`` rule.
    """
    if rules.scopes and (granted_scopes is None or not granted_scopes.issuperset(rules.scopes)):
        return "a required scope is not granted"
    if rules.email_domains:
        email = claims.get(email_claim)
        # A missing email_verified is NOT verified (WSO2 omits it unless asked).
        if claims.get("email_verified") not in (True, "true"):
            return "email address not verified"
        if not isinstance(email, str) or "@" not in email:
            return "no email address"
        domain = email.rsplit("@", 1)[1].lower()
        if domain not in {d.lower() for d in rules.email_domains}:
            return "email domain not allowed"
    if rules.groups:
        if not set(_as_list(claims.get(groups_claim))) & set(rules.groups):
            return "not in an allowed group"
    if rules.roles:
        if not set(_as_list(claims.get("roles"))) & set(rules.roles):
            return "no allowed role"
    for rule in rules.claims:
        values = (
            _as_list(claims.get(rule.claim))
            if not isinstance(claims.get(rule.claim), str)
            else [str(claims.get(rule.claim))]
        )
        if rule.any_of:
            ok = any(v in rule.any_of for v in values)
        elif rule.regex:
            pattern = compile_config_regex(rule.value)
            ok = any(pattern.fullmatch(v) for v in values)
        else:
            ok = rule.value in values
        if not ok:
            return f"claim {rule.claim} does not match"
    return None


_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def safe_redirect(
    target: str | None, *, host: str, allowed: Sequence[str] = (), tls: bool = False
) -> str | None:
    """``target`` if it stays on this host (a relative path) or names an allowed origin.

    Refuses ``//evil.com``, ``/\\evil.com``, ``https:evil.com``, ``/%2F%2Fevil.com``,
    ``javascript:...``, ``\\t//evil.com`` and ``https://app1.localhost@evil.com``.
    """
    if not target or _CONTROL.search(target):
        return None
    decoded = unquote(target)
    if target.startswith("/"):
        if decoded.startswith(("//", "/\\")) or "\\" in target[:2] or _CONTROL.search(decoded):
            return None
        return target
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    if "@" in parts.netloc or "\\" in target:
        return None
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if parts.netloc.lower() == host.lower():
        # Never from https down to http on the same host.
        return target if parts.scheme == "https" or not tls else None
    if origin in {a.rstrip("/").lower() for a in allowed}:
        return target
    return None
