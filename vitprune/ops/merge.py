"""Token merging: bipartite soft matching and size-weighted merging (ToMe), as pure functions.

Conventions as in :mod:`vitprune.ops.tokens`: ``x`` is ``B x N x C`` with ``num_prefix`` prefix tokens first (class,
distillation, register tokens). Prefix tokens are never matched: they are neither merged away (sources) nor receive
merges (destinations), they keep size 1 and stay first, in their order.

The bipartite split follows the tokens' positions in the whole sequence, as in ToMe: set A holds the tokens at even
positions, set B those at odd positions. Prefix tokens are taken out of both sets (the reference masks them with
``-inf`` scores instead; the matching is the same). So for a model with one class token, A is the odd-numbered patch
tokens and B the even-numbered ones, exactly as in the reference; any number of prefix tokens is handled the same way.

A merge step returns ``[prefix, unmerged A (original order), B (original order)]``. Nothing here loops over
samples or tokens in Python or reads values back to the host; every token count is a Python int fixed by the shapes
and ``r``, so each step has a static output shape.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class Matching(NamedTuple):
    """The outcome of :func:`bipartite_matching` for one batch (indices address tokens *within* set A or B)."""

    unm_idx: Tensor  # B x (na - r): set-A tokens kept unmerged, in their original order
    src_idx: Tensor  # B x r: set-A tokens merged away (sources), by descending similarity
    dst_idx: Tensor  # B x r: the set-B token each source merges into
    a_start: int  # first set-A position among the patch tokens (0 or 1): A = patches[a_start::2]

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]


def split_start(num_prefix: int) -> int:
    """Position of the first set-A patch token: A holds the even positions of the whole sequence."""
    return num_prefix % 2


def max_merge(num_tokens: int, num_prefix: int) -> int:
    """The most tokens one bipartite step can remove: ``(N - num_prefix) // 2``."""
    return max(0, (num_tokens - num_prefix) // 2)


def bipartite_matching(metric: Tensor, r: int, num_prefix: int) -> Matching:
    """Bipartite soft matching on ``metric`` (``B x N x D``, prefix tokens included; e.g. head-averaged keys).

    Cosine similarity between every set-A and set-B patch token; each A token's best B partner; the ``r`` A tokens
    with the most similar partner become sources. ``r`` is clipped to :func:`max_merge`. Computed without gradient.
    """
    with torch.no_grad():
        p = metric[:, num_prefix:]
        p = p / p.norm(dim=-1, keepdim=True)
        s = split_start(num_prefix)
        a, b = p[:, s::2], p[:, 1 - s::2]
        r = min(r, max_merge(metric.shape[1], num_prefix))
        scores = a @ b.transpose(-1, -2)  # B x na x nb
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        src_idx = order[:, :r]
        unm_idx = order[:, r:].sort(dim=-1).values
        dst_idx = partner.gather(1, src_idx)
    return Matching(unm_idx, src_idx, dst_idx, s)


def merge(x: Tensor, m: Matching, num_prefix: int, reduce: str = "sum") -> Tensor:
    """Apply a matching to any ``B x N x C`` tensor: each source is reduced (``sum``, ``amax``, ``mean``...) into
    its destination; returns ``[prefix, unmerged A, B]`` (``B x (N - r) x C``)."""
    prefix, p = x[:, :num_prefix], x[:, num_prefix:]
    a, b = p[:, m.a_start::2], p[:, 1 - m.a_start::2]
    C = x.shape[-1]
    n_unm = m.unm_idx.shape[1]
    idx = torch.cat([m.unm_idx, m.src_idx], dim=1)  # one gather for kept and merged A tokens
    picked = torch.gather(a, 1, idx.unsqueeze(-1).expand(-1, -1, C))
    unm, src = picked[:, :n_unm], picked[:, n_unm:]
    if m.r:
        b = b.scatter_reduce(1, m.dst_idx.unsqueeze(-1).expand(-1, -1, C), src, reduce=reduce)
    return torch.cat([prefix, unm, b], dim=1)


def merge_wavg(x: Tensor, m: Matching, num_prefix: int, size: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Size-weighted merge: ``x <- merge(x * s) / merge(s)``, ``s <- merge(s)``. ``size``: ``B x N x 1`` (None:
    every token stands for one patch). Returns ``(x, size)``. Differentiable in ``x``."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    x = merge(x * size, m, num_prefix, "sum")
    size = merge(size, m, num_prefix, "sum")
    return x / size, size


def merged_positions(m: Matching, num_patches: int) -> Tensor:
    """For each patch token before the merge (``B x P``), its position among the patch tokens after it."""
    B = m.src_idx.shape[0]
    n_unm = m.unm_idx.shape[1]
    na = n_unm + m.r
    nb = num_patches - na
    dev = m.src_idx.device
    new_a = torch.empty(B, na, dtype=torch.long, device=dev)
    new_a.scatter_(1, m.unm_idx, torch.arange(n_unm, device=dev).expand(B, -1))
    new_a.scatter_(1, m.src_idx, n_unm + m.dst_idx)
    new_b = (n_unm + torch.arange(nb, device=dev)).expand(B, -1)
    out = torch.empty(B, num_patches, dtype=torch.long, device=dev)
    out[:, m.a_start::2] = new_a
    out[:, 1 - m.a_start::2] = new_b
    return out


def merge_assignment(assignment: Tensor, m: Matching, num_patches: int) -> Tensor:
    """Follow a merge in a ``B x P_orig`` map (original patch -> current patch token position); ``num_patches``:
    patch tokens before the merge."""
    return torch.gather(merged_positions(m, num_patches), 1, assignment)


def size_bias(size: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Proportional attention: the additive SDPA bias ``log(s_j)`` for every key (``B x 1 x 1 x N``)."""
    return size[..., 0].log()[:, None, None, :].to(dtype or size.dtype)


def size_weighted_mean(x: Tensor, size: Tensor, num_prefix: int = 0) -> Tensor:
    """Mean of the tokens after the prefix, each weighted by the patches it stands for (``B x C``)."""
    s = size[:, num_prefix:].to(x.dtype)
    return (x[:, num_prefix:] * s).sum(dim=1) / s.sum(dim=1)
