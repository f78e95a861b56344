"""Atomic file writes: write to a temporary file in the target folder, then rename over the final name.

A crash or Ctrl-C in the middle of a write therefore never leaves a half-written checkpoint, image or cache entry
under the final name (a reader sees the old file or the new one, never a mix). Used by the HDR I/O module, the model's
checkpoints and the perception cache.
"""

from __future__ import annotations

import os
import os.path as osp
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[BinaryIO], object], fsync: bool = False) -> None:
    """Create ``path`` atomically with ``write(fileobj)``; parent folders are created.

    Args:
        path: final file name.
        write: called with a binary file object open for writing.
        fsync: flush the data to disk before the rename (durability across power loss; slower).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=osp.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))
