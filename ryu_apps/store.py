"""The controller's durable view: one JSON file, replaced atomically.

``save`` writes the policy's snapshot (``Policy.snapshot``) to a temporary file in the same
directory, flushes it to disk (``fsync``), renames it over the old one and flushes the
directory: a reader (the restarted controller) finds either the old snapshot or the new one,
whole, never a mix, whether the writer was killed mid-write or the machine lost power. The
gateway saves before it carries out a change (before any switch or agent sees it), so a
view that reached anyone is never newer than the file.

Why a file and not a database: one writer (the controller), a few kilobytes written on each
membership change (a handful per experiment), read once at start; ``rename(2)`` gives
exactly the atomicity this needs and the file stays readable with ``cat``. SQLite or etcd
would add a dependency and a format without adding a guarantee the controller uses (a
replicated store is what a controller cluster needs; this testbed supervises one process).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["StoreError", "save", "load"]


class StoreError(ValueError):
    """The state file exists but cannot be read as a snapshot (the message says why)."""


def save(path: str | os.PathLike, snapshot: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(snapshot, indent=1, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)          # the old snapshot stays, whole
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str | os.PathLike) -> dict | None:
    """The saved snapshot, or None if there is no file yet."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read state file {path}: {e.strerror}") from None
    try:
        snap = json.loads(text)
    except ValueError as e:
        raise StoreError(f"state file {path} is not valid JSON: {e}") from None
    if not isinstance(snap, dict):
        raise StoreError(f"state file {path} does not hold a JSON object")
    return snap
