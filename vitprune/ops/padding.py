"""Padding masks of mixed-resolution batches (timm NaFlexViT's patch dictionaries), as pure functions.

A NaFlex batch pads every image's patches to one sequence length; ``live`` (``B x P`` bool, over the patch tokens
after the prefix) is True for a real patch and False for a padding slot. Prefix tokens are always live. The ops that
choose tokens rank padding below every real patch, so that a static count never keeps padding while it drops a real
patch; attention hides padding keys with an additive bias (as timm's ``create_attention_mask``, key-only: a real
query never attends to padding); a pooled head reads live tokens only.

Conventions as in :mod:`vitprune.ops.tokens`; no Python loop over samples or tokens, no host synchronisation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def with_prefix(live: Tensor, num_prefix: int) -> Tensor:
    """``B x (num_prefix + P)`` bool: the prefix tokens (always live) before the patches' ``live``."""
    if num_prefix == 0:
        return live
    return torch.cat([live.new_ones(live.shape[0], num_prefix), live], dim=1)


def key_bias(live: Tensor, num_prefix: int, dtype: torch.dtype) -> Tensor:
    """Additive attention bias ``B x 1 x 1 x N`` hiding padding keys (``finfo.min``, as timm's NaFlex mask)."""
    keys = with_prefix(live, num_prefix)
    bias = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(~keys, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def add_bias(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    """The sum of two additive attention biases, either of which may be None."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b.to(a.dtype)


def rank_scores(scores: Tensor, live: Optional[Tensor]) -> Tensor:
    """Scores for ranking patches (``B x P``): padding gets ``-inf``, below every real patch (None: unchanged)."""
    return scores if live is None else scores.masked_fill(~live, float("-inf"))


def live_weights(weights: Tensor, live: Optional[Tensor]) -> Tensor:
    """Weights (``B x P``) with padding set to 0, so that a fused or pooled token counts real patches only."""
    return weights if live is None else weights.masked_fill(~live, 0)


def take_live(live: Tensor, idx: Tensor) -> Tensor:
    """``live`` of the patches ``idx`` (``B x k``) gathered alongside the tokens -> ``B x k`` bool."""
    return torch.gather(live, 1, idx)
