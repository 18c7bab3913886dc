"""Atomic ``.npz`` files shared by the sweep's records and the solved-design cache."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_atomic", "file_mode"]


def file_mode() -> int:
    """The mode a new file gets from the umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path, columns: dict, meta: dict) -> None:
    """Write ``columns`` and a JSON ``meta`` entry to ``path`` (npz) so that readers see all
    or nothing: a temporary file in the same directory, fsynced, given the umask's mode
    (``mkstemp`` makes 0600; other users of a shared directory must read it), then
    ``os.replace``. The temporary file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **columns, meta=np.asarray(json.dumps(meta, sort_keys=True)))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
