"""ToMe: merge the ``r`` most similar token pairs in every block (bipartite soft matching).

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv 2210.09461).

Where it acts. In every block, between the attention residual and the MLP::

    x = x + ls1(attn(norm1(x)))  ->  merge r_i tokens  ->  x = x + ls2(mlp(norm2(x)))

so block ``i``'s attention sees ``N_i`` tokens, its MLP and block ``i+1`` see ``N_i - r_i``.

The merge step. The similarity metric is this block's attention keys, taken after timm's ``k_norm`` (qk-norm) and
averaged over heads (``B x N x head_dim``), compared by cosine similarity. Tokens split alternately into set A (even
positions of the sequence) and set B (odd positions); each A token finds its most similar B token; the ``r`` A tokens
with the highest such score merge into their partners (matching without gradient). Merging is a size-weighted
average, ``x <- sum(s x) / sum(s)``, ``s <- sum(s)``, where the size ``s`` counts the original patches a token stands
for (differentiable in ``x``). Output order: prefix tokens, unmerged A tokens (original order), B tokens. The ops are
in :mod:`vitprune.ops.merge`.

Proportional attention (``prop_attn``, on by default): once tokens have sizes, attention logits get ``+ log(s_j)``
for every key ``j``, passed to the fused ``scaled_dot_product_attention`` as an additive ``B x 1 x 1 x N`` float
mask (the block's attention stays fused; the reference rewrites attention as an explicit softmax). Before the first
merge every size is 1 and no bias is passed at all.

``r`` forms: an int (the same in every block); a per-block list (padded with zeros to the depth; the CLI's
``--r 13,12,11``); or ``(r, inflection)`` with inflection in [-1, 1], a linear schedule from
``int(r (1 - inflection))`` to ``2r -`` that over the blocks, rounded down per block (``--r 13 --opt inflection=-1``
on the CLI, ``r=(13, -1.0)`` or ``r=13, inflection=-1`` in Python; ``-1`` is the paper's decreasing schedule). Each
block's ``r`` is clipped to ``(N_i - prefix) // 2``, what one bipartite split can remove; ``effective_r`` and
``token_schedule`` report the clipped schedule. A requested ``r`` (or schedule entry) larger than what even the first
block can merge is refused with ``MethodOptionError``.

Cost. The similarity product (``ceil(P/2) x floor(P/2) x head_dim`` MACs per merging block) is counted by fvcore
with the rest; a merge is one gather of the tokens that stay plus an update of the ``r`` destination rows
(:func:`vitprune.ops.merge.merge_wavg`); no loop over images or tokens, no host sync, static shapes per block.

Training and inference use the same forward (static token counts per block: every image loses exactly ``r_i``
tokens). ToMe adds no parameters: ``needs_training = False``; fine-tuning works (the merge passes gradients).

vitprune's choices and its deviations from the reference code are ``ToMe.notes`` (listed below at import, by
``vitprune methods`` and on the model card).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..errors import MethodOptionError
from ..ops import merge as tm
from ..ops import padding
from ..ops.relpos import with_position_bias
from .base import MethodOptions, TokenMethod, TokenState, ViTInfo, vit_info
from .registry import register

_R_HELP = ("tokens merged per block: an int (every block), a per-block list (13,12,11; padded with 0), or "
           "(r, inflection) in Python; each block's r is clipped to (tokens - prefix) // 2")


@dataclass
class ToMeOptions(MethodOptions):
    r: Union[int, list[int]] = field(default=13, metadata={
        "help": _R_HELP, "flag": "--tome-r", "aliases": ("--r",), "headline": True, "short": "r", "runtime": True,
        "sweep": "--r-values"})
    inflection: Optional[float] = field(
        default=None, metadata={"help": "schedule shape for an int r, in [-1, 1]: linear from int(r*(1-inflection)) "
                                        "to 2r minus that across the blocks; -1 = the paper's decreasing schedule; "
                                        "none = constant r", "runtime": True})
    prop_attn: bool = field(
        default=True, metadata={"help": "proportional attention: add log(token size) to the attention logits",
                                "runtime": True})

    def __post_init__(self) -> None:
        if isinstance(self.r, tuple):
            if len(self.r) == 2:  # the reference's (r, inflection) form
                if self.inflection is not None:
                    raise MethodOptionError("give the inflection once: `r` (r, inflection) or `inflection`, not both.")
                self.r, self.inflection = self.r[0], self.r[1]
            else:
                self.r = list(self.r)

    def validate(self) -> None:
        r = self.r
        if isinstance(r, list):
            if not r or not all(_is_count(v) for v in r):
                raise MethodOptionError(f"`r` must be a non-negative int or a comma list of them, got {r!r}.")
            if self.inflection is not None:
                raise MethodOptionError("`inflection` shapes a single int `r`; give either a per-block `r` list or "
                                        "an int `r` with `inflection`.")
        elif not _is_count(r):
            raise MethodOptionError(f"`r` must be a non-negative int or a comma list of them, got {r!r}.")
        inf = self.inflection
        if inf is not None and (isinstance(inf, bool) or not isinstance(inf, (int, float)) or not math.isfinite(inf)
                                or not -1.0 <= inf <= 1.0):
            raise MethodOptionError(f"`inflection` must be a number in [-1, 1], got {inf!r}.")
        if not isinstance(self.prop_attn, bool):
            raise MethodOptionError(f"`prop_attn` must be true or false, got {self.prop_attn!r}.")

    def per_block(self, depth: int) -> list[int]:
        """The requested r of each block (before clipping to what the token count allows)."""
        r = self.r
        if isinstance(r, list):
            if len(r) > depth:
                raise MethodOptionError(f"`r` lists {len(r)} blocks but the model has {depth}.")
            return [int(v) for v in r] + [0] * (depth - len(r))
        if self.inflection is None:
            return [int(r)] * depth
        lo = int(r * (1.0 - self.inflection))
        hi = 2 * r - lo
        if depth == 1:
            return [lo]
        step = (hi - lo) / (depth - 1)
        return [int(lo + step * i) for i in range(depth)]


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@register
class ToMe(TokenMethod):
    name = "tome"
    noop_options = {"r": 0}
    sparse_options = {"r": 8}
    title = "ToMe"
    paper = "Bolya et al., Token Merging: Your ViT But Faster (ICLR 2023, arXiv 2210.09461)"
    summary = ("merges the r most similar token pairs (bipartite matching on head-averaged keys) after each block's "
               "attention, size-weighted, with proportional attention; no parameters, works without training")
    Options = ToMeOptions
    needs_training = False
    exportable = True
    padding_masks = True
    rotary = ("a merged token keeps its destination token's rotary row (its sources' positions are dropped, as "
              "their features are averaged into it).")
    position_bias = ("a merged token keeps its destination token's bias row and column (its sources' positions are "
                     "dropped, as their features are averaged into it).")
    notes = (
        "Composed around timm's own modules (norm1, attn through vitprune.ops.attention, ls1/ls2, drop_path, mlp): "
        "timm's qk-norm, LayerScale, scale-norm and register tokens are honoured (the reference replaces timm's "
        "Block/Attention classes and drops them).",
        "Keys for the similarity are taken after timm's k_norm (qk-norm models) and averaged over heads.",
        "Class, distillation and register tokens are taken out of the bipartite split: never merged, never "
        "destinations, size 1, kept first (same matching as the reference's -inf masking for one class token, and "
        "it generalises to registers); the similarity matrix has ceil(P/2) x floor(P/2) entries over patches only.",
        "Proportional attention is an additive log-size mask to fused SDPA; no mask before the first merge.",
        "r = 0 (or a block whose clipped r is 0 before any merge) runs timm's block unchanged: bit-identical.",
        "r larger than (tokens - prefix) // 2 in block 0 is an error; later blocks clip silently (see "
        "token_schedule / effective_r).",
        "global_pool='avg' models average the final tokens weighted by their sizes (approximating the dense mean "
        "over patches); 'map' and 'max' pooling are timm's own.",
        "Source tracking records after every merging block a B x P map from each original patch to the token that "
        "contains it (the reference carries a B x N x P 0/1 matrix); merged tokens are synthetic (-1) in "
        "state.origin, final sizes in state.aux['size'].",
        "NaFlex patch dictionaries (mixed resolutions): padding has size 0 (hidden as a key, no weight in a merge "
        "or the pooled mean); padding set-A tokens merge before any real one, and a real token picks a padding "
        "partner only when its image has no real set-B token left.",
        "Fine-tuning recipe: DeiT-style fine-tuning of the pretrained model with logit KD from the dense model "
        "(the authors trained DeiT with ToMe from scratch; vitprune's choice).",
    )

    def __init__(self, options: ToMeOptions):
        super().__init__(options)
        #: inference: run each block's matching and merge as one compiled region (ops.merge.compiled_match_and_merge)
        #: instead of ~40 separate operations; the first forward compiles (seconds to minutes). Off by default;
        #: the whole-model alternative is vitprune.optimize. Training (inputs that need gradients) stays eager.
        self.fused_merge: bool = False
        #: torch.compile backend of the fused merge ("eager" only checks that the region is one graph)
        self.fused_backend: str = "inductor"

    # -- contract ------------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        self._check_r(info)
        return info

    def _check_r(self, info: Optional[ViTInfo]) -> None:
        if info is None:
            return
        rs = self.options.per_block(info.depth)
        limit = info.num_patches // 2
        for i, v in enumerate(rs):
            if v > limit:
                what = f"`r` {v}" if not isinstance(self.options.r, list) and self.options.inflection is None \
                    else f"`r` schedule entry {v} (block {i})"
                raise MethodOptionError(
                    f"{what} is too large: this model has {info.num_patches} patch tokens and one bipartite merge "
                    f"removes at most {limit} (use r <= {limit}).")

    def set_runtime(self, **values: Any) -> None:
        saved = self.options
        super().set_runtime(**values)
        try:
            self._check_r(self.info)
        except MethodOptionError:
            self.options = saved
            raise

    def pool(self, model: nn.Module, x: Tensor, pool_type: Optional[str], state: TokenState) -> Optional[Tensor]:
        """Average-pooled models: weight each final token by the patches it stands for (None: timm's pooling)."""
        size = state.aux.get("size")
        kind = model.global_pool if pool_type is None else pool_type
        if size is None or kind != "avg" or getattr(model, "attn_pool", None) is not None \
                or size.shape[:2] != x.shape[:2]:
            return None
        npre = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
        return tm.size_weighted_mean(x, size, npre)

    def effective_r(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        """The r each block really merges (clipped), for the model's own or the given image size."""
        info = vit_info(model, img_size)
        n = info.num_prefix_tokens + info.num_patches
        out = []
        for r in self.options.per_block(info.depth):
            r = min(r, tm.max_merge(n, info.num_prefix_tokens))
            out.append(r)
            n -= r
        return out

    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        info = vit_info(model, img_size)
        n, out = info.num_prefix_tokens + info.num_patches, []
        for r in self.effective_r(model, img_size):
            out.append(n)
            n -= r
        return out

    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        rs = self.options.per_block(len(model.blocks))
        npre = state.num_prefix
        size: Optional[Tensor] = None
        live = state.valid  # NaFlex padding: size 0 from the start (hidden as a key, no weight in a merge)
        if live is not None:
            size = padding.with_prefix(live, npre).to(x.dtype).unsqueeze(-1)
        assignment: Optional[Tensor] = None
        if state.track:
            B, P = x.shape[0], x.shape[1] - npre
            assignment = torch.arange(P, device=x.device).expand(B, -1)
            if state.origin is None or state.origin.shape[1] != P:
                state.origin = assignment.clone()
        for i, blk in enumerate(model.blocks):
            state.enter(x)
            r = min(rs[i], tm.max_merge(x.shape[1], npre))
            if r == 0 and (size is None or not self.options.prop_attn):
                x = ops.run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
                continue
            x, size, m = self.merge_block(blk, x, size, r, npre, state.rope, live=live)
            if live is not None:
                live = state.valid = size[:, npre:, 0] > 0
            if state.rope is not None and m is not None:  # a merged token keeps its destination's row (``notes``)
                state.rope = ops.take_rope(state.rope, m.keep_pos[:, npre:] - npre)
            if state.track and m is not None:
                assignment = tm.merge_assignment(assignment, m, x.shape[1] - npre + r)
                state.origin = _merge_origin(state.origin, m)
                state.record(i, assignment)
        if size is not None:
            state.aux["size"] = size
        return x

    def merge_block(self, blk: nn.Module, x: Tensor, size: Optional[Tensor], r: int, npre: int,
                    rope: Optional[Tensor] = None, live: Optional[Tensor] = None,
                    ) -> tuple[Tensor, Optional[Tensor], Optional[tm.Matching]]:
        """One ToMe block: attention (proportional when sizes are known), merge ``r`` tokens, MLP. ``rope``: the
        tokens' rotary rows (Eva models); the matching uses the rotated keys, as the reference uses the keys the
        attention used. ``live``: the patch tokens' padding mask (NaFlex patch dictionaries; padding has size 0).

        Returns ``(x, size, matching)`` (``matching`` None when ``r`` is 0)."""
        xn = blk.norm1(x)
        q, k, v = ops.project_qkv(blk.attn, xn, rope)
        bias = None
        if self.options.prop_attn and size is not None:
            bias = tm.size_bias(size if live is None else size.clamp_min(1.0), q.dtype)  # padding: masked below
        if live is not None:
            bias = padding.add_bias(bias, padding.key_bias(live, npre, q.dtype))
        bias = with_position_bias(blk.attn, bias, rope)  # BEiT: the block's relative position bias
        x = ops.attn_residual(blk, x, ops.attend(blk.attn, q, k, v, xn, bias))
        m = None
        if r > 0 and live is not None:
            x, size, m = tm.match_and_merge(k, x, size, r, npre, live)
        elif r > 0:
            if self.fused_merge and not x.requires_grad and not torch.compiler.is_compiling():
                ones = size if size is not None else x.new_ones(x.shape[0], x.shape[1], 1)  # same values as None
                x, size, m = tm.compiled_match_and_merge(self.fused_backend)(k, x, ones, r, npre)
            else:
                x, size, m = tm.match_and_merge(k, x, size, r, npre)
        return ops.mlp_residual(blk, x), size, m

    # -- training --------------------------------------------------------------------------------------
    def default_recipe(self) -> dict[str, Any]:
        # The authors trained DeiT with ToMe (r=13, prop_attn) from scratch with the DeiT recipe. vitprune fine-tunes
        # the pretrained model instead (its choice): AdamW, lr 2e-5 per 512 images, wd 0.05, DeiT-S drop path 0.1,
        # label smoothing 0.1, loss 0.5 CE + 0.5 KL(teacher || student) at T = 1 (DeiT's soft distillation).
        return {"epochs": 30, "lr": 2e-5, "lr_batch_ref": 512, "warmup_epochs": 0, "min_lr": 1e-6,
                "weight_decay": 0.05, "kd_weight": 0.5, "kd_temperature": 1.0, "cls_weight": 0.5,
                "label_smoothing": 0.1, "drop_path": 0.1}

    # -- official checkpoints -------------------------------------------------------------------------
    def convert_official_state_dict(self, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """ToMe's released DeiT checkpoints are plain timm DeiT state dicts (ToMe adds no parameters): identity
        mapping; a key the model does not have is refused."""
        own = model.state_dict()
        for key in state_dict:
            if key not in own:
                raise MethodOptionError(
                    f"checkpoint key {key!r} is not part of this {type(model).__name__}: ToMe checkpoints hold plain "
                    "timm ViT weights (pick the matching --base architecture).")
        return dict(state_dict)


def _merge_origin(origin: Tensor, m: tm.Matching) -> Tensor:
    """``state.origin`` after a merge: unmerged tokens keep their patch, tokens that absorbed others become -1."""
    o = tm.merge(origin.unsqueeze(-1), m, 0, reduce="amax").squeeze(-1)
    n_unm = m.unm_idx.shape[1]
    received = torch.zeros(o.shape[0], o.shape[1] - n_unm, dtype=torch.bool, device=o.device)
    received = received.scatter(1, m.dst_idx, True)
    return torch.cat([o[:, :n_unm], o[:, n_unm:].masked_fill(received, -1)], dim=1)
