"""One vitprune process at a time per output folder.

``with output_lock(folder, "compress"):`` creates ``folder`` if needed, takes an exclusive OS lock on
``folder/.vitprune/lock`` (``filelock``: ``flock`` on Unix; on file systems without ``flock`` filelock's own
soft lock with its owner's pid) and writes ``folder/.vitprune/owner.json`` (pid, host, purpose, start time) so
that a second process that wants the folder is refused with one line::

    FolderInUseError: out is in use by pid 4242 on node17 since 2026-11-24T10:31:07+00:00 (compress); ...

The kernel drops the lock when its process ends, however it ends (``kill -9``, a crashed node's NFS lease), so a
lock left by a dead run is taken over by the next one without any clean-up; its ``owner.json`` is simply
overwritten. The owner file is removed when the lock is let go.

The lock is re-entrant within one process: ``vitprune.compress`` holds it for the whole run and the
``vitprune.save`` it calls takes it again without waiting on itself. A forked child does not inherit it. Under
``torchrun`` only the process that writes the folder (rank 0) should take it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional

from filelock import FileLock, Timeout

from ..errors import FolderInUseError, OutputFolderError
from ..files import RefusedPath, read_bytes, remove, write_atomic

#: hidden folder of vitprune's own bookkeeping inside an output folder (the lock, saved versions)
STORE = ".vitprune"
LOCK_NAME = "lock"
OWNER_NAME = "owner.json"

_held: dict[str, list[Any]] = {}  # real path of a locked folder -> [pid, FileLock, depth]
_guard = threading.Lock()


def host_name() -> str:
    return socket.gethostname() or "localhost"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_owner(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The owner record of ``folder``'s lock (``pid``, ``host``, ``purpose``, ``since``), or None."""
    try:
        data = json.loads(read_bytes(Path(folder) / STORE / OWNER_NAME, limit=2**16, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _prepare(folder: Path) -> Path:
    store = folder / STORE
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder; give a folder for the output.")
    if store.is_symlink():
        raise OutputFolderError(f"{store} is a symlink; vitprune writes only into real folders inside {folder}: "
                                "remove it, or use another folder.")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputFolderError(f"cannot create {folder}: a file is in the way.") from None
    except PermissionError:
        raise OutputFolderError(f"cannot write to {folder} (permission denied).") from None
    except OSError as e:
        raise OutputFolderError(f"cannot create {folder} ({e.strerror or e}).") from None
    return store


def _busy(folder: Path) -> FolderInUseError:
    owner = None
    for _ in range(20):  # the holder writes owner.json just after it takes the lock
        owner = read_owner(folder)
        if owner:
            break
        time.sleep(0.05)
    if not owner:
        return FolderInUseError(f"{folder} is in use by another process; wait for it to end or choose another "
                                "output folder.")
    what = f" ({owner['purpose']})" if owner.get("purpose") else ""
    return FolderInUseError(f"{folder} is in use by pid {owner.get('pid')} on {owner.get('host')} since "
                            f"{owner.get('since')}{what}; wait for it to end or choose another output folder.")


@contextmanager
def output_lock(folder: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Hold ``folder`` for this process (see the module's doc); yields the folder as a Path.

    Raises ``FolderInUseError`` at once (no waiting) when another process holds it, ``OutputFolderError`` when
    the folder cannot be created or written.
    """
    folder = Path(folder).expanduser()
    store = _prepare(folder)
    key = os.path.realpath(folder)
    with _guard:
        entry = _held.get(key)
        if entry is not None and entry[0] == os.getpid():
            entry[2] += 1
    if entry is not None and entry[0] == os.getpid():
        try:
            yield folder
        finally:
            with _guard:
                entry[2] -= 1
        return

    lock = FileLock(str(store / LOCK_NAME), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(folder) from None
    except PermissionError:
        raise OutputFolderError(f"cannot write to {folder} (permission denied).") from None
    except OSError as e:
        raise OutputFolderError(f"cannot lock {folder} ({e.strerror or e}).") from None
    try:
        owner = {"pid": os.getpid(), "host": host_name(), "purpose": purpose,
                 "since": datetime.now().astimezone().isoformat(timespec="seconds")}
        write_atomic(store / OWNER_NAME, json.dumps(owner) + "\n")
        with _guard:
            _held[key] = [os.getpid(), lock, 1]
        yield folder
    finally:
        with _guard:
            _held.pop(key, None)
        try:
            remove(store / OWNER_NAME, root=folder)
        except RefusedPath:
            pass
        finally:
            lock.release()


__all__ = ["output_lock", "read_owner", "pid_alive", "host_name", "STORE"]
