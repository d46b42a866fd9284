"""``cluster:`` in ``session`` and in the top-level ``redis`` block: contract, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import RedisSettings

KEY = "q3F1K2x0cUxZbU5PcFFyU3RVdld4WXphYmNkZWZnaGk="  # 32 bytes
SEEDS = "[redis://10.0.0.1:7000, redis://10.0.0.2:7000, redis://10.0.0.3:7000]"


def _route(session: str) -> str:
    return (
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "providers:\n  wso2: {issuer: https://localhost:9443/oauth2/token}\n"
        "routes:\n  - name: app1\n    hosts: [app1.example.com]\n"
        "    upstream: http://127.0.0.1:3000\n"
        "    oidc: {provider: wso2, client_id: c, client_secret: s}\n"
        "    session:\n"
        f"      keys: [{KEY}]\n" + session
    )


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(str(path), {})


def _problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def test_the_contract_session_cluster(tmp_path: Path) -> None:
    config = _load(tmp_path, _route(f"      store: redis\n      cluster: {SEEDS}\n"))
    redis = config.routes[0].auth.session.redis  # type: ignore[attr-defined]
    assert redis == RedisSettings(
        cluster=(
            "redis://10.0.0.1:7000",
            "redis://10.0.0.2:7000",
            "redis://10.0.0.3:7000",
        )
    )
    assert redis.url is None and redis.sentinels == ()


def test_cluster_in_the_top_level_redis_block(tmp_path: Path) -> None:
    text = (
        "redis:\n  cluster: [rediss://:s3cret@10.0.0.1:7000, rediss://:s3cret@10.0.0.2:7000]\n"
        "  redis_ca_file: ca.pem\n  pool_size: 4\n" + _route("      store: cookie\n")
    )
    (tmp_path / "ca.pem").write_text("")
    config = _load(tmp_path, text)
    redis = config.redis  # type: ignore[attr-defined]
    assert redis.cluster == ("rediss://:s3cret@10.0.0.1:7000", "rediss://:s3cret@10.0.0.2:7000")
    assert redis.pool_size == 4 and redis.ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("session", "words"),
    [
        # cluster excludes url, sentinels and master_name
        (
            f"      store: redis\n      url: redis://10.0.0.1:7000\n      cluster: {SEEDS}\n",
            [
                "gateway.yaml:",
                "routes[0].session.url",
                "'cluster' and 'url' exclude each other",
                "remove 'url'",
            ],
        ),
        (
            f"      store: redis\n      sentinels: [10.0.0.5:26379]\n      master_name: m\n"
            f"      cluster: {SEEDS}\n",
            [
                "routes[0].session.sentinels",
                "'cluster' and 'sentinels' exclude each other",
                "remove 'sentinels'",
            ],
        ),
        (
            f"      store: redis\n      master_name: m\n      cluster: {SEEDS}\n",
            ["routes[0].session.master_name", "remove 'master_name'"],
        ),
        # bad seeds, each named by its index, the password never repeated
        (
            "      store: redis\n      cluster: [unix:/run/redis.sock]\n",
            ["routes[0].session.cluster[0]", "over TCP", "redis://host:port"],
        ),
        (
            "      store: redis\n      cluster: [redis://10.0.0.1:7000, redis://:hunter2@10.0.0.2:7000/1]\n",
            ["routes[0].session.cluster[1]", "only database 0", "remove the /1"],
        ),
        (
            "      store: redis\n      cluster: [http://10.0.0.1:7000]\n",
            ["routes[0].session.cluster[0]", "not a Redis URL"],
        ),
        (
            "      store: redis\n      cluster: [redis://10.0.0.1:99999]\n",
            ["routes[0].session.cluster[0]", "bad port"],
        ),
        (
            "      store: redis\n      cluster: ['redis://:hunter2@10.0.0.1:7000?db=1']\n",
            ["routes[0].session.cluster[0]", "'?' part"],
        ),
        (
            "      store: redis\n      cluster: [redis://:pw@/]\n",
            ["routes[0].session.cluster[0]", "names no host"],
        ),
        (
            "      store: redis\n      cluster: []\n",
            ["routes[0].session.cluster", "must not be empty"],
        ),
        (
            "      store: redis\n      cluster: redis://10.0.0.1:7000\n",
            ["routes[0].session.cluster", "a list like [redis://10.0.0.1:7000"],
        ),
        (
            "      store: redis\n      cluster: [[redis://10.0.0.1:7000]]\n",
            ["routes[0].session.cluster[0]"],
        ),
        # the seeds are one cluster: one scheme, one password
        (
            "      store: redis\n      cluster: [redis://10.0.0.1:7000, rediss://10.0.0.2:7000]\n",
            ["routes[0].session.cluster[1]", "same scheme"],
        ),
        (
            "      store: redis\n      cluster: [redis://:hunter2@10.0.0.1:7000, redis://10.0.0.2:7000]\n",
            ["routes[0].session.cluster[1]", "same password"],
        ),
        (
            "      store: redis\n      cluster: [redis://a:hunter2@10.0.0.1:7000, redis://b:hunter2@10.0.0.2:7000]\n",
            ["routes[0].session.cluster[1]", "same user"],
        ),
        # cluster is for store: redis
        (
            f"      store: cookie\n      cluster: {SEEDS}\n",
            ["routes[0].session.cluster", "only used with store: redis"],
        ),
    ],
)
def test_each_bad_cluster_setting_is_named(tmp_path: Path, session: str, words: list[str]) -> None:
    text = _problems(tmp_path, _route(session))
    for word in words:
        assert word in text, (word, text)
    assert "hunter2" not in text


def test_a_bad_top_level_cluster_names_its_key(tmp_path: Path) -> None:
    text = _problems(
        tmp_path,
        "redis:\n  url: redis://10.0.0.9:6379\n  cluster: [redis://10.0.0.1:7000]\n"
        + _route("      store: cookie\n"),
    )
    assert "gateway.yaml:2: redis.url" in text and "exclude each other" in text


def test_the_line_of_the_bad_seed_is_given(tmp_path: Path) -> None:
    text = _problems(
        tmp_path,
        _route(
            "      store: redis\n      cluster:\n        - redis://10.0.0.1:7000\n"
            "        - unix:/x.sock\n"
        ),
    )
    assert "gateway.yaml:14: routes[0].session.cluster[1]" in text


def test_a_mismatched_seed_is_shown_on_its_own_line(tmp_path: Path) -> None:
    text = _problems(
        tmp_path,
        _route(
            "      store: redis\n      cluster:\n        - redis://:hunter2@10.0.0.1:7000\n"
            "        - redis://:hunter3@10.0.0.2:7000\n"
        ),
    )
    assert "gateway.yaml:14: routes[0].session.cluster[1]" in text and "same password" in text
    assert "hunter" not in text


# -- oauth2-proxy's redis_use_cluster, imported --------------------------------------------

OAUTH2_PROXY_CLUSTER = """
http_address = "127.0.0.1:4180"
provider = "oidc"
oidc_issuer_url = "https://is.example.com:9443/oauth2/token"
client_id = "app"
client_secret = "hunter2-client"
cookie_secret = "0123456789abcdef0123456789abcdef"
upstreams = ["http://127.0.0.1:3000"]
session_store_type = "redis"
redis_use_cluster = true
redis_cluster_connection_urls = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
redis_password = "hunter2-redis"
"""


@pytest.mark.parametrize("keep_secrets", [False, True])
def test_oauth2_proxy_cluster_settings_are_imported(tmp_path: Path, keep_secrets: bool) -> None:
    from idgateway.importers import ImportOptions, import_file

    source = tmp_path / "oauth2-proxy.cfg"
    source.write_text(OAUTH2_PROXY_CLUSTER)
    text = import_file("oauth2-proxy", str(source), ImportOptions(keep_secrets=keep_secrets))
    assert "not imported: redis_use_cluster" not in text
    assert "not imported: redis_cluster_connection_urls" not in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    env = {"OAUTH2_PROXY_CLIENT_SECRET": "c", "OAUTH2_PROXY_REDIS_PASSWORD": "from-env"}
    env.update({name: KEY for name in ("OAUTH2_PROXY_SESSION_KEY", "OAUTH2_PROXY_COOKIE_SECRET")})
    config = load_config(str(path), env)
    redis = config.routes[0].auth.session.redis  # type: ignore[union-attr]
    password = "hunter2-redis" if keep_secrets else "from-env"
    assert redis.cluster == (
        f"redis://:{password}@10.0.0.1:7000",
        f"redis://:{password}@10.0.0.2:7000",
    )
    assert ("hunter2-redis" in text) is keep_secrets
