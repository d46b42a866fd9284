"""Which files an Apache ``Include``/``IncludeOptional`` names, within fixed limits.

The importer reads configurations it did not write, so following their
``Include`` lines is bounded: at most ``MAX_INCLUDE_DEPTH`` files deep, at most
``MAX_INCLUDED_FILES`` files in all, each at most ``read_source``'s size
limit, and no file that is already being read further up the chain (a cycle).
Crossing a limit is a clear error naming the file and line, never a traceback.

Patterns are matched as Apache matches them: wildcards in any part of the path,
matches in alphabetical order, names starting with '.' left out by ``*``; a
directory stands for every file in it and in its subdirectories. A relative
path is taken relative to the directory of the file that holds the
``Include`` (Apache takes it relative to ServerRoot, which the importer does not
know; for the usual layout, one file next to the files it includes, the two agree).
"""

from __future__ import annotations

import glob
import os

import attrs

from idgateway.importers._yaml import shown

MAX_INCLUDE_DEPTH = 8
MAX_INCLUDED_FILES = 64


class IncludeError(Exception):
    """An Include cannot be followed; the message names where and why."""


@attrs.define
class IncludeState:
    """What the Includes of one import have read so far."""

    files: int = 0
    # Real paths of the files being read, outermost first: an Include of one of them is a cycle.
    chain: list[str] = attrs.field(factory=list)

    def enter(self, path: str, where: str) -> None:
        """Start reading ``path`` (named at ``where``); IncludeError past a limit or on a cycle."""
        real = os.path.realpath(path)
        if real in self.chain:
            cycle = " -> ".join(shown(item) for item in [*self.chain, real])
            raise IncludeError(f"{where}: Include cycle: {cycle}")
        if len(self.chain) > MAX_INCLUDE_DEPTH:
            raise IncludeError(
                f"{where}: Include nested more than {MAX_INCLUDE_DEPTH} files deep "
                f"(at {shown(path)}); Apache configurations are not that deep: "
                "is an Include pointing back at its own directory?"
            )
        self.files += 1
        if self.files > MAX_INCLUDED_FILES:
            raise IncludeError(
                f"{where}: more than {MAX_INCLUDED_FILES} included files in all; "
                "import the file with the VirtualHost and the few files it needs"
            )
        self.chain.append(real)

    def leave(self) -> None:
        self.chain.pop()


def included_paths(
    pattern: str, including_file: str, *, optional: bool, where: str, state: IncludeState
) -> list[str]:
    """The files an Include of ``pattern`` reads, in Apache's order; [] for an
    IncludeOptional that matches nothing (an Include that matches nothing is an error)."""
    if not pattern:
        raise IncludeError(f"{where}: Include names no file")
    if not os.path.isabs(pattern):
        pattern = os.path.join(os.path.dirname(os.path.abspath(including_file)), pattern)
    budget = MAX_INCLUDED_FILES - state.files
    if glob.has_magic(pattern):
        matches: list[str] = []
        for match in glob.iglob(pattern):  # lazily: a huge directory stops at the limit
            matches.append(match)
            if len(matches) > budget:
                raise IncludeError(
                    f"{where}: Include {shown(pattern)} matches more than "
                    f"{MAX_INCLUDED_FILES} files in all (the importer follows at most "
                    f"{MAX_INCLUDED_FILES}); name the files it needs"
                )
        matches.sort()
    elif os.path.exists(pattern):
        matches = [pattern]
    else:
        matches = []
    if not matches:
        if optional:
            return []
        raise IncludeError(
            f"{where}: Include {shown(pattern)}: no such file here; copy it next to the "
            "configuration, or use IncludeOptional if Apache may start without it"
        )
    files: list[str] = []
    for match in matches:
        files.extend(_files_in(match, where, budget - len(files), depth=0))
    return files


def _files_in(path: str, where: str, budget: int, depth: int) -> list[str]:
    """``path``, or the files under it when it is a directory (as Apache reads one)."""
    if not os.path.isdir(path):
        return [path]
    if depth >= MAX_INCLUDE_DEPTH:
        raise IncludeError(f"{where}: directories nested too deep under {shown(path)}")
    files: list[str] = []
    names: list[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            names.append(entry.name)
            if len(names) > budget:
                raise IncludeError(
                    f"{where}: the directory {shown(path)} holds more than "
                    f"{MAX_INCLUDED_FILES} files (the importer follows at most "
                    f"{MAX_INCLUDED_FILES}); name the files it needs"
                )
    for name in sorted(names):
        files.extend(_files_in(os.path.join(path, name), where, budget - len(files), depth + 1))
        if len(files) > budget:
            raise IncludeError(
                f"{where}: {shown(path)} holds more than {MAX_INCLUDED_FILES} files "
                f"(the importer follows at most {MAX_INCLUDED_FILES})"
            )
    return files
