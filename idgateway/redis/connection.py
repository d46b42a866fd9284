"""Where a Redis connection goes and how it is opened and set up.

``Target`` reads the settings once (a URL, or sentinels and a master name);
``Connector`` opens one connection, TLS-verified when the URL says so, and
sets it up (AUTH, ROLE with Sentinel, SELECT) before the pool uses it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, cast

import txredisapi
from cryptography import x509
from OpenSSL.crypto import X509
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

from idgateway.config.model import RedisSettings
from idgateway.redis.errors import RedisUnavailable, describe_failure
from idgateway.redis.protocol import RedisProtocol, SubscriberProtocol
from idgateway.redis.sentinel import master_address
from idgateway.redis.target import Target


def tls_options(host: str, ca_file: str | None) -> Any:
    """Verified TLS for ``host`` (no ALPN: Redis does not speak HTTP).

    Cached per CA file version, so a replaced CA file is read again.
    """
    if ca_file is None:
        return optionsForClientTLS(host, trustRoot=platformTrust())
    try:
        status = os.stat(ca_file)
    except OSError as error:
        raise ValueError(f"cannot read the Redis CA file {ca_file}: {error.strerror}") from None
    return _tls_options_from_file(host, ca_file, (status.st_mtime_ns, status.st_size))


@functools.lru_cache(maxsize=32)
def _tls_options_from_file(host: str, ca_file: str, _version: tuple[int, int]) -> Any:
    try:
        with open(ca_file, "rb") as file:
            pem = file.read()
    except OSError as error:
        raise ValueError(f"cannot read the Redis CA file {ca_file}: {error.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError(f"no PEM certificates in the Redis CA file {ca_file}") from None
    trust = trustRootFromCertificates(
        [Certificate(X509.from_cryptography(certificate)) for certificate in certificates]
    )
    return optionsForClientTLS(host, trustRoot=trust)


class Connector:
    """Opens set-up connections to the server ``target`` names (asking the sentinels first)."""

    def __init__(
        self,
        reactor: Any,
        settings: RedisSettings,
        target: Target,
        on_message: Callable[[bytes, bytes], None],
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._target = target
        # Where a subscriber connection's messages go.
        self._on_message = on_message

    async def open(self, subscriber: bool) -> RedisProtocol:
        target = self._target
        host: str | None
        port: int | None
        if target.sentinels:
            host, port = await master_address(
                self._reactor, target, self._settings.connect_timeout, self.tcp_endpoint
            )
        else:
            host, port = target.host, target.port
        attempt = defer.ensureDeferred(self._connect_and_set_up(host, port, subscriber))
        attempt.addTimeout(self._settings.connect_timeout, self._reactor)
        try:
            return await attempt
        except defer.TimeoutError:
            raise RedisUnavailable(
                f"connecting to {self.where(host, port)} took longer than "
                f"{self._settings.connect_timeout:g} s"
            ) from None

    def where(self, host: str | None, port: int | None) -> str:
        if self._target.path is not None:
            return f"unix:{self._target.path}"
        return f"{host}:{port}"

    def _endpoint(self, host: str | None, port: int | None) -> IStreamClientEndpoint:
        timeout = self._settings.connect_timeout
        if self._target.path is not None:
            return UNIXClientEndpoint(self._reactor, self._target.path, timeout=timeout)
        assert host is not None and port is not None
        endpoint = self.tcp_endpoint(host, port)
        if self._target.tls:
            endpoint = wrapClientTLS(
                tls_options(host, self._settings.ca_file), endpoint, clock=self._reactor
            )
        return endpoint

    def tcp_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        timeout = self._settings.connect_timeout
        # An address needs no resolver thread, and a refused connection is
        # reported at once rather than after HostnameEndpoint's 0.3 s
        # attempt delay.
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host, port, timeout=timeout)

    async def _connect_and_set_up(
        self, host: str | None, port: int | None, subscriber: bool
    ) -> RedisProtocol:
        where = self.where(host, port)
        if subscriber:
            factory = Factory.forProtocol(
                functools.partial(SubscriberProtocol, self._reactor, self._on_message)
            )
        else:
            factory = Factory.forProtocol(functools.partial(RedisProtocol, self._reactor))
        try:
            protocol = cast(RedisProtocol, await self._endpoint(host, port).connect(factory))
        except defer.CancelledError:
            raise
        except Exception as error:
            raise RedisUnavailable(
                f"cannot connect to {where}: {describe_failure(error)}"
            ) from None
        try:
            await self._set_up(protocol, where, subscriber)
        except BaseException:
            protocol.abort()
            raise
        return protocol

    async def _set_up(self, protocol: RedisProtocol, where: str, subscriber: bool) -> None:
        target = self._target

        async def run(*args: Any) -> Any:
            try:
                return await protocol.execute_command(*args)
            except txredisapi.ResponseError as error:
                shown = "AUTH" if args[0] == "AUTH" else " ".join(str(arg) for arg in args)
                raise RedisUnavailable(f"{where} refused {shown}: {error}") from None
            except txredisapi.ConnectionError:
                reason = describe_failure(protocol.lost_reason)
                raise RedisUnavailable(f"{where} closed the connection: {reason}") from None

        answered = False
        if target.password is not None:
            if target.username:
                await run("AUTH", target.username, target.password)
            else:
                await run("AUTH", target.password)
            answered = True
        if target.sentinels:
            role = await run("ROLE")
            if not role or role[0] != b"master":
                shown = role[0].decode("ascii", "replace") if role else "unknown"
                raise RedisUnavailable(f"{where} is a {shown}, not the master")
            answered = True
        # The subscriber subscribes once ready (see _resubscribe); SELECT does
        # not matter to publish/subscribe.
        if target.db and not subscriber:
            await run("SELECT", target.db)
            answered = True
        if not answered:
            # Proves the server answers, not just that the kernel accepted us.
            await run("PING")
