"""Rotary position embeddings (timm ``Eva`` models: EVA, EVA02, ``vit_*_rope_*``) travelling with the tokens.

A timm Eva model rotates the queries and keys of its patch tokens by a per-patch rope row (``[sin, cos]``
concatenated, ``D`` wide); its prefix tokens (``num_prefix_tokens``) get no rotation. timm's own patch dropout keeps
each kept patch's row (``apply_keep_indices_nlc``, a per-image ``B x 1 x N x D`` rope). vitprune does the same for
every token a method keeps, merges or builds: ``rope`` here is always per image, ``B x P x D``, one row per token
after the prefix, in the tokens' current order. ``None`` stands for "no rope" (timm ViTs, Eva models without
rotary embeddings), and every op returns ``None`` for it at no cost, so the ViT paths are untouched.

A token that stands for no single patch (EViT's fused token, Evo-ViT's representative token, SaiT's fused token)
gets the row of no rotation (``sin 0, cos 1``): it is then treated as timm treats its prefix tokens. DGE's pooled
region cells get the circular mean of their patches' rotations (:func:`normalise` of the pooled rows).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .tokens import take_rows


def per_image(rope: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """timm's rope of the embedded patches (``P x D`` shared by the batch, or ``B x 1 x P x D`` after timm's patch
    dropout) as ``B x P x D`` (an expanded view when shared)."""
    if rope is None:
        return None
    if rope.dim() == 4:
        return rope.squeeze(1)
    return rope.expand(batch, -1, -1)


def no_rotation(rope: Tensor, rows: int) -> Tensor:
    """``B x rows x D`` rows that rotate nothing (``sin = 0``, ``cos = 1``), like rope's ``[sin, cos]`` layout."""
    b, _, d = rope.shape
    half = rope.new_zeros(b, rows, d // 2)
    return torch.cat([half, half + 1], dim=-1)


def take_rope(rope: Optional[Tensor], idx: Tensor, synthetic: int = 0) -> Optional[Tensor]:
    """The rows of the patch tokens ``idx`` (``B x k``, positions among the current patch tokens), then
    ``synthetic`` rows of no rotation for tokens appended after them (a fused or representative token)."""
    if rope is None:
        return None
    out = take_rows(rope.contiguous(), idx)
    return torch.cat([out, no_rotation(rope, synthetic)], dim=1) if synthetic else out


def with_synthetic(rope: Optional[Tensor], synthetic: int) -> Optional[Tensor]:
    """``rope`` with ``synthetic`` rows of no rotation appended (tokens added after the patches)."""
    if rope is None or not synthetic:
        return rope
    return torch.cat([rope, no_rotation(rope, synthetic)], dim=1)


def prefixed(rope: Optional[Tensor], num_prefix: int) -> Optional[Tensor]:
    """``rope`` with rows of no rotation for the prefix tokens in front (``B x (num_prefix + P) x D``): the layout of
    the whole token sequence, for ops that address tokens by sequence position."""
    if rope is None or not num_prefix:
        return rope
    return torch.cat([no_rotation(rope, num_prefix), rope], dim=1)


def normalise(rope: Tensor) -> Tensor:
    """Each ``(sin, cos)`` pair scaled back to unit length (a pure rotation); a pair of length ~0 (rotations that
    cancel) becomes no rotation."""
    sin, cos = rope.float().chunk(2, dim=-1)
    norm = torch.sqrt(sin * sin + cos * cos)
    ok = norm > 1e-6
    safe = norm.clamp_min(1e-6)
    sin = torch.where(ok, sin / safe, torch.zeros_like(sin))
    cos = torch.where(ok, cos / safe, torch.ones_like(cos))
    return torch.cat([sin, cos], dim=-1).to(rope.dtype)


def rotate(attn: nn.Module, t: Tensor, rope: Optional[Tensor]) -> Tensor:
    """Queries or keys ``t`` (``B x H x N x D``) rotated as timm's Eva attention does: the tokens after the
    attention's ``num_prefix_tokens`` by their ``rope`` rows (``B x (N - prefix) x D``), the prefix unrotated."""
    if rope is None:
        return t
    from timm.layers import apply_rot_embed_cat

    npt = attn.num_prefix_tokens
    half = getattr(attn, "rotate_half", False)
    return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope.unsqueeze(1), half=half)], dim=2)
