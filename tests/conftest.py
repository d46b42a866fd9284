"""Fixtures shared by every test directory (unit, integration, e2e, security)."""

from __future__ import annotations

from tests.redis_process import redis, shared_redis  # noqa: F401 - fixtures
from tests.systemd_helpers import manager, notify_socket  # noqa: F401 - fixtures
