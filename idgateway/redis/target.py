"""Where a client's connections go: one server (a URL) or the master the sentinels name."""

from __future__ import annotations

import attrs

from idgateway.config.model import RedisSettings
from idgateway.config.redis_url import URL_EXAMPLE, parse_redis_url


@attrs.frozen
class Target:
    """Where the connections go, from RedisSettings."""

    tls: bool
    host: str | None
    port: int | None
    path: str | None
    username: str | None
    password: str | None
    db: int
    sentinels: tuple[tuple[str, int], ...]
    master_name: str | None

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> Target:
        if settings.pool_size < 1:
            raise ValueError(f"Redis pool_size must be at least 1, not {settings.pool_size}")
        for name in ("connect_timeout", "command_timeout"):
            if not getattr(settings, name) > 0:
                raise ValueError(f"Redis {name} must be more than 0 seconds")
        sentinels = tuple((str(host), int(port)) for host, port in settings.sentinels)
        if sentinels:
            if not settings.master_name:
                raise ValueError(
                    "Redis sentinels need master_name, the name the sentinels monitor "
                    "(e.g. mymaster)"
                )
            # A URL with sentinels only brings the password, database and TLS;
            # the sentinels say where the master is.
            parts = parse_redis_url(settings.url) if settings.url else None
            if parts is not None and parts["scheme"] == "unix":
                raise ValueError(
                    "Redis sentinels name TCP masters; a unix: URL cannot go with them"
                )
            return cls(
                tls=bool(parts and parts["tls"]),
                host=None,
                port=None,
                path=None,
                username=parts["username"] if parts else None,
                password=parts["password"] if parts else None,
                db=parts["db"] if parts else 0,
                sentinels=sentinels,
                master_name=settings.master_name,
            )
        if not settings.url:
            raise ValueError(
                f"Redis needs a url (e.g. {URL_EXAMPLE}) or sentinels with a master_name"
            )
        parts = parse_redis_url(settings.url)
        return cls(
            tls=parts["tls"],
            host=parts["host"],
            port=parts["port"],
            path=parts["path"],
            username=parts["username"],
            password=parts["password"],
            db=parts["db"],
            sentinels=(),
            master_name=None,
        )

    def describe(self) -> str:
        """Where we connect, without the password."""
        if self.sentinels:
            listed = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Redis master {self.master_name!r} via Sentinel {listed}"
        if self.path is not None:
            return f"Redis at unix:{self.path}"
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"Redis at {scheme}://{host}:{self.port}/{self.db}"
