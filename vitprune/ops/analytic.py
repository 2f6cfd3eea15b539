"""Analytic MAC counts, for methods whose token counts depend on the image (DGE, SaiT's adaptive mode).

fvcore traces one forward pass and counts the shapes of that pass only; a method that keeps a different number of
tokens (or queries) per image reports instead the mean over the images of each image's own count, from this
module. The conventions are fvcore's (what ``measure.flops.count_macs`` reports), so the two agree wherever both
apply (the methods' tests check it): a Linear is ``in x out`` per token, an affine LayerNorm 5 per element (4
without the affine part), the patch embedding's convolution its weight's size per patch, SDPA ``QK^T`` and ``AV``
per query-key pair and head dimension; element-wise ops, softmax, pooling and gathers are free.

* ``BlockCost`` / ``block_cost``: one timm block as a function of its queries ``nq`` (tokens whose outputs are
  computed) and its keys ``n``; a plain block has ``nq = n`` (``dense``).
* ``outside_macs``: everything but the blocks (patch embedding, ``norm_pre``, the final norm, ``fc_norm``, heads).
* ``token_macs``: a model whose images see their own token count entering each block.

Every count is an integer below 2**53, so float64 sums are exact in any order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .attention import head_dim


def norm_macs(module: Optional[nn.Module], numel: Any) -> Any:
    """fvcore's LayerNorm convention on ``numel`` elements: 5 per element with an affine transform, 4 without;
    anything else (Identity, None) 0."""
    if isinstance(module, nn.LayerNorm):
        return (5 if module.elementwise_affine else 4) * numel
    return 0.0


def linear_macs(module: Optional[nn.Module]) -> float:
    """A Linear's MACs per token (``in x out``); anything else 0."""
    return float(module.in_features * module.out_features) if isinstance(module, nn.Linear) else 0.0


@dataclass(frozen=True)
class BlockCost:
    """MACs of one timm block as a function of its queries ``nq`` and keys ``n`` (fvcore's conventions)."""

    per_query: float  # norm1 (queries), q projection, q_norm, attn norm/gate, out projection, norm2, MLP
    per_key: float  # norm1 (keys), k/v projection, k_norm
    per_pair: float  # SDPA: QK^T and AV, per query-key pair
    norm1: float  # norm1 per token (counted once per token when queries and keys are the same tokens)
    router: float = 0.0  # a per-region router of the method (DGE: Linear(C, K)), per region

    def packed(self, nq: Any, n: int, regions_: int = 0) -> Any:
        """Queries computed apart from keys (each with its own norm1); works on tensors too."""
        return nq * (self.per_query + n * self.per_pair) + n * self.per_key + regions_ * self.router

    def dense(self, n: Any, regions_: int = 0) -> Any:
        """The block as timm runs it (every token a query, norm1 once per token), plus ``regions_`` routers."""
        return self.packed(n, n, regions_) - n * self.norm1


def block_cost(blk: nn.Module, num_choices: int = 0) -> BlockCost:
    """The cost model of timm block ``blk`` (its attention, LayerScale, MLP); ``num_choices``: outputs of a
    per-region router the method runs in this block (0: none)."""
    attn, dim = blk.attn, blk.attn.proj.out_features
    adim = attn.num_heads * head_dim(attn)
    ln1 = norm_macs(blk.norm1, dim)
    mlp = sum(linear_macs(m) for m in blk.mlp.modules())
    mlp += sum(norm_macs(m, m.normalized_shape[0]) for m in blk.mlp.modules() if isinstance(m, nn.LayerNorm))
    per_query = (ln1 + dim * adim + norm_macs(getattr(attn, "q_norm", None), adim)
                 + norm_macs(getattr(attn, "norm", None), adim)
                 + linear_macs(getattr(attn, "gate", None)) + linear_macs(attn.proj)
                 + norm_macs(blk.norm2, dim) + mlp)
    per_key = ln1 + 2 * dim * adim + norm_macs(getattr(attn, "k_norm", None), adim)
    return BlockCost(per_query=per_query, per_key=per_key, per_pair=2.0 * adim, norm1=ln1,
                     router=float(dim * num_choices))


def outside_macs(model: nn.Module, num_patches: Any, final_tokens: Any = None) -> Optional[Any]:
    """MACs of everything but the blocks: patch embedding, ``norm_pre`` (prefix + patch tokens), the final norm
    (on ``final_tokens``, default every token), ``fc_norm`` and heads. ``num_patches``/``final_tokens`` may be
    per-image tensors. None for a part this count does not know (a patch embedding without a Conv2d): fvcore then
    counts the whole model."""
    pe = getattr(model, "patch_embed", None) or model.embeds  # NaFlexViT: its embeds
    if isinstance(pe.proj, nn.Linear):  # NaFlexViT's linear patch embedding (with its optional input norm)
        embed = linear_macs(pe.proj) + norm_macs(getattr(pe, "norm_input", None), pe.proj.in_features)
    elif isinstance(pe.proj, nn.Conv2d):
        embed = float(pe.proj.weight.numel())
    else:
        return None
    c = model.embed_dim
    n = num_patches + model.num_prefix_tokens
    final = n if final_tokens is None else final_tokens
    total = num_patches * embed + norm_macs(getattr(pe, "norm", None), num_patches * c)
    total = total + norm_macs(getattr(model, "norm_pre", None), n * c) + norm_macs(model.norm, final * c)
    total = total + norm_macs(getattr(model, "fc_norm", None), c)
    pool = getattr(model, "attn_pool", None)
    if pool is not None:
        pooled = final - (0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens)
        total = total + attn_pool_macs(pool, pooled)
    for name in ("head", "head_dist"):
        total = total + linear_macs(getattr(model, name, None))
    return total


def attn_pool_macs(pool: nn.Module, n: Any) -> Any:
    """timm's ``AttentionPoolLatent`` (SigLIP's ``map`` head) on ``n`` tokens: kv projection per token, its
    latent queries' projection, attention (``QK^T`` and ``AV``), output projection, norm and MLP."""
    latents = pool.latent_len
    adim = pool.num_heads * pool.head_dim
    mlp = sum(linear_macs(m) for m in pool.mlp.modules()) if pool.mlp is not None else 0.0
    per_latent = (linear_macs(pool.q) + norm_macs(pool.q_norm, adim) + linear_macs(pool.proj)
                  + norm_macs(pool.norm, pool.proj.out_features) + mlp)
    return n * (linear_macs(pool.kv) + norm_macs(pool.k_norm, adim)) + latents * (per_latent + 2.0 * n * adim)


def token_macs(model: nn.Module, tokens: Tensor, selection_blocks: Iterable[int] = (),
               all_rows: bool = False) -> Tensor:
    """MACs per image (``B``, float64) of a ViT whose image ``b`` has ``tokens[b, i]`` tokens (prefix included)
    entering block ``i`` (``B x depth``): every block as timm runs it at that count, the final norm on the tokens
    of the last block. ``selection_blocks`` also compute the class-attention row (``q_cls K^T``, one query), or
    with ``all_rows`` every query's row (the attention each token receives, on ViTs without a class token)."""
    tokens = tokens.double()
    outside = outside_macs(model, tokens[:, 0] - model.num_prefix_tokens, tokens[:, -1])
    if outside is None:
        raise UnsupportedModelError(f"{type(model).__name__}'s patch embedding or pooling has no analytic count; "
                                    "fvcore counts it.")
    sel = set(selection_blocks)
    macs = outside
    for i, blk in enumerate(model.blocks):
        n = tokens[:, i]
        macs = macs + block_cost(blk).dense(n)
        if i in sel:
            macs = macs + (n * n if all_rows else n) * blk.attn.num_heads * head_dim(blk.attn)
    return macs


__all__ = ["BlockCost", "attn_pool_macs", "block_cost", "linear_macs", "norm_macs", "outside_macs", "token_macs"]
