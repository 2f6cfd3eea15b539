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

Models with a different rotation per block (``rope_type='mixed'``: ``vit_*_rope_mixed_*``) carry every block's
rotation of a token in one row: ``[sin, cos]`` with each half the ``depth x heads x head_dim`` rotations of that
token flattened, so every op here (which only moves rows, or pairs each sin with its cos) serves them unchanged;
:func:`for_attention` cuts out the block's own part (the block's index is noted on its attention by
:func:`number_layers`). Each block's rotation thus follows its tokens.

BEiT's position rows (:mod:`vitprune.ops.relpos`) travel through the same ops.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import apply_rot_embed_cat
from torch import Tensor, nn

from .tokens import take_rows


#: the attribute of a block's attention that says which block it is, for models with a rotation per block
LAYER_ATTR = "vitprune_rope_layer"


def number_layers(blocks: nn.Module) -> None:
    """Note each block's index on its attention (:data:`LAYER_ATTR`), for :func:`for_attention` (once)."""
    for i, blk in enumerate(blocks):
        if getattr(blk.attn, LAYER_ATTR, None) != i:
            setattr(blk.attn, LAYER_ATTR, i)


def mixed_rows(rope: Tensor, batch: int) -> Tensor:
    """timm's per-block rope (``depth x H x P x 2 head_dim``, or ``depth x B x H x P x 2 head_dim`` after patch
    dropout) as per-image rows ``B x P x 2 (depth H head_dim)``: all sines, then all cosines (see the module doc)."""
    if rope.dim() == 4:
        rope = rope.unsqueeze(1).expand(-1, batch, -1, -1, -1)
    sin, cos = rope.chunk(2, dim=-1)  # depth x B x H x P x hd each

    def flat(t: Tensor) -> Tensor:
        return t.permute(1, 3, 0, 2, 4).reshape(t.shape[1], t.shape[3], -1)

    return torch.cat([flat(sin), flat(cos)], dim=-1)


def for_attention(attn: nn.Module, rope: Tensor) -> Tensor:
    """The rows as the attention ``attn`` applies them: ``B x 1 x P x D`` for a rope shared by the blocks, the
    block's own ``B x H x P x 2 head_dim`` part for a rope per block."""
    width = 2 * attn.head_dim
    if rope.shape[-1] == width:
        return rope.unsqueeze(1)
    b, p, _ = rope.shape
    sin, cos = rope.chunk(2, dim=-1)
    layer = getattr(attn, LAYER_ATTR)

    def part(t: Tensor) -> Tensor:
        return t.reshape(b, p, -1, attn.num_heads, attn.head_dim)[:, :, layer].transpose(1, 2)

    return torch.cat([part(sin), part(cos)], dim=-1)


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
    attention's ``num_prefix_tokens`` by their ``rope`` rows (``B x (N - prefix) x D``), the prefix unrotated. BEiT's
    position rows rotate nothing (their bias is added to the logits)."""
    if rope is None or getattr(attn, "relative_position_bias_table", None) is not None:
        return t  # no rope; or BEiT's position rows, applied as a bias (``ops.relpos``)
    npt = attn.num_prefix_tokens
    half = getattr(attn, "rotate_half", False)
    return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], for_attention(attn, rope), half=half)], dim=2)
