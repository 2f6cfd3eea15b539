"""PyTorch files read as data: ``torch.load(weights_only=True)`` behind the file gate.

Tensors and plain containers only, never code: a pickle that would run code is refused by torch
(``pickle.UnpicklingError``). The file is opened by :func:`vitprune.files.open_regular` (a regular file only) and
read whole, never memory-mapped: a file rewritten in place while its tensors live would crash the process. This
module is :mod:`vitprune.files`' torch half, apart so that the gate itself imports no torch (the command line reads
recipe files through it before torch is needed).
"""
from __future__ import annotations

import io
from typing import Any, Iterable

import torch

from .files import PathLike, check_regular, open_regular


def read_tensors(path: PathLike, *, safe_globals: Iterable[Any] = ()) -> Any:
    """The PyTorch file ``path`` read as data, onto the CPU; ``safe_globals`` allows a few more types for this load
    only."""
    check_regular(path)
    with torch.serialization.safe_globals(list(safe_globals)), open_regular(path) as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def read_tensor_bytes(data: bytes, *, safe_globals: Iterable[Any] = ()) -> Any:
    """:func:`read_tensors` for bytes already read (a checkpoint sent by process 0 to the others)."""
    with torch.serialization.safe_globals(list(safe_globals)):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


__all__ = ["read_tensors", "read_tensor_bytes"]
