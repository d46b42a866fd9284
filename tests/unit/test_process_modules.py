"""Each process imports only what it runs: every module costs each process its memory.

With ``workers:`` > 1 the master (twistd) loads the config, binds, supervises
and relays logs; it never serves a request, so it must not import the data
path. Each case imports in a fresh interpreter, as the process does, and
reads ``sys.modules`` there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The data path and what only it needs: none of it belongs in the master.
NOT_IN_THE_MASTER = (
    "idgateway.gate",
    "idgateway.proxy",
    "idgateway.oidc",
    "idgateway.sessions",
    "idgateway.redis",
    "idgateway.routing",
    "idgateway.importers",
    "idgateway.demo",
    "idgateway.server.service",
    "idgateway.server.channel",
    "idgateway.server.h2_connection",
    "idgateway.server.admin",
    "idgateway.observe.access_log",
    "idgateway.observe.metrics",
    "idgateway.workers.worker",
    "idgateway.workers.metrics",
    "h2",
    "hpack",
    "treq",
    "josepy",
    "txredisapi",
    "prometheus_client",
    "multipart",
    "twisted.web.server",
    "twisted.web.client",
    # Loaded by the first config regex; this config has none.
    "re2",
    # What reads and checks a config: a child does it for the master
    # (idgateway.workers.config_child).
    "idgateway.config.load",
    "idgateway.config.schema",
    "idgateway.config.auth",
    "yaml",
    # Key and certificate files, TLS: only the workers (and that child) use them.
    "cryptography",
    "OpenSSL",
    "idgateway.server.tls",
    "twisted.protocols.tls",
    "twisted.internet.ssl",
    "twisted.internet._newtls",
)

MASTER = """
import json, sys
from idgateway.tap import Options, makeService
options = Options()
options.parseOptions(["--config", CONFIG])
service = makeService(options)
assert type(service).__name__ == "MasterService", service
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str, **values: str) -> set[str]:
    prelude = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _loaded(modules: set[str], prefix: str) -> bool:
    return prefix in modules or any(name.startswith(prefix + ".") for name in modules)


# A login route with cookie sessions (what the benchmark runs) and an admin
# listener (metrics): each pulls in more of the data path.
GATEWAY_YAML = """\
workers: 2
listeners:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
providers:
  wso2:
    discovery_url: https://127.0.0.1:9/oauth2/token/.well-known/openid-configuration
routes:
  - name: app
    hosts: [app.test]
    upstream: http://127.0.0.1:9
    oidc:
      provider: wso2
      client_id: gateway
      client_secret: a-long-enough-client-secret
    session:
      store: cookie
      keys: [MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=]
"""


def _config(directory: Path, text: str = GATEWAY_YAML) -> str:
    path = directory / "gateway.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def master_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return _modules_after(MASTER, CONFIG=_config(tmp_path_factory.mktemp("master")))


def test_the_master_is_what_it_seems(master_modules: set[str]) -> None:
    # Guards the scan: the master's own parts are there.
    for name in ("idgateway.workers.master", "idgateway.config.model", "twisted.internet.reactor"):
        assert name in master_modules


@pytest.mark.parametrize("prefix", NOT_IN_THE_MASTER)
def test_the_master_does_not_import_the_data_path(master_modules: set[str], prefix: str) -> None:
    assert not _loaded(master_modules, prefix), f"the master imports {prefix}"


# What only a gateway with Redis (sessions, revocation, introspection cache) uses.
REDIS_ONLY = ("idgateway.redis.client", "idgateway.redis.cluster", "txredisapi")

WORKER = """
import json, sys
from twisted.internet.testing import MemoryReactorClock
from idgateway.config.load import load_config
from idgateway.workers.worker import WorkerService
service = WorkerService(
    load_config(CONFIG), MemoryReactorClock(), index=0, inherited={},
    install_signal_handlers=False, workers=2,
)
assert list(service.holder.current.runtimes) == ["app"], service.holder.current.runtimes
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def worker_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    # Cookie sessions, no Redis anywhere, built into the routes a worker serves.
    return _modules_after(WORKER, CONFIG=_config(tmp_path_factory.mktemp("worker")))


def test_the_worker_is_what_it_seems(worker_modules: set[str]) -> None:
    for name in ("idgateway.gate.session_check", "idgateway.sessions.cookie", "treq"):
        assert name in worker_modules


@pytest.mark.parametrize("prefix", REDIS_ONLY)
def test_a_worker_without_redis_does_not_import_the_redis_client(
    worker_modules: set[str], prefix: str
) -> None:
    assert not _loaded(worker_modules, prefix), f"the worker imports {prefix}"


def test_a_worker_with_redis_sessions_has_its_client(tmp_path: Path) -> None:
    # The other side: store: redis still loads the client (lazily, as it builds).
    with_redis = GATEWAY_YAML.replace(
        "store: cookie", "store: redis\n      url: redis://127.0.0.1:9/0"
    )
    modules = _modules_after(WORKER, CONFIG=_config(tmp_path, with_redis))
    for prefix in REDIS_ONLY:
        assert _loaded(modules, prefix), prefix


def test_a_worker_without_config_regexes_does_not_load_re2(worker_modules: set[str]) -> None:
    assert not _loaded(worker_modules, "re2")


def test_a_config_regex_loads_re2_and_is_still_checked(tmp_path: Path) -> None:
    with_regex = GATEWAY_YAML.replace(
        "    session:\n", "    public_paths: ['~ ^/pub/[a-z]+$']\n    session:\n"
    )
    modules = _modules_after(WORKER, CONFIG=_config(tmp_path, with_regex))
    assert _loaded(modules, "re2")


def test_the_single_process_gateway_still_has_its_data_path(tmp_path: Path) -> None:
    # The other branch of makeService: without workers, twistd's process serves.
    config = _config(
        tmp_path,
        "listeners:\n  - address: 127.0.0.1:0\n"
        "routes:\n  - name: open\n    default: true\n    upstream: http://127.0.0.1:9\n",
    )
    modules = _modules_after(MASTER.replace('"MasterService"', '"GatewayService"'), CONFIG=config)
    assert "idgateway.server.service" in modules
