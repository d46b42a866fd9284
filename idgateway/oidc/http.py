"""Outbound HTTP to OpenID providers: pooled treq clients, verified TLS, timeouts.

One ``HTTPClient`` per provider (``make_http_client``), each with its own
connection pool, so a slow or dead provider never holds connections another
tenant needs. Certificates are verified against the provider's CA bundle or
the platform's trust store; turning that off takes an explicit flag.

``send`` is the one way the rest of ``idgateway.oidc`` talks HTTP: it bounds
the whole exchange (connect, response head and body) by one deadline on an
injected clock, caps the body size and never follows redirects.

Metrics: a client made with ``calls=`` (a ``CallObserver``, e.g.
``GatewayMetrics.provider_calls(name)``) has every ``send(..., call=...)``
timed on the same clock, and its failures counted by kind: ``connect``,
``timeout``, ``too_large`` and ``http_4xx``/``http_5xx`` here, ``invalid``
by the caller that could not use the answer (``count_error``). A cancelled
call (the browser went away) is neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

import attrs
import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.ssl import (
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from idgateway._twisted.client_pool import quiet
from idgateway.config.values import mask_credentials
from idgateway.oidc import bounded_json
from idgateway.server.tls import HTTP_1_1, client_tls_options, trust_root_from_file

_T = TypeVar("_T")

# Discovery documents, key sets and token responses are a few KiB.
DEFAULT_MAX_BODY = 1024 * 1024

IDLE_CONNECTION_TIMEOUT = 15


class HTTPFailure(Exception):
    """No usable HTTP response: the exchange timed out, failed or was too large.

    ``kind`` is ``"timeout"``, ``"connect"`` (includes TLS failures) or
    ``"too_large"``; the message is for people and holds no secrets.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class CallObserver(Protocol):
    """Where a provider's HTTP client reports its calls (``idgateway.observe.metrics``)."""

    def observe(self, call: str, seconds: float) -> None: ...

    def error(self, call: str, kind: str) -> None: ...


class ProviderHTTPClient(HTTPClient):
    """A treq client for one provider, that may report its calls to ``calls``."""

    def __init__(self, agent: Any, *, calls: CallObserver | None = None, **options: Any) -> None:
        super().__init__(agent, **options)
        self.calls = calls


def count_error(http: HTTPClient, call: str, kind: str) -> None:
    """Count a failed ``call`` whose HTTP exchange itself went fine (kind ``invalid``)."""
    calls = getattr(http, "calls", None)
    if calls is not None:
        calls.error(call, kind)


@attrs.frozen
class HTTPResult:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not JSON or nests too deep."""
        return bounded_json.loads(self.body)


def make_http_client(
    reactor: Any,
    *,
    ca_file: str | None,
    insecure_skip_verify: bool,
    pool_size: int = 10,
    timeout: float = 10,
    calls: CallObserver | None = None,
    client_certificate: tuple[str, str] | None = None,
) -> ProviderHTTPClient:
    """A treq client with its own persistent pool, for one provider.

    ``ca_file`` is a PEM bundle (one or more certificates) to trust instead of
    the platform's store; it is read now, so a bad path fails at start
    (``idgateway.server.tls.TLSConfigurationError``). ``insecure_skip_verify`` turns
    off certificate and host name checks entirely: the caller must have logged
    a warning. ``timeout`` bounds connection set-up; use ``send`` for a
    deadline on whole requests. ``calls`` receives each call's time and failures.
    ``client_certificate`` is (certificate PEM file, key PEM file) for mutual
    TLS (``client_auth: tls_client_auth``); read now.
    """
    policy: IPolicyForHTTPS
    if insecure_skip_verify:
        policy = UnverifiedTLSPolicy()
    elif client_certificate is not None:
        policy = MutualTLSPolicy(ca_file, *client_certificate)
    else:
        policy = VerifyingTLSPolicy(ca_file)
        if ca_file is not None:
            # Loads and caches the bundle: refuses an unreadable or empty file now.
            client_tls_options("localhost", ca_file)
    # quiet: no "Starting factory" / "Stopping factory" log lines per connection.
    pool = quiet(HTTPConnectionPool(reactor, persistent=True))  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = pool_size
    # WSO2's Tomcat drops idle keep-alive connections after 20 s by default;
    # letting go first avoids sending a (non-retried) token POST into a
    # connection the server is closing.
    pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
    agent = Agent(  # type: ignore[no-untyped-call]
        reactor, contextFactory=policy, connectTimeout=timeout, pool=pool
    )
    return ProviderHTTPClient(agent, calls=calls)


@implementer(IPolicyForHTTPS)
class VerifyingTLSPolicy:
    """Verify the provider's certificate chain and host name (or IP address)."""

    def __init__(self, ca_file: str | None) -> None:
        self._ca_file = ca_file

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        # Cached per host and CA file contents by idgateway.server.tls.
        return client_tls_options(hostname.decode("idna"), self._ca_file)


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """Verify the provider as VerifyingTLSPolicy does, and present the client's
    certificate (RFC 8705 ``tls_client_auth``)."""

    def __init__(self, ca_file: str | None, cert_file: str, key_file: str) -> None:
        with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
            self._certificate = PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
        self._trust = None if ca_file is None else trust_root_from_file(ca_file)
        self._by_host: dict[str, IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("idna")
        creator = self._by_host.get(name)
        if creator is None:
            creator = optionsForClientTLS(
                name,
                trustRoot=self._trust if self._trust is not None else platformTrust(),
                clientCertificate=self._certificate,
                acceptableProtocols=[HTTP_1_1],
            )
            self._by_host[name] = creator
        return creator


@implementer(IPolicyForHTTPS)
class UnverifiedTLSPolicy:
    """Accept any certificate: for ``insecure_skip_verify`` only."""

    def __init__(self) -> None:
        # Deliberately unverified: built only for a provider configured with
        # insecure_skip_verify: true, which routing.state's provider_handle logs as a
        # warning at start. Every other provider gets VerifyingTLSPolicy.
        options = CertificateOptions(verify=False, acceptableProtocols=[HTTP_1_1])
        self._context = options.getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedConnectionCreator(self._context, hostname)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedConnectionCreator:
    def __init__(self, context: SSL.Context, hostname: bytes) -> None:
        self._context = context
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip_address(self._hostname):
            # Still send SNI: a server with several certificates needs it to answer at all.
            connection.set_tlsext_host_name(self._hostname)
        return connection


def _is_ip_address(hostname: bytes) -> bool:
    text = hostname.decode("ascii", "replace")
    return isIPAddress(text) or isIPv6Address(text)


async def with_timeout(awaitable: Awaitable[_T], timeout: float, clock: IReactorTime) -> _T:
    """Await ``awaitable``, cancelling it and raising HTTPFailure("timeout") after ``timeout``."""
    deferred: defer.Deferred[_T] = defer.ensureDeferred(awaitable)  # type: ignore[arg-type]
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        deferred.cancel()

    # Not Deferred.addTimeout: a cancelled Agent request fails with its own
    # wrapper around CancelledError, which addTimeout would not recognise.
    call = clock.callLater(timeout, expire)
    try:
        return await deferred
    except Exception:
        if timed_out:
            raise HTTPFailure("timeout", f"no complete response within {timeout:g} s") from None
        raise
    finally:
        if call.active():
            call.cancel()


async def send(
    http: HTTPClient,
    method: str,
    url: str,
    *,
    clock: IReactorTime,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    call: str | None = None,
) -> HTTPResult:
    """One request and its whole body, within ``timeout`` seconds on ``clock``.

    ``data`` is sent form-urlencoded. Any status is returned; only a missing
    or unusable response raises HTTPFailure. Cancelling the caller cancels the
    request. ``call`` names it for the client's ``calls`` observer, if any.
    """
    exchange = _exchange(http, method, url, headers or {}, data, max_body)
    calls = getattr(http, "calls", None) if call is not None else None
    if calls is None:
        return await with_timeout(exchange, timeout, clock)
    assert call is not None
    started = clock.seconds()
    try:
        result = await with_timeout(exchange, timeout, clock)
    except HTTPFailure as failure:
        calls.observe(call, clock.seconds() - started)
        calls.error(call, failure.kind)
        raise
    calls.observe(call, clock.seconds() - started)
    if result.status >= 400:
        calls.error(call, "http_5xx" if result.status >= 500 else "http_4xx")
    return result


async def _exchange(
    http: HTTPClient,
    method: str,
    url: str,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None,
    max_body: int,
) -> HTTPResult:
    request_headers = {"Accept": "application/json", **headers}
    try:
        response: IResponse = await http.request(
            method,
            url,
            headers=Headers({name: [value] for name, value in request_headers.items()}),
            data=dict(data) if data is not None else None,
            allow_redirects=False,
        )
    except defer.CancelledError:
        raise
    except Exception as error:
        if _cancelled(error):
            raise defer.CancelledError() from error
        shown = mask_credentials(url)
        raise HTTPFailure("connect", f"{method} {shown} failed: {_describe(error)}") from error
    if response.length is not None and isinstance(response.length, int):
        if response.length > max_body:
            shown = mask_credentials(url)
            too_large = f"{method} {shown}: response larger than {max_body} bytes"
            raise HTTPFailure("too_large", too_large)
    body = await _read_body(response, max_body, f"{method} {mask_credentials(url)}")
    return HTTPResult(status=response.code, headers=response.headers, body=body)


class _BodyTooLarge(Exception):
    pass


async def _read_body(response: IResponse, max_body: int, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0

    def collect(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > max_body:
            # treq closes the connection when the collector raises.
            raise _BodyTooLarge()
        chunks.append(chunk)

    try:
        await treq.collect(response, collect)
    except defer.CancelledError:
        raise
    except _BodyTooLarge:
        raise HTTPFailure("too_large", f"{what}: response larger than {max_body} bytes") from None
    except Exception as error:
        if _cancelled(error):
            raise defer.CancelledError() from error
        raise HTTPFailure(
            "connect", f"{what}: reading the response failed: {_describe(error)}"
        ) from error
    return b"".join(chunks)


def _cancelled(error: BaseException) -> bool:
    # Agent reports a cancelled request as ResponseNeverReceived([CancelledError]).
    reasons = getattr(error, "reasons", None)
    return isinstance(reasons, list) and any(
        isinstance(getattr(reason, "value", None), defer.CancelledError) for reason in reasons
    )


def _describe(error: object) -> str:
    # ResponseFailed and friends wrap a list of Failures; show the innermost reasons.
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons:
        return "; ".join(_describe(getattr(r, "value", r)) for r in reasons)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
