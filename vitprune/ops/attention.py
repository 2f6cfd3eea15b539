"""Attention built from timm's own ``Attention`` module weights, on the fused SDPA path.

Methods that need something from attention (the class-token row, the keys, an additive bias, queries that differ
from keys) call these instead of copying timm's forward. Everything timm's Attention has is honoured: fused qkv,
``q_norm``/``k_norm`` (qk-norm), ``norm`` (scale-norm), the output ``gate`` of newer timm versions, dropout,
``proj``. The blocks' LayerScale and drop-path are applied by :func:`attn_residual` / :func:`mlp_residual`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def project_qkv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as ``B x H x N x D`` (after qk-norm), from ``x`` (``B x N x C``, already ``norm1``-ed)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def project_q(attn: nn.Module, x: Tensor) -> Tensor:
    """Queries only (``B x H x M x D``), from the first third of the fused qkv weights."""
    B, M, _ = x.shape
    d = attn.num_heads * attn.head_dim
    bias = attn.qkv.bias[:d] if attn.qkv.bias is not None else None
    q = F.linear(x, attn.qkv.weight[:d], bias).reshape(B, M, attn.num_heads, attn.head_dim).transpose(1, 2)
    return attn.q_norm(q)


def project_kv(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values only (``B x H x N x D``), from the last two thirds of the fused qkv weights."""
    B, N, _ = x.shape
    d = attn.num_heads * attn.head_dim
    bias = attn.qkv.bias[d:] if attn.qkv.bias is not None else None
    kv = F.linear(x, attn.qkv.weight[d:], bias).reshape(B, N, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    return attn.k_norm(k), v


def attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, x_in: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Fused SDPA + timm's output path (scale-norm, gate, proj, dropout). ``x_in`` feeds the optional gate."""
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    B, _, M, _ = q.shape
    out = out.transpose(1, 2).reshape(B, M, attn.num_heads * attn.head_dim)
    out = getattr(attn, "norm", nn.Identity())(out)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x_in).sigmoid()
    return attn.proj_drop(attn.proj(out))


def class_attention(q: Tensor, k: Tensor, scale: float, num_queries: int = 1, bias: Optional[Tensor] = None) -> Tensor:
    """Softmax attention rows of the first ``num_queries`` queries (``B x H x num_queries x N``), in float32.

    Only these rows are computed (``q[:, :, :n] @ k^T``), so the block's own attention stays on fused SDPA.
    """
    logits = (q[:, :, :num_queries].float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + (bias if bias.shape[-2] == 1 else bias[..., :num_queries, :]).float()
    return logits.softmax(dim=-1)


def attention(
    attn: nn.Module,
    x: Tensor,
    *,
    bias: Optional[Tensor] = None,
    cls_rows: int = 0,
    return_keys: bool = False,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """timm attention on the fused path, optionally returning what token methods need.

    Returns ``(out, cls_attn, k)``: ``cls_attn`` is ``B x H x cls_rows x N`` softmax rows of the first
    ``cls_rows`` queries (float32) when ``cls_rows > 0``; ``k`` the keys (``B x H x N x D``) when asked.
    """
    q, k, v = project_qkv(attn, x)
    out = attend(attn, q, k, v, x, bias)
    rows = class_attention(q, k, attn.scale, cls_rows, bias) if cls_rows else None
    return out, rows, (k if return_keys else None)


def attn_residual(blk: nn.Module, x: Tensor, attn_out: Tensor) -> Tensor:
    """``x + drop_path1(ls1(attn_out))`` with the block's own LayerScale and drop-path."""
    return x + blk.drop_path1(blk.ls1(attn_out))


def mlp_residual(blk: nn.Module, x: Tensor) -> Tensor:
    """``x + drop_path2(ls2(mlp(norm2(x))))``: the second half of timm's Block."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def masked_softmax_attention(attn: nn.Module, x: Tensor, policy: Tensor, eps: float = 1e-6) -> Tensor:
    """DynamicViT's training attention with a keep policy (``B x N``, 1 keep / 0 drop), shapes unchanged.

    A query always sees itself; dropped keys are invisible to every other query. Computed in float32:
    ``A_ij = (exp(S_ij) G_ij + eps/N) / (sum_j exp(S_ij) G_ij + eps)`` with ``G_ij = P_j + (1 - P_j)[i = j]``.
    """
    q, k, v = project_qkv(attn, x)
    B, H, N, _ = q.shape
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    p = policy.float().reshape(B, 1, 1, N)
    w = e * p
    # the diagonal: a query always sees itself, dropped or not (no N x N identity materialised)
    w.diagonal(dim1=-2, dim2=-1).add_(e.diagonal(dim1=-2, dim2=-1) * (1.0 - p.reshape(B, 1, N)))
    probs = (w + eps / N) / (w.sum(dim=-1, keepdim=True) + eps)
    probs = attn.attn_drop(probs).to(v.dtype)
    out = (probs @ v).transpose(1, 2).reshape(B, N, H * attn.head_dim)
    out = getattr(attn, "norm", nn.Identity())(out)
    gate_mod = getattr(attn, "gate", None)
    if gate_mod is not None:
        out = out * gate_mod(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def key_mask_bias(keep: Tensor, dtype: torch.dtype, num_queries: Optional[int] = None) -> Tensor:
    """Additive SDPA bias (``B x 1 x 1 x N``) that hides keys where ``keep`` (``B x N``, bool) is False."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias = bias.masked_fill(~keep, torch.finfo(dtype).min)
    return bias[:, None, None, :]
