"""Token operations shared by the methods. Every op keeps the first ``num_prefix`` tokens (class, distillation,
register tokens) apart: they are never scored, selected away, fused or merged, and stay first, as in timm's
``patch_dropout``.

Conventions: ``x`` is ``B x N x C`` with ``num_prefix`` prefix tokens first; ``scores``/``idx`` address *patch*
tokens only (positions ``0..N-num_prefix-1`` after the prefix). No op loops over samples or tokens in Python, and
none synchronises with the host.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
import math
import torch.nn.functional as F


def split_prefix(x: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
    """``(prefix, patches)`` along the token dimension."""
    return x[:, :num_prefix], x[:, num_prefix:]


def take_rows(t: Tensor, idx: Tensor) -> Tensor:
    """``t[b, idx[b, j]]`` for every image ``b`` (``t``: ``B x L x C``, ``idx``: ``B x M`` long) -> ``B x M x C``.

    The same values as ``torch.gather`` along dim 1 with the index expanded over channels. Without gradients it is
    one ``index_select`` of whole rows of the flattened batch (``gather`` reads an index per element and is 6-8x
    slower on CPU for a DeiT-S batch of 8); pass a contiguous ``t`` (a view such as ``x[:, 1:]`` is copied first).
    With gradients it is ``torch.gather`` (training kept as it was)."""
    b, length, c = t.shape
    if t.requires_grad or b == 0:
        return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, c))
    if b == 1:  # one image: its rows directly (no batch offsets to build)
        return t.index_select(1, idx.reshape(-1))
    flat = idx + torch.arange(b, device=idx.device, dtype=idx.dtype).unsqueeze(1) * length
    return t.reshape(b * length, c).index_select(0, flat.reshape(-1)).view(b, idx.shape[1], c)


def keep_tokens(x: Tensor, idx: Tensor, num_prefix: int) -> Tensor:
    """``[prefix, patches[idx]]``: one gather per stage; prefix tokens always kept, first."""
    return torch.cat([x[:, :num_prefix], kept_patches(x, idx, num_prefix)], dim=1)


def kept_patches(x: Tensor, idx: Tensor, num_prefix: int) -> Tensor:
    """``patches[idx]`` (``B x k x C``), the patch part of :func:`keep_tokens`, for callers that append more tokens
    after it in the same concatenation."""
    if x.shape[0] == 1 and not x.requires_grad:  # one image: rows of its patch block, no index offset
        return x[:, num_prefix:].index_select(1, idx.reshape(-1))
    return take_rows(x, idx + num_prefix)


def rank_patches(scores: Tensor) -> Tensor:
    """Indices of patch tokens by descending score (``B x P``); one sort gives both kept and dropped sets."""
    return torch.argsort(scores, dim=1, descending=True)


def topk_patches(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest-scoring patch tokens, sorted by descending score (``B x k``)."""
    return torch.topk(scores, k, dim=1, largest=True, sorted=True).indices


def fuse_tokens(patches: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
    """One token: ``sum_j weights_j * patches_j`` over the tokens ``idx`` (``B x m``) -> ``B x 1 x C``.

    EViT's inattentive-token fusion (raw attention weights, not re-normalised) and Evo-ViT's representative
    token (normalised weights: pass ``weights / weights.sum``) both use it.
    """
    w = torch.gather(weights, 1, idx).unsqueeze(-1)
    if w.dtype != patches.dtype:
        w = w.to(patches.dtype)
    return (take_rows(patches, idx) * w).sum(dim=1, keepdim=True)


def keep_mask(idx: Tensor, num_patches: int) -> Tensor:
    """A ``B x P`` float mask with 1 at the kept positions ``idx`` (for training paths that keep shapes static)."""
    mask = torch.zeros(idx.shape[0], num_patches, device=idx.device)
    return mask.scatter(1, idx, 1.0)


def with_prefix_mask(mask: Tensor, num_prefix: int) -> Tensor:
    """Prepend ones for the prefix tokens to a ``B x P`` patch mask -> ``B x (num_prefix + P)``."""
    return torch.cat([mask.new_ones(mask.shape[0], num_prefix), mask], dim=1)


def num_kept(fraction: float, n: int, rounding: str = "floor", minimum: int = 1) -> int:
    """Tokens kept out of ``n`` at ``fraction``: ``floor`` = ``int(fraction * n)`` (Evo-ViT), ``ceil`` =
    ``math.ceil(fraction * n)`` (EViT), both on the plain float product with no tolerance, as the reference code
    computes them (``0.55 * 180`` is ``99.00000000000001`` in floating point, so EViT keeps 100). Clamped to
    ``[minimum, n]``."""
    k = math.ceil(fraction * n) if rounding == "ceil" else int(fraction * n)
    return max(min(k, n), min(minimum, n))


def patch_scores_from_cls(cls_attn: Tensor, num_prefix: int, reduce: str = "mean", query: int = 0) -> Tensor:
    """Patch importance from class-token attention ``B x H x Q x N``: the row of query ``query`` over patch
    keys, averaged (EViT, SaiT) or summed (Evo-ViT) over heads -> ``B x P`` (float32)."""
    row = cls_attn[:, :, query, num_prefix:]
    return row.mean(dim=1) if reduce == "mean" else row.sum(dim=1)


def gumbel_keep_decision(log_probs: Tensor, prev: Optional[Tensor] = None, tau: float = 1.0) -> Tensor:
    """Hard straight-through Gumbel-softmax keep decision from ``B x P x 2`` log-probabilities (channel 0 =
    keep), multiplied by the previous decision so that a dropped token stays dropped."""
    d = F.gumbel_softmax(log_probs, tau=tau, hard=True)[..., 0]
    return d if prev is None else d * prev


def topk_keep_decision(log_probs: Tensor, k: int, prev: Optional[Tensor] = None) -> Tensor:
    """Hard keep decision ``B x P`` that keeps the ``k`` patches with the highest keep log-probability among those
    still alive in ``prev`` (the inference selection), with the straight-through gradient of the keep probability."""
    keep = log_probs[..., 0]
    rank = keep.detach() if prev is None else keep.detach().masked_fill(prev <= 0.5, float("-inf"))
    hard = keep_mask(topk_patches(rank, k), keep.shape[1]).to(keep.dtype)
    soft = keep.exp()
    d = hard + soft - soft.detach()
    return d if prev is None else d * prev
