"""The pooled head of a ViT without a class token when tokens were removed, masked or fused.

``weight`` (``B x P``, one value per current patch token) says how many original patches a token stands for: 1 for
a kept patch, the number of patches fused into it for a fused token, 0 for a slot that holds no live token (a
masked or padding slot). ``'avg'`` pooling becomes the weighted mean (so that it approximates the dense model's
mean over patches, as ToMe's size-weighted average does); attention pooling (``'map'``, SigLIP) runs timm's own
attention pool with the additive key bias ``log(weight)`` (proportional attention: a token standing for ``s``
patches counts as ``s`` copies of itself, and a slot of weight 0 is invisible). Prefix tokens count 1 when the
model pools them too (``pool_include_prefix``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

#: the pooling kinds whose head can be restricted to the live tokens (``token`` reads the class token only)
POOLS = ("token", "avg", "map")


def pool_kind(model: nn.Module) -> str:
    """``'map'`` for attention pooling, else timm's ``global_pool`` (``'token'``, ``'avg'``, ``'max'``...)."""
    return "map" if getattr(model, "attn_pool", None) is not None else str(getattr(model, "global_pool", "token"))


def weighted_pool(model: nn.Module, x: Tensor, weight: Optional[Tensor],
                  pool_type: Optional[str] = None) -> Optional[Tensor]:
    """Pool the final tokens ``x`` (``B x N x C``, prefix first) of ``model`` with patch weights ``weight``;
    None when timm's own pooling is right (no weights, or class-token pooling)."""
    kind = pool_kind(model) if pool_type is None else pool_type
    if weight is None or kind not in ("avg", "map"):
        return None
    npre = model.num_prefix_tokens
    w = weight.to(torch.float32)
    if getattr(model, "pool_include_prefix", False):
        w = torch.cat([w.new_ones(w.shape[0], npre), w], dim=1)
        tokens = x
    else:
        tokens = x[:, npre:]
    if kind == "avg":
        wx = w.to(x.dtype).unsqueeze(-1)
        return (tokens * wx).sum(dim=1) / wx.sum(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
    dead = torch.finfo(x.dtype).min
    bias = torch.where(w > 0, w.clamp_min(1e-30).log(), torch.full_like(w, dead)).to(x.dtype)
    return model.attn_pool(tokens, attn_mask=bias[:, None, None, :])
