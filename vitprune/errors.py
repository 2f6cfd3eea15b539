"""The few exceptions a vitprune user can meet.

Each carries a one-line message that says what is wrong and what to do. Messages name arguments and method options
by their Python names in backticks (`keep_rate`, `batch_size`), never by command-line flags: the command line's one
error edge prints ``Error: <message>`` with each name that is a parameter of the running command written as its flag
(`--keep-rate`), and exits with ``exit_code``: 2 for a ``UsageError`` (a command line that asks for something
malformed or contradictory, like the parser's own errors), 1 for everything else. Anything that is not a
``VitpruneError`` is a bug in vitprune and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

#: errno values of a write that found no room: the disk is full, a file size limit (ulimit -f), a disk quota
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) write an errno


class VitpruneError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""

    exit_code = 1


class UsageError(VitpruneError):
    """Arguments that do not go together or a value outside a fixed set (``compile="bogus"``, two sweeps at once):
    the command line was wrong, exit code 2."""

    exit_code = 2


class ModelNotFoundError(VitpruneError):
    """A model name, folder or Hub repo that cannot be found (including offline and not cached)."""


class UnsupportedModelError(VitpruneError):
    """A model vitprune cannot patch (not a timm VisionTransformer, or a block layout it does not know)."""


class MethodOptionError(VitpruneError):
    """A method name or option value that is not valid (keep rate, r, budget, region size...)."""


class DataError(VitpruneError):
    """A dataset that is missing, empty, unreadable, or does not fit the model."""


class DeviceError(VitpruneError):
    """A device that is not available (no CUDA) or ran out of memory."""


class TrainingDiverged(VitpruneError):
    """Training produced a non-finite loss, gradient or weight; nothing of it was saved (the last checkpoint, if
    any, is the last good state)."""


class PushError(VitpruneError):
    """An upload to the Hugging Face Hub that failed; the local folder is left as it was."""


class OutputFolderError(VitpruneError):
    """An output folder vitprune cannot write: a file in its place, no permission, or files another tool made."""


class FolderInUseError(OutputFolderError):
    """An output folder that another vitprune process is writing; the message names its pid, host and start."""


class ExportError(VitpruneError):
    """An ONNX export that cannot be made (a method setting without a static inference path, the export extra not
    installed) or that failed its checks (token counts per block, ONNX Runtime against PyTorch)."""


class VitpruneWarning(UserWarning):
    """Something asked for that has no effect (an option the chosen mode ignores); the CLI prints
    ``warning: <message>`` with the same flag names as its errors."""


def no_room(e: Optional[BaseException]) -> Optional[str]:
    """Why a write failed (``"No space left on device"``, ``"File too large"``, ``"Disk quota exceeded"``) when
    ``e``, or an exception it was raised from, is a write that found no room; None for any other error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return os.strerror(e.errno)
        m = _OS_ERROR.search(str(e))
        if m and int(m.group(1)) in _NO_ROOM:
            return os.strerror(int(m.group(1)))
        e = e.__cause__ or e.__context__
    return None



@contextmanager
def when_full(error: Callable[[str], "VitpruneError"]) -> Iterator[None]:
    """Inside: a write that finds no room (:func:`no_room`) leaves as ``error(why)``, one line (``why``: "No space
    left on device (the disk is full or a size limit was reached)"); a ``VitpruneError`` and every other exception
    leave as they are."""
    try:
        yield
    except VitpruneError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a write that found no room
        reason = no_room(e)
        if reason is None:
            raise
        raise error(f"{reason} (the disk is full or a size limit was reached)") from None


__all__ = [
    "VitpruneError",
    "UsageError",
    "VitpruneWarning",
    "ModelNotFoundError",
    "UnsupportedModelError",
    "MethodOptionError",
    "DataError",
    "DeviceError",
    "TrainingDiverged",
    "PushError",
    "OutputFolderError",
    "FolderInUseError",
    "ExportError",
]
