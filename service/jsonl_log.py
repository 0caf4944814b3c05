"""Append-only JSON-lines files capped by rotation, shared by the shadow comparisons
(:mod:`service.shadow`) and the CDS card feedback (:mod:`service.cds.feedback`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class RotatingLog:
    """A JSON-lines file capped by rotation to ``<file>.1`` (at most about twice ``max_bytes``
    on disk). Not thread-safe: one writer thread per process, or a lock around ``write``.

    Each pass is one ``os.write`` on an ``O_APPEND`` descriptor, so the lines of several workers
    never interleave. The worker that finds the file above ``max_bytes`` renames it under an
    ``flock`` (re-checked inside, so two workers never rotate twice); the others notice the new
    inode and reopen.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.rotated = self.path.with_name(self.path.name + ".1")
        self.max_bytes = max_bytes
        self._fd: int | None = None

    def write(self, lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        fd = self._open()
        os.write(fd, data)
        if os.fstat(fd).st_size > self.max_bytes:
            self._rotate()

    def _open(self) -> int:
        try:
            same = self._fd is not None and os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self.close()
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
        assert self._fd is not None
        return self._fd

    def _rotate(self) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_size > self.max_bytes:
                    os.replace(self.path, self.rotated)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
