"""Evo-ViT: slow-fast token evolution driven by a global class attention.

Xu et al., "Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer", AAAI 2022 (arXiv 2108.01390).
The released DeiT code (the one its checkpoints need) is a simplified form of
the paper; vitprune follows that code by default and offers the paper's representative token as an option.

What it does
------------
*Global class attention* ``g`` (one score per patch, ``B x P``, float32): the class token's post-softmax attention
row over the patch keys, **summed** over heads. Before the first selection it is simply the row of the block just
before it (the code evolves it with weight 1 there, so only that block's row survives and only that block computes
it); inside the stages the informative entries evolve as ``g <- 0.5 g + 0.5 row`` while the placeholders keep their
old (stale) scores, exactly as the reference does (no re-normalisation, although the rows come from softmaxes over
different key sets).

*Selection* at the input of each selection block (0-based 4 and 8 of 12, ``scale_locations`` for other depths):
the ``k = int(P * keep_rate)`` patches with the highest ``g`` are the informative tokens, the other ``P - k`` are
placeholders. The prefix tokens (class, distillation, registers) and the informative patches go through the
stage's blocks ("slow updating"); the placeholders are carried unchanged and written back after the stage's last
block ("fast updating" is the identity in the DeiT code). The next selection re-ranks all ``P`` patches, so a
placeholder can come back with its stale features. The final sequence always has all tokens.

*Stage-wise / layer-wise*: stage-wise selects at the selection blocks only (inference). Layer-wise selects before
every block from the first selection block on (each block is its own stage); same token counts, more sorting.
Training runs layer-wise for the first ``layer_wise_fraction`` of training and stage-wise afterwards
(``on_train_progress``); ``layer_wise=True`` forces it everywhere (the reference's evaluations during its warm-up).

*Representative token* (``representative=True``, the paper / LeViT code, off by default): the placeholders are
summarised as ``r = sum_j w_j x_j`` with ``w = g_j / sum g`` over the placeholders, ``r`` is appended to the stage's
tokens, and after the stage every placeholder receives ``r``'s total residual increment (the sum of its attention
and MLP increments, unweighted); ``r`` is then dropped.

*Heads*: ``head="model"`` (default) keeps the base model's own head (the class token for DeiT), so a pretrained
timm ViT works as is and ``keep_rate=1`` is the dense model bit for bit. ``head="avg"`` is the released models'
head: ``head(LayerNorm(mean of all patch tokens))`` (placeholders included) -- timm's ``global_pool='avg'`` with
``fc_norm``, initialised from the model's final norm and head -- plus the training-only class-token classifier
``norm_cls``/``head_cls`` (the official names; initialised from the same norm and head) for the paper's "assisted
CLS token loss" with weight ``aux_cls_weight`` (0.5, and the label cross-entropy on the average head gets
``cls_weight`` 0.5 in ``default_recipe``). ``remove_cls`` deletes the auxiliary classifier for deployment.
``head="avg"`` changes what the classifier reads, so it needs fine-tuning. In training the model returns the
average head's logits (the reference returns both branches; vitprune's trainer applies its label cross-entropy and
logit distillation to this one) and leaves the class-token logits in ``state.aux["cls_logits"]`` for ``aux_losses``.

vitprune's choices and deviations from the reference code are ``EvoViT.notes`` (listed below at import, by
``vitprune methods`` and on the model card).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..errors import MethodOptionError, UnsupportedModelError
from ..ops import carry, padding
from ..ops.importance import attention_importance
from .base import (
    MethodOptions, StepContext, TeacherOutput, TokenMethod, TokenState, ViTInfo, block_locations, check_block_list,
    require_pooled_head, vit_info,
)
from .registry import register

#: evolution weight of the new class-attention row inside the stages (the code's ``tradeoff`` for blocks 4-11)
STAGE_ALPHA = 0.5
#: label smoothing of the auxiliary class-token cross-entropy when labels are available (the recipe's value)
AUX_LABEL_SMOOTHING = 0.1
HEADS = ("model", "avg")
#: official Evo-ViT DeiT keys that vitprune renames (everything else keeps its timm name)
_OFFICIAL_ATTN = re.compile(r"^(norms|qks|vs|projs)\.(\d+)\.(.+)$")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------ options


@dataclass
class EvoViTOptions(MethodOptions):
    keep_rate: float = field(default=0.5, metadata={
        "help": "rho: each selection keeps k = int(P * rho) informative patches (P = the model's patches; 0.5 = "
                "the paper's 98 of 196), in (0, 1]; the others are carried as placeholders",
        "headline": True, "short": "keep", "runtime": True, "sweep": True})
    select_loc: Optional[list[int]] = field(default=None, metadata={
        "help": "0-based blocks at whose input all patches are re-ranked by the global class attention (stage "
                "starts; default 4,8 of 12, scaled to depth; each >= 1)"})
    head: str = field(default="model", metadata={
        "help": "model: keep the base model's own head (class token for DeiT; keep_rate 1 = dense); avg: the "
                "paper's LayerNorm(mean of patch tokens) head plus the training-only class-token head "
                "(norm_cls/head_cls); needs fine-tuning"})
    aux_cls_weight: float = field(default=0.5, metadata={
        "help": "head=avg, training: weight of the assisted class-token loss on head_cls (paper 0.5); 0 removes "
                "norm_cls/head_cls", "applies_when": {"head": "avg"}})
    layer_wise_fraction: float = field(default=0.3, metadata={
        "help": "training: fraction of training run layer-wise (re-rank before every block from the first "
                "selection on) before switching to stage-wise; the paper: 200 of 300 epochs from scratch"})
    layer_wise: bool = field(default=False, metadata={
        "help": "run layer-wise always, inference included (default: stage-wise at inference)", "runtime": True})
    representative: bool = field(default=False, metadata={
        "help": "the paper's representative token and fast update of the placeholders (off: the released DeiT "
                "code, placeholders carried unchanged)", "runtime": True})

    def validate(self) -> None:
        if not _is_number(self.keep_rate) or not 0.0 < self.keep_rate <= 1.0:
            raise MethodOptionError(
                f"`keep_rate` must be in (0, 1] (each selection keeps int(patches x keep_rate) patches), got "
                f"{self.keep_rate!r}.")
        self.select_loc = check_block_list(self.select_loc, "select_loc", minimum=1, example="4,8")
        if self.head not in HEADS:
            raise MethodOptionError(f"`head` must be one of {', '.join(HEADS)}, got {self.head!r}.")
        if not _is_number(self.aux_cls_weight) or self.aux_cls_weight < 0:
            raise MethodOptionError(f"`aux_cls_weight` must be a number >= 0, got {self.aux_cls_weight!r}.")
        if not _is_number(self.layer_wise_fraction) or not 0.0 <= self.layer_wise_fraction <= 1.0:
            raise MethodOptionError(
                f"`layer_wise_fraction` must be in [0, 1] (fraction of training run layer-wise), got "
                f"{self.layer_wise_fraction!r}.")
        for name in ("layer_wise", "representative"):
            if not isinstance(getattr(self, name), bool):
                raise MethodOptionError(f"`{name}` must be true or false, got {getattr(self, name)!r}.")


# ------------------------------------------------------------------------------------------ the method


@register
class EvoViT(TokenMethod):
    name = "evovit"
    noop_options = {"keep_rate": 1.0}
    sparse_options = {"keep_rate": 0.5}
    title = "Evo-ViT"
    paper = "Xu et al., Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer (AAAI 2022, " \
            "arXiv 2108.01390)"
    summary = ("from block 4 on, only the class token and the top int(P*rho) patches by evolving global class "
               "attention are processed (re-ranked at blocks 4 and 8); the other patches are carried unchanged")
    Options = EvoViTOptions
    needs_training = True
    new_module_prefixes = ("norm_cls", "head_cls")
    exportable = True
    padding_masks = True
    removed_tokens = "carried along, not processed"
    notes = (
        "Default head=model keeps the base model's own head (class token), so a pretrained timm ViT runs as is and "
        "keep_rate 1 is the dense model bit for bit; head=avg is the released models' LayerNorm(mean of patches) "
        "head (from the model's final norm and head) plus the training-only norm_cls/head_cls, and needs "
        "fine-tuning.",
        "Default follows the released DeiT code: placeholders carried unchanged; representative=true adds the "
        "paper's representative token and fast update.",
        "Training runs layer-wise for the first 30% of training (layer_wise_fraction), then stage-wise as at "
        "inference: the paper spends 2/3 of a 300-epoch from-scratch run layer-wise; a pretrained backbone's class "
        "attention is already meaningful, so vitprune spends most of a short fine-tune in the inference mode.",
        "The sequence keeps its spatial order: informative tokens are gathered once per stage (prefix tokens "
        "first, then patches by descending g) and scattered back (the reference re-orders the sequence); attention "
        "and MLP are permutation-equivariant and both heads permutation-invariant, so outputs equal up to float "
        "summation order, and g stays aligned with the tokens.",
        "One code path serves training and inference (the reference concatenates in training and writes in place "
        "at inference; same values); token counts are static per stage in both, as in the paper.",
        "k = int(P * keep_rate), at least 1, on the model's real patch count P (the reference hard-codes 196 and 12 "
        "blocks); at k = P (keep_rate 1) nothing is ranked or gathered and the dense blocks run unchanged.",
        "Every prefix token is kept and processed in every block, never scored; the class token (index 0) is the "
        "query.",
        "The class-attention row is computed alone (q_cls K^T, float32) so attention stays on fused SDPA; before "
        "the first selection only the block just before it computes it (the code's weight 1 overwrites earlier "
        "rows).",
        "The class row's softmax runs over all keys (prefix tokens included, like the reference's class key); only "
        "patch keys are scored; a representative token's key takes part in the softmax but is not a patch score.",
        "Assisted class-token loss: cross-entropy on the labels the trainer passes to aux_losses; without labels, "
        "KL(teacher || head_cls) to the dense teacher's logits at temperature 1.",
        "Not implemented (LeViT code only): learned per-layer evolution weights, mean over heads, "
        "re-normalisation of g.",
        "Recipe: no official fine-tuning recipe exists (the paper trains 300 epochs from scratch without KD); "
        "vitprune fine-tunes 30 epochs DeiT-style (AdamW, wd 0.05, drop path 0.1, smoothing 0.1) with logit KD 0.5.",
        "NaFlex patch dictionaries (mixed resolutions): k = floor(keep_rate * P) of the padded length P; padding "
        "ranks below every real patch among the informative ones, weighs 0 in the representative token (one of "
        "padding alone is padding) and stays hidden as a key in every block.",
    )

    no_class_token = ("the global attention is the attention each patch receives (softmax columns averaged over "
                      "all processed queries and heads) instead of the class token's row; the final sequence keeps "
                      "every token, so the model's average or attention pool is unchanged.")

    rotary = ("informative patches carry their own rotary rows through a stage; the representative token stands "
              "for all placeholders and gets no rotation, as timm's prefix tokens.")
    position_bias = ("informative patches keep their own bias rows and columns through a stage; the representative "
                     "token stands for all placeholders and gets no bias (0).")

    def __init__(self, options: EvoViTOptions):
        super().__init__(options)
        #: set by ``on_train_progress``: run the training forward layer-wise (None before any progress report)
        self.train_layer_wise: Optional[bool] = None

    # -- facts ---------------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        require_pooled_head(model, info, "Evo-ViT")
        if info.depth < 2:
            raise UnsupportedModelError("Evo-ViT needs at least 2 blocks (one to rank the patches, one to run on "
                                        f"the informative ones); this ViT has {info.depth}.")
        if self.options.head == "avg":
            pool = getattr(model, "global_pool", None)
            if not info.has_class_token:
                raise UnsupportedModelError(
                    "`head` avg adds the paper's class-token classifier; this ViT has no class token and already "
                    "pools (use `head` model).")
            if hasattr(model, "head_dist"):
                raise UnsupportedModelError(
                    "`head` avg replaces the class-token head by average pooling; a distilled ViT's two heads read "
                    "the class and distillation tokens (use `head` model).")
            if getattr(model, "attn_pool", None) is not None or pool not in ("token", "avg"):
                raise UnsupportedModelError(
                    f"`head` avg needs a ViT that pools with its class token or the patch mean; this one has "
                    f"global_pool={pool!r} (use `head` model).")
        self.locations(info.depth)  # validates select_loc against the depth
        return info

    def locations(self, depth: int) -> list[int]:
        """0-based blocks at whose input the patches are re-ranked (stage-wise)."""
        return block_locations(self.options.select_loc, depth, (4, 8), "select_loc", first=1)

    def num_informative(self, num_patches: int, rate: Optional[float] = None) -> int:
        """``k = int(num_patches * keep_rate)``, at least 1."""
        return ops.num_kept(self.options.keep_rate if rate is None else rate, num_patches, "floor")

    def layer_wise_now(self, training: bool) -> bool:
        return bool(self.options.layer_wise or (training and self.train_layer_wise))

    def stage_starts(self, depth: int, layer_wise: bool) -> list[int]:
        locs = self.locations(depth)
        return list(range(locs[0], depth)) if layer_wise else locs

    # -- patching -------------------------------------------------------------------------------------
    def patch(self, model: nn.Module) -> None:
        if self.options.head != "avg":
            return
        if model.global_pool == "token":  # move the final norm behind the pooling: timm's avg + fc_norm layout
            final_norm = model.norm
            model.norm = nn.Identity()
            model.fc_norm = final_norm
            model.global_pool = "avg"
            model._model_args = {**getattr(model, "_model_args", {}), "global_pool": "avg", "fc_norm": True}
        if self.options.aux_cls_weight > 0 and model.num_classes > 0:
            self._attach_aux(model)

    def _attach_aux(self, model: nn.Module) -> None:
        src_norm = model.fc_norm if not isinstance(model.fc_norm, nn.Identity) else None
        norm_cls = copy.deepcopy(src_norm) if src_norm is not None else nn.LayerNorm(model.embed_dim, eps=1e-6)
        head_cls = copy.deepcopy(model.head)
        ref = next(model.parameters())
        self.attach(model, "norm_cls", norm_cls.to(device=ref.device, dtype=ref.dtype))
        self.attach(model, "head_cls", head_cls.to(device=ref.device, dtype=ref.dtype))

    def unpatch(self, model: nn.Module) -> None:
        """Remove ``norm_cls``/``head_cls``. The average-pool head (``head=avg``) stays: it is the classifier the
        weights were trained with, so the dense copy of an Evo-ViT model is the dense ViT in avg-pool mode."""
        super().unpatch(model)

    def remove_cls(self, model: nn.Module) -> None:
        """Delete the training-only class-token classifier (the reference's ``remove_cls()``), for deployment;
        the options record it (``aux_cls_weight=0``) so that save/load rebuild the same model."""
        for parent, name in list(self._attached):
            if name in ("norm_cls", "head_cls"):
                delattr(parent, name)
                self._attached.remove((parent, name))
        self.options = dataclasses.replace(self.options, aux_cls_weight=0.0)

    # -- forward --------------------------------------------------------------------------------------
    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        P = x.shape[1] - state.num_prefix
        k = self.num_informative(P)
        if k >= P:  # nothing to select: the dense blocks, bit for bit
            for blk in model.blocks:
                state.enter(x)
                x = ops.run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
        else:
            x = self.evolve(model, x, state, k, self.layer_wise_now(model.training))
        self._aux_head(model, x, state)
        return x

    def evolve(self, model: nn.Module, x: Tensor, state: TokenState, k: int, layer_wise: bool = False) -> Tensor:
        """The slow-fast blocks with ``k`` informative patches per stage (``k`` may equal the patch count: tests
        use that to run the full compute path)."""
        blocks = model.blocks
        depth = len(blocks)
        npre = state.num_prefix
        P = x.shape[1] - npre
        starts = self.stage_starts(depth, layer_wise)
        start_set = set(starts)
        rep = self.options.representative and k < P
        g: Optional[Tensor] = None  # B x P global class attention, aligned with the patches of x
        stage: Optional[dict[str, Tensor]] = None  # the running stage: tokens, their scores, where they came from
        for i, blk in enumerate(blocks):
            if i in start_set:
                if stage is not None:
                    x, g = self._end_stage(x, g, stage, state, P)
                stage = self._start_stage(x, g, k, rep, i, state)
            if stage is None:
                state.enter(x)
                if i < starts[0] - 1:
                    x = ops.run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
                else:  # the block before the first selection builds g (its row, weight 1)
                    x, row = _block_with_class_row(blk, x, npre, self.info.has_class_token, state.rope,
                                                   state.valid)
                    g = row
            else:
                xs = stage["x"]
                state.enter(xs)
                xs, row = _block_with_class_row(blk, xs, npre, self.info.has_class_token, stage.get("rope"),
                                                stage.get("live"))
                stage["x"] = xs
                stage["g"] = (1.0 - STAGE_ALPHA) * stage["g"] + STAGE_ALPHA * row[:, :k]
        if stage is not None:
            x, g = self._end_stage(x, g, stage, state, P)
            if state.track:
                state.record(depth - 1, state.origin.clone())
                state.aux["global_attention"] = g  # B x P, for token maps
        return x

    def _start_stage(self, x: Tensor, g: Tensor, k: int, rep: bool, block: int,
                     state: TokenState) -> dict[str, Tensor]:
        npre = state.num_prefix
        P = x.shape[1] - npre
        live = state.valid  # NaFlex padding: ranked last, weighs 0 in the representative token
        idx = ops.topk_patches(padding.rank_scores(g, live), k)  # informative patches by descending global attention
        pos = carry.prefixed_index(idx, npre)
        xs = carry.take(x, pos)
        stage = {"idx": idx, "pos": pos, "g": torch.gather(g, 1, idx)}
        if live is not None:
            stage["full_live"] = live
            stage["live"] = padding.take_live(live, idx)
            if rep:
                stage["live"] = torch.cat([stage["live"], (live & carry.rest_mask(idx, P).bool()).any(1, keepdim=True)], 1)
        if state.rope is not None:  # the informative patches keep their rows; the representative: no rotation
            stage["rope"] = ops.take_rope(state.rope, idx, synthetic=1 if rep else 0)
        if rep:
            r = carry.rest_weighted_token(x[:, npre:], padding.live_weights(g, live), idx)
            stage["r0"] = r
            xs = torch.cat([xs, r], dim=1)
        stage["x"] = xs
        if state.track:
            state.origin = torch.arange(P, device=x.device).expand(x.shape[0], P).clone()
            state.keep(idx, extra_synthetic=1 if rep else 0)
            # placeholders: not represented by a live token, or by the representative token (position k)
            state.record(block, carry.chosen_positions(idx, P, fill=k if rep else -1))
            if live is not None:
                state.valid = live  # the full sequence's (``keep`` gathered it for the map)
        return stage

    @staticmethod
    def _end_stage(x: Tensor, g: Tensor, stage: dict[str, Tensor], state: TokenState,
                   P: int) -> tuple[Tensor, Tensor]:
        xs, pos = stage["x"], stage["pos"]
        if "r0" in stage:  # fast update: every placeholder gets the representative token's increments
            x = x + (xs[:, -1:] - stage["r0"]).to(x.dtype)
            xs = xs[:, :-1]
        x = carry.put(x, pos, xs)
        g = g.scatter(1, stage["idx"], stage["g"])
        if state.track:
            state.origin = torch.arange(P, device=x.device).expand(x.shape[0], P).clone()
        return x, g

    def _aux_head(self, model: nn.Module, x: Tensor, state: TokenState) -> None:
        if model.training and hasattr(model, "head_cls"):
            state.aux["cls_logits"] = model.head_cls(model.norm_cls(x[:, 0]))

    # -- schedule -------------------------------------------------------------------------------------
    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        info = vit_info(model, img_size)
        P, npre = info.num_patches, info.num_prefix_tokens
        k = self.num_informative(P)
        first = self.locations(info.depth)[0]
        slow = npre + k + (1 if self.options.representative else 0)
        if k >= P:
            return [npre + P] * info.depth
        return [npre + P if i < first else slow for i in range(info.depth)]

    # -- training -------------------------------------------------------------------------------------
    def on_train_progress(self, model: nn.Module, epoch: float, total_epochs: float) -> None:
        self.train_layer_wise = total_epochs > 0 and epoch < self.options.layer_wise_fraction * total_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"train_layer_wise": self.train_layer_wise}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        layer_wise = state.get("train_layer_wise")
        self.train_layer_wise = None if layer_wise is None else bool(layer_wise)

    def aux_losses(self, model: nn.Module, state: TokenState, teacher: Optional[TeacherOutput], *,
                   targets: Optional[Tensor] = None, step: Optional[StepContext] = None) -> dict[str, Tensor]:
        logits = state.aux.get("cls_logits")
        w = self.options.aux_cls_weight
        if logits is None or w <= 0:
            return {}
        logits = logits.float()
        if targets is not None:
            if targets.dtype.is_floating_point:  # soft targets (mixup / cutmix)
                loss = torch.sum(-targets.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=AUX_LABEL_SMOOTHING)
            return {"aux_cls": w * loss}
        if teacher is not None and teacher.logits is not None and teacher.logits.shape == logits.shape:
            t = F.log_softmax(teacher.logits.detach().float(), dim=-1)
            loss = F.kl_div(F.log_softmax(logits, dim=-1), t, reduction="batchmean", log_target=True)
            return {"aux_cls": w * loss}
        return {}

    def default_recipe(self) -> dict[str, Any]:
        # No official fine-tuning recipe: DeiT-style AdamW fine-tune of a pretrained backbone (vitprune's choice,
        # see notes). head=avg: 0.5 label CE on the average head + 0.5 on the class-token head (aux_losses).
        return {
            "epochs": 30, "lr": 5e-5, "lr_batch_ref": 512, "warmup_epochs": 1, "min_lr": 1e-6,
            "weight_decay": 0.05, "drop_path": 0.1, "label_smoothing": 0.1, "kd_weight": 0.5, "kd_temperature": 1.0,
            "cls_weight": 0.5 if self.options.head == "avg" else 1.0,
        }

    # -- official checkpoints -------------------------------------------------------------------------
    def convert_official_state_dict(self, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Official ``evo_deit_*`` keys -> this model's (timm) keys, losslessly:
        ``norms.i`` -> ``blocks.i.norm1``; ``[qks.i.qk; vs.i.v]`` (rows) -> ``blocks.i.attn.qkv``; ``projs.i`` ->
        ``blocks.i.attn.proj``; ``norm`` -> ``fc_norm``; ``head_cls``/``norm_cls`` kept when the model has the
        auxiliary classifier (``aux_cls_weight > 0``), dropped otherwise; everything else unchanged."""
        if self.options.head != "avg":
            raise MethodOptionError(
                "official Evo-ViT checkpoints classify from the mean of the patch tokens; import them with "
                "`head` avg.")
        own = model.state_dict()
        out: dict[str, Tensor] = {}
        halves: dict[tuple[int, str], dict[str, Tensor]] = {}
        for key, value in state_dict.items():
            m = _OFFICIAL_ATTN.match(key)
            if m:
                kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
                if kind == "norms":
                    target = f"blocks.{i}.norm1.{rest}"
                elif kind == "projs":
                    target = f"blocks.{i}.attn.proj.{rest}"
                else:
                    part = rest.split(".", 1)
                    if len(part) != 2 or part[0] != ("qk" if kind == "qks" else "v"):
                        raise MethodOptionError(f"checkpoint key {key!r} is not part of an official Evo-ViT model.")
                    halves.setdefault((i, part[1]), {})[kind] = value
                    target = f"blocks.{i}.attn.qkv.{part[1]}"
                    if target not in own:
                        raise MethodOptionError(
                            f"checkpoint key {key!r} does not fit this {len(model.blocks)}-block "
                            f"{type(model).__name__}.")
                    continue
            elif key.split(".")[0] == "norm":
                target = "fc_norm" + key[len("norm"):]
            elif key.split(".")[0] in ("head_cls", "norm_cls") and not hasattr(model, "head_cls"):
                continue  # the training-only classifier, not kept in this model
            else:
                target = key
            if target not in own:
                raise MethodOptionError(
                    f"checkpoint key {key!r} is not part of an official Evo-ViT model fitting this "
                    f"{type(model).__name__} (options {self.describe()}).")
            out[target] = value
        for (i, what), parts in sorted(halves.items()):
            if set(parts) != {"qks", "vs"}:
                missing = "vs.{}.v.{}".format(i, what) if "vs" not in parts else "qks.{}.qk.{}".format(i, what)
                raise MethodOptionError(f"checkpoint has no {missing!r} to complete blocks.{i}.attn.qkv.{what}.")
            out[f"blocks.{i}.attn.qkv.{what}"] = torch.cat([parts["qks"], parts["vs"]], dim=0)
        return out

    @staticmethod
    def official_state_dict(model: nn.Module) -> dict[str, Tensor]:
        """This model's weights in the official Evo-ViT layout (the inverse of ``convert_official_state_dict``;
        the model must use ``head=avg``)."""
        out: dict[str, Tensor] = {}
        C = model.embed_dim
        for key, value in model.state_dict().items():
            m = re.match(r"^blocks\.(\d+)\.(norm1|attn\.qkv|attn\.proj)\.(.+)$", key)
            if m:
                i, what, rest = m.group(1), m.group(2), m.group(3)
                if what == "norm1":
                    out[f"norms.{i}.{rest}"] = value
                elif what == "attn.proj":
                    out[f"projs.{i}.{rest}"] = value
                else:
                    out[f"qks.{i}.qk.{rest}"] = value[:2 * C]
                    out[f"vs.{i}.v.{rest}"] = value[2 * C:]
            elif key.startswith("fc_norm."):
                out["norm." + key[len("fc_norm."):]] = value
            else:
                out[key] = value
        return out


def _block_with_class_row(blk: nn.Module, x: Tensor, num_prefix: int, class_token: bool,
                          rope: Optional[Tensor] = None, live: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """One timm block (fused attention, its LayerScale and drop-path) that also returns the class token's attention
    row over the keys after the prefix, summed over heads (``B x (N - num_prefix)``, float32, softmax over all
    keys); without a class token the attention those keys receive (``ops.importance``). ``rope``: the rotary rows
    of ``x``'s tokens after the prefix (Eva models). ``live``: their padding mask (NaFlex patch dictionaries):
    padding is hidden as a key and does not count as a query."""
    bias = None if live is None else padding.key_bias(live, num_prefix, x.dtype)
    query_mask = None if live is None else padding.with_prefix(live, num_prefix)
    out, scores = attention_importance(blk.attn, blk.norm1(x), num_prefix, class_token, bias=bias,
                                       query_mask=query_mask, reduce="sum", rope=rope)
    x = ops.attn_residual(blk, x, out)
    x = ops.mlp_residual(blk, x)
    return x, scores
