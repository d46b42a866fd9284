"""The demo back end: a page that shows exactly what reached the application.

It does the job of WSO2's sample "request-logger" app. Put it behind a route
and browse to it: after the login the page shows who the gateway says you are
(the identity headers, at the top), then the method, path, cookies and every
request header in the order it arrived. Any method on any path gets the same
answer. Ask with ``Accept: application/json`` for the same facts as JSON.

Run it with::

    python -m idgateway.demo.echo --listen 127.0.0.1:8081
    python -m idgateway.demo.echo --listen unix:/run/idgateway/echo.sock
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import os
import socket
import stat
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.http import HTTPFactory
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from idgateway.demo.assertion_check import AssertionCheck

# Header names (lower case) that carry the user's identity, as set by this
# gateway and by the usual alternatives (oauth2-proxy, mod_auth_openidc,
# Apache's REMOTE_USER conventions). Matched as prefixes.
IDENTITY_HEADER_PREFIXES: tuple[str, ...] = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-org",
    "x-forwarded-access-token",
    "x-forwarded-client-id",
    "x-remote-",
    "remote-user",
    "x-auth-request-",
    "oidc_",
    "oidc-",
)

# Where the "Signed in as" line finds the user's name and email, best first.
USER_NAME_HEADERS = (
    "x-forwarded-preferred-username",
    "x-forwarded-user",
    "x-remote-user",
    "remote-user",
    "x-auth-request-preferred-username",
    "x-auth-request-user",
    "oidc_claim_preferred_username",
    "oidc_claim_sub",
)
USER_EMAIL_HEADERS = ("x-forwarded-email", "x-auth-request-email", "oidc_claim_email")

DEFAULT_LISTEN = "127.0.0.1:8081"


def is_identity_header(name: str) -> bool:
    return name.lower().startswith(IDENTITY_HEADER_PREFIXES)


class ArrivalOrderHeaders(Headers):
    """Request headers that also remember each field in the order it arrived.

    twisted's ``Headers`` groups a repeated field under its first occurrence,
    so ``A, B, A`` reads back as ``A, A, B``; an echo must show what was sent.
    """

    __slots__ = ("arrival_order",)

    def __init__(self) -> None:
        super().__init__()
        self.arrival_order: list[tuple[bytes, bytes]] = []

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        super().addRawHeader(name, value)
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("utf-8") if isinstance(value, str) else value
        self.arrival_order.append((raw_name, raw_value))


class ArrivalOrderRequest(Request):
    """A ``Request`` whose headers keep their arrival order (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requestHeaders = ArrivalOrderHeaders()


def _text(raw: bytes) -> str:
    # Header values are bytes on the wire; UTF-8 is what identity providers
    # send for non-ASCII names, and a bad byte must not break the page.
    return raw.decode("utf-8", "replace")


def headers_in_arrival_order(request: Request) -> list[tuple[str, str]]:
    """Every request header as (lower-case name, value), repeats included.

    Exact arrival order needs an ``ArrivalOrderRequest`` (what ``make_site``
    uses); under any other ``Site`` repeated fields come out grouped.
    """
    headers = request.requestHeaders
    if isinstance(headers, ArrivalOrderHeaders):
        pairs: list[tuple[bytes, bytes]] = headers.arrival_order
    else:
        pairs = [(name, value) for name, values in headers.getAllRawHeaders() for value in values]
    return [(_text(name).lower(), _text(value)) for name, value in pairs]


def describe_address(address: IAddress | None) -> str:
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{name}" if name else "unix socket"
    return str(address)


def _body_length(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    # twisted spools the body to memory or a temporary file; its size is
    # where the end is, without reading it.
    position = content.tell()
    length = content.seek(0, os.SEEK_END)
    content.seek(position)
    return length


class RequestFacts:
    """What the echo reports about one request, decoded for display."""

    def __init__(self, request: Request, check: AssertionCheck | None = None) -> None:
        uri = _text(request.uri)
        self.method = _text(request.method)
        self.uri = uri
        self.path, _, self.query = uri.partition("?")
        self.headers = headers_in_arrival_order(request)
        self.cookies = {
            _text(name): _text(value) for name, value in request.received_cookies.items()
        }
        self.body_length = _body_length(request)
        self.client = describe_address(request.getClientAddress())
        # The gateway's signed identity assertion, verified (--assertion-jwks).
        self.assertion = check.check(self.headers) if check is not None else None

    def as_json(self) -> dict[str, Any]:
        document = {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [[name, value] for name, value in self.headers],
            "cookies": self.cookies,
            "body_length": self.body_length,
        }
        if self.assertion is not None:
            document["assertion"] = self.assertion
        return document


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; }
main { max-width: 62rem; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 0 0 .6rem; }
.lede { color: #5a6275; margin: 0 0 1.25rem; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px;
          padding: 1rem 1.25rem; margin-bottom: 1rem; }
section.identity { border-left: 6px solid #2e9d5b; background: #f1fbf4; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .3rem .6rem;
         border-bottom: 1px solid #eceef2; }
th { width: 16rem; font-weight: 600; }
td, th.name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
              overflow-wrap: anywhere; }
th.index { width: 2.5rem; color: #8a91a2; font-weight: normal; }
tr.identity-row { background: #f1fbf4; }
.who { font-size: 1.05rem; margin: 0 0 .6rem; }
.none { color: #8a91a2; font-style: italic; margin: 0; }
footer { color: #8a91a2; font-size: 13px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
"""


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def _pairs_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f'<tr><th class="name">{_escape(name)}</th><td>{_escape(value)}</td></tr>'
        for name, value in rows
    )
    return f"<table>{body}</table>"


def _signed_in_as(identity: Sequence[tuple[str, str]]) -> str:
    first_values: dict[str, str] = {}
    for name, value in identity:
        first_values.setdefault(name, value)
    user = next((first_values[h] for h in USER_NAME_HEADERS if first_values.get(h)), None)
    email = next((first_values[h] for h in USER_EMAIL_HEADERS if first_values.get(h)), None)
    if user is None and email is None:
        return ""
    who = f"<strong>{_escape(user or email or '')}</strong>"
    if user is not None and email is not None and email != user:
        who += f" ({_escape(email)})"
    return f'<p class="who">Signed in as {who}</p>'


def render_html(facts: RequestFacts) -> str:
    identity = [(name, value) for name, value in facts.headers if is_identity_header(name)]
    if identity:
        identity_html = _signed_in_as(identity) + _pairs_table(identity)
    else:
        identity_html = (
            '<p class="none">None: this request did not come through the gateway, '
            "or its route forwards no identity.</p>"
        )

    assertion_html = ""
    if facts.assertion is not None:
        if facts.assertion["verified"]:
            claims = facts.assertion["claims"]
            rows = [("verified with key", str(facts.assertion["kid"]))]
            rows += [(name, json.dumps(value)) for name, value in claims.items()]
            assertion_html = (
                '<section class="identity"><h2>Signed identity assertion: verified</h2>'
                + _pairs_table(rows)
                + "</section>"
            )
        else:
            assertion_html = (
                "<section><h2>Signed identity assertion: NOT verified</h2>"
                f'<p class="none">{_escape(str(facts.assertion["error"]))}</p></section>'
            )

    request_rows = [
        ("Method", facts.method),
        ("Path", facts.uri),
        ("Body length", f"{facts.body_length} bytes"),
        ("Client", facts.client),
    ]
    request_html = "".join(
        f"<tr><th>{_escape(label)}</th><td>{_escape(value)}</td></tr>"
        for label, value in request_rows
    )

    if facts.cookies:
        cookies_html = _pairs_table(list(facts.cookies.items()))
    else:
        cookies_html = '<p class="none">No cookies.</p>'

    header_rows = "".join(
        '<tr{row_class}><th class="index">{index}</th><th class="name">{name}</th>'
        "<td>{value}</td></tr>".format(
            row_class=' class="identity-row"' if is_identity_header(name) else "",
            index=index,
            name=_escape(name),
            value=_escape(value),
        )
        for index, (name, value) in enumerate(facts.headers, start=1)
    )

    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>idgateway demo back end</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>idgateway demo back end</h1>
<p class="lede">This is the request exactly as it reached the application behind the gateway.</p>
<section class="identity">
<h2>Identity headers</h2>
{identity_html}
</section>
{assertion_html}
<section>
<h2>Request</h2>
<table>{request_html}</table>
</section>
<section>
<h2>Cookies</h2>
{cookies_html}
</section>
<section>
<h2>All headers, in arrival order</h2>
<table>{header_rows}</table>
</section>
<footer>Send <code>Accept: application/json</code> to get this as JSON.</footer>
</main>
</body>
</html>
"""


def format_json(document: dict[str, Any]) -> str:
    """JSON with one top-level key per line and one header pair per line.

    Plain ``indent=2`` spreads every [name, value] pair over four lines, which
    makes the answer tiresome to read in a terminal.
    """
    lines = []
    for key, value in document.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            rendered = f"[\n{items}\n  ]"
        else:
            rendered = json.dumps(value)
        lines.append(f"  {json.dumps(key)}: {rendered}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def wants_json(request: Request) -> bool:
    accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", []))
    return b"application/json" in accept.lower()


class EchoResource(Resource):
    """Answers every method on every path with a description of the request."""

    isLeaf = True

    def __init__(self, check: AssertionCheck | None = None) -> None:
        super().__init__()
        self.check = check

    def render(self, request: Request) -> bytes:
        facts = RequestFacts(request, self.check)
        # The page can show tokens and cookies: keep it out of every cache.
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if wants_json(request):
            request.setHeader(b"content-type", b"application/json")
            return format_json(facts.as_json()).encode("utf-8")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return render_html(facts).encode("utf-8")


# No form parsing: the echo reports the body's length, not its fields.
# (Twisted before 25.5 has no such option, and parses them.)
_NO_FORM_PARSING: dict[str, Any] = (
    {"parsePOSTFormSubmission": False}
    if "parsePOSTFormSubmission" in inspect.signature(HTTPFactory.__init__).parameters
    else {}
)


def make_site(reactor: IReactorTime | None = None, check: AssertionCheck | None = None) -> Site:
    """A ``Site`` serving ``EchoResource`` on every path."""
    return Site(
        EchoResource(check),
        requestFactory=ArrivalOrderRequest,
        reactor=reactor,
        **_NO_FORM_PARSING,
    )


# ---------------------------------------------------------------------------
# Command line


class ListenSpecError(ValueError):
    pass


def parse_listen(spec: str) -> tuple[str, str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``PORT`` or ``unix:PATH``.

    Returns (kind, host-or-path, port) with kind "tcp4", "tcp6" or "unix".
    """
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise ListenSpecError(f"{spec!r}: unix: needs a socket path")
        return "unix", path, 0
    host = "127.0.0.1"
    port_text = spec
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ListenSpecError(f"{spec!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    elif ":" in spec:
        host, _, port_text = spec.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ListenSpecError(f"{spec!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ListenSpecError(f"{spec!r}: the port must be 0-65535")
    return ("tcp6" if ":" in host else "tcp4"), host, port


def _remove_stale_socket(path: str) -> None:
    """Delete a socket file left by a process that died without cleaning up.

    A socket someone still listens on is left alone, so the bind fails loudly.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def _describe_listening(port: IListeningPort) -> str:
    address = port.getHost()
    if isinstance(address, UNIXAddress):
        return describe_address(address)
    return f"http://{describe_address(address)}"


def _log_problems_to_stderr() -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # Warnings and errors only (a traceback from a request, say); the access
    # log would drown them. stdout is left alone for the "listening" line.
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m idgateway.demo.echo",
        description="idgateway demo back end: shows every request it receives.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help=f"HOST:PORT, [V6]:PORT, PORT (on 127.0.0.1) or unix:PATH; repeatable "
        f"(default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--assertion-jwks",
        metavar="URL",
        help="verify the gateway's signed identity assertion against this JWKS "
        "(e.g. http://127.0.0.1:8080/.well-known/idgateway/jwks.json) and show the result",
    )
    parser.add_argument(
        "--assertion-host", metavar="HOST", help="the Host header for fetching the JWKS"
    )
    parser.add_argument(
        "--assertion-audience", metavar="NAME", default="app1", help="the expected aud (app1)"
    )
    args = parser.parse_args(argv)
    check = None
    if args.assertion_jwks:
        check = AssertionCheck(
            args.assertion_jwks, audience=args.assertion_audience, host=args.assertion_host
        )

    from twisted.internet import reactor

    specs: list[str] = args.listen or [DEFAULT_LISTEN]
    endpoints: list[IStreamServerEndpoint] = []
    try:
        for spec in specs:
            kind, where, port = parse_listen(spec)
            if kind == "unix":
                _remove_stale_socket(where)
                endpoints.append(UNIXServerEndpoint(reactor, where))
            elif kind == "tcp6":
                endpoints.append(TCP6ServerEndpoint(reactor, port, interface=where))
            else:
                endpoints.append(TCP4ServerEndpoint(reactor, port, interface=where))
    except ListenSpecError as error:
        parser.error(str(error))

    _log_problems_to_stderr()
    site = make_site(check=check)
    exit_code = 0

    def listening(ports: list[IListeningPort]) -> None:
        where = ", ".join(_describe_listening(port) for port in ports)
        print(f"echo back end listening on {where}", flush=True)

    def failed(failure: Failure) -> None:
        nonlocal exit_code
        exit_code = 1
        error = failure.value
        # gatherResults wraps the first listener's error in a FirstError.
        cause = getattr(error, "subFailure", None)
        message = cause.getErrorMessage() if isinstance(cause, Failure) else str(error)
        print(f"echo back end: cannot listen: {message}", file=sys.stderr, flush=True)
        reactor.stop()

    def start() -> None:
        waiting: Deferred[list[IListeningPort]] = gatherResults(
            [endpoint.listen(site) for endpoint in endpoints], consumeErrors=True
        )
        waiting.addCallbacks(listening, failed)

    # twisted's own SIGINT/SIGTERM handlers stop the reactor, which closes the
    # listeners (and removes unix socket files) before run() returns.
    reactor.callWhenRunning(start)
    reactor.run()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
