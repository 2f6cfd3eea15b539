"""BEiT's relative position bias for the tokens at hand.

timm's ``Beit`` adds to every block's attention logits a learned bias that depends on where the query and the key
sit: ``table[relative_position_index[i, j]]`` (one value per head) over the class token and the full patch grid.
When a method removes, merges or builds tokens, vitprune gathers that bias for the tokens that remain: each token
carries a *position row* through the blocks, the same way an Eva model's tokens carry their rotary rows
(:mod:`vitprune.ops.rope`; every op there — ``take_rope``, ``with_synthetic``, ``prefixed``, ``normalise`` — moves
these rows unchanged).

A position row is ``[y + 1, x + 1, 1, 1]`` for the patch at grid row ``y``, column ``x``: a projective encoding,
where the position is the first half divided by the second. So the rows that the rotary ops make keep a meaning:

* a row of "no rotation" (``[0, 0, 1, 1]``: a fused or representative token, which stands for no single patch)
  is a token without a position: it gets no bias, as a key and as a query (zero logits offset);
* a pooled row (DGE's region cells: the mean of the cell's rows, then scaled by :func:`~vitprune.ops.rope.normalise`)
  is the cell's centre; its bias is that of the patch at the centre, up-left of it for an even cell (``floor``);
* padding rows (zeros) have no position either (they are hidden keys and discarded queries anyway).

The prefix token (BEiT has one class token) keeps timm's class-token entries of the table.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def is_relpos(attn: nn.Module) -> bool:
    """Whether ``attn`` is a timm BEiT attention with its own relative position bias table."""
    return getattr(attn, "relative_position_bias_table", None) is not None


def position_rows(grid: tuple[int, int], batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """The position rows of a ``grid`` of patches in timm's row-major order, per image (``B x P x 4``, a view).
    Keep them in float32 (also under mixed precision): a pooled cell's centre is then decoded exactly."""
    flat = torch.arange(grid[0] * grid[1], device=device)
    pos = torch.stack([flat // grid[1] + 1, flat % grid[1] + 1], dim=-1).to(dtype)
    rows = torch.cat([pos, torch.ones_like(pos)], dim=-1)
    return rows.unsqueeze(0).expand(batch, -1, -1)


def table_index(rows: Tensor, grid: tuple[int, int]) -> Tensor:
    """Each row's index into timm's (class token first) sequence, ``B x M`` long; ``-1``: no position."""
    num, den = rows.float().chunk(2, dim=-1)
    valid = (den > 0).all(dim=-1) & (num > 0).all(dim=-1)
    yx = torch.floor(num / den.clamp_min(1e-12) + 1e-4) - 1  # + 1e-4: a quotient a rounding step below an integer
    y = yx[..., 0].clamp(0, grid[0] - 1).long()
    x = yx[..., 1].clamp(0, grid[1] - 1).long()
    return torch.where(valid, 1 + y * grid[1] + x, torch.full_like(y, -1))


def gather_bias(attn: nn.Module, q_rows: Tensor, k_rows: Tensor, num_prefix: int) -> Tensor:
    """The block's relative position bias between the queries and the keys at hand (``B x H x Mq x Mk``): the
    ``num_prefix`` prefix tokens first (timm's class-token entries), then the tokens whose position rows are
    ``q_rows`` / ``k_rows`` (``B x (Mq - num_prefix) x 4``, ``B x (Mk - num_prefix) x 4``). The same values as
    timm's ``Attention._get_rel_pos_bias()`` at those positions; a token without a position gets 0."""
    grid = tuple(attn.window_size)
    b = q_rows.shape[0]
    pre = torch.arange(num_prefix, device=q_rows.device).expand(b, num_prefix)
    iq = torch.cat([pre, table_index(q_rows, grid)], dim=1)
    ik = torch.cat([pre, table_index(k_rows, grid)], dim=1)
    index = attn.relative_position_index[iq.clamp_min(0).unsqueeze(-1), ik.clamp_min(0).unsqueeze(-2)]  # B x Mq x Mk
    bias = attn.relative_position_bias_table[index].permute(0, 3, 1, 2)  # B x H x Mq x Mk
    valid = (iq >= 0).unsqueeze(-1) & (ik >= 0).unsqueeze(-2)
    return torch.where(valid.unsqueeze(1), bias, torch.zeros((), dtype=bias.dtype, device=bias.device))


def with_position_bias(attn: nn.Module, bias: Optional[Tensor], q_rows: Optional[Tensor],
                       k_rows: Optional[Tensor] = None) -> Optional[Tensor]:
    """``bias`` (an additive attention bias or None) plus ``attn``'s relative position bias for the tokens whose
    rows are given (``k_rows`` defaults to ``q_rows``: self-attention); ``bias`` unchanged for any other attention
    (or without rows). The prefix count is the rows' shortfall from the token count the bias is applied to: BEiT's
    one class token."""
    if q_rows is None or not is_relpos(attn):
        return bias
    k_rows = q_rows if k_rows is None else k_rows
    rel = gather_bias(attn, q_rows, k_rows, num_prefix=1)
    return rel if bias is None else rel + bias.to(rel.dtype)
