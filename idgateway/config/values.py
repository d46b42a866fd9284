"""The syntax of single configuration values: durations, sizes, names, addresses, URLs.

Each ``parse_*`` function takes the text of one value and returns it converted,
or raises ValueError whose message says what is wrong and shows an accepted
form; ``idgateway.config.load`` adds the file, line and key. Nothing here reads
files or knows about YAML, so every rule is testable on its own.

Durations: ``250ms``, ``30s``, ``5m``, ``1h``, ``2d``, compounds such as ``1h30m``,
or a plain number of seconds. Sizes: a plain number of bytes, or a number with
a unit. Every size unit is a power of 1024 whether or not it has the ``i``
(``10KB`` == ``10KiB`` == 10240 bytes), as in nginx's ``client_max_body_size``:
people who write ``10MB`` for a body limit mean "ten megabytes as my tools
count them", and two meanings for one spelling would be a trap.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from urllib.parse import urlsplit

from idgateway.config.model import Upstream
from idgateway.http.paths import AmbiguousPath, canonical_path

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

DURATION_FORMS = "a number of seconds or a number with a unit: 250ms, 30s, 5m, 1h, 2d, 1h30m"
SIZE_FORMS = "a number of bytes or a number with a unit: 512, 64KB, 10MB, 1GB (1KB = 1024 bytes)"


def parse_duration(value: str | int | float) -> float:
    """Seconds for ``value``; raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({DURATION_FORMS})")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if _is_plain_number(text):
            seconds = float(text)
        elif _DURATION_WHOLE.fullmatch(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ValueError(f"{value!r} is not a duration; expected {DURATION_FORMS}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration; expected {DURATION_FORMS}")
    return seconds


def parse_size(value: str | int | float) -> int:
    """Bytes for ``value``; raises ValueError saying what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size ({SIZE_FORMS})")
    if isinstance(value, int):
        number, multiplier = float(value), 1
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_FORMS}")
        number, multiplier = value, 1
    else:
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; expected {SIZE_FORMS}")
        number, multiplier = float(match.group(1)), _SIZE_UNITS[match.group(2)]
        if multiplier == 1 and not number.is_integer():
            raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_FORMS}")
    if number < 0:
        raise ValueError(f"{value!r} is not a size; expected {SIZE_FORMS}")
    return round(number * multiplier)


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` that parse_duration reads back."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """``size`` in the largest 1024-based unit that divides it exactly."""
    for unit, length in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= length and size % length == 0:
            return f"{size // length}{unit}"
    return f"{size}B"


def _is_plain_number(text: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)?", text) is not None


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
UPSTREAM_FORMS = "http://host[:port][/path], https://host[:port][/path] or unix:/path/to.sock"


def parse_route_name(value: str) -> str:
    if not _ROUTE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a route name; use letters, digits, '_', '.' and '-'")
    return value


def check_hostname(name: str, original: str) -> None:
    """Raise ValueError unless ``name`` (lower case) is a DNS host name."""
    if ":" in name:
        raise ValueError(f"{original!r}: leave out the port, e.g. app1.example.com")
    if not name.isascii():
        try:
            ascii_form = name.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_form = "xn--..."
        raise ValueError(f"{original!r}: write international names in ASCII, e.g. {ascii_form}")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{original!r} is not a valid host name, e.g. app1.example.com")


def parse_host_pattern(value: str) -> str:
    """An exact host name, ``[ipv6]`` literal or ``*.suffix`` wildcard, lower-cased."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):  # an IPv6 literal, as in Host: [::1]:8443
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1])}]"
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address, e.g. [2001:db8::1]") from None
    if name.startswith("*.") and "*" not in name[2:]:
        check_hostname(name[2:], value)
    elif "*" in name:
        raise ValueError(f"{value!r}: '*' may only be the whole first label, e.g. *.example.com")
    else:
        check_hostname(name, value)
    return name


def parse_listen_address(value: str) -> tuple[str, int]:
    """``host:port``, ``[ipv6]:port``, ``:port`` or ``port`` (all interfaces) as (host, port).

    Port 0 is accepted: the system picks a free port, which tests rely on.
    """
    value = value.strip()
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(\d+)", value)
    if bracketed:
        host, port = bracketed.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address, e.g. [::1]:8443") from None
    elif value.isdigit() or (value.startswith(":") and value[1:].isdigit()):
        host, port = "0.0.0.0", value.lstrip(":")
    elif value.count(":") == 1 and value.rsplit(":", 1)[1].isdigit():
        host, port = value.rsplit(":", 1)
        if not re.fullmatch(r"[\d.]+", host):
            check_hostname(host.lower(), host)
        else:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address, e.g. 127.0.0.1") from None
    else:
        raise ValueError(
            f"{value!r} is not a listen address; expected host:port, [ipv6]:port or :port,"
            " e.g. 127.0.0.1:8080"
        )
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range; expected 1-65535")
    return host, int(port)


def parse_tls_version(value: str) -> str:
    version = value.strip().removeprefix("TLSv").removeprefix("TLS")
    if version not in ("1.2", "1.3"):
        raise ValueError(f'unsupported TLS version {value!r}; expected "1.2" or "1.3"')
    return version


def parse_ciphers(value: str) -> str:
    """An OpenSSL cipher list that selects at least one cipher."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    except ssl.SSLError:
        raise ValueError(
            f"no cipher matches {value!r}; expected an OpenSSL cipher list, e.g. ECDHE+AESGCM"
        ) from None
    return value


def parse_network(value: str) -> str:
    """An IP address or CIDR network as a CIDR string (host bits cleared)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address or network; expected e.g. 10.0.0.0/8 or 192.0.2.7"
        ) from None


def parse_upstream_url(value: str) -> Upstream:
    """An Upstream with the model's default pool size and no CA file."""
    url = value.strip()
    scheme, colon, rest = url.partition(":")
    if not colon or any(character.isspace() for character in url):
        raise ValueError(f"{url!r} is not a URL; expected {UPSTREAM_FORMS}")
    scheme = scheme.lower()
    if scheme == "unix":
        socket_path = rest[2:] if rest.startswith("///") else rest
        if not socket_path.startswith("/") or socket_path.startswith("//"):
            raise ValueError(f"{url!r}: the socket path must be absolute, e.g. unix:/run/app.sock")
        return Upstream(url=url, kind="unix", socket_path=socket_path)
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme {scheme!r} in {url!r}; expected {UPSTREAM_FORMS}")
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. a bracketed host that is not an IPv6 address
        raise ValueError(
            f"{url!r} is not a valid URL ({error}); expected {UPSTREAM_FORMS}"
        ) from None
    if not rest.startswith("//") or not parts.hostname:
        raise ValueError(f"{url!r} has no host; expected e.g. {scheme}://127.0.0.1:3000")
    if "?" in url or "#" in url:
        raise ValueError(f"{url!r} must not have a query or fragment; expected {UPSTREAM_FORMS}")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r} must not contain a user name or password")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError(f"{url!r} has a bad port; expected 1-65535, e.g. {scheme}://host:3000")
    host = parts.hostname
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {url!r} is not an IPv6 address") from None
    else:
        check_hostname(host, host)
    return Upstream(
        url=url,
        kind="https" if scheme == "https" else "http",
        host=host,
        port=port or (443 if scheme == "https" else 80),
        base_path=parts.path.rstrip("/"),
    )


def parse_path_prefix(value: str) -> str:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError(f"{value!r} is not a path prefix; it must start with '/', e.g. /api/")
    return canonical_prefix(value)


def canonical_prefix(value: str) -> str:
    """A configured path prefix in the canonical form request paths are matched in.

    Non-ASCII and other characters a path cannot carry bare become escapes (as
    browsers send them); a prefix no canonical path could start with is refused.
    """
    try:
        canonical = canonical_path(value.encode("utf-8"))
    except AmbiguousPath as error:
        raise ValueError(f"{value!r} cannot match any request path: it has {error}") from None
    text = canonical.decode("latin-1")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise ValueError(f"{value!r} has dot segments; write {text!r}")
    return text


# scheme://user:password@ up to the LAST "@" before whitespace or a quote: a
# password may hold "/", "?", "#" and "@" (openssl rand -base64 gives "/").
_URL_CREDENTIALS = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://)([^/?#@\s:'"]*)(?::[^\s'"]*)?@""")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    ``https://user:pass@host/x`` -> ``https://user:***@host/x``, and
    ``redis://:pass@host`` -> ``redis://:***@host``: for logs, /status,
    /readyz and ``check``, which must show where, never the secret.
    """
    if "@" not in text:
        return text
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", text)
