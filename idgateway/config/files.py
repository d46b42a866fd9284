"""Reading the files a configuration names: bounded, never blocking, explained.

Shared by the schema engine (secret and PEM files) and the key loaders;
imports nothing else of the gateway.
"""

from __future__ import annotations

import os
import stat

# Secret files hold a password or a key; PEM files a certificate chain or a key.
SECRET_FILE_LIMIT = 64 * 1024
PEM_FILE_LIMIT = 1024 * 1024
CONFIG_FILE_LIMIT = 1024 * 1024


class FileTooOdd(ValueError):
    """A file the configuration names is not one to read: a FIFO, a device, too big."""


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or FileTooOdd/OSError.

    Opened without blocking (a FIFO would otherwise wait for a writer) and
    checked to be a regular file before any read: a configuration naming
    /dev/zero or a named pipe must be an error, never a frozen reactor.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileTooOdd(f"{path} is {_file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileTooOdd(f"{path} is {info.st_size} bytes; at most {limit} are read")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise FileTooOdd(f"{path} grew past {limit} bytes while being read")
        return data
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def loose_permissions(path: str, *, secret: bool) -> str | None:
    """A warning when a config file is world-writable, or a secret file readable by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & stat.S_IWOTH:
        return f"{path} is world-writable: anyone on this machine can change it (chmod o-w)"
    if secret and mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"{path} is readable by its group or by everyone: keep secrets to the gateway's "
            "user (chmod 600, or systemd credentials)"
        )
    return None


def read_problem(error: Exception) -> str:
    if isinstance(error, FileTooOdd):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read {error.filename}: {error.strerror}"
    return f"cannot read this file: {error}"
