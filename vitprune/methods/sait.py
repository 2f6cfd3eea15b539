"""SaiT: adaptive token pruning by class attention, one set of weights for dense and sparse inference.

Li, Thorsley, Hassoun, "SaiT: Sparse Vision Transformers through Adaptive Token Pruning", arXiv 2210.05832
(2022). **No public code exists**: what the paper states for certain is a
dense/sparse training framework (one model whose weights serve several token densities, switchable on the fly),
adaptive (per-image) token sparsity, knowledge distillation to improve token selection in early blocks, and a
zero-accuracy-drop option that skips the sparsification. Everything else here is vitprune's reconstruction;
each choice is ``SaiT.notes`` (listed below at import, by ``vitprune methods`` and on the model card) and tested
in ``tests/test_sait.py``.

What it does
------------
At each pruning location ``p`` (0-based; default block 3 of 12, ``scale_locations`` for other depths; several
allowed) the class token's attention in block ``p-1`` (its row alone, ``q_cls K^T``, averaged over heads, over
patch keys) ranks the patch tokens after block ``p-1``; blocks ``p`` onward run on the kept tokens only. Prefix
tokens (class, distillation, registers) are always kept and never scored. Three modes of the same weights, all
run-time options (``set_runtime`` / ``overrides``; saved in config.json as the default):

* ``dense``: no pruning; the timm blocks run unchanged, so the output equals the base model bit for bit;
* ``fixed``: keep ``ceil(keep_rate * P)`` patches (static shapes: fastest on GPU, CUDA-graph friendly);
* ``adaptive``: per image, keep the shortest prefix of the patches sorted by importance whose mass (normalised
  to 1 over the live patches) reaches ``threshold``; counts are clamped to ``[ceil(k_min * P), P]``.

Pruned tokens are dropped (``fuse=True`` appends one EViT-style token: the attention-weighted sum of the pruned
tokens, raw head-averaged weights).

Adaptive inference: images in a batch keep different counts. vitprune pads the batch to its largest count with
one gather; the padding slots hold each image's next-ranked tokens (real values) and are hidden from every later
attention by an additive key mask (their own outputs are never read). A batch whose images all keep the same
count runs unmasked (batch 1 always does). Reading the batch maximum is one host sync per pruning location, the
price of a data-dependent shape. ``buckets=G`` (run-time) instead sorts the images by count into ``G`` groups,
each padded to its own maximum (still one sync; the later blocks run once per group). Measured (eager PyTorch,
DeiT-S with a sharpened block-2 attention so counts vary 80..110 of 196, bs 256, fp16, one H100): dense 18.1k
img/s, padding 21.1k (1.17x), 2 buckets 19.5k (1.08x), 4 buckets 8.1k (0.45x): the GPU time is the same but
every group launches the later blocks again and eager launches are the bottleneck at this size; on 2 CPU cores
(demo teacher, counts 27..37 of 64) padding was also fastest. Padding is therefore the default; buckets remain
for count spreads much wider than the padding overhead. ``macs()`` counts the per-image decisions (mean over
the batch), not the padded widths; ``token_schedule`` gives the worst case (an image with uniform importance).

Training (dense/sparse): ``training_passes()`` returns a dense pass and a sparse pass whose level is drawn per
step, uniformly, from ``threshold_range`` (``sparse_train_mode=adaptive``, default) or ``keep_rate_range``
(``fixed``); ``sait_schedule=alternate`` alternates dense and sparse epochs instead. Sparse training keeps shapes
static: pruned tokens stay in the sequence and are hidden as keys by an additive mask in every later block.
``aux_losses`` adds the selection distillation ``sel_weight * KL(teacher || student)`` between the dense
teacher's last-block class-attention distribution over patches (``teacher_forward`` captures it, class row only)
and the student's block-``p-1`` one, both renormalised over the patches alive at that location (mean over
locations). Without a usable teacher map (a teacher that is not a class-token ViT with the same patch grid, or
``sel_target=self``) the target is the student's own dense pass of the same step, detached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dataclasses

from .. import ops
from ..errors import MethodOptionError, UnsupportedModelError
from ..ops.analytic import token_macs
from ..ops import adaptive as aops
from ..ops import padding
from ..ops.importance import attention_importance
from ..ops.pooling import POOLS, pool_kind, weighted_pool
from .base import (
    MethodOptions, StepContext, TeacherOutput, TokenMethod, TokenState, ViTInfo, block_locations, check_block_list,
    check_fraction, class_token, embed, padding_methods, require_pooled_head, tracking, vit_info,
)
from .registry import register
from ..errors import ExportError

MODES = ("dense", "fixed", "adaptive")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MethodOptionError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}.")


def _check_range(name: str, value: Any) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 < v <= 1.0
        for v in value) and value[0] <= value[1]
    if not ok:
        raise MethodOptionError(f"`{name}` must be two numbers lo,hi with 0 < lo <= hi <= 1, got {value!r}.")


@dataclass
class SaiTOptions(MethodOptions):
    mode: str = field(default="adaptive", metadata={
        "help": "inference mode of the same weights: dense (no pruning, exact), fixed (keep_rate), adaptive "
                "(threshold, per-image counts); switchable at run time", "headline": True, "short": "",
        "runtime": True})
    keep_rate: float = field(default=0.5, metadata={
        "help": "fixed mode: fraction of patch tokens kept at each location (ceil), in (0, 1]",
        "headline": True, "short": "keep", "applies_when": {"mode": "fixed"}, "runtime": True, "sweep": True})
    threshold: float = field(default=0.9, metadata={
        "help": "adaptive mode: class-attention mass kept per image, in (0, 1] (1 keeps all); calibrate with "
                "SaiT.calibrate_threshold for a GMAC target",
        "applies_when": {"mode": "adaptive"}, "runtime": True, "sweep": True})
    prune_at: Optional[list[int]] = field(default=None, metadata={
        "help": "0-based blocks before which tokens are pruned, ranked by the previous block's class attention "
                "(default 3 of 12, scaled to depth; a list applies the rule at each)"})
    k_min: float = field(default=0.1, metadata={
        "help": "fewest patch tokens kept, as a fraction of the live patches (ceil), in (0, 1]"})
    fuse: bool = field(default=False, metadata={
        "help": "fuse the pruned tokens into one extra token (EViT-style attention-weighted sum)"})
    sel_weight: float = field(default=0.1, metadata={
        "help": "training: weight of the selection distillation KL (teacher last-block class attention -> "
                "student block p-1), >= 0"})
    sel_target: str = field(default="teacher", metadata={
        "help": "training: selection target, teacher (dense teacher's last block) or self (the student's own "
                "dense pass, detached)"})
    sparse_train_mode: str = field(default="adaptive", metadata={
        "help": "training: how the sparse pass prunes, adaptive (threshold from threshold_range) or fixed "
                "(keep rate from keep_rate_range)"})
    keep_rate_range: list[float] = field(default_factory=lambda: [0.4, 0.9], metadata={
        "help": "training: keep rates of the sparse pass, drawn uniformly per step"})
    threshold_range: list[float] = field(default_factory=lambda: [0.8, 0.98], metadata={
        "help": "training: thresholds of the sparse pass, drawn uniformly per step"})
    sait_schedule: str = field(default="both", metadata={
        "help": "training: both (a dense and a sparse pass every step) or alternate (dense epochs and sparse "
                "epochs in turn, dense first)"})
    buckets: int = field(default=1, metadata={
        "help": "adaptive inference: 1 pads the batch to its largest count; G > 1 sorts images by count into G "
                "groups, each padded to its own largest count", "applies_when": {"mode": "adaptive"},
        "runtime": True})

    def validate(self) -> None:
        _check_choice("mode", self.mode, MODES)
        check_fraction("keep_rate", self.keep_rate)
        check_fraction("threshold", self.threshold)
        check_fraction("k_min", self.k_min)
        self.prune_at = check_block_list(self.prune_at, "prune_at", minimum=1, example="3")
        if not (isinstance(self.sel_weight, (int, float)) and math.isfinite(self.sel_weight)
                and self.sel_weight >= 0):
            raise MethodOptionError(f"`sel_weight` must be a number >= 0, got {self.sel_weight!r}.")
        _check_choice("sel_target", self.sel_target, ("teacher", "self"))
        _check_choice("sparse_train_mode", self.sparse_train_mode, ("adaptive", "fixed"))
        _check_range("keep_rate_range", self.keep_rate_range)
        _check_range("threshold_range", self.threshold_range)
        self.keep_rate_range = [float(v) for v in self.keep_rate_range]
        self.threshold_range = [float(v) for v in self.threshold_range]
        _check_choice("sait_schedule", self.sait_schedule, ("both", "alternate"))
        if not (isinstance(self.buckets, int) and not isinstance(self.buckets, bool) and self.buckets >= 1):
            raise MethodOptionError(f"`buckets` must be an integer >= 1, got {self.buckets!r}.")


@dataclass
class ThresholdCalibration:
    """What :meth:`SaiT.calibrate_threshold` found on a set of images (counts are patch tokens, per location)."""

    threshold: float
    target_reduction: float
    reduction: float  # 1 - mean GMACs / dense GMACs at ``threshold``
    gmacs: float
    dense_gmacs: float
    num_images: int
    num_patches: list[int]  # worst-case live patches entering each location
    mean_kept: list[float]
    min_kept: list[int]
    max_kept: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- the method


@register
class SaiT(TokenMethod):
    name = "sait"
    noop_options = {"mode": "dense"}
    sparse_options = {"mode": "fixed", "keep_rate": 0.5}
    title = "SaiT"
    paper = "Li, Thorsley, Hassoun, SaiT: Sparse Vision Transformers through Adaptive Token Pruning (arXiv 2210.05832)"
    summary = ("prunes patch tokens once, early, by the previous block's class attention: a per-image count "
               "(adaptive, attention-mass threshold), a fixed rate, or none (dense) from the same weights, "
               "switchable at run time; dense/sparse training; no new parameters")
    Options = SaiTOptions
    needs_training = True
    exportable = True  # fixed and dense modes; export_check refuses the adaptive mode
    export_hint = "sait (fixed or dense mode)"
    padding_masks = True
    padding_hint = "sait (fixed or dense mode, inference)"
    new_module_prefixes = ()
    no_class_token = ("importance is the attention each patch receives (softmax columns averaged over the live "
                      "queries and heads) instead of the class token's row, for selection and its distillation; "
                      "the average or attention pool reads the live tokens only; `fuse` is refused and `buckets` "
                      "runs as padding.")
    rotary = ("kept patches carry their own rotary rows (padding slots their next-ranked patch's); the fused token "
              "stands for no single patch and gets no rotation, as timm's prefix tokens.")
    position_bias = ("kept patches keep their own bias rows and columns (padding slots their next-ranked patch's); "
                     "the fused token stands for no single patch and gets no bias (0).")
    notes = (
        "No public code: the whole method below the paper's abstract is vitprune's reconstruction (this module's "
        "docstring).",
        "Tokens are pruned after block p-1's MLP (before block p), ranked by block p-1's class-token attention "
        "row, averaged over heads, over patch keys only; prefix tokens are always kept and never scored. DeiT-S "
        "at p = 3 runs 3 dense blocks and 9 on the kept tokens (the cost model counted here).",
        "The class-token row is computed alone (q_cls K^T), so the ranking block stays on fused SDPA.",
        "Adaptive count: the shortest prefix of the sorted patches reaching the threshold mass (normalised over "
        "the live patches P), at most ceil(threshold*P) (exact arithmetic guarantees it; enforced against "
        "rounding, and it makes the worst case analytic), at least ceil(k_min*P), at most P; threshold 1 skips "
        "pruning (bit-exact).",
        "Fixed count: ceil(keep_rate*P) (as EViT), at least ceil(k_min*P); keep_rate 1 skips pruning (bit-exact).",
        "Several locations: each applies the rule to the tokens alive (per image); a fused token from an earlier "
        "location is a patch token there and can be kept or fused again.",
        "fuse=True: one extra token, the pruned tokens' sum weighted by their raw head-averaged class attention "
        "(EViT); it is hidden as a key for an image that pruned nothing.",
        "Adaptive inference pads each batch to its largest count with one gather (padding slots hold the "
        "next-ranked tokens, hidden as keys by an additive mask, outputs unused): one host sync per location; "
        "equal counts run unmasked. buckets=G groups images by count instead (ignored while tracking; slower "
        "than padding in our eager-mode measurements, so not the default).",
        "token_schedule in adaptive mode is the worst case (uniform importance); tracked counts are the padded "
        "widths; macs() counts each image's own decisions (mean over the batch, fvcore's conventions).",
        "Sparse training masks instead of gathering (pruned keys get the additive -inf bias; shapes static); the "
        "sparse level is drawn uniformly per step from threshold_range (adaptive, default) or keep_rate_range.",
        "sait_schedule=alternate alternates whole epochs: even epochs dense, odd epochs sparse.",
        "Selection distillation: sel_weight * KL(teacher || student) over the patches alive at each location, "
        "teacher = dense teacher's last-block class attention (class row only), mean over locations; it falls "
        "back to the student's own dense pass (detached) when the teacher gives no matching map.",
        "sel_weight 0.1 and lr 1e-5 per 512 images are our choice (the paper's recipe is not public; a first "
        "reconstruction used sel_weight 1.0 and EViT's lr 2e-5): at 1.0 the KL over patches starts at ~4x the "
        "rest of the loss (demo: 1.30 vs 0.31). Picked on the demo's 359 held-out digits (today's val + test), seed "
        "0-2 runs: sel 1.0 / lr 8e-5 (demo "
        "scale) 97.21 % x3, sel 0 96.7-97.2, sel 0.1 / lr 4e-5 97.77-98.05; unseen seeds 3-5: 97.77 / 98.33 / "
        "97.49 %.",
        "Losses per pass: 0.5 CE + 0.5 KL(teacher logits, T=1) (alpha = 0.5 is our choice), dense and sparse "
        "passes summed by the trainer; recipe: 30 epochs from the pretrained model, lr 1e-5 per 512 images, no "
        "warm-up (our choice).",
        "Padded or masked tokens never reach the head: class-token pooling reads the class token; an average or "
        "attention pool (a model without a class token, or one like EVA02 whose head averages the patches) pools "
        "the live tokens only, and `buckets` then runs as padding.",
        "NaFlex patch dictionaries (mixed resolutions) run in the fixed and dense modes at inference: "
        "ceil(keep_rate * P) of the padded length P, padding ranked below every real patch, hidden as a key, "
        "weighing 0 in a fused token; the adaptive mode and training (per-image counts) refuse them.",
        "The default threshold 0.9 is a placeholder: calibrate_threshold picks the threshold whose mean GMACs on "
        "a set of images is 40 % below dense, by bisection (compress runs it on up to 256 training images).",
    )

    # -- contract ------------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        require_pooled_head(model, info, "SaiT")
        kind = pool_kind(model)
        if not info.has_class_token and self.options.fuse:
            raise UnsupportedModelError(
                "SaiT's `fuse` token is weighted by class attention; this ViT has no class token (use `fuse` "
                "false: the pooled head then averages the kept tokens).")
        if kind not in POOLS:
            raise UnsupportedModelError(
                f"SaiT needs a head that reads the class token or pools by average or attention (global_pool "
                f"'token', 'avg' or 'map'); this ViT pools with {kind!r}.")
        if kind != "token" and self.options.fuse:
            raise UnsupportedModelError(
                f"SaiT's `fuse` token would enter this ViT's {kind!r} pool as one patch; use `fuse` false (the "
                "pooled head then averages the kept tokens).")
        self._locations(info.depth)
        return info

    def padding_check(self, model: nn.Module) -> None:
        if self._skips() and not model.training:
            return
        if model.training or self.options.mode == "adaptive":
            raise UnsupportedModelError(
                "SaiT runs NaFlex patch dictionaries with padding masks (mixed resolutions) in its fixed and dense "
                "modes at inference only; its adaptive mode and its training choose token counts per image (use "
                f"--mode fixed, the same weights; methods that run them: {padding_methods()}).")

    def export_check(self, model: nn.Module) -> None:
        if self.options.mode == "adaptive" and not self._skips():
            raise ExportError("SaiT's adaptive mode keeps a different number of tokens per image, which a static ONNX "
                              "graph cannot hold; export its fixed mode (--mode fixed --keep-rate R) or dense mode "
                              "(--mode dense), the same weights.")

    def _locations(self, depth: int) -> list[int]:
        return block_locations(self.options.prune_at, depth, (3,), "prune_at", first=1)

    def _skips(self) -> bool:
        """True when no location can prune (dense mode, keep rate 1 or threshold 1): the plain timm blocks run."""
        o = self.options
        return o.mode == "dense" or (o.mode == "fixed" and o.keep_rate >= 1.0) or (
            o.mode == "adaptive" and o.threshold >= 1.0)

    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        if self._skips():
            if state.training and self.options.sel_weight > 0:
                return self._dense_training(model, x, state)
            for blk in model.blocks:
                self._enter(state, x, None)
                x = ops.run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
            return x
        self._locs = set(self._locations(len(model.blocks)))
        if state.training or state.track:
            state.aux.update(sait_sel=[], sait_kept=[], sait_tokens=[])
        fixed = self.options.mode == "fixed"
        alive = x.shape[1] - state.num_prefix if fixed else None
        # NaFlex padding (fixed mode at inference, ``padding_check``): the padding slots are dead from the start
        return self._run(model, x, state, 0, state.valid if fixed else None, alive, self.options.buckets)

    def _enter(self, state: TokenState, x: Tensor, valid: Optional[Tensor]) -> None:
        state.enter(x)
        if state.track and "sait_tokens" in state.aux:
            n = aops.valid_counts(valid, x.shape[0], x.shape[1] - state.num_prefix, x.device)
            state.aux["sait_tokens"].append(n + state.num_prefix)

    @staticmethod
    def _bias(valid: Optional[Tensor], num_prefix: int, dtype: torch.dtype) -> Optional[Tensor]:
        if valid is None:
            return None
        return ops.key_mask_bias(ops.with_prefix_mask(valid, num_prefix), dtype)

    def _run(self, model: nn.Module, x: Tensor, state: TokenState, start: int, valid: Optional[Tensor],
             alive: Optional[int], buckets: int) -> Tensor:
        """Blocks ``start..`` on ``x``; ``valid`` marks live patch slots (None: all), ``alive`` the live patch count
        when it is the same for every image (fixed mode), else None."""
        npre = state.num_prefix
        pools = pool_kind(model) != "token"  # the head pools the tokens: padding and masked slots must not count
        bias = self._bias(valid, npre, x.dtype)
        for i in range(start, len(model.blocks)):
            blk = model.blocks[i]
            self._enter(state, x, valid)
            prunes = (i + 1) in self._locs and (alive is None or aops.fixed_keep_count(
                self.options.keep_rate, alive, self.options.k_min) < alive)
            if not prunes:
                x = ops.run_block(blk, x, state.rope, attn_mask=bias)
                continue
            live = None if valid is None else ops.with_prefix_mask(valid, npre)
            out, scores = attention_importance(blk.attn, blk.norm1(x), npre, self.info.has_class_token, bias=bias,
                                               query_mask=live, rope=state.rope)
            x = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
            if state.training:
                x, valid, alive = self._mask_stage(x, scores, valid, alive, state, i)
            elif self.options.mode == "fixed":
                x, alive = self._fixed_stage(x, scores, alive, state, i)
                valid = state.valid  # NaFlex padding gathered with the kept tokens (None without)
            elif buckets > 1 and x.shape[0] > 1 and not state.track and not pools:
                return self._bucketed(model, x, scores, valid, state, i, buckets)
            else:
                x, valid = self._adaptive_stage(x, scores, valid, state, i)
            bias = self._bias(valid, npre, x.dtype)
        if valid is not None and pools:
            state.aux["pool_weight"] = valid  # the pooled head reads the live tokens only
        return x

    def pool(self, model: nn.Module, x: Tensor, pool_type: Optional[str], state: TokenState) -> Optional[Tensor]:
        """An average or attention pool (no class token, or a class token the head does not read) pools the live
        tokens only (not the masked or padding slots)."""
        return weighted_pool(model, x, state.aux.get("pool_weight"), pool_type)

    # -- one pruning location ---------------------------------------------------------------------------
    def _mask_stage(self, x: Tensor, scores: Tensor, valid: Optional[Tensor], alive: Optional[int],
                    state: TokenState, block: int) -> tuple[Tensor, Tensor, Optional[int]]:
        """Training: same shapes; the pruned slots become dead keys (``valid`` False)."""
        o, npre = self.options, state.num_prefix
        B, P = x.shape[0], x.shape[1] - npre
        n_valid = aops.valid_counts(valid, B, P, x.device)
        state.aux["sait_sel"].append((scores, valid))
        sorted_s, order = aops.order_by_score(scores, valid)
        if alive is not None:
            k = aops.fixed_keep_count(o.keep_rate, alive, o.k_min)
            counts = torch.full((B,), k, dtype=torch.long, device=x.device)
        else:
            counts = aops.mass_keep_counts(sorted_s, o.threshold, o.k_min, n_valid)
        keep = aops.rank_keep_mask(order, counts)
        state.aux["sait_kept"].append(counts)
        if o.fuse:
            pruned = ~keep if valid is None else valid & ~keep
            x = torch.cat([x, aops.masked_fuse(x[:, npre:], scores, pruned)], dim=1)
            keep = torch.cat([keep, (counts < n_valid)[:, None]], dim=1)
            state.rope = ops.with_synthetic(state.rope, 1)
        if alive is not None:
            alive = k + (1 if o.fuse else 0)
        if state.track:
            P0 = state.origin.shape[1]
            pos = torch.arange(P0, device=x.device).expand(B, -1)
            state.record(block, torch.where(keep[:, :P0], pos, torch.full_like(pos, -1)))
        return x, keep, alive

    def _fixed_stage(self, x: Tensor, scores: Tensor, alive: int, state: TokenState,
                     block: int) -> tuple[Tensor, int]:
        """Inference, fixed rate: one top-k (or sort, with fusion) and one gather; static shapes."""
        o, npre = self.options, state.num_prefix
        k = aops.fixed_keep_count(o.keep_rate, alive, o.k_min)
        live = state.valid  # NaFlex padding: ranked below every real patch, weighs 0 in the fused token
        if o.fuse:
            order = ops.rank_patches(padding.rank_scores(scores, live))
            keep, rest = order[:, :k], order[:, k:]
            fused = ops.fuse_tokens(x[:, npre:], padding.live_weights(scores, live), rest)
            fused_live = None if live is None else padding.take_live(live, rest).any(dim=1, keepdim=True)
            state.keep(keep, extra_synthetic=1, extra_valid=fused_live)
            state.rope = ops.take_rope(state.rope, keep, synthetic=1)
            x = torch.cat([ops.keep_tokens(x, keep, npre), fused], dim=1)
        else:
            keep = ops.topk_patches(padding.rank_scores(scores, live), k)
            state.keep(keep)
            state.rope = ops.take_rope(state.rope, keep)
            x = ops.keep_tokens(x, keep, npre)
        if state.track:
            state.aux["sait_kept"].append(torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))
            state.record(block)
        return x, k + (1 if o.fuse else 0)

    def _adaptive_stage(self, x: Tensor, scores: Tensor, valid: Optional[Tensor], state: TokenState, block: int,
                        pre: Optional[tuple[Tensor, Tensor, Tensor]] = None,
                        stats: Optional[list[int]] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Inference, per-image counts: pad to the batch's largest count (one gather, one host sync unless the
        caller read ``stats`` = (largest count, smallest count, every image pruned something) already)."""
        o, npre = self.options, state.num_prefix
        B, P = x.shape[0], x.shape[1] - npre
        n_valid = aops.valid_counts(valid, B, P, x.device)
        if pre is None:
            sorted_s, order = aops.order_by_score(scores, valid)
            counts = aops.mass_keep_counts(sorted_s, o.threshold, o.k_min, n_valid)
        else:
            sorted_s, order, counts = pre
        pruned_some = counts < n_valid
        if stats is None:
            stats = _width_stats(counts, pruned_some).tolist()  # the one host sync of this location
        width, narrowest, all_pruned = stats
        x_new, valid_new = aops.gather_padded(x, order, counts, width, npre)
        state.rope = ops.take_rope(state.rope, order[:, :width], synthetic=1 if o.fuse else 0)
        unmasked = narrowest == width
        if o.fuse:
            kept = aops.rank_keep_mask(order, counts)
            pruned = ~kept if valid is None else valid & ~kept
            x_new = torch.cat([x_new, aops.masked_fuse(x[:, npre:], scores, pruned)], dim=1)
            valid_new = torch.cat([valid_new, pruned_some[:, None]], dim=1)
            unmasked = unmasked and bool(all_pruned)
        if state.track:
            state.keep(order[:, :width], extra_synthetic=1 if o.fuse else 0)
            state.origin = state.origin.masked_fill(~valid_new, -1)
            state.aux["sait_kept"].append(counts)
            state.record(block)
        return x_new, (None if unmasked else valid_new)

    def _bucketed(self, model: nn.Module, x: Tensor, scores: Tensor, valid: Optional[Tensor], state: TokenState,
                  block: int, buckets: int) -> Tensor:
        """Inference, per-image counts: images sorted by count into groups, each padded to its own maximum and
        run through the remaining blocks; the outputs are padded to one width and put back in batch order."""
        o, npre = self.options, state.num_prefix
        B, P, C = x.shape[0], x.shape[1] - npre, x.shape[2]
        n_valid = aops.valid_counts(valid, B, P, x.device)
        sorted_s, order = aops.order_by_score(scores, valid)
        counts = aops.mass_keep_counts(sorted_s, o.threshold, o.k_min, n_valid)
        perm = torch.argsort(counts, stable=True)
        groups = torch.tensor_split(perm, min(buckets, B))
        pruned_some = counts < n_valid
        stats = torch.stack([_width_stats(counts[g], pruned_some[g]) for g in groups]).tolist()  # one sync for all
        outs = []
        rope = state.rope
        for g, st in zip(groups, stats):
            state.rope = None if rope is None else rope[g]  # each group carries its images' rows
            sub_valid = None if valid is None else valid[g]
            xg, vg = self._adaptive_stage(x[g], scores[g], sub_valid, state, block, (sorted_s[g], order[g], counts[g]),
                                          st)
            outs.append(self._run(model, xg, state, block + 1, vg, None, 1))
        width = max(out.shape[1] for out in outs)
        result = x.new_zeros(B, width, C)
        for g, out in zip(groups, outs):
            result.index_copy_(0, g, F.pad(out, (0, 0, 0, width - out.shape[1])))
        return result

    def _dense_training(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        """Dense training pass; also keeps the last block's class attention (detached) as the selection target of
        a later sparse pass when the teacher gives none."""
        for blk in model.blocks[:-1]:
            self._enter(state, x, None)
            x = ops.run_block(blk, x, state.rope)
        blk = model.blocks[-1]
        self._enter(state, x, None)
        out, scores = attention_importance(blk.attn, blk.norm1(x), state.num_prefix, class_token(model) is not None,
                                           rope=state.rope)
        x = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
        state.aux["sait_self_target"] = scores.detach()
        return x

    # -- analytic facts -----------------------------------------------------------------------------------
    def _next_count(self, P: int) -> int:
        """Worst-case live patches after one location, from ``P`` live patches."""
        o = self.options
        if self._skips():
            return P
        if o.mode == "fixed":
            k = aops.fixed_keep_count(o.keep_rate, P, o.k_min)
            return P if k >= P else k + (1 if o.fuse else 0)
        return aops.adaptive_count_bound(o.threshold, o.k_min, P) + (1 if o.fuse else 0)

    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        info = vit_info(model, img_size)
        locs = set(self._locations(info.depth))
        P, out = info.num_patches, []
        for i in range(info.depth):
            out.append(info.num_prefix_tokens + P)
            if (i + 1) in locs:
                P = self._next_count(P)
        return out

    def _selection_blocks(self, model: nn.Module) -> list[int]:
        return [] if self._skips() else [p - 1 for p in self._locations(len(model.blocks))]

    def macs(self, model: nn.Module, images: Tensor) -> Optional[float]:
        """Adaptive mode: mean over ``images`` of each image's MACs from its own kept counts (fvcore's
        conventions). Dense and fixed modes have static shapes: None, fvcore counts them."""
        if self.options.mode != "adaptive" or self._skips():
            return None
        return float(self.image_macs(model, images)[0].mean())

    def image_macs(self, model: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(macs per image (B), kept patch counts per location [B each])`` from one tracked eval forward."""
        was_training, was_tracking = model.training, model._vitprune_track
        model.eval()
        try:
            with torch.no_grad(), tracking(model):
                model(images)
        finally:
            model.train(was_training)
            model._vitprune_track = was_tracking
        state = model.vitprune_state
        kept = list(state.aux.get("sait_kept", []))
        if "sait_tokens" in state.aux:
            tokens = torch.stack(state.aux["sait_tokens"], dim=1)
        else:  # skip path: every block sees every token
            tokens = torch.tensor(state.counts, device=images.device).expand(images.shape[0], -1)
        return token_macs(model, tokens, self._selection_blocks(model), class_token(model) is None), kept

    # -- calibration -------------------------------------------------------------------------------------
    def calibrate_threshold(
        self,
        model: nn.Module,
        images: Union[Tensor, Iterable[Any]],
        target_reduction: float = 0.40,
        *,
        batch_size: int = 64,
        max_images: Optional[int] = None,
        iterations: int = 16,
        apply: bool = True,
    ) -> ThresholdCalibration:
        """The adaptive threshold whose mean GMACs over ``images`` is ``target_reduction`` below dense.

        ``images``: a tensor ``N x 3 x H x W`` or an iterable of tensors or ``(images, labels)`` batches (a
        DataLoader over training or held-out images). Bisection on the threshold (the mean MACs grow with it), each step
        one eval forward over the images; the closest threshold found is rounded to 4 decimals and, with
        ``apply``, becomes the model's default (saved in config.json). The mode is left as it is.
        """
        if not 0.0 <= target_reduction < 1.0:
            raise MethodOptionError(f"target reduction must be in [0, 1), got {target_reduction}.")
        batches = _collect_batches(images, batch_size, max_images, next(model.parameters()).device)
        if not batches:
            raise MethodOptionError("calibrate_threshold needs at least one image.")
        n_img = sum(b.shape[0] for b in batches)

        def measure(tau: float) -> tuple[float, list[Tensor]]:
            with self.overrides(mode="adaptive", threshold=tau):
                total, kept = 0.0, []
                for b in batches:
                    m, k = self.image_macs(model, b)
                    total += float(m.sum())
                    kept.append(torch.stack(k, dim=1) if k else torch.zeros(b.shape[0], 0, dtype=torch.long))
            return total / n_img, kept

        with self.overrides(mode="dense"):
            dense = self.image_macs(model, batches[0][:1])[0]
        dense_macs = float(dense[0])
        target = (1.0 - target_reduction) * dense_macs
        locs = self._locations(len(model.blocks))
        search = measure
        if len(locs) == 1:  # one location: the counts at any threshold follow from one partial forward per batch
            curves = torch.cat([self._sorted_importance(model, b, locs[0]) for b in batches])
            search = lambda tau: (self._macs_from_curves(model, curves, locs[0], tau), None)  # noqa: E731
        lo, hi = 0.0, 1.0
        best = (abs(dense_macs - target), 1.0)
        for _ in range(iterations):
            mid = (lo + hi) / 2.0
            macs, _ = search(mid)
            best = min(best, (abs(macs - target), mid))
            if macs > target:
                hi = mid
            else:
                lo = mid
        tau = min(1.0, max(1e-4, round(best[1], 4)))
        macs, kept = measure(tau)
        kept_all = torch.cat(kept, dim=0)
        if apply:
            self.set_runtime(threshold=tau)
        worst, P = [], vit_info(model, tuple(batches[0].shape[-2:])).num_patches
        for _ in self._locations(len(model.blocks)):
            worst.append(P)
            P = aops.adaptive_count_bound(tau, self.options.k_min, P) + (1 if self.options.fuse else 0)
        return ThresholdCalibration(
            threshold=tau, target_reduction=target_reduction, reduction=1.0 - macs / dense_macs, gmacs=macs / 1e9,
            dense_gmacs=dense_macs / 1e9, num_images=n_img, num_patches=worst,
            mean_kept=[float(c) for c in kept_all.double().mean(0)] if kept_all.numel() else [],
            min_kept=[int(c) for c in kept_all.min(0).values] if kept_all.numel() else [],
            max_kept=[int(c) for c in kept_all.max(0).values] if kept_all.numel() else [],
        )

    def calibrate(self, model: nn.Module, images: Union[Tensor, Iterable[Any]]) -> dict[str, Any]:
        """Data-dependent run-time defaults from held-out images (a proposed contract hook for the trainer): the
        adaptive threshold for 40 % fewer GMACs, applied as the default; returns what was found."""
        return self.calibrate_threshold(model, images).to_dict()

    def _sorted_importance(self, model: nn.Module, images: Tensor, location: int) -> Tensor:
        """Descending patch importances (``B x P``) at ``location``: embedding and blocks ``0..location-1`` only."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                x, rope = embed(model, images)
                for blk in model.blocks[: location - 1]:
                    x = ops.run_block(blk, x, rope)
                blk = model.blocks[location - 1]
                _, scores = attention_importance(blk.attn, blk.norm1(x), model.num_prefix_tokens,
                                                 class_token(model) is not None, rope=rope)
        finally:
            model.train(was_training)
        return aops.order_by_score(scores)[0]

    def _macs_from_curves(self, model: nn.Module, curves: Tensor, location: int, threshold: float) -> float:
        """Mean MACs in adaptive mode at ``threshold`` for images with these sorted importances (one location)."""
        o, npre = self.options, model.num_prefix_tokens
        N, P = curves.shape
        n = torch.full((N,), P, dtype=torch.long, device=curves.device)
        counts = aops.mass_keep_counts(curves, threshold, o.k_min, n)
        after = npre + counts + (1 if o.fuse else 0) * (counts < n).long()
        depth = len(model.blocks)
        tokens = torch.where(torch.arange(depth, device=curves.device)[None, :] < location,
                             torch.full_like(after, npre + P)[:, None], after[:, None])
        return float(token_macs(model, tokens, [location - 1], class_token(model) is None).mean())

    # -- training ------------------------------------------------------------------------------------------
    def teacher_forward(self, teacher: nn.Module, images: Tensor) -> TeacherOutput:
        """Logits and final tokens, plus the last block's class-attention row over patches (``extras``)."""
        try:
            vit_info(teacher)
        except UnsupportedModelError:
            return super().teacher_forward(teacher, images)
        if self.options.sel_weight == 0:
            return super().teacher_forward(teacher, images)
        x, rope = embed(teacher, images)
        for blk in teacher.blocks[:-1]:
            x = ops.run_block(blk, x, rope)
        blk = teacher.blocks[-1]
        out, scores = attention_importance(blk.attn, blk.norm1(x), teacher.num_prefix_tokens,
                                           class_token(teacher) is not None, rope=rope)
        x = ops.mlp_residual(blk, ops.attn_residual(blk, x, out))
        tokens = teacher.norm(x)
        return TeacherOutput(logits=teacher.forward_head(tokens), tokens=tokens, extras={"sait_cls_attn": scores})

    def aux_losses(self, model: nn.Module, state: TokenState, teacher: Optional[TeacherOutput], *,
                   targets: Optional[Tensor] = None, step: Optional[StepContext] = None) -> dict[str, Tensor]:
        own = state.aux.get("sait_self_target")
        if own is not None and step is not None:  # a dense pass: the fallback target of this step's sparse pass
            step.carry["sait_self_target"] = own
        sel = state.aux.get("sait_sel")
        if not sel or self.options.sel_weight == 0:
            return {}
        B, P0 = sel[0][0].shape
        target = teacher.extras.get("sait_cls_attn") if (teacher is not None and self.options.sel_target == "teacher") \
            else None
        if (target is None or tuple(target.shape) != (B, P0)) and step is not None:
            target = step.carry.get("sait_self_target")
        if target is None or tuple(target.shape) != (B, P0):
            return {}
        target = target.detach().to(sel[0][0].device)
        terms = [aops.distribution_kl(target, s[:, :P0], None if v is None else v[:, :P0]) for s, v in sel]
        return {"sait_sel": self.options.sel_weight * torch.stack(terms).mean()}

    def sparse_pass(self) -> dict[str, Any]:
        """Run-time settings of one sparse training pass, its level drawn uniformly (torch's global RNG)."""
        o = self.options
        u = float(torch.rand(()))
        if o.sparse_train_mode == "fixed":
            lo, hi = o.keep_rate_range
            return {"mode": "fixed", "keep_rate": lo + (hi - lo) * u}
        lo, hi = o.threshold_range
        return {"mode": "adaptive", "threshold": lo + (hi - lo) * u}

    def training_passes(self, step: Optional[StepContext] = None) -> list[dict[str, Any]]:
        if self.options.sait_schedule == "both":
            return [{"mode": "dense"}, self.sparse_pass()]
        epoch = step.epoch if step is not None else 0.0
        return [{"mode": "dense"}] if int(epoch) % 2 == 0 else [self.sparse_pass()]

    def default_recipe(self) -> dict[str, Any]:
        # The paper's recipe is not public; DeiT-style fine-tuning from the pretrained model (vitprune's choice):
        # loss per pass (1 - alpha) CE + alpha KL(teacher || student) at T = 1 with alpha = 0.5.
        return {"epochs": 30, "lr": 1e-5, "lr_batch_ref": 512, "warmup_epochs": 0, "min_lr": 1e-6,
                "weight_decay": 0.05, "kd_weight": 0.5, "kd_temperature": 1.0, "cls_weight": 0.5}


def _width_stats(counts: Tensor, pruned_some: Tensor) -> Tensor:
    """``[largest count, smallest count, 1 if every image pruned something]`` as one small tensor (read at once)."""
    return torch.stack([counts.max(), counts.min(), pruned_some.all().long()])


def _collect_batches(images: Union[Tensor, Iterable[Any]], batch_size: int, max_images: Optional[int],
                     device: torch.device) -> list[Tensor]:
    if isinstance(images, Tensor):
        images = images[:max_images] if max_images is not None else images
        return [b.to(device) for b in images.split(batch_size)]
    out, n = [], 0
    for item in images:
        b = item[0] if isinstance(item, (tuple, list)) else item
        if max_images is not None:
            b = b[: max_images - n]
        if b.shape[0] == 0:
            break
        out.append(b.to(device))
        n += b.shape[0]
        if max_images is not None and n >= max_images:
            break
    return out


def calibrate_threshold(model: nn.Module, images: Union[Tensor, Iterable[Any]], target_reduction: float = 0.40,
                        **kwargs: Any) -> ThresholdCalibration:
    """:meth:`SaiT.calibrate_threshold` on a SaiT-patched model."""
    method = getattr(model, "vitprune_method", None)
    if not isinstance(method, SaiT):
        raise MethodOptionError("calibrate_threshold needs a model patched with sait.")
    return method.calibrate_threshold(model, images, target_reduction, **kwargs)
