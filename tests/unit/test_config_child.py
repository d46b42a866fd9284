"""The workers' master reads its config in a child (``idgateway.workers.config_child``).

The child's answer is checked as input (only config model values come back),
the forked start-up check reports what the master no longer loads itself,
and a reload's answer that arrives late is not applied over a newer one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import Config
from idgateway.workers import config_child
from idgateway.workers.config_child import MAX_ENCODED, ConfigReader, decode, encode
from tests.certs import make_ca

PLAIN = """\
workers: 2
listeners:
  - address: 127.0.0.1:{port}
reload: {{watch: true, interval: 2s}}
routes:
  - name: open
    default: true
    upstream: http://127.0.0.1:9
"""


def _write(directory: Path, text: str, name: str = "gateway.yaml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def _report(path: str, error: ConfigError) -> None:
    print(f"{path}: configuration is not valid:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


# ---- what the child sends --------------------------------------------------------------


def test_the_master_gets_its_part_of_the_config(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, PLAIN.format(port=8080)))
    got = decode(encode(config))
    assert isinstance(got, Config)
    assert got.listeners == config.listeners
    assert (got.workers, got.reload, got.source) == (2, config.reload, config.source)
    # What only the workers use stays with them.
    assert got.routes == () and got.providers == () and got.assertion_keys == ()


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("true",))


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(_Evil()),  # a callable from elsewhere: never called
        pickle.dumps({"workers": 2}),  # a value, not a Config
        pickle.dumps(Path("/etc")),  # a class outside the config model
        b"not a pickle",
        b"",
        encode(Config(source="x", listeners=(), routes=()))[:-3],
    ],
    ids=["callable", "dict", "other class", "garbage", "empty", "truncated"],
)
def test_anything_but_a_config_from_the_child_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a config from the child"):
        decode(data)


# ---- at start: the forked check ------------------------------------------------------


def test_a_good_file_with_workers_comes_back_checked(tmp_path: Path) -> None:
    status, config = config_child.read_at_start(_write(tmp_path, PLAIN.format(port=8080)), _report)
    assert status == 0
    assert config is not None and config.workers == 2
    assert [listener.port for listener in config.listeners] == [8080]


def test_a_bad_file_is_reported_by_the_child_and_fails(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, PLAIN.format(port=8080).replace("upstream:", "upstreem:"))
    status, config = config_child.read_at_start(path, _report)
    assert (status, config) == (1, None)
    err = capfd.readouterr().err
    assert f"{path}: configuration is not valid:" in err
    assert "upstreem" in err


def test_a_tls_listener_openssl_refuses_is_reported(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the config checks accept but pyOpenSSL does not (the check the
    # master made itself before): the forked child inherits this patch.
    from idgateway.server import tls

    ca = make_ca(tmp_path / "pki")
    site = ca.issue(tmp_path / "pki", ["app.localhost"], name="app")
    text = PLAIN.format(port=8443).replace(
        "  - address: 127.0.0.1:8443\n",
        "  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n"
        f"        - {{cert: {site.cert_path}, key: {site.key_path}}}\n",
    )

    def refuse(settings: Any, *, http2: bool = False) -> Any:
        raise tls.TLSConfigurationError(f"cannot load certificate chain {site.cert_path}: nope")

    monkeypatch.setattr(tls.SNIServerContexts, "prepare", staticmethod(refuse))
    path = _write(tmp_path, text)
    status, config = config_child.read_at_start(path, _report)
    assert (status, config) == (1, None)
    err = capfd.readouterr().err
    assert f"{path}: configuration is not valid:" in err
    assert f"{path}:3: listeners: tls of 127.0.0.1:8443: cannot load certificate chain" in err


def test_with_one_worker_the_child_leaves_the_checks_to_the_process(tmp_path: Path) -> None:
    # The single process loads (and reports) everything itself: the child
    # only says how many workers, even of a file whose key is junk.
    (tmp_path / "junk.pem").write_text("junk\n")
    text = (
        PLAIN.format(port=8443)
        .replace("workers: 2\n", "")
        .replace(
            "  - address: 127.0.0.1:8443\n",
            "  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n"
            f"        - {{cert: {tmp_path / 'junk.pem'}, key: {tmp_path / 'junk.pem'}}}\n",
        )
    )
    status, config = config_child.read_at_start(_write(tmp_path, text), _report)
    assert status == 0 and config is not None and config.workers == 1


# ---- the lean load -----------------------------------------------------------------------

LEAN = """
import json, sys
from idgateway.config.load import load_config
lean = load_config(CONFIG, contents=False)
after_lean = sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "OpenSSL"))
load_config(CONFIG)
after_full = "cryptography" in sys.modules
print(json.dumps([after_lean, after_full, lean.listeners[0].tls.certificates[0].hostnames]))
"""


def test_the_lean_load_reads_no_key_or_certificate_file(tmp_path: Path) -> None:
    import json

    from idgateway.config.signing_keys import generate_key_file

    ca = make_ca(tmp_path / "pki")
    site = ca.issue(tmp_path / "pki", ["app.localhost"], name="app")
    client = ca.issue(tmp_path / "pki", ["client"], name="client")
    generate_key_file(str(tmp_path / "assertion.pem"), "ec")
    text = f"""\
workers: 2
listeners:
  - address: 127.0.0.1:8443
    tls:
      certificates:
        - {{cert: {site.cert_path}, key: {site.key_path}}}
assertion_keys: [{tmp_path / "assertion.pem"}]
providers:
  wso2:
    discovery_url: https://127.0.0.1:9443/oauth2/token/.well-known/openid-configuration
    ca_file: {ca.cert_path}
routes:
  - name: app
    hosts: [app.localhost]
    upstream: https://127.0.0.1:9
    upstream_ca_file: {ca.cert_path}
    assertion: {{header: X-Idgateway-Assertion}}
    oidc:
      provider: wso2
      client_id: gateway
      client_auth: tls_client_auth
      client_cert: {client.cert_path}
      client_key: {client.key_path}
    session:
      store: cookie
      keys: [MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=]
"""
    prelude = f"CONFIG = {_write(tmp_path, text)!r}\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(LEAN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    after_lean, after_full, hostnames = json.loads(done.stdout.splitlines()[-1])
    assert after_lean == []
    assert after_full  # the full load does read them (the guard of this test)
    assert hostnames == []


@pytest.mark.parametrize("key", ["cert", "key"])
def test_a_missing_file_the_lean_load_never_opens_still_stops_the_start(
    tmp_path: Path, key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca(tmp_path / "pki")
    site = ca.issue(tmp_path / "pki", ["app.localhost"], name="app")
    files = {"cert": site.cert_path, "key": site.key_path}
    files[key] = tmp_path / "absent.pem"
    text = PLAIN.format(port=8443).replace(
        "  - address: 127.0.0.1:8443\n",
        "  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n"
        f"        - {{cert: {files['cert']}, key: {files['key']}}}\n",
    )
    path = _write(tmp_path, text)
    assert load_config(path, contents=False).workers == 2  # not opened here
    assert config_child.read_at_start(path, _report) == (1, None)
    err = capfd.readouterr().err
    assert f"listeners[0].tls.certificates[0].{key}: cannot read {tmp_path / 'absent.pem'}" in err


# ---- at reload: the spawned reader --------------------------------------------------------


def _ended(code: int) -> Failure:
    return Failure(ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code))


def _answer(reader: ConfigReader, *chunks: bytes, code: int = 0) -> None:
    for chunk in chunks:
        reader.childDataReceived(1, chunk)
    reader.processEnded(_ended(code))


@pytest.mark.parametrize(
    ("chunks", "code"),
    [
        ((b"garbage",), 0),
        ((), 1),  # the file is refused: the workers say why
        ((b"x" * (MAX_ENCODED + 1),), 0),  # oversize: not kept, not read
    ],
    ids=["garbage", "refused", "oversize"],
)
def test_a_reader_answers_none_for_anything_but_a_config(
    chunks: tuple[bytes, ...], code: int
) -> None:
    got: list[Config | None] = []
    _answer(ConfigReader(got.append), *chunks, code=code)
    assert got == [None]


def test_a_reader_reassembles_a_config_sent_in_pieces(tmp_path: Path) -> None:
    data = encode(load_config(_write(tmp_path, PLAIN.format(port=8080))))
    got: list[Config | None] = []
    _answer(ConfigReader(got.append), data[:7], data[7:])
    assert got[0] is not None and got[0].listeners[0].port == 8080


def test_the_reader_module_prints_the_masters_config(tmp_path: Path) -> None:
    path = _write(tmp_path, PLAIN.format(port=8080))
    done = subprocess.run(
        ConfigReader.argv(sys.executable, path), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert decode(done.stdout).listeners[0].port == 8080
    refused = subprocess.run(
        ConfigReader.argv(sys.executable, _write(tmp_path, "listeners: [", "bad.yaml")),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (refused.returncode, refused.stdout) == (1, b"")


def _master(tmp_path: Path) -> Any:
    from idgateway.workers.master import MasterService

    config = load_config(_write(tmp_path, PLAIN.format(port=8080)))
    master = MasterService(config, MemoryReactorClock(), workers=2, install_signal_handlers=False)
    master._sockets = [(config.listeners[0], None)]  # as if bound
    return master


def test_only_the_latest_reload_read_is_applied(tmp_path: Path) -> None:
    master = _master(tmp_path)
    first, second = ConfigReader(lambda c: None), ConfigReader(lambda c: None)
    moved = load_config(_write(tmp_path, PLAIN.format(port=9090), "moved.yaml"))
    master._config_reader = second
    master.config_read(first, moved)  # late: a newer read is under way
    assert master.config.listeners[0].port == 8080
    master.config_read(second, moved)
    assert master.config.listeners[0].port == 9090
    assert master._config_reader is None


def test_a_listener_change_read_at_reload_is_logged(tmp_path: Path) -> None:
    master = _master(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reader = ConfigReader(lambda c: None)
        master._config_reader = reader
        moved = load_config(_write(tmp_path, PLAIN.format(port=9090), "moved.yaml"))
        master.config_read(reader, moved)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert any("the listeners changed" in e["log_format"] for e in warned), warned


def test_a_reader_that_failed_is_logged_a_refused_file_is_not(tmp_path: Path) -> None:
    master = _master(tmp_path)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for stderr in (b"", b"Traceback ...\nMemoryError\n"):
            got: list[Config | None] = []
            reader = ConfigReader(got.append)
            master._config_reader = reader
            reader.childDataReceived(2, stderr)
            reader.processEnded(_ended(1))
            master.config_read(reader, got[0])
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if e.get("log_level") == LogLevel.warn]
    assert [e["errors"] for e in warned] == ["Traceback ...\nMemoryError"]
    assert master.config.listeners[0].port == 8080
