"""The tensors of a checkpoint file (a PyTorch pickle read as tensors only, or safetensors), unwrapped from the
entry that holds them, with the training arguments it stores: what ``vitprune import-checkpoint`` and a
transformers folder's ``pytorch_model.bin`` are read with."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import ModelNotFoundError
from ..files import RefusedPath, check_regular
from ..tensorfiles import read_tensors

STATE_KEYS = ("model", "state_dict", "model_ema", "module")


def read_state_dict(file: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pth/.pt/.bin pickle or .safetensors), unwrapped from ``key``."""
    return read_checkpoint(file, key)[0]


def read_checkpoint(file: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a checkpoint file (unwrapped from ``key``) and its stored training arguments (``args``, an
    ``argparse.Namespace`` or a dict, as plain values; empty when there are none)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {path} does not exist.")
    try:
        check_regular(path)
    except RefusedPath:
        raise ModelNotFoundError(f"checkpoint {path} is not a regular file.") from None
    if path.suffix == ".safetensors":
        obj: Any = load_file(str(path))
    else:
        try:  # argparse.Namespace allowed for this load only, not every later one
            obj = read_tensors(path, safe_globals=[argparse.Namespace])
        except Exception as e:  # noqa: BLE001 - any unpickling problem is the file's
            raise ModelNotFoundError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}).") from None
    args = obj.get("args") if isinstance(obj, dict) else None
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ModelNotFoundError(f"{path} has no entry {key!r} (entries: {', '.join(map(str, obj))}).")
        obj = obj[key]
    else:
        for k in STATE_KEYS:
            if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelNotFoundError(f"{path} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}, args


__all__ = ["STATE_KEYS", "read_checkpoint", "read_state_dict"]
