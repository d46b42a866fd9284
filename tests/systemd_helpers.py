"""A fake systemd for the sd_notify and socket-passing tests: the $NOTIFY_SOCKET end
(the ``manager`` and ``notify_socket`` fixtures, offered by tests/conftest.py) and a config
writer."""

from __future__ import annotations

import array
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# ---- a fake service manager ----------------------------------------------------------------


class Manager:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it (with SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(5)

    def receive(self) -> tuple[dict[str, str], int]:
        """The next datagram's assignments, and the sender's pid."""
        size = array.array("i").itemsize * 3
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:size])[0]
        assignments = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return assignments, pid

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    found = Manager(str(tmp_path / "notify"))
    yield found
    found.close()


@pytest.fixture
def notify_socket(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> Manager:
    """$NOTIFY_SOCKET names the manager for the code that reads os.environ."""
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    return manager


def write_config(tmp_path: Path, port: int, extra: str = "") -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"{extra}listeners:\n  - address: 127.0.0.1:{port}\n  - address: 127.0.0.1:1\n"
        "routes:\n  - name: app\n    hosts: [app.localhost]\n    upstream: http://127.0.0.1:9\n"
    )
    return str(path)
