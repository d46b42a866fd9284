"""``reload: {watch: true}``: re-read the configuration file when it changes.

Every ``interval`` the file is stat()ed (following symlinks, so a Kubernetes
ConfigMap's swapped link counts); only when its modification time, size or
inode changed is it read, and only when the SHA-256 of its bytes differs
from the last one seen does ``on_change`` run: the same reload as SIGHUP
(``GatewayService.reload``, or the master's fan-out to its workers). A
``touch`` alone reloads nothing.

A change is acted on once: a file that is refused (half written, or wrong)
is reported by the reload, and the next change tries again. A file that is
missing for a while (being replaced) is waited for, with one warning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from idgateway.config.model import ReloadSettings


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as stream:
            return hashlib.sha256(stream.read()).digest()
    except OSError:
        return None


class ConfigWatcher:
    """Polls one file on ``clock`` and calls ``on_change`` when its contents change."""

    _log = Logger()

    def __init__(self, path: str, clock: Any, on_change: Callable[[], object]) -> None:
        self.path = path
        self.clock = clock
        self.on_change = on_change
        self.interval: float | None = None
        self._loop: LoopingCall | None = None
        self._stat: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._missing = False

    @property
    def running(self) -> bool:
        return self._loop is not None

    def apply(self, settings: ReloadSettings) -> None:
        """Start, stop or re-time the polling to match ``settings`` (at start and after reloads)."""
        if not settings.watch:
            if self.running:
                self._log.info("no longer watching {path} for changes", path=self.path)
            self.stop()
            return
        if self.running and self.interval == settings.interval:
            return
        first = not self.running
        self.stop()
        if first:
            # What is there now is what was just loaded.
            self._stat = _fingerprint(self.path)
            self._digest = _digest(self.path)
            self._log.info(
                "watching {path} for changes every {interval:g} s (reload: watch)",
                path=self.path,
                interval=settings.interval,
            )
        self.interval = settings.interval
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        self._loop = loop
        loop.start(settings.interval, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def check(self) -> None:
        """One poll: reload if the file's contents changed since the last look."""
        fingerprint = _fingerprint(self.path)
        if fingerprint is None:
            if not self._missing:
                self._missing = True
                self._log.warn(
                    "{path} is missing; waiting for it to come back (reload: watch)",
                    path=self.path,
                )
            return
        self._missing = False
        if fingerprint == self._stat:
            return
        self._stat = fingerprint
        digest = _digest(self.path)
        if digest is None or digest == self._digest:
            return
        self._digest = digest
        self._log.info("{path} changed: reloading (reload: watch)", path=self.path)
        try:
            self.on_change()
        except Exception:
            # Never let a failed reload end the polling.
            self._log.failure("reload after a change to {path} failed", path=self.path)
