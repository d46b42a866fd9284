"""HTTP/2 in the file: a listener's ``http2`` switch and the top-level ``http2:`` limits."""

from __future__ import annotations

from typing import Any

import yaml

from idgateway.config import values as value_syntax
from idgateway.config.model import HTTP2Limits
from idgateway.config.schema import (
    INVALID,
    Converter,
    Field,
    Reader,
    _describe,
    _Invalid,
    record,
)

PRIOR_KNOWLEDGE = "prior_knowledge"


def _http2_switch(reader: Reader, node: yaml.Node, key: str) -> bool | str | _Invalid:
    value = reader.value(node, key)
    if value is INVALID or isinstance(value, bool) or value == PRIOR_KNOWLEDGE:
        return value  # type: ignore[no-any-return]
    expected = "expected true, false or prior_knowledge"
    return reader.problem(node, key, f"{expected}; got {_describe(node)}")


def check_listener_http2(
    reader: Reader, node: yaml.Node | None, key: str, value: Any, *, tls: bool
) -> Any:
    """The listener's http2 value, or a problem where it cannot work on this listener."""
    if node is None or value is INVALID:
        return value
    if tls and value == PRIOR_KNOWLEDGE:
        return reader.problem(
            node,
            key,
            "prior_knowledge (h2c) is for plain listeners behind a load balancer; on a TLS "
            "listener browsers choose h2 by ALPN: write http2: true",
        )
    if not tls and value is True:
        return reader.problem(
            node,
            key,
            "a plain listener speaks HTTP/2 only to clients that know it in advance: write "
            "http2: prior_knowledge (for a trusted load balancer), or add tls: for browsers",
        )
    return value


def _bounded(convert: Converter, low: int, high: int, example: str, span: str = "") -> Converter:
    def check(reader: Reader, node: yaml.Node, key: str) -> Any:
        value = convert(reader, node, key)
        if value is INVALID or low <= value <= high:
            return value
        return reader.problem(
            node, key, f"must be from {span or f'{low} to {high}'}, e.g. {example}; got {value}"
        )

    return check


def _whole_number(reader: Reader, node: yaml.Node, key: str) -> int | _Invalid:
    value = reader.value(node, key)
    if value is INVALID or type(value) is int:
        return value  # type: ignore[no-any-return]
    return reader.problem(node, key, f"expected a whole number; got {_describe(node)}")


def _size(reader: Reader, node: yaml.Node, key: str) -> int | _Invalid:
    text = reader.text(node, key, f"a size ({value_syntax.SIZE_FORMS})")
    if text is INVALID:
        return INVALID
    try:
        return value_syntax.parse_size(text)
    except ValueError as error:
        return reader.problem(node, key, str(error))


def _default(name: str) -> Any:
    return getattr(HTTP2Limits(), name)


HTTP2_FIELDS = (
    Field(
        "max_concurrent_streams",
        _bounded(_whole_number, 1, 1000, "128"),
        default=_default("max_concurrent_streams"),
        type_text="integer from 1 to 1000",
        default_text="default ``128``",
        description=r"""
            Requests one client connection may have in flight at once (HTTP/2's
            ``SETTINGS_MAX_CONCURRENT_STREAMS``). A client that opens more is
            closed with ``GOAWAY``. Browsers open far fewer.
            Example: ``max_concurrent_streams: 100``
        """,
    ),
    Field(
        "initial_window_size",
        _bounded(_size, 16 * 1024, 16 * 1024 * 1024, "256KB", "16KB to 16MB"),
        default=_default("initial_window_size"),
        type_text="size from ``16KB`` to ``16MB``",
        default_text="default ``256KB``",
        description=r"""
            Request body a stream may send ahead of the upstream (its flow-control
            window): what one upload can make the gateway hold, at most. Larger
            windows speed up uploads over long round trips; a connection can hold up
            to ``max_concurrent_streams`` times this. Example: ``initial_window_size: 1MB``
        """,
    ),
    Field(
        "max_header_list_size",
        _bounded(_size, 4 * 1024, 1024 * 1024, "64KB", "4KB to 1MB"),
        default=_default("max_header_list_size"),
        type_text="size from ``4KB`` to ``1MB``",
        default_text="default ``64KB``",
        description=r"""
            Largest decoded header block of a request (HPACK's compression makes a
            small block decode to much more: past this the connection is closed).
            Each route's ``max_header_size`` (431) still applies below it.
            Example: ``max_header_list_size: 32KB``
        """,
    ),
    Field(
        "max_resets_per_minute",
        _bounded(_whole_number, 1, 100000, "200"),
        default=_default("max_resets_per_minute"),
        type_text="integer from 1 to 100000",
        default_text="default ``200``",
        description=r"""
            Streams a client may cancel (``RST_STREAM``) per connection and minute;
            past that the connection is closed with ``GOAWAY`` (``ENHANCE_YOUR_CALM``):
            the rapid-reset attack (CVE-2023-44487) opens and cancels streams in a
            loop to make the server start work it never finishes.
            Example: ``max_resets_per_minute: 100``
        """,
    ),
)

HTTP2_FIELD = Field(
    "http2",
    record(HTTP2_FIELDS, "a mapping like {max_concurrent_streams: 128}", HTTP2Limits),
    default=HTTP2Limits(),
    type_text="mapping",
    default_text=(
        "default ``{max_concurrent_streams: 128, initial_window_size: 256KB, "
        "max_header_list_size: 64KB, max_resets_per_minute: 200}``"
    ),
    fields=HTTP2_FIELDS,
    description=r"""
        Limits on each HTTP/2 client connection, on every listener that speaks
        HTTP/2 (see the listener's ``http2``). The defaults suit browsers; see
        :ref:`security:HTTP/2 hardening` for the attacks they bound. Example::

            http2:
              max_concurrent_streams: 100
              max_resets_per_minute: 100
    """,
)

LISTENER_HTTP2_FIELD = Field(
    "http2",
    _http2_switch,
    type_text="``true``, ``false`` or ``prior_knowledge``",
    default_text="default: ``true`` on TLS listeners, ``false`` on plain ones",
    description=r"""
        HTTP/2 on this listener. ``true`` (TLS listeners only): TLS offers ``h2``
        and ``http/1.1`` by ALPN and each client picks (browsers pick h2;
        WebSockets still upgrade over HTTP/1.1). ``false``: HTTP/1.1 only.
        ``prior_knowledge`` (plain listeners only): h2c for a trusted load
        balancer that sends the HTTP/2 preface at once; HTTP/1.1 clients are
        still served. ``Upgrade: h2c`` is never honoured.
        Example: ``http2: false``
    """,
)
