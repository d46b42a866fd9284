"""One OpenID provider (for WSO2: one tenant): discovery metadata and signing keys.

A ``ProviderClient`` fetches the discovery document and the JWKS when started,
keeps retrying with exponential backoff while the provider is unreachable, and
refreshes both periodically. It never raises into the caller because the
provider is down: ``ready`` stays False and ``last_error`` says why, and every
other provider carries on.

WSO2 specifics handled here: the issuer is the token endpoint URL
(``https://host/oauth2/token``), so configuring the issuer gives the discovery
URL ``https://host/oauth2/token/.well-known/openid-configuration``, one of the
two WSO2 serves; and the JWKS holds each key twice, with ``_RS256`` and
``_PS256`` suffixed kids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.errors import Error as JoseError
from josepy.jwk import JWK
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway.config.provider_urls import (
    InsecureTransport,
    check_configured_url,
    check_endpoint,
)
from idgateway.config.values import mask_credentials
from idgateway.oidc.http import HTTPFailure, count_error, send

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"

# Signature algorithms the gateway will ever verify: asymmetric only. HMAC
# ("HS*") would make the provider's public key a shared secret, and "none" is
# no signature at all.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


@attrs.frozen
class ProviderMetadata:
    """The parts of a discovery document the gateway uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    introspection_endpoint: str | None = None
    revocation_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ("RS256",)
    code_challenge_methods_supported: tuple[str, ...] = ()
    backchannel_logout_supported: bool = False
    frontchannel_logout_supported: bool = False
    # RFC 9126 (WSO2 7: /oauth2/par); None: the provider takes no pushed requests.
    pushed_authorization_request_endpoint: str | None = None
    require_pushed_authorization_requests: bool = False
    # For private_key_jwt: what the token endpoint accepts (empty: not stated).
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] = ()

    def endpoints(self) -> tuple[tuple[str, str], ...]:
        """(field name, URL) of every endpoint the document names, for transport checks."""
        return tuple(
            (name, url)
            for name, url in (
                ("authorization_endpoint", self.authorization_endpoint),
                ("token_endpoint", self.token_endpoint),
                ("jwks_uri", self.jwks_uri),
                ("userinfo_endpoint", self.userinfo_endpoint),
                ("end_session_endpoint", self.end_session_endpoint),
                ("introspection_endpoint", self.introspection_endpoint),
                ("revocation_endpoint", self.revocation_endpoint),
                (
                    "pushed_authorization_request_endpoint",
                    self.pushed_authorization_request_endpoint,
                ),
            )
            if url is not None
        )

    @classmethod
    def from_document(cls, document: object) -> ProviderMetadata:
        """Parse a discovery document; ProviderError if a required field is missing.

        Optional fields of the wrong type are treated as absent.
        """
        if not isinstance(document, dict):
            raise ProviderError("the discovery document is not a JSON object")
        missing = [
            name
            for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
            if not isinstance(document.get(name), str) or not document[name]
        ]
        if missing:
            raise ProviderError(f"the discovery document lacks {', '.join(missing)}")
        algorithms = _strings(document.get("id_token_signing_alg_values_supported"))
        return cls(
            issuer=document["issuer"],
            authorization_endpoint=document["authorization_endpoint"],
            token_endpoint=document["token_endpoint"],
            jwks_uri=document["jwks_uri"],
            userinfo_endpoint=_optional_string(document, "userinfo_endpoint"),
            end_session_endpoint=_optional_string(document, "end_session_endpoint"),
            introspection_endpoint=_optional_string(document, "introspection_endpoint"),
            revocation_endpoint=_optional_string(document, "revocation_endpoint"),
            id_token_signing_alg_values_supported=algorithms or ("RS256",),
            code_challenge_methods_supported=_strings(
                document.get("code_challenge_methods_supported")
            ),
            backchannel_logout_supported=document.get("backchannel_logout_supported") is True,
            frontchannel_logout_supported=document.get("frontchannel_logout_supported") is True,
            pushed_authorization_request_endpoint=_optional_string(
                document, "pushed_authorization_request_endpoint"
            ),
            token_endpoint_auth_signing_alg_values_supported=_strings(
                document.get("token_endpoint_auth_signing_alg_values_supported")
            ),
            require_pushed_authorization_requests=(
                document.get("require_pushed_authorization_requests") is True
            ),
        )


def _optional_string(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) and value else None


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


class ProviderError(Exception):
    """The provider's discovery document or key set is unusable (message for people)."""


@attrs.frozen
class SigningKey:
    """One verification key from the provider's JWKS."""

    kid: str | None
    jwk: JWK
    # The JWK's own "alg", when it names one.
    alg: str | None


def key_fits_algorithm(jwk: JWK, alg: str) -> bool:
    """Whether ``jwk`` is the right kind of public key to verify an ``alg`` signature."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        return False
    key = _unwrapped(jwk)
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])


def _unwrapped(jwk: JWK) -> object:
    # josepy wraps cryptography keys in a ComparableKey proxy.
    key = jwk.key
    return getattr(key, "_wrapped", key)


def parse_jwks(document: object) -> tuple[SigningKey, ...]:
    """The usable signature keys of a JWKS, in order; ProviderError if there are none.

    Keeps RSA and EC keys meant for signatures (``use`` "sig" or absent);
    skips symmetric keys, encryption keys and anything unparseable. Private
    key material, should a provider publish it, is dropped.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ProviderError('the JWKS is not a JSON object with a "keys" array')
    keys: list[SigningKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        key_ops = entry.get("key_ops")
        if isinstance(key_ops, list) and "verify" not in key_ops:
            continue
        kid = entry.get("kid")
        alg = entry.get("alg")
        try:
            parsed = JWK.from_json(entry)
            assert isinstance(parsed, JWK)
            jwk = parsed.public_key()
        except (JoseError, ValueError, TypeError, KeyError):
            continue
        keys.append(
            SigningKey(
                kid=kid if isinstance(kid, str) else None,
                jwk=jwk,
                alg=alg if isinstance(alg, str) else None,
            )
        )
    if not keys:
        raise ProviderError("the JWKS holds no RSA or EC signature keys")
    return tuple(keys)


@attrs.frozen
class _KeySet:
    keys: tuple[SigningKey, ...]
    by_kid: dict[str, SigningKey]

    @classmethod
    def of(cls, keys: tuple[SigningKey, ...]) -> _KeySet:
        by_kid: dict[str, SigningKey] = {}
        for key in keys:
            if key.kid is not None:
                # The first of two keys sharing a kid wins, as it would anywhere.
                by_kid.setdefault(key.kid, key)
        return cls(keys=keys, by_kid=by_kid)


class ProviderClient:
    """Discovery metadata and signing keys of one provider, kept fresh.

    Name the provider by ``discovery_url`` (the document's issuer is then
    authoritative) or by ``issuer`` (the discovery URL is derived from it and
    the document must state exactly that issuer), or both (that URL, that
    issuer). ``clock`` drives retries, refreshes and timeouts.

    Every URL is HTTPS (``idgateway.config.provider_urls``): the configured one, and
    each endpoint the document advertises, or the document is refused. Plain
    HTTP takes ``insecure_http`` (or a provider on loopback).
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        *,
        discovery_url: str | None = None,
        issuer: str | None = None,
        http: HTTPClient,
        clock: IReactorTime,
        refresh_interval: float = 3600,
        jwks_min_refetch_interval: float = 30,
        logout_refetch_interval: float = 300,
        retry_max: float = 60,
        timeout: float = 10,
        insecure_http: bool = False,
    ) -> None:
        if discovery_url is None and issuer is None:
            raise ValueError(f"provider {name}: give discovery_url or issuer")
        for url in (discovery_url, issuer):
            if url is not None:
                try:
                    check_configured_url(url, insecure_http=insecure_http)
                except InsecureTransport as error:
                    raise ValueError(f"provider {name}: {error}") from None
        self.insecure_http = insecure_http
        self.name = name
        self.expected_issuer = issuer
        if discovery_url is None:
            assert issuer is not None
            # OpenID Connect Discovery 1.0 section 4: drop a trailing "/" first.
            discovery_url = issuer.rstrip("/") + DISCOVERY_SUFFIX
        self.discovery_url = discovery_url
        self._http = http
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._jwks_min_refetch_interval = jwks_min_refetch_interval
        # Logout tokens (unauthenticated POSTs) have their own, smaller budget,
        # so made-up kids there cannot use up the refetches logins need.
        self._logout_refetch_interval = logout_refetch_interval
        self._last_logout_refetch: float | None = None
        self._retry_max = retry_max
        self._timeout = timeout

        self.metadata: ProviderMetadata | None = None
        self.last_error: str | None = None
        self._keys: _KeySet | None = None
        self._running = False
        self._retry_delay = 1.0
        self._timer: IDelayedCall | None = None
        self._refreshing: defer.Deferred[None] | None = None
        self._last_jwks_fetch: float | None = None
        self._refetch_lock = defer.DeferredLock()
        # Endpoints already reported as living on another host than discovery.
        self._elsewhere_logged: set[tuple[str, str]] = set()
        # Called once with the metadata when the provider first becomes ready
        # (the routes' checks of what the discovery document offers them).
        self.when_ready: list[Callable[[ProviderMetadata], None]] = []

    @property
    def ready(self) -> bool:
        """Whether metadata and keys are loaded (possibly from an earlier refresh)."""
        return self.metadata is not None and self._keys is not None

    @property
    def signing_keys(self) -> tuple[SigningKey, ...]:
        return self._keys.keys if self._keys is not None else ()

    def start(self) -> None:
        """Fetch metadata and keys now, then keep them fresh until ``stop``."""
        if self._running:
            return
        self._running = True
        self._retry_delay = 1.0
        self._refresh_now()

    def stop(self) -> None:
        """Stop retries and refreshes; cancel a fetch in progress. Keeps what was loaded."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._refreshing is not None:
            self._refreshing.cancel()
            self._refreshing = None

    def _refresh_now(self) -> None:
        self._timer = None
        refreshing = defer.ensureDeferred(self._refresh())
        self._refreshing = refreshing
        refreshing.addCallbacks(self._refreshed, self._refresh_failed)

    async def _refresh(self) -> None:
        metadata = await self._fetch_metadata()
        keys = await self._fetch_keys(metadata.jwks_uri)
        first = not self.ready
        if self.metadata is not None and self.metadata.issuer != metadata.issuer:
            self._log.warn(
                "Provider {provider}: issuer changed from {old} to {new}",
                provider=self.name,
                old=self.metadata.issuer,
                new=metadata.issuer,
            )
        self.metadata = metadata
        self._install_keys(keys)
        self.last_error = None
        if first:
            self._log.info(
                "Provider {provider} ready: issuer {issuer}, {count} signing keys",
                provider=self.name,
                issuer=metadata.issuer,
                count=len(keys),
            )
            waiting, self.when_ready = self.when_ready, []
            for notify in waiting:
                notify(metadata)

    def _refreshed(self, _: None) -> None:
        self._refreshing = None
        self._retry_delay = 1.0
        if self._running:
            self._timer = self._clock.callLater(self._refresh_interval, self._refresh_now)

    def _refresh_failed(self, failure: Failure) -> None:
        self._refreshing = None
        if isinstance(failure.value, defer.CancelledError) and not self._running:
            return
        if isinstance(failure.value, ProviderError | HTTPFailure):
            self.last_error = mask_credentials(str(failure.value))
        else:
            self.last_error = mask_credentials(f"unexpected error: {failure.getErrorMessage()}")
            self._log.failure(
                "Provider {provider}: unexpected error while refreshing",
                failure,
                provider=self.name,
            )
        if not self._running:
            return
        delay = min(self._retry_delay, self._retry_max)
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)
        self._log.warn(
            "Provider {provider} {state}: {error}; retrying in {delay:g} s",
            provider=self.name,
            state="still usable with earlier keys" if self.ready else "not ready",
            error=self.last_error,
            delay=delay,
        )
        self._timer = self._clock.callLater(delay, self._refresh_now)

    async def _fetch_metadata(self) -> ProviderMetadata:
        document = await self._get_json(self.discovery_url, "discovery document", "discovery")
        try:
            metadata = ProviderMetadata.from_document(document)
            if self.expected_issuer is not None and metadata.issuer != self.expected_issuer:
                raise ProviderError(
                    f"{self.discovery_url} states issuer {metadata.issuer!r}, "
                    f"but the configured issuer is {self.expected_issuer!r}"
                )
            self._check_transport(metadata)
        except ProviderError:
            count_error(self._http, "discovery", "invalid")  # metrics hook
            raise
        return metadata

    def _check_transport(self, metadata: ProviderMetadata) -> None:
        """Refuse a document that sends provider traffic over plain HTTP."""
        for field, url in metadata.endpoints():
            try:
                elsewhere = check_endpoint(
                    field, url, discovery_url=self.discovery_url, insecure_http=self.insecure_http
                )
            except InsecureTransport as error:
                raise ProviderError(str(error)) from None
            if elsewhere and (field, url) not in self._elsewhere_logged:
                self._elsewhere_logged.add((field, url))
                self._log.info(
                    "Provider {provider}: {field} {url} is on another host than the "
                    "discovery document ({discovery_url}); allowed over HTTPS",
                    provider=self.name,
                    field=field,
                    url=mask_credentials(url),
                    discovery_url=mask_credentials(self.discovery_url),
                )

    async def _fetch_keys(
        self, jwks_uri: str, *, for_logout: bool = False
    ) -> tuple[SigningKey, ...]:
        if for_logout:
            self._last_logout_refetch = self._clock.seconds()
        else:
            self._last_jwks_fetch = self._clock.seconds()
        document = await self._get_json(jwks_uri, "JWKS", "jwks")
        try:
            return parse_jwks(document)
        except ProviderError:
            count_error(self._http, "jwks", "invalid")  # metrics hook
            raise

    async def _get_json(self, url: str, what: str, call: str) -> object:
        result = await send(
            self._http, "GET", url, clock=self._clock, timeout=self._timeout, call=call
        )
        if result.status != 200:
            if result.status < 400:
                # send counted 4xx and 5xx; anything else but 200 is unusable.
                count_error(self._http, call, "invalid")  # metrics hook
            raise ProviderError(f"{what} {url}: HTTP {result.status}")
        try:
            return result.json()
        except ValueError:
            count_error(self._http, call, "invalid")  # metrics hook
            raise ProviderError(f"{what} {url}: not JSON") from None

    def _install_keys(self, keys: tuple[SigningKey, ...]) -> None:
        new = _KeySet.of(keys)
        if self._keys is not None:
            added = set(new.by_kid) - set(self._keys.by_kid)
            removed = set(self._keys.by_kid) - set(new.by_kid)
            if added or removed:
                self._log.info(
                    "Provider {provider}: signing keys changed (added {added}, removed {removed})",
                    provider=self.name,
                    added=sorted(added),
                    removed=sorted(removed),
                )
        self._keys = new

    async def key_for(self, kid: str | None, alg: str, *, for_logout: bool = False) -> JWK | None:
        """The verification key a token header names, or None.

        With a ``kid``: the key with that kid, whatever its type (the caller
        checks it fits ``alg``). An unknown kid triggers one JWKS refetch, at
        most once per ``jwks_min_refetch_interval`` (counting every JWKS
        fetch), so a stream of made-up kids cannot hammer the provider.
        ``for_logout`` (logout tokens): at most once per
        ``logout_refetch_interval`` instead, and not counted against the
        logins' budget. Without a ``kid``: the one distinct key that fits
        ``alg``, else None.
        """
        key = self._lookup(kid, alg)
        if key is not None or kid is None or self.metadata is None:
            return key
        async with self._refetch_lock:
            # Another caller may have refetched while this one waited.
            key = self._lookup(kid, alg)
            if key is not None or not self._may_refetch(for_logout):
                return key
            jwks_uri = self.metadata.jwks_uri
            try:
                keys = await self._fetch_keys(jwks_uri, for_logout=for_logout)
            except (ProviderError, HTTPFailure) as error:
                self._log.warn(
                    "Provider {provider}: JWKS refetch for an unknown kid failed: {error}",
                    provider=self.name,
                    error=str(error),
                )
                return None
            self._install_keys(keys)
            return self._lookup(kid, alg)

    def _may_refetch(self, for_logout: bool = False) -> bool:
        now = self._clock.seconds()
        last = self._last_jwks_fetch
        if last is not None and now - last < self._jwks_min_refetch_interval:
            return False  # the keys are fresh: a refetch would find nothing new
        if not for_logout:
            return True
        last_logout = self._last_logout_refetch
        return last_logout is None or now - last_logout >= self._logout_refetch_interval

    def _lookup(self, kid: str | None, alg: str) -> JWK | None:
        keys = self._keys
        if keys is None:
            return None
        if kid is not None:
            found = keys.by_kid.get(kid)
            return found.jwk if found is not None else None
        fitting = [key.jwk for key in keys.keys if key_fits_algorithm(key.jwk, alg)]
        # WSO2 lists each key twice (kids "..._RS256" and "..._PS256"): one key still.
        distinct = {jwk.thumbprint(): jwk for jwk in fitting}
        if len(distinct) == 1:
            return next(iter(distinct.values()))
        return None

    def __repr__(self) -> str:
        state = "ready" if self.ready else f"not ready ({self.last_error})"
        return f"<ProviderClient {self.name} {mask_credentials(self.discovery_url)} {state}>"
