"""The wording of start-up failures: each usual reason comes with its fix."""

from __future__ import annotations

import errno

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from idgateway.server.startup_errors import StartupError, listen_problem, stop_starting


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.EADDRINUSE, "choose another port"),
        (errno.EACCES, "CAP_NET_BIND_SERVICE"),
        (errno.EADDRNOTAVAIL, "no such address"),
        (errno.EAFNOSUPPORT, "no IPv6"),
    ],
)
def test_each_usual_reason_has_its_fix(code: int, fix: str) -> None:
    error = CannotListenError("0.0.0.0", 443, OSError(code, "whatever"))
    text = listen_problem("0.0.0.0:443", "gateway.yaml:3", error)
    assert text.startswith("cannot listen on 0.0.0.0:443 (gateway.yaml:3): ")
    assert fix in text


def test_an_unusual_reason_is_shown_as_the_system_says_it() -> None:
    error = CannotListenError("0.0.0.0", 443, OSError(errno.ENOBUFS, "No buffer space available"))
    assert listen_problem("0.0.0.0:443", "", error) == (
        "cannot listen on 0.0.0.0:443: No buffer space available"
    )


def test_stop_starting_logs_one_line_and_exits_1() -> None:
    logged: list[str] = []

    class Log:
        def error(self, fmt: str, problem: str) -> None:
            logged.append(problem)

    with pytest.raises(SystemExit) as stopped:
        stop_starting(Log(), StartupError("cannot listen on x: why"))
    assert stopped.value.code == 1
    assert logged == ["cannot listen on x: why"]


def test_the_service_turns_a_refused_listen_into_a_startup_error(tmp_path) -> None:
    from idgateway.config.load import load_config
    from idgateway.server.service import GatewayService

    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listeners: [{address: '127.0.0.1:443'}]\n"
        "routes: [{name: app, default: true, upstream: 'http://127.0.0.1:9'}]\n"
    )

    class RefusingReactor(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
            raise CannotListenError(interface, port, OSError(errno.EACCES, "Permission denied"))

    service = GatewayService(load_config(str(path)), RefusingReactor())
    service.install_signal_handlers = False
    with pytest.raises(StartupError, match=r"127.0.0.1:443 \(.*gateway.yaml:1\).*CAP_NET_BIND"):
        service._listen(service.config.listeners[0])
