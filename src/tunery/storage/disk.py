"""A full disk, recognised wherever it surfaces (a file write, SQLite, PostgreSQL) and named once.

``is_disk_full`` walks an exception's causes for ENOSPC/EDQUOT, SQLite's ``SQLITE_FULL`` ("database or disk
is full") and PostgreSQL's ``disk_full`` (SQLSTATE 53100); ``disk_full`` is the error users see (507).
``SpaceReserve`` keeps a few megabytes of the data disk in a file so that, when the disk fills up, deleting
still works: SQLite needs room in its write-ahead log even to delete a row. The stores release the reserve
and retry once when a write that frees space fails for lack of space.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from tunery.domain.errors import InsufficientStorage

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "could not extend file")
_PG_DISK_FULL = "53100"
RESERVE_BYTES = 8 * 1024 * 1024


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether the exception (or one it was raised from) says the disk or the database is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if getattr(exc, "sqlstate", None) == _PG_DISK_FULL:
            return True
        text = str(exc).lower()
        if any(message in text for message in _FULL_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
    return False


def disk_full(doing: str) -> InsufficientStorage:
    return InsufficientStorage(
        f"The server is out of disk space, so {doing} failed. Delete files, jobs or models you no longer need, "
        "or ask the administrator to free space, then try again."
    )


class SpaceReserve:
    """A file holding ``size`` bytes of the data disk, given back when a delete needs room to run."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    def ensure(self) -> bool:
        """(Re)create the reserve if there is room; True when it is in place."""
        try:
            if self.path.exists() and self.path.stat().st_size >= self.size:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("wb") as out:
                block = b"\0" * (1024 * 1024)
                for _ in range(0, self.size, len(block)):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            return True
        except OSError:
            self.path.unlink(missing_ok=True)
            return False

    def release(self) -> bool:
        """Give the reserved bytes back to the disk; True when there was a reserve to give."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("the disk is full: released the %d-byte space reserve so that deletes can run", self.size)
        return True
