"""Files written whole or not at all: the one atomic writer every part of vitprune uses (saved models' extra
files, training checkpoints and logs, a folder lock's owner record, a sweep's results).

``write_atomic`` writes into a temporary file next to the target (``.NAME.tmp-XXXXXXXX``: same folder, so the
rename cannot cross file systems), flushes it to disk and renames it over the target: a reader, or a process killed
at any instant, sees the old file or the new one, never a partial one. A failed write removes its temporary file.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Union

#: what ``write_atomic`` writes: bytes, text (UTF-8), or a function that writes into the open binary file
Content = Union[bytes, str, Callable[[BinaryIO], object]]


def temp_name(path: Path) -> Path:
    """The temporary name a write of ``path`` goes through: ``.last.pt.tmp-1a2b3c4d`` for ``last.pt``."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_atomic(path: str | os.PathLike, content: Content) -> Path:
    """Write ``path`` atomically (see the module doc); creates its folder if needed. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new names) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
