"""EViT: keep the patches the class token attends to, fuse the rest into one token.

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations",
ICLR 2022 (arXiv 2202.07800).

In the drop-location blocks (0-based 3, 6, 9 of 12; scaled for other depths) the block's attention runs on all
tokens; then patch tokens are ranked by the class token's head-averaged attention, the top
``k = ceil(keep_rate * P)`` are kept (``P`` = current patch tokens, a fused token from an earlier stage included)
and the others are either fused into one token appended at the end (their attention-weighted sum, raw weights) or
dropped; the block's MLP and all later blocks run on the shorter sequence. Same forward in training and inference.

vitprune's choices are ``EViT.notes`` (listed below at import, by ``vitprune methods`` and on the model card).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import carry, padding
from ..ops.importance import attention_importance
from ..ops.pooling import weighted_pool
from .base import (
    MethodOptions, TokenMethod, TokenState, ViTInfo, block_locations, check_block_list, check_fraction,
    require_pooled_head, vit_info,
)
from .registry import register
from ..errors import MethodOptionError


@dataclass
class EViTOptions(MethodOptions):
    keep_rate: float = field(default=0.7, metadata={
        "help": "fraction of patch tokens kept at each drop location (ceil)", "headline": True, "short": "keep",
        "runtime": True, "sweep": True})
    fuse: bool = field(default=True, metadata={"help": "fuse inattentive tokens into one token (False: drop them)"})
    drop_loc: Optional[list[int]] = field(
        default=None, metadata={"help": "0-based blocks that reduce tokens (default 3,6,9 of 12, scaled to depth)"})
    shrink_start: float = field(
        default=0.0, metadata={"help": "training: epoch at which the keep rate starts to shrink from 1"})
    shrink_epochs: float = field(
        default=0.0, metadata={"help": "training: epochs of cosine shrink from 1 to keep_rate (0: keep_rate at once)"})

    def validate(self) -> None:
        check_fraction("keep_rate", self.keep_rate)
        self.drop_loc = check_block_list(self.drop_loc, "drop_loc", minimum=0, example="3,6,9")
        if self.shrink_start < 0 or self.shrink_epochs < 0:
            raise MethodOptionError("`shrink_start` and `shrink_epochs` must be >= 0.")


@register
class EViT(TokenMethod):
    name = "evit"
    noop_options = {"keep_rate": 1.0}
    sparse_options = {"keep_rate": 0.5}
    official_args = {"base_keep_rate": "keep_rate", "drop_loc": "drop_loc", "fuse_token": "fuse"}
    title = "EViT"
    paper = "Liang et al., Not All Patches are What You Need (ICLR 2022, arXiv 2202.07800)"
    summary = ("keeps the patches the class token attends to most at 3 blocks, fuses the rest into one token; "
               "no new parameters")
    Options = EViTOptions
    exportable = True
    padding_masks = True
    notes = (
        "Fine-tuning recipe: the repo's finetune.sh (lr 2e-5 x batch/512, no warm-up, keep rate from step 0).",
        "The class-token attention row is computed alone (q_cls K^T) so the block's attention stays on fused SDPA.",
        "Every prefix token (class, distillation, registers) is kept and never scored; importance is the class "
        "token's row (distilled models: the class token, not the distillation token).",
        "NaFlex patch dictionaries (mixed resolutions): k = ceil(keep_rate * P) of the padded length P; padding "
        "ranks below every real patch (kept only once every real patch is), weighs 0 in the fused token, and a "
        "fused token of padding alone is padding itself.",
    )
    no_class_token = (
        "importance is the attention each patch receives (softmax columns averaged over all queries and heads, "
        "full attention computed at the drop locations); the fused token is the importance-weighted mean of the "
        "tokens it replaces and counts as that many patches in the pooled head (size-weighted average, or "
        "log-size bias in attention pooling).")

    rotary = ("kept patches carry their own rotary rows; the fused token stands for no single patch and gets no "
              "rotation, as timm's prefix tokens.")
    position_bias = ("kept patches keep their own bias rows and columns; the fused token stands for no single patch "
                     "and gets no bias (0) as a query and as a key.")

    def __init__(self, options: EViTOptions):
        super().__init__(options)
        self.train_keep_rate: Optional[float] = None  # set by the keep-rate schedule during training

    # -- contract ------------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        require_pooled_head(model, info, "EViT")
        self._locations(info)  # validates drop_loc
        return info

    def _locations(self, info: ViTInfo) -> list[int]:
        return block_locations(self.options.drop_loc, info.depth, (3, 6, 9), "drop_loc")

    def keep_rate(self, training: bool) -> float:
        if training and self.train_keep_rate is not None:
            return self.train_keep_rate
        return self.options.keep_rate

    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        locs = set(self._locations(self.info))
        rate = self.keep_rate(model.training)
        npre = state.num_prefix
        for i, blk in enumerate(model.blocks):
            state.enter(x)
            mask = state.attn_mask(x.dtype)
            if i not in locs or rate >= 1.0:
                x = ops.run_block(blk, x, state.rope, attn_mask=mask)
                continue
            live = None if state.valid is None else padding.with_prefix(state.valid, npre)
            out, scores = attention_importance(blk.attn, blk.norm1(x), npre, self.info.has_class_token,
                                               bias=mask, query_mask=live, rope=state.rope)
            x = ops.attn_residual(blk, x, out)
            p = x.shape[1] - npre
            k = ops.num_kept(rate, p, "ceil")
            if k < p:
                x = self._reduce(x, scores, k, state)
                state.record(i)
            x = ops.mlp_residual(blk, x)
        return x

    def _reduce(self, x: Tensor, scores: Tensor, k: int, state: TokenState) -> Tensor:
        npre = state.num_prefix
        live = state.valid  # padding (NaFlex patch dictionaries): ranked last, weighs nothing
        if not self.options.fuse:
            idx = ops.topk_patches(padding.rank_scores(scores, live), k)
            state.keep(idx)
            state.rope = ops.take_rope(state.rope, idx)
            return ops.keep_tokens(x, idx, npre)
        order = ops.rank_patches(padding.rank_scores(scores, live))
        keep, rest = order[:, :k], order[:, k:]
        scores = padding.live_weights(scores, live)
        if self.info.has_class_token:
            fused = ops.fuse_tokens(x[:, npre:], scores, rest)
        else:  # pooled head: a weighted mean standing for its tokens' patches (see ``no_class_token``)
            size = state.aux.get("pool_weight")
            if size is None:
                size = torch.ones_like(scores) if live is None else live.to(scores.dtype)
            fused = carry.rest_weighted_token(x[:, npre:], scores * size, keep)
            state.aux["pool_weight"] = torch.cat(
                [torch.gather(size, 1, keep), (size * carry.rest_mask(keep, size.shape[1])).sum(1, keepdim=True)], 1)
        fused_live = None if live is None else padding.take_live(live, rest).any(dim=1, keepdim=True)
        state.keep(keep, extra_synthetic=1, extra_valid=fused_live)
        state.rope = ops.take_rope(state.rope, keep, synthetic=1)  # the fused token: no rotation (``notes``)
        return torch.cat([x[:, :npre], ops.kept_patches(x, keep, npre), fused], dim=1)  # one concatenation

    def pool(self, model: nn.Module, x: Tensor, pool_type: Optional[str], state: TokenState) -> Optional[Tensor]:
        """Without a class token: the pooled head counts a fused token as the patches it stands for."""
        return weighted_pool(model, x, state.aux.get("pool_weight"), pool_type)

    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        info = vit_info(model, img_size)
        locs = set(self._locations(info))
        p, out = info.num_patches, []
        for i in range(info.depth):
            out.append(info.num_prefix_tokens + p)
            if i in locs:
                k = ops.num_kept(self.options.keep_rate, p, "ceil")
                if k < p:
                    p = k + (1 if self.options.fuse else 0)
        return out

    # -- training --------------------------------------------------------------------------------------
    def scheduled_keep_rate(self, epoch: float) -> float:
        """``1`` before ``shrink_start``, cosine from 1 to ``keep_rate`` over ``shrink_epochs``, then ``keep_rate``."""
        o = self.options
        if epoch < o.shrink_start:
            return 1.0
        if o.shrink_epochs <= 0 or epoch >= o.shrink_start + o.shrink_epochs:
            return o.keep_rate
        t = (epoch - o.shrink_start) / o.shrink_epochs
        return o.keep_rate + (1.0 - o.keep_rate) * (math.cos(math.pi * t) + 1.0) / 2.0

    def on_train_progress(self, model: nn.Module, epoch: float, total_epochs: float) -> None:
        self.train_keep_rate = self.scheduled_keep_rate(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"train_keep_rate": self.train_keep_rate}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rate = state.get("train_keep_rate")
        self.train_keep_rate = None if rate is None else float(rate)

    def default_recipe(self) -> dict[str, Any]:
        # finetune.sh: lr 2e-5 per 512 images, no warm-up, weight decay 1e-6, min lr 2e-6, model in eval mode
        return {"lr": 2e-5, "lr_batch_ref": 512, "warmup_epochs": 0, "weight_decay": 1e-6, "min_lr": 2e-6,
                "train_mode_eval": True}
