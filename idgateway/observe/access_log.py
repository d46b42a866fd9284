"""The access log and the audit log, as twisted.logger events with structured fields.

Access: one event per finished request (namespace ``idgateway.access``), emitted
from ``GatewaySite.log``, which twisted.web calls from ``Request.finish``.
Audit: logins, failed logins with their reason, sign-outs and back-channel
logouts (namespace ``idgateway.audit``).

What these logs never carry: query strings (authorization codes, tokens and
states travel there), request or response headers (Cookie, Authorization,
Set-Cookie), tokens or secrets. Users are named as ``logging.user_id`` says:
plainly, by a hash, or not at all.

Cheap on the hot path: an event is a dict of values already at hand plus, for
text lines, the line itself made with one f-string; JSON is rendered only when
an observer writes the event.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from time import monotonic, time
from typing import Any, TextIO

from twisted.logger import Logger, LogLevel

from idgateway.config.model import LoggingSettings
from idgateway.observe.log_time import text_timestamp
from idgateway.observe.metrics import METRICS  # metrics hook

access_logger = Logger(namespace="idgateway.access")
audit_logger = Logger(namespace="idgateway.audit")

DEFAULT_SETTINGS = LoggingSettings()

# Text access lines are rendered by log_access into this one field:
#   GET /path 200 1234B route=app1 user=alice gw=1.2ms up=0.8ms id=<request id> ip=<client>
# (user= only when logging.user_id names users; up= only for proxied requests;
# " h2" after ip= for HTTP/2 requests; " cut-off" at the end when the connection
# was lost before the response ended).
_LINE_FORMAT = "{access_line}"
_JSON_FORMAT = "{as_json}"

# The user field for an anonymous request in text lines.
ANONYMOUS = "-"

# Text lines escape what a client or a claim could use to forge a line or a
# field, as nginx does: every byte outside printable ASCII (CR, LF, NUL, ESC,
# and the UTF-8 bytes of U+0085 or U+2028, which some readers take for line
# breaks) becomes \xHH, and so do '"' and '\' (so that \xHH is unambiguous)
# and the space (fields are separated by spaces and not quoted).
_LOG_KEEP = bytes(b for b in range(0x21, 0x7F) if b not in b'"\\')
_LOG_ESCAPED = tuple(chr(b) if b in _LOG_KEEP else f"\\x{b:02X}" for b in range(256))


def log_text(raw: bytes) -> str:
    """``raw`` as a text log field: printable ASCII, the rest escaped as ``\\xHH``."""
    if not raw.translate(None, _LOG_KEEP):
        return raw.decode("ascii")  # the common case: nothing to escape
    escaped = _LOG_ESCAPED
    return "".join([escaped[b] for b in raw])


# HTTP/2 requests are named in access lines: " h2" in text, "protocol": "h2"
# in JSON (HTTP/1.x lines stay as they were).
_HTTP_2 = b"HTTP/2"

# The usual methods, looked up rather than checked on every line.
_LOG_METHODS = {
    method: method.decode("ascii")
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
}


@lru_cache(maxsize=4096)
def log_user(user: str) -> str:
    """A user name (a claim) as a text log field; see log_text."""
    return log_text(user.encode("utf-8", "surrogatepass"))


class _AsJSON:
    """Formats as one JSON object of its fields, only when a log line is written."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __format__(self, spec: str) -> str:
        return json.dumps(self.fields, separators=(",", ":"), default=str)

    def __str__(self) -> str:
        return self.__format__("")


@lru_cache(maxsize=4096)
def user_hash(user: str) -> str:
    """A stable pseudonym for a user: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def user_field(settings: LoggingSettings, user: str | None) -> str | None:
    """The user as the log names it (None: leave it out)."""
    if user is None or settings.user_id == "none":
        return None
    if settings.user_id == "hash":
        return user_hash(user)
    return user


def access_fields(request: Any, now: float) -> dict[str, Any]:
    """The access log fields of a finished request (no query string, no headers)."""
    started = request.idgw_started
    upstream_ms = request.idgw_upstream_ms
    client = getattr(request.client, "host", None) or "unix"
    return {
        "route": request.idgw_route or ANONYMOUS,
        "method": request.method.decode("latin-1"),
        # GatewayRequest.path is the target without its query string; be sure.
        "path": request.path.partition(b"?")[0].decode("latin-1"),
        "status": request.code,
        "bytes": request.sentLength,
        "gateway_ms": None if started is None else round((now - started) * 1000, 1),
        # (kept unrounded on the request: see proxy.response)
        "upstream_ms": None if upstream_ms is None else round(upstream_ms, 1),
        "request_id": request.request_id.decode("latin-1"),
        "client": client,
    }


def log_access(request: Any) -> None:
    """The access log event for a finished GatewayRequest (GatewaySite.log calls this)."""
    finished = monotonic()
    METRICS.request_finished(request, finished)  # metrics hook: counted even with no log
    settings = request.idgw_logging
    if settings is None or not settings.access_log:
        return
    if settings.format != "json":
        out = _direct_out
        if out is not None:
            _write_access_text(out, access_line(request, settings, finished))
            return
        record = _direct_record
        if record is not None:
            record(time(), access_line(request, settings, finished))
            return
    fields = access_fields(request, finished)
    user = user_field(settings, request.idgw_user)
    if user is not None:
        fields["user"] = user
    elif settings.user_id != "none":
        fields["user"] = ANONYMOUS
    cut_off = getattr(request, "idgw_cut_off", False)
    if cut_off:
        fields["cut_off"] = True
    if getattr(request, "clientproto", None) == _HTTP_2:
        fields["protocol"] = "h2"
    if settings.format == "json":
        fields["event"] = "access"
        event = dict(fields, as_json=_AsJSON(fields))
        _emit_info(access_logger, _JSON_FORMAT, event)
    else:
        # The fields stay in the event for observers that want them.
        fields["access_line"] = access_line(request, settings, finished)
        _emit_info(access_logger, _LINE_FORMAT, fields)


def access_line(request: Any, settings: LoggingSettings, now: float) -> str:
    """The text access line of a finished request, read straight off it.

    One f-string: twisted.logger's own formatting of a ten-field format string
    was a tenth of a proxied request's CPU time, and the lines that skip
    twisted.logger need no dict of fields either.
    """
    started = request.idgw_started
    # (user_field and log_text, spelled out for the usual case: one line per
    # request.)
    user = request.idgw_user
    user_id = settings.user_id
    if user_id == "none":
        user = None
    elif user is None:
        user = ANONYMOUS
    elif user_id == "hash":
        user = user_hash(user)
    upstream_ms = request.idgw_upstream_ms
    cut_off = getattr(request, "idgw_cut_off", False)
    path = request.path.partition(b"?")[0]
    return (
        f"{_LOG_METHODS.get(request.method) or log_text(request.method)} "
        f"{log_text(path) if path.translate(None, _LOG_KEEP) else path.decode('ascii')} "
        f"{request.code} "
        f"{request.sentLength}B route={request.idgw_route or ANONYMOUS}"
        f"{'' if user is None else ' user=' + log_user(user)}"
        # (":.1f" writes what str(round(x, 1)) wrote, in one conversion
        # instead of two: both are the correctly rounded digits.)
        f" gw={'None' if started is None else f'{(now - started) * 1000:.1f}'}ms"
        f"{'' if upstream_ms is None else f' up={upstream_ms:.1f}ms'}"
        f" id={request.request_id.decode('latin-1')}"
        f" ip={getattr(request.client, 'host', None) or 'unix'}"
        f"{' h2' if getattr(request, 'clientproto', None) == _HTTP_2 else ''}"
        f"{' cut-off' if cut_off else ''}"
    )


# ---- text straight to twistd's stdout -----------------------------------------------

# Set while twistd writes the log as text on this process's stdout (see
# tap.log_is_text_on_stdout): access lines are then written there directly,
# formatted exactly as twistd's text observer would, which spares each request
# twisted.logger's formatting (a tenth of a proxied request's CPU time).
_direct_out: TextIO | None = None


def write_access_text_to(out: TextIO | None) -> None:
    """Write text access lines to ``out`` (twistd's stdout), or None: log events."""
    global _direct_out
    _direct_out = out


# Set in a worker process (idgateway.workers.master), whose only log observer turns a
# text access line into a compact record for the master anyway: the line goes
# straight there, with its time, instead of through twisted.logger's
# publisher (a twentieth of a worker's time per request).
_direct_record: Callable[[float, str], None] | None = None


def send_access_lines_to(record: Callable[[float, str], None] | None) -> None:
    """Hand text access lines (time, line) to ``record``, or None: log events."""
    global _direct_record
    _direct_record = record


def _write_access_text(out: TextIO, line: str) -> None:
    out.write(f"{text_timestamp(time())} [{access_logger.namespace}#info] {line}\n")
    out.flush()


def _emit_info(logger: Logger, log_format: str, event: dict[str, Any]) -> None:
    """``logger.info(log_format, **event)`` without its per-call level check.

    Logger.emit validates the level with LogLevel.iterconstants(), which sorts
    the constants on every call: two thirds of the cost of an access line.
    """
    event.update(
        log_logger=logger,
        log_level=LogLevel.info,
        log_namespace=logger.namespace,
        # What twisted.logger's text observers would work out from the two
        # above on every line ("namespace#level"), given ready-made.
        log_system=f"{logger.namespace}#info",
        log_source=logger.source,
        log_format=log_format,
        log_time=time(),
    )
    logger.observer(event)


# ---- audit ------------------------------------------------------------------------------


def _settings(request: Any) -> LoggingSettings:
    return getattr(request, "idgw_logging", None) or DEFAULT_SETTINGS


def _audit(request: Any, event: str, text: str, fields: dict[str, Any]) -> None:
    settings = _settings(request)
    fields["event"] = event
    fields["request_id"] = request.request_id.decode("latin-1")
    if settings.format == "json":
        audit_logger.info(_JSON_FORMAT, as_json=_AsJSON(fields), **fields)
    else:
        user = fields.get("user")
        if user is not None:
            # A user name is a claim: escaped like the access line's.
            fields["user"] = log_user(user)
        audit_logger.info(text + " [{request_id}]", **fields)


def login_succeeded(request: Any, *, route: str, user: str) -> None:
    settings = _settings(request)
    shown = user_field(settings, user)
    fields: dict[str, Any] = {"route": route}
    if shown is None:
        _audit(request, "login_succeeded", "route {route}: a user signed in", fields)
    else:
        fields["user"] = shown
        _audit(request, "login_succeeded", "route {route}: {user} signed in", fields)


def login_failed(request: Any, *, route: str, reason: str) -> None:
    fields: dict[str, Any] = {"route": route, "reason": reason}
    _audit(request, "login_failed", "route {route}: login failed ({reason})", fields)


def signed_out(request: Any, *, route: str, user: str) -> None:
    shown = user_field(_settings(request), user)
    fields: dict[str, Any] = {"route": route}
    if shown is None:
        _audit(request, "signed_out", "route {route}: a user signed out", fields)
    else:
        fields["user"] = shown
        _audit(request, "signed_out", "route {route}: {user} signed out", fields)


def backchannel_logout(
    request: Any, *, route: str, sid: object, sub: object, ended: object
) -> None:
    """The provider ended sessions; sid and sub are logged as hashes only."""
    fields: dict[str, Any] = {
        "route": route,
        "sid": None if sid is None else user_hash(str(sid)),
        "sub": None if sub is None else user_hash(str(sub)),
        "ended": ended,
    }
    _audit(
        request,
        "backchannel_logout",
        "route {route}: back-channel logout for sid#{sid} sub#{sub}: {ended}",
        fields,
    )


# The clock the access log measures with (monotonic: immune to clock steps);
# the C function itself, not a function calling it: two calls per request.
now = monotonic
