"""Fixtures that start real processes: back ends and the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.backends import BackendProcess
from tests.processes import GatewayProcess


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    with BackendProcess(name="backend-a") as process:
        yield process


@pytest.fixture
def backend_b(tmp_path: Path) -> Iterator[BackendProcess]:
    with BackendProcess(name="backend-b") as process:
        yield process


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(
        config_text: str, wait_ports: list[int], name: str = "gw", log_to_stdout: bool = False
    ) -> GatewayProcess:
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(config_text)
        gateway = GatewayProcess(config_path, tmp_path / f"{name}.log", log_to_stdout=log_to_stdout)
        started.append(gateway)
        return gateway.start(wait_ports)

    yield start
    for gateway in started:
        gateway.stop()
