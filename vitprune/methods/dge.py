"""Dynamic Grained Encoder (DGE): per-region query granularity chosen by a router in every block.

Song et al., "Dynamic Grained Encoder for Vision Transformers", NeurIPS 2021 (arXiv 2301.03831); reference code
StevenGrove/vtpack.

What it does. The ``H x W`` patch grid is tiled by regions of ``R x R`` patches (R = 4, or 2, see below). In every
block a router (average-pool the block's input patches over each region, then ``Linear(C, K)``, one per block,
``dge_routers.{i}``) chooses per image and per region one of ``K`` splits ``[R, R/2, ..., 1]`` (index 0 = finest):
split ``s`` cuts the region into ``s x s`` cells and each cell becomes one query, the mean of its patches. Prefix
tokens (class, distillation, registers) are queries as they are. The block then runs on the queries only, with
keys and values from all tokens: ``q = q0 + Attn(norm1(q0) -> queries; norm1(x) -> keys/values)``,
``q = q + MLP(norm2(q))``, and the update goes back to every patch of its cell: ``x_out = x + unpool(q - q0)``.
The token sequence never shrinks (every block sees all ``N`` tokens as keys); the savings are in queries,
attention rows, the output projection and the MLP. With the finest split everywhere a block is the dense block.

Inference (``model.eval()``): hard argmax of the router. Every block takes one of two paths; both give what the
region-by-region computation gives (tests compare them with it on real images):

* **static schedule**: a router whose weights are all zero decides from its bias alone (``router_init='budget'``,
  :meth:`DGE.set_levels`): for any finite input, every region of every image takes ``argmax(bias)``. The block
  skips the router and runs without any index: its queries are the prefix tokens and that level's cells (pooled
  2x2 at a time), its update is broadcast back to the patches (``regions.uniform_queries`` /
  ``uniform_unpool_delta``); the finest level runs timm's block as is (bit-exact with the dense model). Static
  shapes, no host read: the query count is known from the parameters. Which routers are static is read from the
  parameters once (two small host reads) and kept with the routers until one of their parameters changes (tensor
  identity and in-place version counter, compared on the host) or is loaded.
* **routed**: the router reads the image; queries per image vary and are gathered (active sources first, one row
  gather each way) to a common width, ``method.query_width``:

  - ``"auto"`` (eager default): the batch's widest image. This needs that count on the host: one small
    device-to-host read per routed block. Padding slots are copies of unchosen cells whose results are never
    read; queries are independent, so padding changes nothing. A block whose every region of every image chose
    the finest split runs timm's block.
  - ``"static"`` (always under ``torch.compile`` and ``torch.export``): every token, ``N`` — the most queries any
    decision can make, so no decision can overflow it. No host read, static shapes (CUDA graphs, export), exact;
    the price is that such a block does the query work of a dense block. **The trade-off**: a fixed width below
    ``N`` would be exact only if no image ever exceeded it, which nothing bounds for a router that reads the image
    (it would need a host read to check, or dropped queries, which changes results); so the static width of a
    routed block is its analytic maximum, and a trained DGE is fast under compile only where its routers are
    static.

  Why padding rather than grouping images by count: grouping needs the same read plus one pass of every kernel
  per group and a regather of keys/values per group; padding keeps one pass per block and costs only the gap
  between the widest and the average image (zero at batch 1).

Under ``torch.compile``/export the kept plan is a constant of the graph (guarded: a plan read again by an eager
forward, :meth:`DGE.prepare_inference` — which ``vitprune.optimize`` calls — or dropped by ``load_state_dict`` or a
training forward makes the compiled model recompile); without a kept plan every block is taken as routed (exact,
slower). Router weights edited in place between two compiled calls, with no eager forward in between, are not seen:
call ``prepare_inference`` after such an edit. Attention stays on fused SDPA with timm's weights
(``ops.project_q`` / ``ops.project_kv`` / ``ops.attend``).

Under ``tracking`` each block that pooled records ``(block, assignment)``: for every patch, the index of the query
that stands for it (``visualize`` draws the cells by granularity), plus the per-image query counts
(``state.aux['queries']``) and choices (``state.aux['decisions']``).

Training (``model.train()``): hard Gumbel-softmax gates (tau 1, straight-through); as in the reference, all
granularities are computed densely in one static-shape pass (prefix tokens + every level's cells as queries) and
their unpooled updates are mixed with the one-hot gates, so gradients reach the routers. ``aux_losses`` returns the
budget loss ``budget_weight * (ratio - budget)^2`` with ``ratio = mean_batch(blocks' MACs at the gated query
counts) / (blocks' MACs at Nq = N)``; the trainer adds label CE and logit KD (``default_recipe``).

MACs (``macs()``): counted from each image's decisions (the paper's "MAC_avg"): per block ``Nq * per_query +
N * per_key + Nq * N * 2 * attn_dim + regions * C * K`` with fvcore's conventions (linear layers, SDPA ``QK^T`` and
``AV``, 5 MACs per element of an affine LayerNorm, element-wise ops and pooling not counted); a block whose queries
are all finest counts as the dense block (that is what runs), plus the router (counted even where a static
schedule lets inference skip it). Padding queries are not counted.
Embedding, final norm and head come from the same conventions; the count agrees with fvcore on uniform
configurations (tests).

vitprune's choices where the paper is silent and its deviations from the reference are ``DGE.notes`` (listed
below at import, by ``vitprune methods`` and on the model card).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..errors import MethodOptionError, UnsupportedModelError
from ..ops.analytic import BlockCost, block_cost, outside_macs
from ..ops import regions
from ..ops import rope as rope_ops
from ..ops.gridpad import GridPad
from ..ops.relpos import with_position_bias
from .base import (
    MethodOptions, StepContext, TeacherOutput, TokenMethod, TokenState, ViTInfo, check_fraction, tracking, vit_info,
)
from .registry import register

#: softmax probability of the favoured split at initialisation (the reference's p0)
INIT_PROB = 0.95
#: region sizes vitprune supports, in the order tried when --region-size is not given
REGION_SIZES = (4, 2)
ROUTER_INITS = ("dense", "budget", "calibrated")


def init_bias(num_choices: int, favoured: int = 0, prob: float = INIT_PROB) -> Tensor:
    """Router bias whose softmax puts ``prob`` on ``favoured`` and the rest evenly on the others:
    ``b0 = log(sqrt(p0 (1 - K) / (p0 - 1)))`` on the favoured choice, ``-b0`` elsewhere."""
    k = num_choices
    b0 = math.log(math.sqrt(prob * (1 - k) / (prob - 1)))
    bias = torch.full((k,), -b0)
    bias[favoured] = b0
    return bias


# ------------------------------------------------------------------------------------------ options


@dataclass
class DGEOptions(MethodOptions):
    budget: float = field(default=0.5, metadata={
        "help": "target fraction of the blocks' dense MACs (training loss; router_init=budget, calibrate_budget)",
        "headline": True, "short": "budget", "sweep": True, "count_with": {"router_init": "budget"}})
    region_size: Optional[int] = field(default=None, metadata={
        "help": "region side in patches, 4 or 2 (default: 4, or 2 when the patch grid is not divisible by 4)"})
    budget_weight: float = field(default=1.0, metadata={
        "help": "training: lambda of the budget loss lambda*(ratio - budget)^2 (reference config: 1.0)"})
    router_init: str = field(default="dense", metadata={
        "help": "dense: paper init, starts ~dense (train it); budget: static per-block split schedule meeting "
                "the budget without training; calibrated: set by DGE.calibrate_budget on images (weights hold it)"})

    def validate(self) -> None:
        check_fraction("budget", self.budget)
        rs = self.region_size
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, int) or rs not in REGION_SIZES):
            raise MethodOptionError(f"`region_size` must be 4 or 2 (patches per region side), got {rs!r}.")
        w = self.budget_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise MethodOptionError(f"`budget_weight` must be a number >= 0, got {w!r}.")
        if self.router_init not in ROUTER_INITS:
            raise MethodOptionError(
                f"`router_init` must be one of {', '.join(ROUTER_INITS)}, got {self.router_init!r}.")


# ------------------------------------------------------------------------------------------ the method


@register
class DGE(TokenMethod):
    name = "dge"
    noop_options = {}  # untrained routers pick the finest split everywhere (the paper's initialisation)
    sparse_options = {"budget": 0.5, "router_init": "budget"}
    title = "Dynamic Grained Encoder"
    paper = "Song et al., Dynamic Grained Encoder for Vision Transformers (NeurIPS 2021, arXiv 2301.03831)"
    summary = ("a router per block picks, per image and per 4x4 region, 16, 4 or 1 pooled queries; queries attend "
               "to all tokens and their update is spread back to the region's patches; budget loss on MACs")
    Options = DGEOptions
    needs_training = True
    new_module_prefixes = ("dge_routers",)
    rotary = ("keys and finest queries carry their patches' rotary rows; a pooled region cell's query gets the "
              "circular mean of its patches' rotations (their rows averaged as the tokens are, then each sin/cos "
              "pair scaled back to unit length).")
    position_bias = ("keys and finest queries get their patches' bias rows and columns; a pooled region cell's query "
                     "gets the bias row of the patch at the cell's centre (up-left of it for an even cell).")
    notes = (
        "Region size 4 (splits 4/2/1); a patch grid not divisible by 4 (224 px / patch 16 = 14x14; the paper used "
        "256 px) takes region size 2 (splits 2/1) unless --region-size is given; the size used is written into the "
        "options and method.region_note says why.",
        "A grid no region size divides (DINOv2 at 518 px: 37x37; FlexiViT at 240 px: 15x15), or that a "
        "user-set --region-size does not divide, is padded to whole regions (ops.gridpad): border cells average "
        "their real patches, padding slots are zero tokens hidden as keys and dropped at the end (the real tokens "
        "are returned); the padded grid's empty cells are computed as queries and counted in the MACs; "
        "all-finest blocks run timm's block on the real tokens (bit-exact).",
        "Untrained routers start ~dense (paper init, router_init=dense: softmax of the bias = [0.95, 0.025, ...]). "
        "For an untrained model at the budget use --opt router_init=budget (router weights zero, biases pick the "
        "static per-block split schedule whose MACs are closest to the budget: finest in the first blocks, coarser "
        "in the last, the same for every image; no data) or DGE.calibrate_budget(model, images) (router_init="
        "calibrated: every router's biases shifted along finest->coarsest so the mean MAC ratio on the images "
        "meets the budget; the biases live in the saved weights); the profile title shows router_init.",
        "The router reads the block's input tokens (before norm1), each region's mean computed hierarchically "
        "(2x2 means of 2x2 means; the same value up to float rounding).",
        "Inference: a block whose router weights are zero (router_init=budget, set_levels) runs its fixed level "
        "with no routing, no index and no host read; a block whose router reads the image pads its queries to the "
        "batch's widest image (one host read per block), or to every token under torch.compile/export or "
        "query_width='static' (no host read, dense-sized work); all-finest blocks run timm's block (bit-exact).",
        "GMACs come from the per-image decisions (mean over the batch, padding not counted), fvcore's conventions.",
        "Budget = fraction of the blocks' MACs (routers included); the embedding and head are outside it.",
        "Fine-tuned from the pretrained ViT with KD from the dense teacher (the paper trains from scratch); routers "
        "at 10x the backbone's lr [UNVERIFIED: no reference for fine-tuning]. The reference's lambda flag is called "
        "budget_weight here.",
        "The routers are dge_routers.{i}: the authors publish no official checkpoint layout, so there is no "
        "importer.",
        "Every prefix token (class, distillation, registers) is a query of its own and never pooled.",
    )

    def __init__(self, options: DGEOptions):
        super().__init__(options)
        self.region_size: int = options.region_size or REGION_SIZES[0]
        self.region_note: str = ""
        #: compute path forced even when every query is finest (tests of the real path); True = skip to timm's block
        self.identity_shortcut: bool = True
        #: what DGE.calibrate_budget did, if anything
        self.calibration: Optional[dict[str, Any]] = None
        #: query count of a block whose router reads the image: "auto" = the batch's widest image (one host read per
        #: such block, eager), "static" = every token (no host read; always so under torch.compile/export)
        self.query_width: str = "auto"
        #: blocks whose router weights are all zero run the static-level path (no routing, no index); False routes
        #: every block (the general path; tests compare the two)
        self.use_static_routers: bool = True
        self._costs: Optional[list[BlockCost]] = None

    # -- facts ---------------------------------------------------------------------------------------
    @property
    def splits(self) -> list[int]:
        """Candidate splits (queries per region side), finest first: [4, 2, 1] or [2, 1]."""
        return [self.region_size // c for c in regions.level_cells(self.region_size)]

    @property
    def num_choices(self) -> int:
        return len(self.splits)

    def supports(self, model: nn.Module) -> ViTInfo:
        info = vit_info(model)
        drop = getattr(model, "patch_drop", None)
        if drop is not None and getattr(drop, "prob", 0.0) > 0:
            raise UnsupportedModelError(
                f"DGE pools patches over the grid, but this ViT drops patch tokens in training (patch_drop_rate="
                f"{drop.prob}); build it with patch_drop_rate=0.")
        self.region_size, self.region_note = self._resolve_region(model, info.grid)
        return info

    def _resolve_region(self, model: nn.Module, grid: tuple[int, int]) -> tuple[int, str]:
        h, w = grid
        asked = self.options.region_size
        pe = getattr(model, "patch_embed", None) or model.embeds  # NaFlexViT: its embeds
        img = tuple(getattr(pe, "img_size", None) or getattr(pe, "default_img_size", None) or ())
        patch = tuple(getattr(pe, "patch_size", None) or (1, 1))
        where = f"the {h}x{w} patch grid" + (f" ({img[0]}x{img[1]} px, patch {patch[0]})" if len(img) == 2 else "")

        if asked is not None:
            partial = f"; {where} is not divisible by {asked}: the last regions are partial" if h % asked or w % asked \
                else ""
            return asked, f"region size {asked} (splits {self._splits_text(asked)}), set by `region_size`{partial}"
        for r in REGION_SIZES:
            if not (h % r or w % r):
                if r == REGION_SIZES[0]:
                    return r, f"region size {r} (splits {self._splits_text(r)})"
                return r, (f"region size {r} (splits {self._splits_text(r)}): {where} is not divisible by "
                           f"{REGION_SIZES[0]}")
        r = REGION_SIZES[-1]  # the least padding
        hp, wp = math.ceil(h / r) * r, math.ceil(w / r) * r
        return r, (f"region size {r} (splits {self._splits_text(r)}): {where} is divisible by no region size, so "
                   f"the last regions are partial (cells average their real patches; the grid is padded to "
                   f"{hp}x{wp}, padding hidden as keys)")

    @staticmethod
    def _splits_text(region: int) -> str:
        return "/".join(str(region // c) for c in regions.level_cells(region))

    def costs(self, model: nn.Module) -> list[BlockCost]:
        if self._costs is None:
            self._costs = [block_cost(blk, self.num_choices) for blk in model.blocks]
        return self._costs

    # -- patching -------------------------------------------------------------------------------------
    def patch(self, model: nn.Module) -> None:
        self.options = dataclasses.replace(self.options, region_size=self.region_size)
        ref = next(model.parameters())
        routers = nn.ModuleList([nn.Linear(model.embed_dim, self.num_choices) for _ in model.blocks])
        self.attach(model, "dge_routers", routers.to(device=ref.device, dtype=ref.dtype))
        model.dge_routers.register_load_state_dict_post_hook(_forget_plan)
        self._costs = None
        self.reset_routers(model)
        if self.options.router_init == "budget":
            self.set_levels(model, self.budget_levels(model))

    def reset_routers(self, model: nn.Module) -> None:
        """The paper's init: weights trunc-normal (std 0.01), softmax of the bias = [0.95, 0.025, ...]."""
        with torch.no_grad():
            for lin in model.dge_routers:
                nn.init.trunc_normal_(lin.weight, std=0.01)
                lin.bias.copy_(init_bias(self.num_choices).to(lin.bias))

    def set_levels(self, model: nn.Module, levels: list[int]) -> None:
        """A static schedule: block ``i`` uses choice ``levels[i]`` (0 = finest) for every region of every image
        (router weights zero, bias favouring that choice with probability 0.95)."""
        if len(levels) != len(model.blocks) or any(not 0 <= k < self.num_choices for k in levels):
            raise MethodOptionError(
                f"levels must give one choice in 0..{self.num_choices - 1} per block ({len(model.blocks)}), "
                f"got {levels}.")
        with torch.no_grad():
            for lin, k in zip(model.dge_routers, levels):
                lin.weight.zero_()
                lin.bias.copy_(init_bias(self.num_choices, favoured=k).to(lin.bias))

    def budget_levels(self, model: nn.Module, budget: Optional[float] = None,
                      grid: Optional[tuple[int, int]] = None) -> list[int]:
        """The static per-block schedule whose MAC ratio is the closest to ``budget``: finest choices in the first
        blocks, coarser ones in the last (where pooled patch queries matter least for the class token)."""
        budget = self.options.budget if budget is None else budget
        grid = self.padded_grid(grid or vit_info(model).grid)
        depth, k = len(model.blocks), self.num_choices
        costs = self.costs(model)
        npre = model.num_prefix_tokens
        p = grid[0] * grid[1]
        n, g = npre + p, p // self.region_size ** 2
        static = sum(c.packed(n, n, g) for c in costs)
        best: Optional[tuple[float, list[int]]] = None
        for split in itertools.combinations_with_replacement(range(k), depth):  # sorted: finest first
            levels = list(split)
            dyn = sum(c.packed(npre + p // 4 ** lv, n, g) for c, lv in zip(costs, levels))
            err = abs(dyn / static - budget)
            if best is None or err < best[0] - 1e-12:
                best = (err, levels)
        assert best is not None
        lowest = sum(c.packed(npre + p // 4 ** (k - 1), n, g) for c in costs) / static
        if budget < lowest - 1e-9:
            raise MethodOptionError(
                f"budget {budget} is below what DGE reaches on this model with every region at its coarsest split "
                f"({lowest:.3f} of the blocks' MACs); use --budget >= {math.ceil(lowest * 1000) / 1000}.")
        return best[1]

    # -- forward --------------------------------------------------------------------------------------
    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        pad = GridPad.of(state.grid, self.region_size, state.num_prefix, x.device)
        if pad is not None:  # partial border regions: run on the padded grid, return the real tokens
            state.aux["dge_pad"] = pad
            x = pad.pad(x)
        if state.rope is not None:
            state.aux["dge_rope"] = self._region_rope(state, pad)
        x = self._train_blocks(model, x, state) if model.training else self._eval_blocks(model, x, state)
        return x if pad is None else pad.crop(x)

    def _region_rope(self, state: TokenState, pad: Optional[GridPad]) -> tuple[Tensor, Tensor]:
        """Eva models: the rotary rows of the (padded) token sequence, prefix rows included (``B x N x D``), and
        of the coarse bank's cells (``B x T x D``): each cell the circular mean of its patches' rotations (the
        rows pooled as the tokens are, then scaled back to rotations; see ``notes``)."""
        seq = rope_ops.prefixed(state.rope, state.num_prefix)
        if pad is not None:
            seq = pad.pad(seq)  # padding slots: zero rows (hidden keys, discarded queries)
        return seq, rope_ops.normalise(self._bank(seq, state))

    @staticmethod
    def _key_rope(state: TokenState) -> Optional[Tensor]:
        rows = state.aux.get("dge_rope")
        return None if rows is None else rows[0][:, state.num_prefix:]

    @staticmethod
    def _grid(state: TokenState) -> tuple[int, int]:
        """The grid the regions tile: the patch grid, or its padding to whole regions."""
        pad = state.aux.get("dge_pad")
        return state.grid if pad is None else pad.padded

    @staticmethod
    def _enter(state: TokenState, x: Tensor) -> Tensor:
        """Start of a block: count the real tokens; padding slots back to zero."""
        pad = state.aux.get("dge_pad")
        state.enter(x if pad is None else x[:, :pad.num_real])
        return x if pad is None else pad.zero(x)

    def _bank(self, x: Tensor, state: TokenState) -> Tensor:
        pad = state.aux.get("dge_pad")
        return regions.coarse_bank(x, state.grid, self.region_size, state.num_prefix) if pad is None else pad.bank(x)

    @staticmethod
    def _dense_block(blk: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        """timm's block on the real tokens (bit-exact with the dense model; padding slots stay zero)."""
        pad = state.aux.get("dge_pad")
        if pad is None:
            return ops.run_block(blk, x, state.rope)
        return pad.pad(ops.run_block(blk, pad.crop(x), state.rope))

    def _record(self, state: TokenState, block: int, assignment: Tensor) -> None:
        pad = state.aux.get("dge_pad")
        state.record(block, assignment if pad is None else pad.crop_patches(assignment))

    def _route(self, router: nn.Module, bank: Tensor, state: TokenState) -> Tensor:
        """Router logits ``B x G x K`` from the block's input patches averaged over each region."""
        return router(regions.region_means(bank, self._grid(state), self.region_size))

    @staticmethod
    def _query_update(blk: nn.Module, q0: Tensor, qn: Tensor, k: Tensor, v: Tensor,
                      state: Optional[TokenState] = None, rope: Optional[Tensor] = None) -> Tensor:
        """The block on queries ``q0`` (``qn`` = their ``norm1``; ``rope`` their rotary rows after the prefix, Eva
        models) with keys/values ``k, v`` from all tokens' ``norm1``: returns the update ``q - q0`` (timm's
        LayerScale, drop-path and MLP; fused SDPA). Padding slots of a padded grid are hidden as keys; a BEiT block
        adds its relative position bias between these queries and the keys (``ops.relpos``)."""
        pad = state.aux.get("dge_pad") if state is not None else None
        bias = None if pad is None else pad.key_bias(k.dtype)
        if rope is not None and state is not None:
            bias = with_position_bias(blk.attn, bias, rope, DGE._key_rope(state))
        q = ops.attn_residual(blk, q0, ops.attend(blk.attn, ops.project_q(blk.attn, qn, rope), k, v, qn, bias))
        return ops.mlp_residual(blk, q) - q0

    def _eval_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        levels = self.static_levels(model)
        static_width = self.query_width == "static" or _tracing()
        for i, (blk, router) in enumerate(zip(model.blocks, model.dge_routers)):
            x = self._enter(state, x)
            if levels[i] is not None:
                x = self._uniform_block(blk, x, levels[i], i, state)
            else:
                x = self._routed_block(blk, router, x, i, state, static_width)
        return x

    def _uniform_block(self, blk: nn.Module, x: Tensor, level: int, i: int, state: TokenState) -> Tensor:
        """A block whose router decides from its bias alone: every region of every image takes ``level``. The
        queries are the prefix tokens and the level's cells (pooled, no index), the update is broadcast back."""
        npre, region, grid = state.num_prefix, self.region_size, self._grid(state)
        if state.track:
            b, g = x.shape[0], (grid[0] // region) * (grid[1] // region)
            nq = npre + grid[0] * grid[1] // 4 ** level
            state.aux.setdefault("queries", []).append(torch.full((b,), nq, dtype=torch.long, device=x.device))
            state.aux.setdefault("decisions", []).append(torch.full((b, g), level, dtype=torch.long, device=x.device))
        if level == 0 and self.identity_shortcut:  # every query finest: timm's block, bit-exact
            return self._dense_block(blk, x, state)
        xn = blk.norm1(x)
        key_rope = self._key_rope(state)
        k, v = ops.project_kv(blk.attn, xn, key_rope)
        q0 = regions.uniform_queries(x, grid, region, level, npre)
        pad = state.aux.get("dge_pad")
        if pad is not None and level > 0:  # border cells: the mean of their real patches
            q0 = torch.cat([q0[:, :npre], q0[:, npre:] * pad.level_scale(level).to(q0.dtype)], dim=1)
        qn = xn if level == 0 else blk.norm1(q0)
        q_rope = key_rope
        if key_rope is not None and level > 0:  # the level's cells: their patches' mean rotation
            cells = regions.uniform_queries(state.aux["dge_rope"][0], grid, region, level, npre)[:, npre:]
            q_rope = rope_ops.normalise(cells)
        update = self._query_update(blk, q0, qn, k, v, state, q_rope)
        x = regions.uniform_unpool_delta(x, update, grid, region, level, npre)
        if state.track:
            self._record(state, i, regions.uniform_assignment(x.shape[0], grid, region, level, x.device))
        return x

    def _routed_block(self, blk: nn.Module, router: nn.Module, x: Tensor, i: int, state: TokenState,
                      static_width: bool) -> Tensor:
        """A block whose router reads the image: per-region decisions, queries gathered (active sources first) to
        the batch's widest image (one host read), or to every token with ``static_width`` (no host read)."""
        npre, region, grid = state.num_prefix, self.region_size, self._grid(state)
        n = x.shape[1]
        bank = self._bank(x, state)
        decision = self._route(router, bank, state).argmax(dim=-1)  # B x G, 0 = finest
        counts = regions.query_counts(decision, region, npre)  # B
        if state.track:
            state.aux.setdefault("queries", []).append(counts)
            state.aux.setdefault("decisions", []).append(decision)
        if static_width:
            low, high = None, n  # the most queries any decision can make: every region at its finest
            xn = blk.norm1(x)
        else:
            low, high = (int(v) for v in torch.stack(torch.aminmax(counts)).tolist())  # the block's one host read
            xn = blk.norm1(x)
        if low == n and self.identity_shortcut:  # every query finest: timm's block on the same norm1, bit-exact
            if "dge_pad" in state.aux:
                return self._dense_block(blk, x, state)
            attn = ops.run_attention(blk.attn, xn, state.rope)
            return ops.mlp_residual(blk, ops.attn_residual(blk, x, attn))  # nothing pooled: no token map
        order, src = regions.plan_queries(decision, grid, region, npre)
        k, v = ops.project_kv(blk.attn, xn, self._key_rope(state))
        q0 = regions.gather_queries(x, bank, order[:, :high])  # B x width x C
        q_rope = None
        if "dge_rope" in state.aux:  # prefix queries come first in ``order``; their rows are dropped
            q_rope = regions.gather_queries(*state.aux["dge_rope"], order[:, :high])[:, npre:]
        x = regions.unpool_delta(x, self._query_update(blk, q0, blk.norm1(q0), k, v, state, q_rope), src)
        if state.track:
            self._record(state, i, src[:, npre:] - npre)
        return x

    # -- inference plan ----------------------------------------------------------------------------------
    def static_levels(self, model: nn.Module) -> tuple[Optional[int], ...]:
        """Per block, the choice every region of every image takes when the block's router decides from its bias
        alone (all weights zero: ``router_init='budget'``, :meth:`set_levels`), else None (the router reads the
        image). Read from the parameters once and kept until a router changes (tensor identity and version
        counter); under ``torch.compile``/export the kept plan is used as a constant (see the module doc)."""
        routers = model.dge_routers
        if not self.use_static_routers:
            return (None,) * len(routers)
        plan = getattr(routers, _PLAN, None)
        if _tracing():
            return plan[1] if plan is not None else (None,) * len(routers)
        key = _params_key(routers)
        if key is None or plan is None or plan[0] != key:
            plan = (key, _static_choices(routers))
            setattr(routers, _PLAN, plan)
        return plan[1]

    def prepare_inference(self, model: nn.Module) -> None:
        """Read the routers now (eager), so that a compiled or exported forward starts from the current plan."""
        _forget_plan(model.dge_routers)
        self.static_levels(model)

    def _train_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        """Training: hard Gumbel gates; every granularity computed in one static pass and mixed by the gates."""
        npre, region, grid = state.num_prefix, self.region_size, self._grid(state)
        n = x.shape[1]
        g = (grid[0] // region) * (grid[1] // region)
        _forget_plan(model.dge_routers)  # the routers are about to change: read them again at the next inference
        dyn, gates_all = [], []
        static = 0.0
        for blk, router, cost in zip(model.blocks, model.dge_routers, self.costs(model)):
            x = self._enter(state, x)
            bank = self._bank(x, state)
            logits = self._route(router, bank, state)
            gates = F.gumbel_softmax(logits.float(), tau=1.0, hard=True)  # B x G x K, straight-through
            xn = blk.norm1(x)
            k, v = ops.project_kv(blk.attn, xn, self._key_rope(state))
            q0 = regions.all_sources(x, bank)  # every level's cells as queries: static shape
            qn = torch.cat([xn, blk.norm1(bank).to(xn.dtype)], dim=1)  # = norm1(q0), x's part reused
            q_rope = None
            if "dge_rope" in state.aux:
                q_rope = regions.all_sources(*state.aux["dge_rope"])[:, state.num_prefix:]
            delta = self._query_update(blk, q0, qn, k, v, state, q_rope)
            x = x + regions.mix_level_deltas(delta, gates, grid, region, npre).to(x.dtype)
            nq = regions.soft_query_counts(gates, region, npre)  # B, differentiable
            dyn.append(cost.packed(nq, n, g))
            static += cost.packed(n, n, g)
            gates_all.append(gates)
        state.aux["dge_macs"] = torch.stack(dyn, dim=0).sum(dim=0)  # B: blocks' MACs at the gated queries
        state.aux["dge_static_macs"] = static
        state.aux["dge_gates"] = gates_all
        return x

    # -- schedule and MACs ----------------------------------------------------------------------------
    def report_notes(self, model: nn.Module) -> list[str]:
        notes = [self.region_note] if self.region_note else []
        start = {
            "dense": "routers as initialised (paper init, ~finest everywhere) unless trained: GMACs near dense "
                     "until the model is fine-tuned; --opt router_init=budget starts at the budget without training",
            "budget": "router_init=budget: a fixed per-block split schedule chosen to meet the budget, no data, "
                      "untrained",
            "calibrated": "routers calibrated to the budget on sample images (calibrate_budget), untrained",
        }[self.options.router_init]
        return notes + [start] + super().report_notes(model)

    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        """Tokens entering each block: always all of them (DGE pools queries, never the token sequence)."""
        info = vit_info(model, img_size)
        return [info.num_prefix_tokens + info.num_patches] * info.depth

    def padded_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The grid the regions tile: ``grid`` rounded up to whole regions (partial regions at the border)."""
        r = self.region_size
        return (math.ceil(grid[0] / r) * r, math.ceil(grid[1] / r) * r)

    def query_count(self, info: ViTInfo, choice: int) -> int:
        """Queries of a block whose every region takes ``choice`` (0 = finest): prefix + P / 4^choice, with ``P``
        the patches of the padded grid (a padded grid's empty cells are computed and counted too)."""
        h, w = self.padded_grid(info.grid)
        return info.num_prefix_tokens + h * w // 4 ** choice

    def decisions(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """Eval-mode decisions on ``images``: ``queries`` (depth x B) and ``choices`` (depth x B x G)."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), tracking(model):
                model(images)
        finally:
            model.train(was)
        aux = model.vitprune_state.aux
        return {"queries": torch.stack(aux["queries"]), "choices": torch.stack(aux["decisions"]),
                "tokens": torch.tensor(model.vitprune_state.counts)}

    def macs(self, model: nn.Module, images: Tensor) -> Optional[float]:
        """Mean MACs per image over ``images``, from each image's decisions in every block (see the module doc)."""
        grid = _grid_for(model, images)
        outside = outside_macs(model, grid[0] * grid[1])
        if outside is None:
            return None
        q = self.decisions(model, images)["queries"].double()  # depth x B
        npre = model.num_prefix_tokens
        real = npre + grid[0] * grid[1]
        gp = self.padded_grid(grid)
        n = npre + gp[0] * gp[1]  # keys of a pooled block: the padded grid's tokens (padding hidden, computed)
        g = (gp[0] // self.region_size) * (gp[1] // self.region_size)
        per_image = torch.full((q.shape[1],), outside, dtype=torch.float64)
        for c, qi in zip(self.costs(model), q):  # every query finest: timm's block on the real tokens
            per_image += torch.where(qi == n, torch.full_like(qi, c.dense(real, g)), c.packed(qi, n, g))
        return float(per_image.mean())

    def mac_ratio(self, model: nn.Module, images: Tensor) -> float:
        """The budget's ratio on ``images`` in eval mode: mean blocks' MACs / blocks' MACs at Nq = N."""
        grid = self.padded_grid(_grid_for(model, images))
        q = self.decisions(model, images)["queries"].double()
        n = model.num_prefix_tokens + grid[0] * grid[1]
        g = (grid[0] // self.region_size) * (grid[1] // self.region_size)
        costs = self.costs(model)
        dyn = sum(c.packed(qi, n, g) for c, qi in zip(costs, q))
        return float(dyn.mean() / sum(c.packed(n, n, g) for c in costs))

    # -- calibration without training -------------------------------------------------------------------
    def calibrate(self, model: nn.Module, images: Tensor) -> Optional[dict[str, Any]]:
        """The trainer's post-training hook: nothing to choose. A trained DGE's decisions are its routers' (the
        paper deploys them as trained); moving them to a budget is :meth:`calibrate_budget`, on request only."""
        return None

    def calibrate_budget(self, model: nn.Module, images: Tensor, budget: Optional[float] = None,
                         steps: int = 16) -> dict[str, Any]:
        """Shift every router's biases by ``t * [-1, ..., +1]`` (finest -> coarsest) so that the mean MAC ratio on
        ``images`` (eval mode) is the closest to ``budget`` (default: the option); bisection on ``t``.

        Works on trained routers (move the operating point) and untrained ones (then the choices follow the
        routers' random weights, not the content). Sets ``router_init='calibrated'`` and returns (and keeps in
        ``self.calibration``) the target, the ratio reached, the shift and the number of images."""
        budget = self.options.budget if budget is None else float(budget)
        check_fraction("budget", budget)
        base = [lin.bias.detach().clone() for lin in model.dge_routers]
        direction = torch.linspace(-1.0, 1.0, self.num_choices)

        def ratio_at(t: float) -> float:
            with torch.no_grad():
                for lin, b in zip(model.dge_routers, base):
                    lin.bias.copy_(b + t * direction.to(b))
            torch.clear_autocast_cache()  # autocast keeps low-precision copies of parameters: drop the stale ones
            return self.mac_ratio(model, images)

        tried = {0.0: ratio_at(0.0)}
        lo, hi = 0.0, 0.0  # ratio(lo) >= budget >= ratio(hi), ratio non-increasing in t
        if tried[0.0] >= budget:
            step = 1.0
            while True:
                hi = step
                tried[hi] = ratio_at(hi)
                if tried[hi] <= budget or step > 1e4:
                    break
                lo, step = hi, step * 2
        else:
            step = -1.0
            while True:
                lo = step
                tried[lo] = ratio_at(lo)
                if tried[lo] >= budget or step < -1e4:
                    break
                hi, step = lo, step * 2
        for _ in range(steps):
            mid = (lo + hi) / 2
            tried[mid] = r = ratio_at(mid)
            if r >= budget:
                lo = mid
            else:
                hi = mid
        t = min(tried, key=lambda s: (abs(tried[s] - budget), abs(s)))
        reached = ratio_at(t)
        self.options = dataclasses.replace(self.options, router_init="calibrated", budget=budget)
        self.calibration = {"budget": budget, "ratio": reached, "shift": t, "images": int(images.shape[0])}
        return dict(self.calibration)

    # -- training --------------------------------------------------------------------------------------
    def aux_losses(self, model: nn.Module, state: TokenState, teacher: Optional[TeacherOutput], *,
                   targets: Optional[Tensor] = None, step: Optional[StepContext] = None) -> dict[str, Tensor]:
        dyn = state.aux.get("dge_macs")
        if dyn is None:
            return {}
        ratio = dyn.mean() / state.aux["dge_static_macs"]
        state.aux["dge_ratio"] = ratio.detach()
        return {"budget": self.options.budget_weight * (ratio - self.options.budget) ** 2}

    def default_recipe(self) -> dict[str, Any]:
        # vtpack trains DeiT+DGE from scratch with the DeiT recipe (AdamW, lr 5e-4 per 512, wd 0.05, 20 warm-up
        # epochs). vitprune fine-tunes the pretrained ViT: routers at 5e-4 per 512, backbone x0.1, KD from the dense
        # teacher (logits, T=1), DeiT-S drop path 0.1 [UNVERIFIED: no reference for fine-tuning].
        return {
            "epochs": 30, "lr": 5e-4, "lr_batch_ref": 512, "backbone_lr_scale": 0.1, "warmup_epochs": 5,
            "min_lr": 1e-6, "weight_decay": 0.05, "kd_weight": 0.5, "kd_temperature": 1.0, "cls_weight": 1.0,
            "label_smoothing": 0.1, "drop_path": 0.1,
        }


def _grid_for(model: nn.Module, images: Tensor) -> tuple[int, int]:
    return vit_info(model, (int(images.shape[-2]), int(images.shape[-1]))).grid


def _tracing() -> bool:
    """Inside torch.compile or torch.export: no host reads, shapes must be static."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


#: attribute of ``model.dge_routers`` holding the inference plan: (parameter key, static level or None per block)
_PLAN = "_vitprune_static_plan"


def _forget_plan(routers: nn.Module, *_: Any) -> None:
    """Drop the kept plan (also a load_state_dict post-hook: loaded routers are read again, even by a compiled
    forward, whose guards see the plan change)."""
    routers.__dict__.pop(_PLAN, None)


def _params_key(routers: nn.Module) -> Optional[tuple]:
    """Identity and in-place version of every router parameter (None where tensors keep no version counter, e.g.
    parameters made under ``torch.inference_mode``: then the plan is read again at every forward)."""
    try:
        return tuple((id(p), p.data_ptr(), p._version) for p in routers.parameters())
    except RuntimeError:
        return None


def _static_choices(routers: nn.Module) -> tuple[Optional[int], ...]:
    """For every router ``Linear(C, K)``: ``argmax(bias)`` when all its weights are zero (its logits are then its
    bias for every finite input, so every region of every image takes that choice), else None. Two host reads."""
    with torch.no_grad():
        zero = torch.stack([(lin.weight == 0).all() for lin in routers]).tolist()
        best = torch.stack([lin.bias.argmax() for lin in routers]).tolist()
    return tuple(int(b) if z else None for z, b in zip(zero, best))
