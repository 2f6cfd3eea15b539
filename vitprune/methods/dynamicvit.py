"""DynamicViT: learned prediction modules drop the least informative patch tokens before three blocks.

Rao et al., "DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification", NeurIPS 2021
(arXiv 2106.02034; T-PAMI extension arXiv 2207.01580).

Where it acts. Before each pruning location ``L`` (0-based blocks 3, 6, 9 of 12; ``scale_locations`` for other
depths, ``pruning_loc`` to choose), a small prediction module ``score_predictor.{s}`` looks at the patch tokens
entering block ``L`` and scores each one; at stage ``s = 1..S`` the model keeps ``k_s = int(P * rho**s)`` of the
``P`` original patches (a fraction of *all* patches, so ``rho, rho^2, rho^3``), then block ``L`` and all later blocks
run on the kept tokens.

Prediction module (one per location, checkpoint names kept): ``in_conv`` = LayerNorm(C, eps 1e-5) -> Linear(C, C)
-> GELU gives ``z``; the first ``C//2`` channels are the local feature, the rest are averaged over the tokens still
alive (mask-weighted mean) into one global feature broadcast back to every token; ``out_conv`` = Linear(C, C/2) ->
GELU -> Linear(C/2, C/4) -> GELU -> Linear(C/4, 2) -> LogSoftmax. Channel 0 is *keep* (the code's convention, not
the paper's notation).

Inference (``model.eval()``): top-``k_s`` patches by keep log-probability, one gather per stage, kept patches in
descending score order (prefix tokens stay first). Static token count per stage, same for every image; dropped
tokens are discarded. Attention stays timm's own (fused SDPA).

Training (``model.train()``): nothing is removed. ``D_s = GumbelSoftmax(log_probs, tau=1, hard=True)[keep] *
D_{s-1}`` (straight-through, monotone), and every block from the first pruning location on runs DynamicViT's masked
softmax attention (``ops.masked_softmax_attention``) with the policy ``[1 for prefix tokens, D_s]``: dropped tokens
are invisible to every other query but keep being updated. The predictor's global pooling at stage ``s`` uses
``D_{s-1}``. ``aux_losses`` returns the ratio loss ``ratio_weight * (1/S) sum_s mean_b (mean_i D_s - rho^s)^2`` and the
token distillation ``distill_weight * MSE(student, teacher)`` on the final normed patch tokens at the positions kept
after the last stage; the trainer adds label CE (weight 1) and KL on logits (weight 0.5, T = 1) from
``default_recipe``.

vitprune's choices where the paper and code are silent or specific to 224 px DeiT are ``DynamicViT.notes``
(listed below at import, by ``vitprune methods`` and on the model card).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..errors import MethodOptionError, UnsupportedModelError
from ..ops import padding
from ..ops.pooling import POOLS, pool_kind, weighted_pool
from .base import (
    MethodOptions, StepContext, TeacherOutput, TokenMethod, TokenState, ViTInfo, block_locations, check_block_list,
    check_fraction, padding_methods, vit_info,
)
from .registry import register

#: mask sum below which the predictor's global pooling stops dividing (all patches dropped)
MASK_EPS = 1e-6


# ------------------------------------------------------------------------------------------ options


@dataclass
class DynamicViTOptions(MethodOptions):
    keep_rate: float = field(default=0.7, metadata={
        "help": "rho: stage s keeps int(patches * rho**s) of all patches (0.7 -> 137/96/67 of 196)",
        "headline": True, "short": "keep", "runtime": True, "sweep": True})
    pruning_loc: Optional[list[int]] = field(default=None, metadata={
        "help": "0-based blocks before which tokens are pruned (default 3,6,9 of 12, scaled to depth)"})
    ratio_weight: float = field(default=2.0, metadata={
        "help": "training: weight of the keep-ratio loss (paper: 2.0 for DeiT-S, 5.0 for DeiT-B)"})
    distill_weight: float = field(default=0.5, metadata={
        "help": "training: weight of the token distillation (MSE on final patch tokens kept after the last stage)"})
    topk_tail: float = field(default=0.5, metadata={
        "help": "training: last fraction of the run in which the masks are the inference top-k (straight-through "
                "gradient) instead of Gumbel samples, in [0, 1]; 0 = the paper's Gumbel masks throughout"})

    def validate(self) -> None:
        check_fraction("keep_rate", self.keep_rate)
        for name in ("ratio_weight", "distill_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise MethodOptionError(f"`{name}` must be a number >= 0, got {v!r}.")
        t = self.topk_tail
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise MethodOptionError(f"`topk_tail` must be a fraction of the run in [0, 1], got {t!r}.")
        self.pruning_loc = check_block_list(self.pruning_loc, "pruning_loc", minimum=0, example="3,6,9")


# ------------------------------------------------------------------------------------------ prediction module


class ScorePredictor(nn.Module):
    """DynamicViT's prediction module ("PredictorLG"): ``B x P x C`` patch tokens (+ keep mask) -> ``B x P x 2``
    log-probabilities, channel 0 = keep. Sub-module names follow the official checkpoints."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(),
            nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``x``: patch tokens ``B x P x C``; ``mask``: ``B x P`` (1 alive, 0 dropped) or None (all alive).

        The sub-modules' own ops, called as functions: the same kernels in the same order (so the same numbers),
        without eleven module calls per stage, which at batch 1 on a small model cost as much as the ops."""
        ln, lin, _ = self.in_conv  # unpacked by iteration: cheaper than indexing a Sequential
        z = F.gelu(F.linear(F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps), lin.weight, lin.bias))
        half = z.shape[-1] // 2
        glob = z[..., half:]
        if mask is None:
            g = glob.mean(dim=1, keepdim=True)
        else:
            m = mask.to(glob.dtype).unsqueeze(-1)
            g = (glob * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(MASK_EPS)
        if z.requires_grad:
            z = torch.cat([z[..., :half], g.expand(-1, z.shape[1], -1)], dim=-1)
        else:  # inference: write the global feature over the global half in place (the same values, no new tensor)
            glob.copy_(g.expand_as(glob))
        l1, _, l2, _, l3, _ = self.out_conv
        z = F.gelu(F.linear(F.gelu(F.linear(z, l1.weight, l1.bias)), l2.weight, l2.bias))
        return F.log_softmax(F.linear(z, l3.weight, l3.bias), dim=-1)


# ------------------------------------------------------------------------------------------ the method


@register
class DynamicViT(TokenMethod):
    name = "dynamicvit"
    noop_options = {"keep_rate": 1.0}
    sparse_options = {"keep_rate": 0.5}
    official_args = {"base_rate": "keep_rate", "pruning_loc": "pruning_loc"}
    title = "DynamicViT"
    paper = "Rao et al., DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification " \
            "(NeurIPS 2021, arXiv 2106.02034)"
    summary = ("learned prediction modules keep the top int(P*rho^s) patches before blocks 3/6/9 of 12 (scaled to "
               "depth) and discard the rest; Gumbel-softmax masks in training, the inference top-k for its last half")
    Options = DynamicViTOptions
    needs_training = True
    new_module_prefixes = ("score_predictor",)
    exportable = True
    padding_masks = True
    padding_hint = "dynamicvit (inference)"
    #: set by ``on_train_progress``: train with the inference top-k masks (the ``topk_tail``); False outside a trainer
    train_topk: bool = False
    notes = (
        "Keep counts int(P * rho**s) use the model's real patch count P (the reference hard-codes 196), at least 1.",
        "Every prefix token (class, distillation, registers) is always kept and never scored.",
        "Training: blocks before the first pruning location use plain attention (reference: masked softmax with an "
        "all-ones policy, equal up to its 1e-6 epsilon).",
        "Keep rate 1.0 is the dense model (predictors and gathers skipped).",
        "Average- or attention-pooled heads (global_pool 'avg'/'map', with or without a class token) pool the kept "
        "tokens only: at inference the others are gone; in training, where they stay masked, the pool is weighted "
        "by the last keep decision (straight-through, so the head's loss reaches the predictors too).",
        "The predictor's masked mean divides by max(sum(mask), 1e-6): an image whose every patch was dropped gets a "
        "zero global feature instead of NaN; the token distillation is 0 when no patch is kept (as the reference).",
        "Recipe: the T-PAMI (v2) script: lr 1e-3 per 1024 images, backbone lr x0.01 and frozen for 5 warm-up "
        "epochs, cosine to 1e-6, 30 epochs, cls_token/pos_embed frozen; use ratio_weight 5.0 for DeiT-B and "
        "drop path 0.2 there (0 for DeiT-S).",
        "keep_rate can be changed at run time (top-k with another k); predictors were trained for one rate.",
        "NaFlex patch dictionaries (mixed resolutions), at inference: the predictor's global feature averages the "
        "real patches only, padding ranks below every real patch in the top-k (counts from the padded length); "
        "training on them is refused (its keep-ratio targets are fractions of every token).",
        "Training: the last topk_tail (default 0.5) of the run uses the inference top-k masks with a straight-"
        "through gradient instead of Gumbel samples, so the backbone adapts to the selection it gets at inference; "
        "topk_tail=0 is the paper's Gumbel training throughout. Until the predictors are confident, Gumbel masks are "
        "near-random subsets and top-k at inference is another input distribution: on the demo (10 epochs, seed 0; "
        "top-1 on its 359 held-out digits, today's val + test) "
        "one trained model scored 98.05 % with Gumbel masks and 96.10 % with top-k; with the tail, seeds 0/1/2 end "
        "at 98.05/98.33/98.33 % (paper schedule: 96.10/96.94/97.49 %).",
    )

    no_class_token = ("the prediction modules need no class token; the average or attention pool reads the kept "
                      "tokens only (in training: weighted by the last keep decision).")

    # -- facts ---------------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        kind = pool_kind(model)
        if kind not in POOLS or (not info.has_class_token and kind == "token"):
            raise UnsupportedModelError(
                f"DynamicViT needs a ViT that classifies from its class token or by average or attention pooling "
                f"(global_pool 'token', 'avg' or 'map'); this one pools with {kind!r}.")
        self.locations(info.depth)  # validates pruning_loc against the depth
        return info

    def padding_check(self, model: nn.Module) -> None:
        if model.training and self.options.keep_rate < 1.0:
            raise UnsupportedModelError(
                "DynamicViT runs NaFlex patch dictionaries with padding masks (mixed resolutions) at inference only "
                "(its training keeps ratios of every token); train on whole images, or with: "
                f"{padding_methods()}.")

    def locations(self, depth: int) -> list[int]:
        """0-based blocks before which tokens are pruned."""
        return block_locations(self.options.pruning_loc, depth, (3, 6, 9), "pruning_loc")

    def keep_counts(self, num_patches: int, rate: Optional[float] = None, stages: Optional[int] = None) -> list[int]:
        """Patches kept after each stage: ``int(num_patches * rate**s)`` (at least 1), s = 1..stages."""
        rate = self.options.keep_rate if rate is None else rate
        stages = len(self.locations(self.info.depth)) if stages is None else stages
        return [max(1, min(num_patches, int(num_patches * (rate ** s)))) for s in range(1, stages + 1)]

    def keep_targets(self, stages: int) -> list[float]:
        """Training targets of the kept fraction after each stage: ``rho, rho^2, ...``."""
        return [self.options.keep_rate ** s for s in range(1, stages + 1)]

    # -- patching -------------------------------------------------------------------------------------
    def patch(self, model: nn.Module) -> None:
        depth = len(model.blocks)
        ref = next(model.parameters())
        preds = nn.ModuleList([ScorePredictor(model.embed_dim) for _ in self.locations(depth)])
        self.attach(model, "score_predictor", preds.to(device=ref.device, dtype=ref.dtype))

    # -- forward --------------------------------------------------------------------------------------
    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        if self.options.keep_rate >= 1.0:  # no-op: the dense model, bit for bit
            for blk in model.blocks:
                state.enter(x)
                x = ops.run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
            return x
        if model.training:
            return self._train_blocks(model, x, state)
        locs = self.locations(len(model.blocks))
        counts = self.keep_counts(x.shape[1] - state.num_prefix, stages=len(locs))
        return self._eval_blocks(model, x, state, counts, locs=locs)

    def _eval_blocks(self, model: nn.Module, x: Tensor, state: TokenState, counts: list[int],
                     skip_full: bool = True, locs: Optional[list[int]] = None) -> Tensor:
        """Inference: before each pruning location keep the top ``counts[s]`` patches (one gather). A stage
        that would keep every token is skipped unless ``skip_full`` is False (tests force the compute path).
        ``locs``: the pruning locations when the caller has them already."""
        if locs is None:
            locs = self.locations(len(model.blocks))
        stage_of = {b: s for s, b in enumerate(locs)}
        npre, rope = state.num_prefix, state.rope
        n = x.shape[1] - npre  # patch tokens: known from the counts after each stage, never read back
        predictors = model.score_predictor
        for i, blk in enumerate(model.blocks):
            s = stage_of.get(i)
            if s is not None:
                k = counts[s]
                if k < n or not skip_full:
                    x = self._prune(predictors[s], x, k, state)
                    n, rope = k, state.rope
                    state.record(i)
            state.enter(x)
            x = ops.run_block(blk, x, rope, attn_mask=state.attn_mask(x.dtype))
        return x

    @staticmethod
    def _prune(predictor: nn.Module, x: Tensor, k: int, state: TokenState) -> Tensor:
        npre = state.num_prefix
        # keep log-probability; all survivors pool globally (real patches only: NaFlex padding is not averaged)
        scores = predictor(x[:, npre:], state.valid)[..., 0]
        idx = ops.topk_patches(padding.rank_scores(scores, state.valid), k)  # descending score order
        state.keep(idx)
        if state.rope is not None:
            state.rope = ops.take_rope(state.rope, idx)
        return ops.keep_tokens(x, idx, npre)

    def _train_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        """Training: shapes stay static; hard Gumbel decisions mask attention from the first location on."""
        stage_of = {b: s for s, b in enumerate(self.locations(len(model.blocks)))}
        npre = state.num_prefix
        counts = self.keep_counts(x.shape[1] - npre, stages=len(stage_of)) if self.train_topk else None
        decisions: list[Tensor] = []
        prev: Optional[Tensor] = None
        policy: Optional[Tensor] = None
        for i, blk in enumerate(model.blocks):
            s = stage_of.get(i)
            if s is not None:
                log_probs = model.score_predictor[s](x[:, npre:], prev)
                if counts is not None:  # the top-k tail: the inference selection, straight-through
                    prev = ops.topk_keep_decision(log_probs, counts[s], prev)
                else:
                    prev = ops.gumbel_keep_decision(log_probs, prev)  # B x P, hard 0/1, monotone
                decisions.append(prev)
                policy = ops.with_prefix_mask(prev, npre)
            state.enter(x)
            if policy is None:
                x = ops.run_block(blk, x, state.rope)
            else:
                x = ops.attn_residual(blk, x, ops.masked_softmax_attention(blk.attn, blk.norm1(x), policy,
                                                                           rope=state.rope))
                x = ops.mlp_residual(blk, x)
        state.aux["decisions"] = decisions
        state.aux["keep_targets"] = self.keep_targets(len(decisions))
        state.aux["final_tokens"] = x  # pre-norm; aux_losses applies model.norm
        if decisions and pool_kind(model) != "token":
            state.aux["pool_weight"] = decisions[-1]  # the pooled head reads the kept tokens only
        return x

    def pool(self, model: nn.Module, x: Tensor, pool_type: Optional[str], state: TokenState) -> Optional[Tensor]:
        """Training of an average- or attention-pooled ViT: pool the tokens the last decision keeps."""
        return weighted_pool(model, x, state.aux.get("pool_weight"), pool_type)

    def on_train_progress(self, model: nn.Module, epoch: float, total_epochs: float) -> None:
        tail = self.options.topk_tail
        self.train_topk = tail > 0 and total_epochs > 0 and epoch >= (1.0 - tail) * total_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"train_topk": self.train_topk}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.train_topk = bool(state.get("train_topk", False))

    # -- schedule -------------------------------------------------------------------------------------
    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        info = vit_info(model, img_size)
        stage_of = {b: s for s, b in enumerate(self.locations(info.depth))}
        counts = self.keep_counts(info.num_patches, stages=len(stage_of))
        p, out = info.num_patches, []
        for i in range(info.depth):
            s = stage_of.get(i)
            if s is not None and self.options.keep_rate < 1.0 and counts[s] < p:
                p = counts[s]
            out.append(info.num_prefix_tokens + p)
        return out

    # -- training -------------------------------------------------------------------------------------
    def aux_losses(self, model: nn.Module, state: TokenState, teacher: Optional[TeacherOutput], *,
                   targets: Optional[Tensor] = None, step: Optional[StepContext] = None) -> dict[str, Tensor]:
        decisions: list[Tensor] = state.aux.get("decisions") or []
        if not decisions:  # keep rate 1.0: nothing to learn
            return {}
        out: dict[str, Tensor] = {}
        keep = state.aux.get("keep_targets") or self.keep_targets(len(decisions))
        ratio = sum(((d.float().mean(dim=1) - t) ** 2).mean() for d, t in zip(decisions, keep))
        out["ratio"] = self.options.ratio_weight * ratio / len(decisions)
        final = state.aux.get("final_tokens")
        if self.options.distill_weight > 0 and final is not None and teacher is not None \
                and teacher.tokens is not None:
            npre = state.num_prefix
            student = model.norm(final)[:, npre:]
            target = teacher.tokens[:, npre:].to(student.dtype)
            out["token_distill"] = self.options.distill_weight * kept_token_mse(student, target, decisions[-1])
        return out

    def default_recipe(self) -> dict[str, Any]:
        # T-PAMI (v2) main.py + README: AdamW, 30 epochs, lr 1e-3 per 1024 images, predictors lr x1, backbone
        # x0.01 and frozen for the 5 warm-up epochs, cosine to 1e-6, wd 0.05, cls_token/pos_embed out of the
        # optimizer; loss = 1.0 CE + 0.5 KL(T=1) + ratio + token distillation (the last two from aux_losses).
        return {
            "epochs": 30, "lr": 1e-3, "lr_batch_ref": 1024, "backbone_lr_scale": 0.01, "freeze_backbone_epochs": 5,
            "warmup_epochs": 5, "min_lr": 1e-6, "weight_decay": 0.05, "kd_weight": 0.5, "kd_temperature": 1.0,
            "cls_weight": 1.0, "label_smoothing": 0.1, "frozen": ["cls_token", "pos_embed"],
        }

    # -- official checkpoints -------------------------------------------------------------------------
    def convert_official_state_dict(self, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Official ``VisionTransformerDiffPruning`` keys are timm's plus ``score_predictor.{k}.in_conv.{0,1}`` /
        ``out_conv.{0,2,4}``: vitprune uses the same names, so the mapping is the identity. A key the model does
        not have (another architecture, more predictors than pruning locations) is refused."""
        own = model.state_dict()
        n_pred = len(getattr(model, "score_predictor", ()))
        for key in state_dict:
            if key in own:
                continue
            parts = key.split(".")
            if parts[0] == "score_predictor" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) >= n_pred:
                raise MethodOptionError(
                    f"checkpoint key {key!r} is for predictor {parts[1]}, but this model has {n_pred} pruning "
                    f"locations (set --opt pruning_loc=... to match the checkpoint).")
            raise MethodOptionError(f"checkpoint key {key!r} is not part of a DynamicViT {type(model).__name__} "
                                    f"with this architecture.")
        return dict(state_dict)

    @staticmethod
    def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
        """The model's weights in the official layout (the inverse of ``convert_official_state_dict``)."""
        return dict(model.state_dict())


def kept_token_mse(student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:
    """Mean squared error over the tokens where ``keep > 0.5`` (``B x P``) and all channels, averaged over the whole
    batch's kept tokens x channels; 0 when nothing is kept. No boolean indexing (no host sync)."""
    mask = (keep.detach() > 0.5).to(student.dtype).unsqueeze(-1)
    sq = ((student - teacher) ** 2 * mask).sum()
    count = mask.sum() * student.shape[-1]
    return sq / count.clamp_min(1.0)
