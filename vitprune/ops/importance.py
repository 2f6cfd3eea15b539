"""Patch importance with or without a class token.

Methods that rank patches by the class token's attention row (EViT, Evo-ViT, SaiT) need another score on ViTs
that have no class token (``class_token=False``: ``global_pool='avg'`` or attention pooling ``'map'``, SigLIP).
There the importance of a patch is the attention it *receives*: its column of the block's softmax attention,
averaged over the queries (every live token) and over the heads. Computing the column needs every row, so these
blocks compute the full ``B x H x N x N`` probabilities once beside the fused SDPA path (float32).

:func:`attention_importance` is the one entry point: with a class token it runs exactly the class-row path the
methods ran before (same ops, same numbers), without one the received attention.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .attention import attend, attention, project_qkv
from .relpos import with_position_bias
from .tokens import patch_scores_from_cls


def received_attention(q: Tensor, k: Tensor, scale: float, bias: Optional[Tensor] = None,
                       query_mask: Optional[Tensor] = None) -> Tensor:
    """Attention each key receives (``B x N``, float32): softmax rows ``softmax(q k^T * scale + bias)`` averaged
    over the queries where ``query_mask`` (``B x N`` bool, None: all) is True, and over the heads."""
    logits = (q.float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.float()
    probs = logits.softmax(dim=-1)  # B x H x N x N
    if query_mask is None:
        return probs.mean(dim=(1, 2))
    w = query_mask.to(probs.dtype)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bhqn,bq->bn", probs, w) / probs.shape[1]


def attention_importance(attn: nn.Module, x: Tensor, num_prefix: int, class_token: bool, *,
                         bias: Optional[Tensor] = None, query_mask: Optional[Tensor] = None,
                         reduce: str = "mean", rope: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(attention output, patch scores B x P)`` of timm ``attn`` on ``x`` (already ``norm1``-ed).

    With a class token the scores are its attention row over the patch keys, averaged (``reduce="mean"``, EViT,
    SaiT) or summed (``"sum"``, Evo-ViT) over heads. Without one they are :func:`received_attention` over the
    patch keys (``reduce`` does not apply: a mean over queries and heads). ``rope``: the tokens' rotary rows (Eva
    models, :mod:`vitprune.ops.rope`)."""
    if class_token:
        out, rows, _ = attention(attn, x, cls_rows=1, bias=bias, rope=rope)
        return out, patch_scores_from_cls(rows, num_prefix, reduce)
    bias = with_position_bias(attn, bias, rope)  # BEiT: the block's relative position bias
    q, k, v = project_qkv(attn, x, rope)
    out = attend(attn, q, k, v, x, bias)
    return out, received_attention(q, k, attn.scale, bias, query_mask)[:, num_prefix:]
