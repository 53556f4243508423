"""Bounded reads of the files the job is given: config, secrets and id lists.

Every read has a size limit, and a file that is expected to be a regular file
(not ``/dev/zero``, a FIFO or a directory) is refused otherwise. Standard input
(``-``) is a pipe, so it is exempt from that check but not from the limit.
Text must be UTF-8; a byte-order mark is ignored.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from etl.errors import ConfigError

KIB, MIB = 1024, 1024 * 1024
MAX_CONFIG_BYTES = 1 * MIB
MAX_SECRET_BYTES = 64 * KIB
MAX_IDS_BYTES = 256 * MIB  # a million ids take about 37 MB
MAX_ID_LINE = 1024  # characters kept of one line of an id file; longer lines are reported, clipped
BOM = b"\xef\xbb\xbf"


def _refuse(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}")


@contextmanager
def open_bounded(name: str, *, where: str, allow_stdin: bool = False) -> Iterator[BinaryIO]:
    """Open ``name`` for reading bytes; ConfigError (naming ``where``) unless it is a readable regular file."""
    if allow_stdin and name == "-":
        yield sys.stdin.buffer
        return
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer before it can be refused.
        fd = os.open(os.path.expanduser(name), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _refuse(where, f"cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(where, "is not a regular file")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as file:
        yield file


def read_text(name: str, *, where: str, limit: int) -> str:
    """The whole UTF-8 text of a small regular file, at most ``limit`` bytes."""
    with open_bounded(name, where=where) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise _refuse(where, f"is larger than {limit} bytes")
    try:
        return data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _refuse(where, f"is not UTF-8 text (line {line}, byte {exc.start})") from None


def read_lines(file: BinaryIO, *, where: str, limit: int = MAX_IDS_BYTES) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for every line of ``file``; text is None for a line that is not UTF-8.

    A line longer than MAX_ID_LINE is read in full but only its start is kept.
    More than ``limit`` bytes in all is a ConfigError.
    """
    total = 0
    number = 0
    while True:
        raw = file.readline(MAX_ID_LINE + 1)
        if not raw:
            return
        total += len(raw)
        while not raw.endswith(b"\n"):  # a long line: skip to its end, counting the bytes
            rest = file.readline(64 * KIB)
            if not rest:
                break
            total += len(rest)
            if total > limit:
                break
            raw = raw[: MAX_ID_LINE + 1] + (b"\n" if rest.endswith(b"\n") else b"")
        if total > limit:
            raise _refuse(where, f"is larger than {limit // MIB} MiB; split it")
        number += 1
        if number == 1:
            raw = raw.removeprefix(BOM)
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def group_or_other_access(name: str) -> int | None:
    """The permission bits of the file ``name`` when its group or others may use it (mode & 0o077), else None.

    None too where permissions are not POSIX's, or the file cannot be examined (reading it reports that).
    """
    if os.name != "posix":
        return None
    try:
        mode = stat.S_IMODE(os.stat(os.path.expanduser(name)).st_mode)
    except OSError:
        return None
    return mode if mode & 0o077 else None


def write_text(name: str, text: str, *, where: str) -> None:
    """Write ``text`` to the file ``name`` through a temporary file beside it, so a reader never sees half of it;
    a ConfigError (exit 2) names ``where`` when it cannot be written."""
    path = Path(name)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise _refuse(where, f"cannot write {name}: {error.strerror or error}") from None
