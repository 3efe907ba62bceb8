"""Writing files so that a crash never leaves a half file under a final name: temp file, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write) -> None:
    """Run ``write(file_object)`` on a temp file in the destination folder, fsync it, then rename.

    The rename is atomic on POSIX file systems, so readers see either no file or the complete one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets open()'s mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through a temp file and a rename."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str) -> None:
    _atomic_write(path, lambda f: f.write(data))


def write_json(obj, path: str) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), path)


__all__ = ["atomic_save", "atomic_write_bytes", "write_json"]
