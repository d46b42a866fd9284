"""Redis URLs, client settings and the session store's record format, without a server
(against real redis-server processes: tests/integration/test_redis_store.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from idgateway.redis.client import RedisClient, RedisSettings, parse_redis_url
from idgateway.sessions.model import Session
from idgateway.sessions.redis_store import RedisSessionStore, is_session_id
from tests.session_factories import make_session


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1", {"host": "127.0.0.1", "port": 6379, "db": 0, "password": None}),
        (
            "redis://:s3cret@redis.internal:6380/2",
            {"host": "redis.internal", "port": 6380, "db": 2, "password": "s3cret"},
        ),
        (
            "redis://gateway:pa%40ss%2Fword@10.0.0.5/1",
            {"username": "gateway", "password": "pa@ss/word", "db": 1, "tls": False},
        ),
        ("rediss://:pw@redis.example.com:6380/0", {"tls": True, "port": 6380, "password": "pw"}),
        ("redis://[::1]:7000/3", {"host": "::1", "port": 7000, "db": 3}),
        ("unix:///run/redis/redis.sock", {"path": "/run/redis/redis.sock", "db": 0}),
        ("unix:/run/redis/redis.sock?db=4", {"path": "/run/redis/redis.sock", "db": 4}),
        ("unix:/tmp/r.sock?db=1&password=pw", {"path": "/tmp/r.sock", "password": "pw"}),
    ],
)
def test_parse_redis_url_forms(url: str, expected: dict[str, Any]) -> None:
    parsed = parse_redis_url(url)
    for name, value in expected.items():
        assert parsed[name] == value, name


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:6379", ["not a Redis URL", "redis://:s3cret@127.0.0.1:6379/1"]),
        ("127.0.0.1:6379", ["not a Redis URL", "e.g."]),
        ("redis://:hunter2@127.0.0.1:99999/0", ["bad port", "e.g. redis://"]),
        ("redis://:hunter2@127.0.0.1:six/0", ["bad port"]),
        ("redis://127.0.0.1:0", ["bad port"]),
        ("redis://:hunter2@127.0.0.1:6379/main", ["database", "number", "e.g. redis://"]),
        ("redis://127.0.0.1:6379/1/2", ["only a database number"]),
        ("redis://127.0.0.1:6379?db=1", ["'?'", "in the path"]),
        ("redis://:pw@/0", ["names no host"]),
        ("unix:relative/redis.sock", ["absolute path"]),
        ("unix:/run/redis.sock?db=x", ["database"]),
        ("unix:/run/redis.sock?timeout=3", ["unknown parameter 'timeout'"]),
        ("", ["a Redis URL is needed"]),
    ],
)
def test_parse_redis_url_errors(url: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    message = str(raised.value)
    for word in words:
        assert word in message
    assert "hunter2" not in message


def test_settings_are_checked_when_the_client_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="master_name"):
        RedisClient(object(), RedisSettings(sentinels=(("127.0.0.1", 26379),)))
    with pytest.raises(ValueError, match="needs a url"):
        RedisClient(object(), RedisSettings())
    with pytest.raises(ValueError, match="pool_size"):
        RedisClient(object(), RedisSettings(url="redis://h", pool_size=0))
    with pytest.raises(ValueError, match="cannot read the Redis CA file"):
        RedisClient(
            object(), RedisSettings(url="rediss://h", ca_file=str(tmp_path / "missing.pem"))
        )
    # With sentinels, a URL only brings the password, database and TLS.
    client = RedisClient(
        object(),
        RedisSettings(
            url="redis://:pw@ignored.example:1/4",
            sentinels=(("10.0.0.5", 26379),),
            master_name="mymaster",
        ),
    )
    target = client._target
    assert (target.password, target.db, target.tls, target.host) == ("pw", 4, False, None)
    assert client.description == "Redis master 'mymaster' via Sentinel 10.0.0.5:26379"
    assert "pw" not in client.description
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificates"):
        RedisClient(object(), RedisSettings(url="rediss://h", ca_file=str(garbage)))


def test_new_session_ids_are_256_bit_base64url() -> None:
    ids = {RedisSessionStore.new_session_id() for _ in range(200)}
    assert len(ids) == 200
    for session_id in ids:
        assert len(session_id) == 43
        assert is_session_id(session_id)
    assert not is_session_id("A" * 42)
    assert not is_session_id("A" * 44)
    assert not is_session_id("A" * 42 + "B")  # low bits of the last character must be zero
    assert not is_session_id("A" * 42 + "=")
    assert not is_session_id("+" * 43)
    assert not is_session_id(None)


def test_session_json_is_what_the_store_seals() -> None:
    # The stored JSON is Session.to_json_dict(): what other tools may rely on.
    session = make_session()
    assert Session.from_json_dict(json.loads(json.dumps(session.to_json_dict()))) == session
