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

from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .tokens import take_rows


class Matching(NamedTuple):
    """The outcome of :func:`bipartite_matching` for one batch.

    ``unm_idx``/``src_idx``/``dst_idx`` address tokens *within* set A or B; ``keep_pos``, ``src_pos``, ``dst_pos``
    and ``dst_out`` are the same choices as positions in the whole sequence before the merge (``*_pos``) or after it
    (``dst_out``), so that a merge is one gather plus a scatter over the ``r`` sources."""

    unm_idx: Tensor  # B x (na - r): set-A tokens kept unmerged, in their original order
    src_idx: Tensor  # B x r: set-A tokens merged away (sources), by descending similarity
    dst_idx: Tensor  # B x r: the set-B token each source merges into
    a_start: int  # first set-A position among the patch tokens (0 or 1): A = patches[a_start::2]
    keep_pos: Tensor  # B x (N - r): the tokens that stay, [prefix, unmerged A, B], as positions in the input
    src_pos: Tensor  # B x r: sources, as positions in the input
    dst_pos: Tensor  # B x r: their destinations, as positions in the input
    dst_out: Tensor  # B x r: their destinations, as positions in the output
    num_prefix: int  # prefix tokens of the sequence the matching was computed on

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]


def split_start(num_prefix: int) -> int:
    """Position of the first set-A patch token: A holds the even positions of the whole sequence."""
    return num_prefix % 2


def max_merge(num_tokens: int, num_prefix: int) -> int:
    """The most tokens one bipartite step can remove: ``(N - num_prefix) // 2``."""
    return max(0, (num_tokens - num_prefix) // 2)


def bipartite_matching(metric: Tensor, r: int, num_prefix: int, live: Optional[Tensor] = None) -> Matching:
    """Bipartite soft matching on ``metric`` (``B x N x D``, prefix tokens included; e.g. head-averaged keys).

    Cosine similarity between every set-A and set-B patch token; each A token's best B partner; the ``r`` A tokens
    with the most similar partner become sources. ``r`` is clipped to :func:`max_merge`. Computed without gradient.

    ``live`` (``B x P`` bool over the patch tokens, :mod:`vitprune.ops.padding`): padding A tokens are sources
    before any real one, and an A token picks a padding partner only when set B holds no real token (so a real
    token merges into padding only when nothing else is left for it).
    """
    with torch.no_grad():
        B, N, _ = metric.shape
        p = metric[:, num_prefix:]
        p = p / p.norm(dim=-1, keepdim=True)
        s = split_start(num_prefix)
        a, b = p[:, s::2], p[:, 1 - s::2]
        r = min(r, max_merge(N, num_prefix))
        scores = a @ b.transpose(-1, -2)  # B x na x nb
        if live is not None:
            la, lb = live[:, s::2], live[:, 1 - s::2]
            scores = scores.masked_fill(~lb.unsqueeze(1), float("-inf"))
        best, partner = scores.max(dim=-1)
        if live is not None:
            best = best.masked_fill(~la, float("inf"))
        order = best.argsort(dim=-1, descending=True)
        src_idx = order[:, :r]
        unm_idx = order[:, r:].sort(dim=-1).values
        dst_idx = partner.gather(1, src_idx)
        # positions in the whole sequence: A token j sits at num_prefix + s + 2j, B token j at num_prefix + 1 - s + 2j
        dev = metric.device
        a0, b0 = num_prefix + s, num_prefix + 1 - s
        keep_pos = torch.cat([torch.arange(num_prefix, device=dev).expand(B, -1), a0 + 2 * unm_idx,
                              torch.arange(b0, N, 2, device=dev).expand(B, -1)], dim=1)
        src_pos, dst_pos = a0 + 2 * src_idx, b0 + 2 * dst_idx
        dst_out = num_prefix + unm_idx.shape[1] + dst_idx
    return Matching(unm_idx, src_idx, dst_idx, s, keep_pos, src_pos, dst_pos, dst_out, num_prefix)


def _take(x: Tensor, pos: Tensor) -> Tensor:
    return take_rows(x, pos)


def merge(x: Tensor, m: Matching, num_prefix: int, reduce: str = "sum") -> Tensor:
    """Apply a matching to any ``B x N' x C`` tensor: each source is reduced (``sum``, ``amax``, ``mean``...) into
    its destination; returns ``[prefix, unmerged A, B]`` (``B x (N' - r) x C``). ``num_prefix`` is the matching's
    prefix count, or 0 for a tensor holding only the patch tokens (e.g. a per-patch map)."""
    if num_prefix not in (0, m.num_prefix):
        raise ValueError(f"x must hold all {m.num_prefix} prefix tokens of the matching or none, not {num_prefix}.")
    shift = m.num_prefix - num_prefix
    out = _take(x, m.keep_pos[:, shift:] - shift)
    if m.r:
        out = out.scatter_reduce(1, (m.dst_out - shift).unsqueeze(-1).expand(-1, -1, x.shape[-1]),
                                 _take(x, m.src_pos - shift), reduce=reduce)
    return out


def merge_wavg(x: Tensor, m: Matching, num_prefix: int, size: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Size-weighted merge: ``x <- merge(x * s) / merge(s)``, ``s <- merge(s)``. ``size``: ``B x N x 1`` (None:
    every token stands for one patch). Returns ``(x, size)``. Differentiable in ``x``.

    Computed as one gather of the tokens that stay plus an update of the ``r`` destinations,
    ``b <- b + sum_a s_a (a - b) / S_b`` with ``S_b`` the merged size: unmerged tokens are copied bit for bit and
    no full-size multiply or divide is needed. ``x`` holds the matching's ``num_prefix`` prefix tokens."""
    if num_prefix != m.num_prefix:
        raise ValueError(f"x must hold the matching's {m.num_prefix} prefix tokens, got num_prefix={num_prefix}.")
    B = x.shape[0]
    out = _take(x, m.keep_pos)
    if size is None:
        new_size = x.new_ones(B, m.keep_pos.shape[1], 1)
        src_size = x.new_ones(B, m.r, 1)
    else:
        new_size = torch.gather(size, 1, m.keep_pos.unsqueeze(-1))
        src_size = torch.gather(size, 1, m.src_pos.unsqueeze(-1))
    if not m.r:
        return out, new_size
    dst_index = m.dst_out.unsqueeze(-1)
    new_size = new_size.scatter_add(1, dst_index, src_size)
    # sizes are >= 1, or 0 for padding (a padding source into a padding destination: 0 / tiny = 0, not NaN)
    w = src_size / torch.gather(new_size, 1, dst_index).clamp_min(torch.finfo(new_size.dtype).tiny)
    if w.dtype != x.dtype:
        w = w.to(x.dtype)
    delta = w * (_take(x, m.src_pos) - _take(x, m.dst_pos))
    out.scatter_add_(1, dst_index.expand(-1, -1, x.shape[-1]), delta)
    return out, new_size


def match_and_merge(k: Tensor, x: Tensor, size: Optional[Tensor], r: int,
                    num_prefix: int, live: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Matching]:
    """One ToMe merge step: the metric (keys ``k``, ``B x H x N x D``, averaged over heads, without gradient), the
    bipartite matching of ``r`` pairs and the size-weighted merge of ``x``. Returns ``(x, size, matching)``.
    ``live``: the patch tokens' padding mask (:func:`bipartite_matching`); padding has size 0."""
    with torch.no_grad():
        metric = k.mean(dim=1)
    m = bipartite_matching(metric, r, num_prefix, live)
    x, size = merge_wavg(x, m, num_prefix, size)
    return x, size, m


@lru_cache(maxsize=4)
def compiled_match_and_merge(backend: str = "inductor") -> Callable[..., tuple[Tensor, Tensor, Matching]]:
    """:func:`match_and_merge` as one ``torch.compile`` region (``fullgraph``, dynamic shapes: the token count
    changes from block to block, one compilation serves them all; an odd and an even count compile apart). Inductor
    fuses the ~40 small operations of a merge step (norms, index arithmetic, gathers, the size update) into a few
    kernels; the similarity product and the sorts stay library calls. Pass a ``size`` tensor (ones before the first
    merge) so that every block hits the same graph."""
    return torch.compile(match_and_merge, backend=backend, dynamic=True, fullgraph=True)


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
    B, N, _ = size.shape
    bias = size.log().view(B, 1, 1, N)
    return bias if dtype is None or dtype == bias.dtype else bias.to(dtype)


def size_weighted_mean(x: Tensor, size: Tensor, num_prefix: int = 0) -> Tensor:
    """Mean of the tokens after the prefix, each weighted by the patches it stands for (``B x C``)."""
    s = size[:, num_prefix:].to(x.dtype)
    return (x[:, num_prefix:] * s).sum(dim=1) / s.sum(dim=1)
