"""Training checkpoints: everything needed to continue a run exactly where it stopped, written atomically.

A checkpoint holds the student's weights, the optimizer, scheduler and grad-scaler states, the position (global
optimizer step; the data order is a pure function of the seed and the epoch, so the step is enough to find the
next batch), the partial metrics of the current epoch, the history of finished epochs, the random states of every
process (Python, NumPy, torch CPU and CUDA), the method's plain run-time attributes, and a fingerprint of the
settings that decide the result (a resumed run must use the same ones).

Written to a temporary file in the same folder, flushed to disk, then renamed over the previous checkpoint:
a run killed at any moment leaves the previous checkpoint or the new one, never a partial file.
"""
from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import VitpruneError

FORMAT = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a file that is not a checkpoint (or from another program)
        raise VitpruneError(f"{path} is not a readable vitprune checkpoint ({type(e).__name__}); delete it to start "
                            "over.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VitpruneError(f"{path} was written by another vitprune version; delete it to start over.")
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


_PLAIN = (int, float, bool, str, type(None))


def _plain(v: Any) -> bool:
    if isinstance(v, _PLAIN):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def method_state(method: Any) -> dict[str, Any]:
    """The method object's plain run-time attributes (schedules set by ``on_train_progress``...); its options,
    model facts and module references are rebuilt, not saved."""
    if method is None:
        return {}
    skip = {"options", "info", "_attached"}
    return {k: v for k, v in vars(method).items() if k not in skip and _plain(v)}


def restore_method_state(method: Any, state: dict[str, Any]) -> None:
    for k, v in (state or {}).items():
        setattr(method, k, v)


def check_resumable(path: Path, fingerprint: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and make sure it was written by a run with the same settings."""
    c = load_checkpoint(path)
    diff = fingerprint_diff(c.get("fingerprint", {}), fingerprint)
    if diff:
        raise VitpruneError(f"--resume: the checkpoint in {path} was made with other settings ({diff}); use the same "
                            "ones, or start over with --overwrite.")
    if c.get("world_size", 1) != world_size:
        raise VitpruneError(f"--resume: the checkpoint was written by {c.get('world_size', 1)} process(es), this run "
                            f"has {world_size}; resume with the same number.")
    return c


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
    for k in sorted(set(saved) | set(current)):
        if saved.get(k) != current.get(k):
            return f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
    return None
