"""Training checkpoints: everything needed to continue a run exactly where it stopped, written atomically.

A checkpoint holds the student's weights, the optimizer, scheduler and grad-scaler states, the position (global
optimizer step; the data order is a pure function of the seed and the epoch, so the step is enough to find the
next batch), the partial metrics of the current epoch, the history of finished epochs, the random states of every
process (Python, NumPy, torch CPU and CUDA), the method's own training state (``method.state_dict()``), and a
fingerprint of the settings that decide the result (a resumed run must use the same ones).

Written to a temporary file in the same folder (``.NAME.pt.tmp-XXXXXXXX``), flushed to disk, then renamed over the
previous checkpoint: a run killed at any moment leaves the previous checkpoint or the new one, never a partial
file; the temporary file a killed write leaves behind is removed when the next run starts (``remove_stale_temp``).

A checkpoint is data, never code: it is read with ``torch.load(weights_only=True)``, which builds tensors and plain
containers only, plus the few NumPy types of NumPy's random state (allowed for that one load, not globally). Under
torchrun only process 0 reads the file and sends its bytes to the others, so a multi-node run resumes even when
the output folder is on process 0's local disk.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct  # NumPy 2
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

from ..errors import VitpruneError
from ..files import read_bytes, remove, write_atomic
from ..tensorfiles import read_tensor_bytes, read_tensors
from .ddp import DistInfo, broadcast_object

FORMAT = 1
#: what every checkpoint holds (a file without them is not a vitprune checkpoint)
KEYS = ("fingerprint", "step", "model", "optimizer", "scheduler", "acc", "history", "skipped", "elapsed", "rng")
#: the temporary name of a checkpoint being written (``files.temp_name``): ``.last.pt.tmp-1a2b3c4d`` for ``last.pt``
_TEMP = re.compile(r"^\..+\.pt\.tmp-[0-9a-f]{8}$")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def save_best(path: Path, payload: dict[str, Any]) -> None:
    """The best epoch's weights (``keep_best``): ``epoch``, ``val_top1``, ``step``, ``model``, ``method_state``."""
    write_atomic(path, lambda f: torch.save({"format": FORMAT, "kind": "best", **payload}, f))


def load_best(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The best-epoch file at ``path``, read as data only, refused unless it holds the ``expected`` epoch (the
    run's log and the file must agree)."""
    path = Path(path)
    if not path.is_file():
        raise VitpruneError(f"`keep_best`: {path} is missing (epoch {expected['epoch']} was the best); run again "
                            "with `overwrite`.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = read_tensors(path)
    except Exception as e:
        raise VitpruneError(f"{path} is not a readable vitprune checkpoint ({type(e).__name__}); run again with "
                            "`overwrite`.") from None
    if not isinstance(c, dict) or c.get("kind") != "best" or "model" not in c or c.get("epoch") != expected["epoch"]:
        raise VitpruneError(f"{path} does not hold the best epoch {expected['epoch']} of this run; run again with "
                            "`overwrite`.")
    return c


def remove_stale_temp(folder: Path) -> list[str]:
    """Delete the temporary files that killed checkpoint writes left in ``folder`` (only names of the form
    ``.NAME.pt.tmp-XXXXXXXX``, regular files, in that folder itself); returns their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for e in entries:
        if _TEMP.match(e.name) and e.is_file(follow_symlinks=False):
            if remove(e.path, root=folder):
                removed.append(e.name)
    return removed


def _numpy_rng_types() -> list[Any]:
    """The globals NumPy's random state (``np.random.get_state()``, a uint32 array) pickles as, and no more."""
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: Path, data: Optional[bytes] = None) -> dict[str, Any]:
    """Read the checkpoint at ``path`` (or its bytes ``data``) as data only: tensors, plain containers and NumPy's
    random state; anything else (a pickle that would run code, another program's objects) is refused unread."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes about odd pickles: the error below says it all
            ckpt = read_tensor_bytes(data, safe_globals=_numpy_rng_types()) if data is not None else \
                read_tensors(path, safe_globals=_numpy_rng_types())
    except Exception as e:  # a file that is not a checkpoint, holds code or objects of another program
        raise VitpruneError(f"{path} is not a readable vitprune checkpoint ({type(e).__name__}); delete it to start "
                            "over.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VitpruneError(f"{path} was written by another vitprune version; delete it to start over.")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise VitpruneError(f"{path} is not a vitprune checkpoint (no {missing[0]!r}); delete it to start over.")
    return ckpt


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _verify(c: dict[str, Any], path: Path, fingerprint: dict[str, Any], world_size: int) -> None:
    diff = fingerprint_diff(c.get("fingerprint") or {}, fingerprint)
    if diff:
        raise VitpruneError(f"`resume`: the checkpoint in {path} was made with other settings ({diff}); use the same "
                            "ones, or start over with `overwrite`.")
    if c.get("world_size", 1) != world_size:
        raise VitpruneError(f"`resume`: the checkpoint was written by {c.get('world_size', 1)} process(es), this run "
                            f"has {world_size}; resume with the same number.")
    if not isinstance(c["rng"], list) or len(c["rng"]) != world_size:
        raise VitpruneError(f"{path} is not a vitprune checkpoint (random states); delete it to start over.")


def check_resumable(path: Path, fingerprint: dict[str, Any], info: Optional[DistInfo] = None) -> None:
    """Refuse, on every process, a checkpoint that is unreadable or was written with other settings (process 0
    reads it, the others get its verdict)."""
    info = info or DistInfo()
    problem = None
    if info.main:
        try:
            _verify(load_checkpoint(path), path, fingerprint, info.world_size)
        except VitpruneError as e:
            problem = str(e)
    problem = broadcast_object(info, problem)
    if problem:
        raise VitpruneError(problem)


def load_resumable(path: Path, fingerprint: dict[str, Any], info: Optional[DistInfo] = None) -> dict[str, Any]:
    """The checkpoint at ``path`` as process 0 reads it, on every process (the others get its bytes, and read them
    as data only as process 0 does), checked against this run's settings."""
    info = info or DistInfo()
    data, problem = None, None
    if info.main:
        if not Path(path).is_file():
            problem = f"`resume`: no checkpoint at {path}; run without `resume` to start."
        elif info.enabled:  # one process reads the file itself
            try:
                data = read_bytes(path)
            except OSError as e:
                problem = f"`resume`: cannot read {path} ({e.strerror or type(e).__name__})."
    data, problem = broadcast_object(info, (data, problem))
    if problem:
        raise VitpruneError(problem)
    c = load_checkpoint(path, data)
    _verify(c, path, fingerprint, info.world_size)
    return c


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
    for k in sorted(set(saved) | set(current)):
        if saved.get(k) != current.get(k):
            return f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
    return None
