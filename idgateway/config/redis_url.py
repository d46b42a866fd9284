"""Redis URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``, read into their parts.

Pure text handling: the config checks a URL with it when the file is loaded,
and the Redis client reads the same parts when it connects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT = 6379
URL_EXAMPLE = "redis://:s3cret@127.0.0.1:6379/1"
_URL_FORMS = (
    "redis://[:password@]host[:port][/db], rediss://[:password@]host[:port][/db] (TLS), "
    "unix:///path/redis.sock or unix:/path/redis.sock?db=N"
)


def _redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hostport}"
    query = "&".join(
        f"{name}=***" if name == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def _parse_db(text: str, shown: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(
            f"the database in {shown} must be a number like 0 or 1, not {text!r}; "
            f"e.g. {URL_EXAMPLE}"
        )
    db = int(text)
    if db >= 1 << 31:
        raise ValueError(f"the database number in {shown} is too large; e.g. {URL_EXAMPLE}")
    return db


def parse_redis_url(url: str) -> dict[str, Any]:
    """Split a Redis URL into its parts, or raise ValueError saying what is wrong.

    Accepted: ``redis://[[user]:password@]host[:port][/db]`` (the form WSO2's
    guides use), ``rediss://...`` (the same over TLS), ``unix:///path/redis.sock``
    and ``unix:/path/redis.sock?db=N&password=...``. Passwords may be
    percent-encoded. Returns a dict with ``scheme`` ("redis", "rediss",
    "unix"), ``host``, ``port``, ``path``, ``username``, ``password``, ``db``
    and ``tls``. Messages never repeat the password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"a Redis URL is needed, one of {_URL_FORMS}; e.g. {URL_EXAMPLE}")
    url = url.strip()
    shown = repr(_redacted(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    result: dict[str, Any] = {
        "scheme": scheme,
        "host": None,
        "port": None,
        "path": None,
        "username": None,
        "password": None,
        "db": 0,
        "tls": scheme == "rediss",
    }
    if scheme in ("redis", "rediss"):
        if parts.fragment:
            raise ValueError(f"{shown} has a '#' part; percent-encode it as %23 in a password")
        if parts.query:
            raise ValueError(
                f"{shown} has a '?' part, which {scheme}:// URLs do not take; put the database "
                f"in the path, e.g. {URL_EXAMPLE}"
            )
        if not parts.hostname:
            raise ValueError(f"{shown} names no host; e.g. {URL_EXAMPLE}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"{shown} has a bad port (a number from 1 to 65535); e.g. {URL_EXAMPLE}"
            ) from None
        if port == 0:
            raise ValueError(
                f"{shown} has a bad port (a number from 1 to 65535); e.g. {URL_EXAMPLE}"
            )
        path = parts.path.strip("/")
        if "/" in path:
            raise ValueError(
                f"{shown}: only a database number may follow the host; e.g. {URL_EXAMPLE}"
            )
        result.update(
            host=parts.hostname,
            port=port or DEFAULT_PORT,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            db=_parse_db(path, shown) if path else 0,
        )
        if result["password"] == "":
            result["password"] = None
        return result
    if scheme == "unix":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(
                f"{shown}: a unix socket needs an absolute path, "
                "e.g. unix:///run/redis/redis.sock or unix:/run/redis/redis.sock?db=1"
            )
        if parts.hostname:
            raise ValueError(
                f"{shown} names a host; a unix socket URL is unix:///path/redis.sock "
                "(three slashes) or unix:/path/redis.sock"
            )
        result["path"] = path
        if parts.username:
            result["username"] = unquote(parts.username)
        if parts.password:
            result["password"] = unquote(parts.password)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "db":
                result["db"] = _parse_db(value, shown)
            elif name == "password":
                result["password"] = value or None
            else:
                raise ValueError(
                    f"{shown}: unknown parameter {name!r}; a unix socket URL takes db and "
                    "password, e.g. unix:/run/redis/redis.sock?db=1"
                )
        return result
    raise ValueError(
        f"{shown} is not a Redis URL (scheme {parts.scheme or 'missing'!r}); use one of "
        f"{_URL_FORMS}; e.g. {URL_EXAMPLE}"
    )


CLUSTER_EXAMPLE = "cluster: [redis://10.0.0.1:7000, redis://10.0.0.2:7000]"


def parse_cluster_seed(url: str) -> dict[str, Any]:
    """A Redis Cluster seed: a ``redis://`` or ``rediss://`` URL of one node, database 0.

    The parts as ``parse_redis_url`` gives them, or ValueError saying what is wrong.
    """
    parts = parse_redis_url(url)
    shown = repr(_redacted(url.strip()))
    if parts["scheme"] == "unix":
        raise ValueError(
            f"{shown}: a Redis Cluster is reached over TCP; a seed is redis://host:port or "
            f"rediss://host:port, e.g. {CLUSTER_EXAMPLE}"
        )
    if parts["db"] != 0:
        raise ValueError(
            f"{shown} names database {parts['db']}, but a Redis Cluster has only database 0; "
            f"remove the /{parts['db']}"
        )
    return parts
