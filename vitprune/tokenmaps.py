"""Token maps: which tokens each stage of a patched model keeps, for ``vitprune visualize``.

Token maps come from the method contract, never from method names: under ``vitprune.methods.tracking(model)`` a
forward pass records, after each step that changes the token set, ``(block, assignment)`` where ``assignment``
(``B x num_patches``) gives for every original patch the index of the token representing it, or -1 when it was
dropped or fused into a catch-all token. This module runs the model and collects those maps
(:func:`collect_token_maps`); ``vitprune.report.plots.draw_token_maps`` draws them. ``vitprune.visualize`` is
:func:`visualize` here (the module is not called ``visualize`` so that the package attribute stays the function).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

import torch
from timm.data import resolve_data_config

from .errors import MethodOptionError, UsageError
from .data.images import load_images
from .data import eval_transform
from .methods import get_method, tracking
from .report.card import short_method
from .report.plots import draw_token_maps, require_matplotlib
from .api import resolve_models


@dataclass
class Stage:
    block: int
    assignment: np.ndarray  # B x P (token index per original patch, -1 = dropped/fused)


@dataclass
class TokenMaps:
    """Everything a token-map figure shows."""

    images: np.ndarray  # B x H x W x 3 in [0, 1]: what the model sees (after its eval transform)
    labels: list[str]
    grid: tuple[int, int]
    stages: list[Stage]
    method: str
    model: str
    predictions: list[Optional[str]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # tokens entering each block (batch, padded where adaptive)
    #: what became of the patches a stage shows as -1: "fused into one extra token" (EViT with fuse, SaiT with
    #: fuse) or the method's own word (``TokenMethod.removed_tokens``: "dropped", Evo-ViT's "carried aside")
    removed: str = "dropped"

    def kept(self, stage: Stage, i: int) -> int:
        a = stage.assignment[i]
        return int(np.unique(a[a >= 0]).size)

    def to_dict(self) -> dict[str, Any]:
        P = self.grid[0] * self.grid[1]
        return {"model": self.model, "method": self.method, "grid": list(self.grid), "images": self.labels,
                "predictions": self.predictions, "tokens_entering_blocks": self.counts,
                "stages": [{"block": s.block, "patch_tokens": [self.kept(s, i) for i in range(len(self.labels))],
                            "dropped_patches": [int((s.assignment[i] < 0).sum()) for i in range(len(self.labels))],
                            "of": P} for s in self.stages]}


def collect_token_maps(model, images: Sequence[Any], *, name: str = "model",
                       blocks: Optional[Sequence[int]] = None) -> TokenMaps:
    """Run ``model`` (patched) on ``images`` with tracking on and collect the recorded token maps."""
    method = get_method(model)
    if method is None:
        raise MethodOptionError(f"{name} is a dense model: give `method` (and its options) to see what a method "
                                "keeps, or a compressed model folder.")
    pil, labels = load_images(images)
    transform = eval_transform(model)
    batch = torch.stack([transform(im) for im in pil])
    cfg = resolve_data_config(model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    shown = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    model = model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode(), tracking(model):
        logits = model(batch.to(device))
    state = model.vitprune_state
    grid = tuple(int(g) for g in state.grid)
    stages = [Stage(int(b), a.detach().cpu().numpy().astype(np.int64)) for b, a in state.stages]
    if blocks is not None:
        wanted = set(int(b) for b in blocks)
        recorded = sorted({s.block for s in stages})
        missing = sorted(wanted - set(recorded))
        if missing:
            raise MethodOptionError(
                f"`blocks` {','.join(map(str, missing))}: {method.name} records token maps after blocks "
                f"{','.join(map(str, recorded)) or 'none'} for this model.")
        stages = [s for s in stages if s.block in wanted]
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    probs = logits.float().softmax(-1).cpu()
    preds: list[Optional[str]] = []
    for p in probs:
        if names:
            k = int(p.argmax())
            preds.append(f"{names[k] if k < len(names) else k} ({100 * float(p[k]):.0f} %)")
        else:
            preds.append(None)

    return TokenMaps(images=shown, labels=labels, grid=grid, stages=stages,
                     method=short_method(method.name, method.options_dict()), model=name,
                     predictions=preds, counts=list(state.counts),
                     removed="fused into one extra token" if state.fused else method.removed_tokens)


@dataclass
class VisualizeResult:
    path: Path
    size: tuple[int, int]
    maps: TokenMaps


def visualize(
    model: Any,
    images: Sequence[Any],
    out: str | os.PathLike = "tokens.png",
    *,
    method: Optional[str] = None,
    blocks: Optional[Sequence[int]] = None,
    dpi: int = 100,
    pretrained: bool = True,
    **method_options: Any,
) -> VisualizeResult:
    """Draw which tokens each stage keeps for ``images`` (files, ``demo:N`` or PIL images) into ``out`` (PNG).

    ``model`` is a compressed model (folder, ``hf-hub:`` repo or module), or a dense one with ``method`` and its
    options to try the method on it.
    """
    require_matplotlib()  # fail before loading anything
    if not str(out).lower().endswith(".png"):
        raise UsageError(f"`out` {out}: visualize writes a PNG; give a file name ending in .png.")
    if dpi < 20 or dpi > 600:
        raise UsageError(f"`dpi` must be between 20 and 600, got {dpi}.")

    name, _, compressed = resolve_models(model, method, method_options, pretrained=pretrained)
    if compressed is None:
        raise MethodOptionError(f"{name} is a dense model: give `method` (and its options) to see what a method "
                                "keeps, or a compressed model folder.")
    if not pretrained:
        name += " (random weights)"
    maps = collect_token_maps(compressed, images, name=name, blocks=blocks)
    size = draw_token_maps(maps, out, dpi=dpi)
    return VisualizeResult(Path(out), size, maps)


__all__ = ["visualize", "collect_token_maps", "load_images", "TokenMaps", "Stage", "VisualizeResult"]
