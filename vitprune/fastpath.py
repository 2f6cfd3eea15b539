"""Inference speed-ups that do not change what a model computes.

``vitprune.optimize(model)`` compiles a (dense or patched) model with ``torch.compile`` (TorchInductor fuses the
element-wise work around the matrix products: LayerNorm, GELU, residual adds, the token gathers) and, on a GPU,
replays it through CUDA graphs (``mode="reduce-overhead"``), which removes the kernel-launch cost that dominates at
batch 1. vitprune's methods keep token counts static per stage and never synchronise with the host inside forward,
so a patched model compiles into one graph per input shape.

The compiled module shares its parameters with ``model``; the first call for a new input shape compiles (seconds to
a minute), later calls are fast. SaiT's adaptive mode, whose token counts depend on the image, compiles too but
may recompile per count; its fixed mode is the fast path. DGE compiles into one graph with no host read: blocks
with a static router schedule run their fixed level, routed blocks run at their static maximum width (see
:mod:`vitprune.methods.dge`).
"""
from __future__ import annotations

from typing import Literal, Optional, get_args

import torch
from torch import nn

from .errors import UsageError

Mode = Literal["auto", "compile", "cudagraphs", "max-autotune", "none"]
MODES: tuple[str, ...] = get_args(Mode)


def check_mode(mode: str, name: str = "mode") -> str:
    """``mode`` when it is one of :data:`MODES`; else a ``UsageError`` naming the argument ``name``."""
    if mode not in MODES:
        raise UsageError(f"`{name}` must be one of {', '.join(MODES)}, got {mode!r}.")
    return mode


def optimize(model: nn.Module, mode: Mode = "auto", *, device: Optional[torch.device] = None) -> nn.Module:
    """Return a faster inference version of ``model`` (eval mode): see the module docstring.

    ``mode``: ``auto`` = CUDA graphs + compile on GPU, compile on CPU; ``compile`` = inductor without CUDA graphs;
    ``cudagraphs`` = inductor with CUDA graphs; ``max-autotune`` = inductor with autotuned kernels and CUDA graphs
    (slow to compile); ``none`` = the model as is.
    """
    check_mode(mode)
    model.eval()
    if mode == "none":
        return model
    method = getattr(model, "vitprune_method", None)
    prepare = getattr(method, "prepare_inference", None)
    if prepare is not None:  # what the compiled graph takes as constants (DGE: which routers are static)
        prepare(model)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    on_gpu = device.type == "cuda"
    torch_mode = {
        "auto": "reduce-overhead" if on_gpu else "default",
        "compile": "default",
        "cudagraphs": "reduce-overhead",
        "max-autotune": "max-autotune",
    }[mode]
    return torch.compile(model, mode=torch_mode, dynamic=False)
