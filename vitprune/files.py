"""The file gate: the one way vitprune reads, writes and deletes files in a user's folder.

Every reader and writer of the package goes through these few functions (a test fails when a module calls
``open``, ``os.remove``, ``os.unlink``, ``Path.unlink`` or ``shutil.rmtree`` elsewhere), so one set of rules holds:

* **Names stay inside their folder.** ``inside(root, name)`` refuses an absolute name, a ``..`` part and a name
  whose symlinks lead out of ``root``. Writes and deletions take the folder they belong to (``root=``) and refuse
  a path in which any folder below ``root`` is a symlink: a planted ``checkpoints`` or ``logs`` link cannot send
  vitprune's files, or its deletions, somewhere else.
* **Only regular files are opened.** ``open_regular`` checks the file with ``stat`` first, then opens it with
  ``O_NONBLOCK`` (and ``O_NOFOLLOW`` when links are not to be followed) and checks the open file again with
  ``fstat``: a FIFO, a device or a socket is refused (``RefusedPath``) without blocking or side effects.
* **Writes are whole or absent.** ``write_atomic`` writes a temporary file beside the target
  (``.NAME.tmp-XXXXXXXX``: same folder, so the rename cannot cross file systems), flushes it to disk and renames
  it over the target: a reader, or a process killed at any instant, sees the old file or the new one. A failed
  write removes its temporary file. Writers that share a folder also hold its lock (``vitprune.hub.lock``).
* **Deletions touch only vitprune's own files.** ``remove`` deletes one named file or link (never what a link
  points to); ``remove_tree`` deletes a folder vitprune made (a version folder, a temporary folder) without
  following any link inside it. Callers name exactly what they wrote; nothing is deleted by pattern elsewhere.
* **Weights are data.** ``vitprune.tensorfiles.read_tensors`` opens a PyTorch file through ``open_regular`` and
  reads it with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.

A refused file raises ``RefusedPath`` (an ``OSError``); callers turn it into their one-line error.
"""
from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path, PurePath
from typing import BinaryIO, Callable, Optional, Union

#: what ``write_atomic`` writes: bytes, text (UTF-8), or a function that writes into the open binary file
Content = Union[bytes, str, Callable[[BinaryIO], object]]
PathLike = Union[str, "os.PathLike[str]"]


class RefusedPath(OSError):
    """A path the gate does not open, write or delete: outside its folder, through a link, or not a regular file."""


# ------------------------------------------------------------------------------------------ names


def inside(root: PathLike, name: PathLike, *, what: str = "path") -> Path:
    """``root/name`` with its symlinks resolved, if it stays inside ``root``; ``RefusedPath`` for an empty or
    absolute name, a ``..`` part, or symlinks that lead out of ``root``."""
    name = os.fspath(name)
    if not name:
        raise RefusedPath(f"empty {what}")
    if os.path.isabs(name) or PurePath(name).is_absolute():
        raise RefusedPath(f"absolute {what} (only paths inside the folder are used)")
    if ".." in PurePath(name.replace("\\", "/")).parts:
        raise RefusedPath(f"{what} with '..' (only paths inside the folder are used)")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, real]) != base:
        raise RefusedPath(f"{what} leads out of the folder through a symlink")
    return Path(real)


def _no_links_below(root: PathLike, path: PathLike) -> None:
    """``RefusedPath`` unless ``path`` is under ``root`` and no existing folder between them is a symlink."""
    root, path = Path(root), Path(path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise RefusedPath(f"{path} is not inside {root}") from None
    if ".." in rel.parts:
        raise RefusedPath(f"{path} has a '..' part")
    here = root
    for part in rel.parts[:-1]:
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except FileNotFoundError:
            return  # the rest is made by vitprune
        if stat.S_ISLNK(mode):
            raise RefusedPath(f"{here} is a symlink; vitprune writes only into real folders inside {root}")
        if not stat.S_ISDIR(mode):
            raise RefusedPath(f"{here} is not a folder")


def make_dirs(path: PathLike, *, root: Optional[PathLike] = None) -> Path:
    """Create the folder ``path`` (and its parents); with ``root``, refuse a symlinked folder on the way."""
    path = Path(path)
    if root is not None:
        _no_links_below(root, path / "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ reading


def check_regular(path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
    """The ``stat`` of ``path``, or ``RefusedPath`` when it is not a regular file (checked before any open)."""
    st = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(st.st_mode):
        raise RefusedPath("not a regular file")
    return st


def open_regular(path: PathLike, *, follow_symlinks: bool = True) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (see the module doc); ``RefusedPath`` else."""
    check_regular(path, follow_symlinks=follow_symlinks)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    f = os.fdopen(os.open(path, flags), "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced between the check and the open
        f.close()
        raise RefusedPath("not a regular file")
    return f


def read_bytes(path: PathLike, *, limit: Optional[int] = None, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``; ``limit``: ``RefusedPath`` when it holds more."""
    with open_regular(path, follow_symlinks=follow_symlinks) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise RefusedPath(f"larger than {limit} bytes")
    return data


def read_text(path: PathLike, *, limit: Optional[int] = None, follow_symlinks: bool = True) -> str:
    """The UTF-8 text of the regular file ``path`` (``UnicodeDecodeError`` when it is not UTF-8)."""
    return read_bytes(path, limit=limit, follow_symlinks=follow_symlinks).decode("utf-8")


# ------------------------------------------------------------------------------------------ writing


def temp_name(path: Path) -> Path:
    """The temporary name a write of ``path`` goes through: ``.last.pt.tmp-1a2b3c4d`` for ``last.pt``."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_atomic(path: PathLike, content: Content, *, root: Optional[PathLike] = None) -> Path:
    """Write ``path`` atomically (see the module doc); creates its folder if needed. With ``root``, the folder
    must lie inside ``root`` without a symlinked folder on the way. Returns the path."""
    path = Path(path)
    if root is not None:
        _no_links_below(root, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def write_new(path: PathLike, content: Union[bytes, str]) -> Path:
    """Create ``path`` (it must not exist: never written through a link or a hard link) with ``content``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    return Path(path)


def fsync_file(path: PathLike) -> None:
    """Flush a regular file's content to disk."""
    with open_regular(path, follow_symlinks=False) as f:
        os.fsync(f.fileno())


def fsync_dir(path: PathLike) -> None:
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


# ------------------------------------------------------------------------------------------ deleting


def remove(path: PathLike, *, root: PathLike, missing_ok: bool = True) -> bool:
    """Delete the file or symlink ``path`` (a link itself, never its target) inside ``root``; a folder is
    refused. Returns whether something was deleted."""
    path = Path(path)
    _no_links_below(root, path)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise RefusedPath(f"{path} is a folder")
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    return True


def remove_tree(path: PathLike, *, root: PathLike) -> bool:
    """Delete the folder ``path`` that vitprune made inside ``root`` with everything in it, following no link
    (a link inside is removed, its target is not touched). A symlink or a file at ``path`` is refused."""
    path = Path(path)
    _no_links_below(root, path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        raise RefusedPath(f"{path} is not a folder")
    shutil.rmtree(path)  # rmtree never follows links (and guards against a folder swapped for one meanwhile)
    return True


def remove_empty_dir(path: PathLike, *, root: PathLike) -> bool:
    """Delete the folder ``path`` inside ``root`` if it is empty (and a real folder); returns whether it went."""
    path = Path(path)
    _no_links_below(root, path)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
            return True
    except OSError:  # missing, or not empty: it stays
        pass
    return False


__all__ = ["RefusedPath", "inside", "make_dirs", "check_regular", "open_regular", "read_bytes", "read_text",
           "temp_name", "write_atomic", "write_new", "fsync_file", "fsync_dir",
           "remove", "remove_tree", "remove_empty_dir"]
