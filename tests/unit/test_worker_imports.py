"""A worker imports what its configuration uses, and not the rest.

Each case starts a worker-like process (what ``idgateway.workers.process``
does: twisted.web's own HTTP/2 left out, the lean event loop, then a
WorkerService started on listening sockets it was handed) and reports which
of the optional libraries it imported: h2, hpack and hyperframe only for a
listener that offers HTTP/2, txredisapi only for Redis sessions.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_config import make_certificate

OPTIONAL = ("h2", "hpack", "hyperframe", "priority", "txredisapi", "twisted.web._http2")

WORKER_LIKE = """
import json, socket, sys
from idgateway._twisted.web_http2 import leave_out_twisted_http2
leave_out_twisted_http2()
from idgateway.workers.event_loop import install
install()
from twisted.internet import reactor
from idgateway.config.load import load_config
from idgateway.workers.worker import WorkerService

config = load_config(sys.argv[1])
inherited = {}
for listener in config.listeners:
    sock = socket.socket()
    sock.bind((listener.host, listener.port))
    sock.listen(8)
    sock.setblocking(False)
    inherited[(listener.host, listener.port)] = sock.detach()
service = WorkerService(config, reactor, index=1, inherited=inherited,
                        install_signal_handlers=False)
service.startService()
print(json.dumps({
    "loaded": sorted(name for name in sys.argv[2].split(",") if sys.modules.get(name)),
    "listening": len(service._ports),
}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _route(session: str) -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return (
        "providers:\n  wso2:\n"
        "    discovery_url: https://127.0.0.1:9/oauth2/token/.well-known/openid-configuration\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n"
        "    upstream: http://127.0.0.1:9\n"
        "    oidc: {provider: wso2, client_id: abc, client_secret: def}\n"
        f"    session: {{{session}, keys: [{key}]}}\n"
    )


def _loaded(tmp_path: Path, config: str) -> dict[str, object]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-c", WORKER_LIKE, str(path), ",".join(OPTIONAL)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _plain_listener() -> str:
    return f"listeners:\n  - address: 127.0.0.1:{_free_port()}\n"


def test_a_plain_cookie_worker_imports_no_http2_and_no_redis(tmp_path: Path) -> None:
    result = _loaded(tmp_path, _plain_listener() + _route("store: cookie"))
    assert result == {"loaded": [], "listening": 1}


def test_a_worker_with_redis_sessions_imports_txredisapi(tmp_path: Path) -> None:
    result = _loaded(
        tmp_path, _plain_listener() + _route("store: redis, url: 'redis://127.0.0.1:9'")
    )
    assert result == {"loaded": ["txredisapi"], "listening": 1}


@pytest.mark.parametrize("http2", ["true", "prior_knowledge"])
def test_a_worker_whose_listener_offers_http2_imports_h2(tmp_path: Path, http2: str) -> None:
    port = _free_port()
    if http2 == "true":
        cert, key = make_certificate(tmp_path, "app", ("app.localhost",))
        listener = (
            f"listeners:\n  - address: 127.0.0.1:{port}\n"
            f"    tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}\n"
            "    http2: true\n"
        )
    else:
        listener = f"listeners:\n  - address: 127.0.0.1:{port}\n    http2: prior_knowledge\n"
    result = _loaded(tmp_path, listener + _route("store: cookie"))
    # (Twisted's own HTTP/2, and the priority library it alone uses, stay out.)
    assert result == {"loaded": ["h2", "hpack", "hyperframe"], "listening": 1}


def test_twisted_web_still_has_the_http2_module_the_worker_leaves_out() -> None:
    # The seam's private name (idgateway._twisted.web_http2): if Twisted drops
    # or renames it, leaving it out saves nothing and this says so.
    import importlib.util

    from idgateway._twisted.web_http2 import TWISTED_HTTP2

    assert importlib.util.find_spec(TWISTED_HTTP2) is not None


def test_leaving_twisted_http2_out_is_refused_once_twisted_web_is_imported() -> None:
    import twisted.web.http  # noqa: F401

    from idgateway._twisted.web_http2 import leave_out_twisted_http2

    assert leave_out_twisted_http2() is False
