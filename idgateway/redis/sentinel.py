"""Sentinel: ask the sentinels, in order, where the master is now."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory

from idgateway.redis.errors import RedisUnavailable, describe_failure
from idgateway.redis.protocol import RedisProtocol
from idgateway.redis.target import Target


async def master_address(
    reactor: Any,
    target: Target,
    connect_timeout: float,
    tcp_endpoint: Callable[[str, int], IStreamClientEndpoint],
) -> tuple[str, int]:
    """The master's address from the first sentinel that knows it."""
    problems = []
    for host, port in target.sentinels:
        attempt = defer.ensureDeferred(_ask_sentinel(reactor, target, tcp_endpoint, host, port))
        attempt.addTimeout(connect_timeout, reactor)
        try:
            reply = await attempt
        except defer.TimeoutError:
            problems.append(f"{host}:{port} did not answer within {connect_timeout:g} s")
            continue
        except RedisUnavailable as error:
            problems.append(str(error))
            continue
        if not reply or len(reply) != 2:
            problems.append(f"{host}:{port} does not know a master {target.master_name!r}")
            continue
        try:
            return bytes(reply[0]).decode("ascii"), int(reply[1])
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{host}:{port} gave a strange address {reply!r}")
    raise RedisUnavailable(
        f"no Sentinel named the master {target.master_name!r}: {'; '.join(problems)}"
    )


async def _ask_sentinel(
    reactor: Any,
    target: Target,
    tcp_endpoint: Callable[[str, int], IStreamClientEndpoint],
    host: str,
    port: int,
) -> Any:
    endpoint = tcp_endpoint(host, port)
    try:
        protocol = cast(
            RedisProtocol,
            await endpoint.connect(Factory.forProtocol(functools.partial(RedisProtocol, reactor))),
        )
    except defer.CancelledError:
        raise
    except Exception as error:
        raise RedisUnavailable(f"Sentinel {host}:{port}: {describe_failure(error)}") from None
    try:
        return await protocol.execute_command(
            "SENTINEL", "get-master-addr-by-name", target.master_name
        )
    except txredisapi.ResponseError as error:
        raise RedisUnavailable(f"Sentinel {host}:{port} refused: {error}") from None
    except txredisapi.ConnectionError:
        reason = describe_failure(protocol.lost_reason)
        raise RedisUnavailable(f"Sentinel {host}:{port}: {reason}") from None
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()
