"""Attention built from timm's own attention module weights, on the fused SDPA path.

Methods that need something from attention (the class-token row, the keys, an additive bias, queries that differ
from keys) call these instead of copying timm's forward. Everything timm's Attention has is honoured: fused qkv,
``q_norm``/``k_norm`` (qk-norm), ``norm`` (scale-norm), the output ``gate`` of newer timm versions, dropout,
``proj``. The blocks' LayerScale and drop-path are applied by :func:`attn_residual` / :func:`mlp_residual`.

The same functions drive timm's Eva blocks (``EvaBlock`` with ``EvaAttention`` or ``AttentionRope``): their q/k/v
weights (fused with separate ``q_bias``/``v_bias``, or three projections) are read by :func:`qkv_weight`, the
rotary embeddings of the tokens at hand are passed as ``rope`` (``B x P x D``, see :mod:`vitprune.ops.rope`) and
applied after qk-norm as timm does, and the LayerScale ``gamma_1``/``gamma_2`` is applied where ``ls1``/``ls2``
are. :func:`run_block` calls a block the way its class wants (with ``rope=`` for Eva blocks; per block for a rope
per block, :func:`vitprune.ops.rope.for_attention`).

timm's BEiT blocks (``beit.Block``: ``qkv`` with ``q_bias``/``v_bias``, LayerScale ``gamma_1``/``gamma_2``, a
relative position bias per block) are driven by the same functions: their tokens' position rows travel as ``rope``
does, and every function that forms attention logits adds the bias gathered for the tokens at hand
(:func:`vitprune.ops.relpos.with_position_bias`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from .relpos import is_relpos, with_position_bias
from .rope import for_attention, rotate


def head_dim(attn: nn.Module) -> int:
    """Channels per head: timm's ``head_dim``, or (BEiT's attention, which does not keep it) the fused q/k/v
    projection's width over ``3 x num_heads``."""
    hd = getattr(attn, "head_dim", None)
    if hd is not None:
        return int(hd)
    qkv = getattr(attn, "qkv", None)  # read the width only: qkv_weight would concatenate the biases on every call
    width = qkv.weight.shape[0] if qkv is not None else 3 * attn.q_proj.weight.shape[0]
    return width // (3 * attn.num_heads)


def _apply(module: Optional[nn.Module], t: Tensor) -> Tensor:
    """``module(t)``, without the call where it would return ``t`` itself: no module, or an ``nn.Identity`` or an
    ``nn.Dropout`` in eval mode or with ``p = 0`` that no forward hook watches (at batch 1 a module call costs as
    much as a small op)."""
    if module is None:
        return t
    kind = type(module)
    if (kind is nn.Identity or (kind is nn.Dropout and (not module.training or module.p == 0))) \
            and not (module._forward_hooks or module._forward_pre_hooks or _module._global_forward_hooks
                     or _module._global_forward_pre_hooks):
        return t
    return module(t)


def _qk_norm(attn: nn.Module, name: str, t: Tensor) -> Tensor:
    """The attention's ``q_norm``/``k_norm`` on ``t`` (BEiT's attention has none)."""
    return _apply(getattr(attn, name, None), t)


def qkv_weight(attn: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
    """The fused q/k/v projection as ``(weight 3D x C, bias or None)``, whatever the layout: timm's ``qkv`` Linear,
    Eva's ``qkv`` with ``q_bias``/``k_bias``/``v_bias``, or separate ``q_proj``/``k_proj``/``v_proj``."""
    qkv = getattr(attn, "qkv", None)
    if qkv is not None:
        q_bias = getattr(attn, "q_bias", None)
        return qkv.weight, (qkv.bias if q_bias is None else torch.cat((q_bias, attn.k_bias, attn.v_bias)))
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = torch.cat([p.weight for p in projs])
    if all(p.bias is None for p in projs):
        return weight, None
    return weight, torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in projs])


def _qkv(attn: nn.Module, x: Tensor) -> Tensor:
    qkv = getattr(attn, "qkv", None)
    if qkv is not None and getattr(attn, "q_bias", None) is None:
        return qkv(x)  # timm's Attention (and fused Eva attention without bias): its own Linear
    weight, bias = qkv_weight(attn)
    return F.linear(x, weight, bias)


def project_qkv(attn: nn.Module, x: Tensor, rope: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as ``B x H x N x D`` (after qk-norm, and rotated by ``rope`` when given), from ``x`` (``B x N x C``,
    already ``norm1``-ed)."""
    B, N, _ = x.shape
    qkv = _qkv(attn, x).reshape(B, N, 3, attn.num_heads, head_dim(attn)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if rope is None:
        return _qk_norm(attn, "q_norm", q), _qk_norm(attn, "k_norm", k), v
    q = rotate(attn, _qk_norm(attn, "q_norm", q), rope).type_as(v)
    return q, rotate(attn, _qk_norm(attn, "k_norm", k), rope).type_as(v), v


def project_q(attn: nn.Module, x: Tensor, rope: Optional[Tensor] = None) -> Tensor:
    """Queries only (``B x H x M x D``), from the first third of the fused qkv weights (rotated by ``rope``)."""
    B, M, _ = x.shape
    d = attn.num_heads * head_dim(attn)
    weight, bias = qkv_weight(attn)
    q = F.linear(x, weight[:d], None if bias is None else bias[:d])
    q = _qk_norm(attn, "q_norm", q.reshape(B, M, attn.num_heads, head_dim(attn)).transpose(1, 2))
    return q if rope is None else rotate(attn, q, rope).type_as(x)


def project_kv(attn: nn.Module, x: Tensor, rope: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Keys and values only (``B x H x N x D``), from the last two thirds of the fused qkv weights (keys rotated by
    ``rope``)."""
    B, N, _ = x.shape
    d = attn.num_heads * head_dim(attn)
    weight, bias = qkv_weight(attn)
    kv = F.linear(x, weight[d:], None if bias is None else bias[d:])
    kv = kv.reshape(B, N, 2, attn.num_heads, head_dim(attn)).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    k = _qk_norm(attn, "k_norm", k)
    return (k if rope is None else rotate(attn, k, rope).type_as(v)), v


def _is_beit(attn: nn.Module) -> bool:
    return type(attn).__module__ == "timm.models.beit"


def run_block(blk: nn.Module, x: Tensor, rope: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None) -> Tensor:
    """timm's own block forward on ``x``: ``blk(x)`` for a ViT block; an Eva block also gets the tokens' ``rope``
    (per image, as timm's patch-dropout path passes it). A BEiT block whose tokens carry position rows (or that gets
    a mask) runs as its pieces (:func:`attention` with the gathered bias, then the residuals)."""
    if _is_beit(blk.attn):
        if rope is None and attn_mask is None:
            return blk(x)
        out, _, _ = attention(blk.attn, blk.norm1(x), bias=attn_mask, rope=rope)
        return mlp_residual(blk, attn_residual(blk, x, out))
    if rope is not None:
        return blk(x, rope=for_attention(blk.attn, rope), attn_mask=attn_mask)
    return blk(x) if attn_mask is None else blk(x, attn_mask=attn_mask)


def run_attention(attn: nn.Module, x: Tensor, rope: Optional[Tensor] = None) -> Tensor:
    """timm's own attention forward on ``x`` (already ``norm1``-ed), with the tokens' ``rope`` for Eva attention
    (BEiT attention with position rows: :func:`attention` with the gathered bias)."""
    if rope is None:
        return attn(x)
    if is_relpos(attn):
        return attention(attn, x, rope=rope)[0]
    return attn(x, rope=for_attention(attn, rope))


def attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, x_in: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Fused SDPA + timm's output path (scale-norm, gate, proj, dropout). ``x_in`` feeds the optional gate."""
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    B, _, M, _ = q.shape
    out = out.transpose(1, 2).reshape(B, M, attn.num_heads * head_dim(attn))
    out = _apply(getattr(attn, "norm", None), out)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x_in).sigmoid()
    return _apply(attn.proj_drop, attn.proj(out))


def class_attention(q: Tensor, k: Tensor, scale: float, num_queries: int = 1, bias: Optional[Tensor] = None) -> Tensor:
    """Softmax attention rows of the first ``num_queries`` queries (``B x H x num_queries x N``), in float32.

    Only these rows are computed (``q[:, :, :n] @ k^T``), so the block's own attention stays on fused SDPA.
    """
    q = q[:, :, :num_queries]
    if q.dtype != torch.float32:  # float32 already: no conversion op
        q = q.float()
    if k.dtype != torch.float32:
        k = k.float()
    logits = (q * scale) @ k.transpose(-2, -1)
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
    rope: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """timm attention on the fused path, optionally returning what token methods need.

    Returns ``(out, cls_attn, k)``: ``cls_attn`` is ``B x H x cls_rows x N`` softmax rows of the first
    ``cls_rows`` queries (float32) when ``cls_rows > 0``; ``k`` the keys (``B x H x N x D``) when asked. BEiT
    attention: ``bias`` includes the relative position bias of the tokens whose position rows ``rope`` holds.
    """
    bias = with_position_bias(attn, bias, rope)
    q, k, v = project_qkv(attn, x, rope)
    out = attend(attn, q, k, v, x, bias)
    rows = class_attention(q, k, attn.scale, cls_rows, bias) if cls_rows else None
    return out, rows, (k if return_keys else None)


def _layer_scale(blk: nn.Module, which: int, t: Tensor) -> Tensor:
    """The block's LayerScale ``which`` (1: attention, 2: MLP): timm ViT's ``ls1``/``ls2`` modules, or Eva's
    ``gamma_1``/``gamma_2`` parameters (None: no LayerScale)."""
    ls = getattr(blk, f"ls{which}", None)
    if ls is not None:
        return _apply(ls, t)
    gamma = getattr(blk, f"gamma_{which}")
    return t if gamma is None else gamma * t


def attn_residual(blk: nn.Module, x: Tensor, attn_out: Tensor) -> Tensor:
    """``x + drop_path1(ls1(attn_out))`` with the block's own LayerScale and drop-path."""
    return x + _apply(blk.drop_path1, _layer_scale(blk, 1, attn_out))


def mlp_residual(blk: nn.Module, x: Tensor) -> Tensor:
    """``x + drop_path2(ls2(mlp(norm2(x))))``: the second half of timm's Block."""
    return x + _apply(blk.drop_path2, _layer_scale(blk, 2, blk.mlp(blk.norm2(x))))


def masked_softmax_attention(attn: nn.Module, x: Tensor, policy: Tensor, eps: float = 1e-6,
                             rope: Optional[Tensor] = None) -> Tensor:
    """DynamicViT's training attention with a keep policy (``B x N``, 1 keep / 0 drop), shapes unchanged.

    A query always sees itself; dropped keys are invisible to every other query. Computed in float32:
    ``A_ij = (exp(S_ij) G_ij + eps/N) / (sum_j exp(S_ij) G_ij + eps)`` with ``G_ij = P_j + (1 - P_j)[i = j]``.
    """
    q, k, v = project_qkv(attn, x, rope)
    B, H, N, _ = q.shape
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    rel = with_position_bias(attn, None, rope)
    if rel is not None:  # BEiT: the relative position bias of these tokens
        logits = logits + rel.float()
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    p = policy.float().reshape(B, 1, 1, N)
    w = e * p
    # the diagonal: a query always sees itself, dropped or not (no N x N identity materialised)
    w.diagonal(dim1=-2, dim2=-1).add_(e.diagonal(dim1=-2, dim2=-1) * (1.0 - p.reshape(B, 1, N)))
    probs = (w + eps / N) / (w.sum(dim=-1, keepdim=True) + eps)
    probs = attn.attn_drop(probs).to(v.dtype)
    out = (probs @ v).transpose(1, 2).reshape(B, N, H * head_dim(attn))
    out = _apply(getattr(attn, "norm", None), out)
    gate_mod = getattr(attn, "gate", None)
    if gate_mod is not None:
        out = out * gate_mod(x).sigmoid()
    return _apply(attn.proj_drop, attn.proj(out))


def key_mask_bias(keep: Tensor, dtype: torch.dtype, num_queries: Optional[int] = None) -> Tensor:
    """Additive SDPA bias (``B x 1 x 1 x N``) that hides keys where ``keep`` (``B x N``, bool) is False."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias = bias.masked_fill(~keep, torch.finfo(dtype).min)
    return bias[:, None, None, :]
