"""The contract every token-sparsification method follows.

A method is a small class with a dataclass of options. ``apply_method(model, name, **options)``:

1. builds the options (unknown names and bad values raise ``MethodOptionError``);
2. ``method.supports(model)`` raises ``UnsupportedModelError`` for models it cannot patch;
3. ``method.patch(model)`` adds the method's modules to the model (predictors, routers...), under the names the
   official checkpoints use where there are any, so that ``state_dict`` keys stay timm's plus the method's;
4. the model's class is swapped for a small subclass (``PatchedViT``) whose ``forward_features`` runs timm's own
   embedding, hands the tokens to ``method.forward_blocks`` and applies timm's final norm. timm's blocks, attention,
   LayerScale, drop-path and heads are reused, never copied. The same holds for timm's Eva models: ``ops.attention``
   reads both attention layouts, ``ops.run_block`` calls either block, and the rotary rows of an Eva model's tokens
   travel in ``TokenState.rope`` (``ops.rope``).

Per forward pass a ``TokenState`` travels through the blocks: prefix-token count, patch grid, what the trainer
needs afterwards (``aux``), and, when asked (``track=True``), which original patches each token stands for (for
``visualize``) and the token count entering each block.

What the rest of vitprune asks of a method:

* ``token_schedule(model)``: tokens entering each block in eval mode, analytically (reports, tests);
* ``aux_losses(model, state, teacher, targets=, step=)``: extra training losses (ratio, budget, token
  distillation...) with the paper's weights as defaults; the trainer hands it the batch's labels (``targets``) and
  the ``StepContext`` of the micro-batch; ``teacher_forward`` says what the trainer must compute on the teacher;
* ``training_passes(step)`` and ``on_train_progress()``: hooks for methods whose training runs several forward
  passes per step (SaiT dense/sparse) or changes with progress (EViT keep-rate schedule, Evo-ViT layer-wise mode);
  what one pass leaves for a later pass of the same images goes into ``step.carry``, never onto the method;
* ``state_dict()`` / ``load_state_dict()``: the method's own training state (a schedule's current value), as
  plain data saved in every checkpoint (read back with ``weights_only``), so a resumed run continues exactly;
* ``default_recipe()`` / ``new_module_prefixes``: learning-rate groups and schedule defaults from the paper;
* ``macs(model, images)``: an analytic count where fvcore cannot see input-dependent token counts (DGE, SaiT);
* ``convert_official_state_dict(state_dict, model)``: map an official release's keys onto the vitprune model;
* ``exportable`` / ``export_check(model)``: whether the current settings have a static inference path (the same
  token counts for every image), which ``vitprune export`` turns into an ONNX graph with the pruning inside.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from contextlib import contextmanager
from types import UnionType
from typing import Any, ClassVar, Iterator, Mapping, Optional, Union

import torch
from timm.layers import Attention, AttentionRope
from timm.models import beit
from timm.models.beit import Beit
from timm.models.eva import Eva, EvaAttention, EvaBlock
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

import warnings

from ..errors import MethodOptionError, UnsupportedModelError
from ..ops.attention import run_block
from ..errors import ExportError, VitpruneWarning
from ..ops import padding
from ..ops import rope as rope_ops
from ..ops.pooling import pool_kind
from ..ops.relpos import is_relpos, position_rows


# ------------------------------------------------------------------------------------------ options


@dataclass
class MethodOptions:
    """Base of every method's options. Each field is declared once, with everything the rest of vitprune derives
    from it in its ``metadata`` (read with :func:`option_specs`):

    * ``"help"``: what the option means (``vitprune methods``, every command's ``--help``);
    * ``"flag"``: the command-line flag (default ``--`` + the name with dashes: ``keep_rate`` -> ``--keep-rate``;
      a bool option is ``--fuse/--no-fuse``), and ``"aliases"``: other spellings the commands also accept;
    * ``"headline": True`` (with its ``"short"`` label): the option that names a setting in short (output folders
      ``demo-evit-keep0.7``, the model card's title) and that ``sweep`` varies unless told otherwise;
    * ``"runtime": True``: the option can change on a trained model without retraining (``eval``, ``profile``,
      ``visualize``, ``export`` and ``sweep`` change it on a saved model);
    * ``"sweep": True`` (or the flag, e.g. ``"--r-values"``): ``sweep`` takes this option's values with a flag of
      its own (default: the option's flag plus ``s``: ``--keep-rates``);
    * ``"applies_when": {"mode": "fixed"}``: the option has an effect only while other options have these values
      (a tuple: any of them); given otherwise it is reported as ignored, and it is left out of the headline;
    * ``"count_with": {"router_init": "budget"}``: other option values under which a headline option's GMACs are
      counted when ``--target-gmacs`` solves it (the method's static setting, used for counting only).
    """

    def validate(self) -> None:
        """Raise MethodOptionError for a bad value. Subclasses extend."""

    @classmethod
    def from_dict(cls, method: str, values: dict[str, Any]) -> "MethodOptions":
        """The options from ``values``: unknown names, values of the wrong type (each field's annotation: a bool
        field takes only booleans, a float field numbers but not booleans, a list field a list...) and values
        ``validate`` refuses all raise ``MethodOptionError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            given = ", ".join(f"`{u}`" for u in unknown)
            known = ", ".join(f"`{n}`" for n in sorted(names)) or "none"
            raise MethodOptionError(f"{given} is not an option of {method} (its options: {known}).")
        try:
            opts = cls(**values)
        except TypeError as e:  # pragma: no cover - dataclass signature problems
            raise MethodOptionError(f"bad options for {method}: {e}") from None
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(opts, f.name)
            fits, typed = _fit(hints.get(f.name, Any), value)
            if not fits:
                raise MethodOptionError(f"`{f.name}` must be {_expected(hints[f.name])}, got {value!r}.")
            setattr(opts, f.name, typed)
        opts.validate()
        return opts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fit(hint: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` has the annotated type, and the value in that type's plain Python form (an int for a
    float field becomes a float; a single int for a list-of-int field, a list of one)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, value
    if origin in (Union, UnionType):
        for arg in args:
            fits, typed = _fit(arg, value)
            if fits:
                return True, typed
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        item = args[0] if args else Any
        if item is int and _fit(int, value)[0]:
            return True, [int(value)]
        if not isinstance(value, (list, tuple)):
            return False, value
        typed = [_fit(item, v) for v in value]
        return all(ok for ok, _ in typed), [v for _, v in typed]
    return isinstance(value, hint) if isinstance(hint, type) else True, value


def _expected(hint: Any) -> str:
    """What a value of the annotated type looks like, in the words of the command line."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}
    if hint in words:
        return words[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, UnionType):
        parts = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin in (list, tuple):
        item = {int: "integers", float: "numbers"}.get(args[0] if args else None, "values")
        return f"a comma list of {item}"
    return getattr(hint, "__name__", str(hint))


#: the metadata keys an option field may carry (anything else is a typo and refused)
OPTION_METADATA = frozenset({"help", "flag", "aliases", "headline", "short", "runtime", "sweep", "applies_when",
                             "count_with"})


def embed(model: nn.Module, images: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """timm's prologue, the one every patched forward and every partial forward starts with: patch embedding,
    position embedding with the prefix tokens, patch dropout, pre-norm -> ``(B x (prefix + P) x C, rope)``.
    ``rope`` is None for a VisionTransformer; for an Eva model it is the rotary rows of the patch tokens, per image
    (``B x P x D``, :mod:`vitprune.ops.rope`), as timm's ``Eva._pos_embed`` made them (patch dropout included; a
    rope per block as one row per token, ``ops.rope.mixed_rows``); for a BEiT model with relative position bias
    the patches' position rows (:mod:`vitprune.ops.relpos`); for a NaFlexViT (fixed resolution) what its own
    ``_forward_embeds`` made."""
    kind = family(model)
    if kind == "vit":
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images)))), None
    if kind == "beit":
        x = model.patch_embed(images)
        x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if model.pos_embed is not None:
            x = x + model.pos_embed
        x = model.pos_drop(x)
        if not is_relpos(model.blocks[0].attn):
            return x, None
        # float32 whatever x is: a position must survive DGE's pooling and rescaling exactly (``ops.relpos``)
        return x, position_rows(tuple(model.patch_embed.grid_size), x.shape[0], x.device, torch.float32)
    if kind == "naflex":
        e = model._forward_embeds(images, patch_coord=None, patch_valid=None, attn_mask=None)
        x, rope = e["patches"], e["rope_embeds"]
        mixed = model.rope_is_mixed
    else:
        x, rope = model._pos_embed(model.patch_embed(images))
        x = model.norm_pre(x)
        mixed = getattr(model, "rope_mixed", False)
    if rope is not None and mixed:
        rope_ops.number_layers(model.blocks)
        rows = rope_ops.mixed_rows(rope, x.shape[0])
        keep = e.get("keep_indices") if kind == "naflex" else None
        if keep is not None:  # NaFlexViT's patch dropout leaves a per-block rope to its blocks: take the kept rows
            rows = rope_ops.take_rope(rows, keep)
        return x, rows
    return x, rope_ops.per_image(rope, x.shape[0])


#: ``family`` of each model class seen (every patched forward asks, twice)
_FAMILY: dict[type, str] = {}


def family(model: nn.Module) -> str:
    """Which timm model class vitprune drives: ``"vit"`` (VisionTransformer), ``"eva"`` (Eva: EVA, EVA02, rotary
    ViTs), ``"beit"`` (Beit), ``"naflex"`` (NaFlexVit), or ``""`` for anything else."""
    kind = _FAMILY.get(type(model))
    if kind is None:
        kind = _FAMILY[type(model)] = _family(model)
    return kind


def _family(model: nn.Module) -> str:

    for cls, name in ((VisionTransformer, "vit"), (Eva, "eva"), (Beit, "beit"), (NaFlexVit, "naflex")):
        if isinstance(model, cls):
            return name
    return ""


def _is_eva(model: nn.Module) -> bool:
    return family(model) == "eva"


def class_token(model: nn.Module) -> Optional[Tensor]:
    """The model's class token parameter, or None (NaFlexViT keeps it in its ``embeds``)."""
    if family(model) == "naflex":
        return model.embeds.cls_token
    return getattr(model, "cls_token", None)


def patch_grid(model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """The patch grid at the model's own input size, or at ``img_size``."""
    if family(model) == "naflex":  # any resolution: its own is the one it was built or configured for
        pe = model.embeds
        size = img_size or pe.default_img_size or tuple(model.pretrained_cfg["input_size"][1:])
        return tuple(pe.dynamic_feat_size(tuple(int(s) for s in size)))
    pe = model.patch_embed
    if img_size is None:
        return tuple(pe.grid_size)
    if hasattr(pe, "dynamic_feat_size"):
        return tuple(pe.dynamic_feat_size(img_size))
    return (img_size[0] // pe.patch_size[0], img_size[1] // pe.patch_size[1])


def flag_name(name: str) -> str:
    """The command-line flag of a Python name: ``keep_rate`` -> ``--keep-rate``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class OptionSpec:
    """One method option as its field declares it (see :class:`MethodOptions`): the one record the commands' flags,
    ``vitprune methods``, ``sweep``, run-time overrides, output-folder names and the model card are derived from."""

    name: str
    type: Any
    default: Any
    help: str
    flag: str
    aliases: tuple[str, ...] = ()
    headline: bool = False
    short: str = ""
    runtime: bool = False
    sweep_flag: Optional[str] = None
    applies_when: tuple[tuple[str, Any], ...] = ()
    count_with: tuple[tuple[str, Any], ...] = ()

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)

    @property
    def is_bool(self) -> bool:
        return self.type is bool

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether the option has an effect with these option values (its ``applies_when``)."""
        return all(values.get(k) in (want if isinstance(want, tuple) else (want,)) for k, want in self.applies_when)


def _options_class(obj: Any) -> type[MethodOptions]:
    """The options dataclass of an options class or instance, or of a method class or instance."""
    if isinstance(obj, MethodOptions):
        return type(obj)
    if isinstance(obj, type) and issubclass(obj, MethodOptions):
        return obj
    options = getattr(obj, "Options", None)
    if isinstance(options, type) and issubclass(options, MethodOptions):
        return options
    raise TypeError(f"{obj!r} is neither a method nor its options")


_SPECS: dict[type, tuple[OptionSpec, ...]] = {}


def option_specs(obj: Any) -> tuple[OptionSpec, ...]:
    """Every option of a method (class or instance) or of its options (class or instance), in field order."""
    cls = _options_class(obj)
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            unknown = sorted(set(meta) - OPTION_METADATA)
            if unknown:
                raise TypeError(f"{cls.__name__}.{f.name}: unknown option metadata {unknown}; known: "
                                f"{sorted(OPTION_METADATA)}")
            flag = meta.get("flag") or flag_name(f.name)
            sweep = meta.get("sweep")
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            specs.append(OptionSpec(
                name=f.name, type=hints.get(f.name, Any), default=default, help=meta.get("help", ""), flag=flag,
                aliases=tuple(meta.get("aliases", ())), headline=bool(meta.get("headline")),
                short=meta.get("short", f.name), runtime=bool(meta.get("runtime")),
                sweep_flag=(sweep if isinstance(sweep, str) else flag + "s") if sweep else None,
                applies_when=tuple((meta.get("applies_when") or {}).items()),
                count_with=tuple((meta.get("count_with") or {}).items())))
        _SPECS[cls] = tuple(specs)
    return _SPECS[cls]


def runtime_options(obj: Any) -> tuple[str, ...]:
    """Names of the options that can change on a trained model without retraining."""
    return tuple(s.name for s in option_specs(obj) if s.runtime)


def sweep_option(obj: Any) -> str:
    """The option ``sweep`` varies unless told: the headline option with a sweep flag (else the first option with
    one, else the first option)."""
    specs = option_specs(obj)
    for pick in (lambda s: s.headline and s.sweep_flag, lambda s: s.sweep_flag, lambda s: True):
        for s in specs:
            if pick(s):
                return s.name
    raise MethodOptionError(f"{getattr(obj, 'name', obj)} has no option to sweep.")


def headline(options: MethodOptions) -> str:
    """The options' headline setting in short, for names: ``keep0.7`` (EViT), ``r8`` (ToMe), ``budget0.5`` (DGE),
    ``fixed-keep0.7`` (SaiT in its fixed mode); read from the fields marked ``"headline": True`` (their
    ``"short"`` label before the value) that apply with the other options' values."""
    values = options.to_dict()
    parts = []
    for spec in option_specs(options):
        value = values[spec.name]
        if not spec.headline or value is None or not spec.applies(values):
            continue
        if isinstance(value, (list, tuple)):
            text = "_".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{spec.short}{text}")
    return "-".join(parts)


def ignored_options(options: MethodOptions, given: Any) -> list[str]:
    """One line for each of the ``given`` option names that has no effect with these values (``applies_when``),
    e.g. "`threshold` has no effect while `mode` is fixed (it applies when `mode` is adaptive)."."""
    values = options.to_dict()
    lines = []
    for spec in option_specs(options):
        if spec.name not in given or spec.applies(values):
            continue
        now = " and ".join(f"`{k}` is {_words(values.get(k))}" for k, _ in spec.applies_when)
        want = " and ".join(f"`{k}` is {_words(v)}" for k, v in spec.applies_when)
        lines.append(f"`{spec.name}` has no effect while {now} (it applies when {want}).")
    return lines


def warn_ignored(options: MethodOptions, given: Any) -> None:
    """Warn (``VitpruneWarning``) for each given option these values ignore (see :func:`ignored_options`)."""
    for line in ignored_options(options, given):
        warnings.warn(line, VitpruneWarning, stacklevel=3)


def _words(value: Any) -> str:
    if isinstance(value, tuple):
        return " or ".join(map(str, value))
    return str(value)


def check_fraction(name: str, value: float, *, allow_one: bool = True) -> None:
    """Keep rates, budgets and thresholds live in (0, 1]."""
    ok = value is not None and math.isfinite(value) and 0.0 < value and (value <= 1.0 if allow_one else value < 1.0)
    if not ok:
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise MethodOptionError(f"`{name}` must be in {interval}, got {value}.")


# ------------------------------------------------------------------------------------------ model facts


#: how a report line about rotary position embeddings (timm Eva models) starts (:meth:`TokenMethod.report_notes`)
ROTARY_NOTE = "rotary embeddings"
#: how a report line about BEiT's relative position bias starts
POSITION_BIAS_NOTE = "relative position bias"


@dataclass(frozen=True)
class ViTInfo:
    """What a method needs to know about the timm ViT it patches."""

    depth: int
    embed_dim: int
    num_heads: int
    num_prefix_tokens: int
    grid: tuple[int, int]
    has_class_token: bool

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


#: what vitprune drives, for refusals (every one names what works)
SUPPORTED = ("timm VisionTransformer models (deit_*, vit_*, including distilled and register variants), timm Eva "
             "models (eva_*, eva02_*, vit_*_rope_*, rope_mixed included), BEiT (beit_*) and NaFlexViT (naflexvit_*; "
             "mixed-resolution patch dictionaries with the static-count methods)")


def check_vit(model: nn.Module, what: str = "the model") -> None:
    """UnsupportedModelError unless ``model`` is a timm VisionTransformer, Eva, Beit or NaFlexVit model (the one
    check of what vitprune loads, measures and patches; ``vit_info`` adds what patching needs of its blocks)."""
    if not family(model):
        raise UnsupportedModelError(
            f"{what} is a {type(model).__name__}, not a Vision Transformer; vitprune works on {SUPPORTED}.")


def _check_blocks(model: nn.Module) -> None:
    """The blocks' classes vitprune drives (``ops.attention``): timm's pre-norm ``Block`` with ``Attention``,
    Eva's pre-norm ``EvaBlock`` with ``EvaAttention`` or ``AttentionRope`` (one rope for every block, or one per
    block; no grouped-query attention), and BEiT's ``Block`` (its relative position bias per block)."""

    kind = family(model)
    if kind == "beit" and model.rel_pos_bias is not None:
        raise UnsupportedModelError(
            "this BEiT shares one relative position bias between its blocks (use_shared_rel_pos_bias); vitprune "
            "drives BEiT models with a bias per block (beit_*, as timm builds them) or absolute positions only.")
    if kind == "beit" and any(getattr(b.attn, "qkv_bias_separate", False) for b in model.blocks):
        raise UnsupportedModelError(
            "this BEiT adds its q/v bias after the projection (qkv_bias_separate); vitprune drives BEiT models "
            "whose bias is part of the projection (beit_*, as timm builds them).")
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        vit = isinstance(blk, Block) and isinstance(attn, Attention)
        eva = isinstance(blk, EvaBlock) and isinstance(attn, (EvaAttention, AttentionRope))
        bt = isinstance(blk, beit.Block) and isinstance(attn, beit.Attention)
        if not (vit or eva or bt):
            raise UnsupportedModelError(
                f"block {i} of this ViT is a {type(blk).__name__} with {type(attn).__name__}; vitprune patches "
                "timm's standard pre-norm Block with its Attention module, Eva's pre-norm EvaBlock and BEiT's Block."
            )
        if getattr(attn, "num_kv_groups", 1) != 1:
            raise UnsupportedModelError(
                f"block {i} uses grouped-query attention (num_kv_heads); vitprune drives attention with one key "
                "and value head per query head.")


def vit_info(model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> ViTInfo:
    """Facts about a timm ViT vitprune drives (:func:`check_vit`); raises UnsupportedModelError for anything
    vitprune cannot patch."""
    check_vit(model)
    _check_blocks(model)
    grid = patch_grid(model, img_size)
    attn = model.blocks[0].attn
    return ViTInfo(
        depth=len(model.blocks),
        embed_dim=model.embed_dim,
        num_heads=attn.num_heads,
        num_prefix_tokens=model.num_prefix_tokens,
        grid=(int(grid[0]), int(grid[1])),
        has_class_token=class_token(model) is not None,
    )


def scale_locations(depth: int, reference: tuple[int, ...], reference_depth: int = 12) -> list[int]:
    """Map block indices chosen for a 12-block model to another depth: ``floor(index * depth / 12)``, so 3/6/9 of
    12 -> 6/12/18 of 24 and 1/3/4 of 6; never block 0, never past the last block."""
    if depth == reference_depth:
        return list(reference)
    return sorted({max(1, min(depth - 1, (r * depth) // reference_depth)) for r in reference})


def check_block_list(value: Any, name: str, *, minimum: int = 0, example: str = "3,6,9") -> Optional[list[int]]:
    """A user's list of 0-based block indices (an int is a list of one): sorted, each ``>= minimum``, no repeats;
    None stays None (the method's default). Raises ``MethodOptionError`` naming the option ``name``."""
    if value is None:
        return None
    locs = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(locs, (list, tuple)) or not locs
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= minimum for b in locs)):
        raise MethodOptionError(
            f"`{name}` must be a non-empty list of 0-based block indices >= {minimum} (e.g. {example}), got {locs!r}.")
    if len(set(locs)) != len(locs):
        raise MethodOptionError(f"`{name}` must not repeat a block, got {list(locs)}.")
    return sorted(int(b) for b in locs)


def block_locations(
    given: Optional[list[int]], depth: int, reference: tuple[int, ...], name: str, first: int = 0,
) -> list[int]:
    """The blocks a method acts at: the user's list (checked against ``first..depth-1``) or the paper's 12-block
    ``reference`` scaled to this depth."""
    locs = sorted(set(given)) if given is not None else scale_locations(depth, reference)
    bad = [b for b in locs if not first <= b < depth]
    if bad:
        raise MethodOptionError(f"`{name}` {bad[0]} is outside the model's blocks {first}..{depth - 1}.")
    return locs


def require_class_token(info: ViTInfo, title: str) -> None:
    """Methods that rank or keep patches through the class token need one."""
    if not info.has_class_token:
        raise UnsupportedModelError(f"{title} ranks patches through the class token; this ViT has no class token.")


def require_pooled_head(model: nn.Module, info: ViTInfo, title: str) -> None:
    """A ViT without a class token must pool by average or attention (``global_pool`` ``avg`` or ``map``): the
    pooled head is then restricted to the tokens a method keeps (``ops.pooling``); other pools are refused."""
    kind = pool_kind(model)
    if not info.has_class_token and kind not in ("avg", "map"):
        raise UnsupportedModelError(
            f"{title} on a ViT without a class token needs average or attention pooling (global_pool 'avg' or "
            f"'map'); this one pools with {kind!r}.")


# ------------------------------------------------------------------------------------------ per-forward state


@dataclass
class TokenState:
    """What travels through the blocks in one forward pass.

    ``origin`` (only when ``track``): for each current patch token, the index of the original patch it stands
    for, ``-1`` for synthetic tokens (a fused or representative token). ``stages`` (when ``track``): after each
    step that changes the token set, ``(block_index, assignment)`` with ``assignment`` a ``B x num_patches`` long
    tensor giving, for every original patch, the current token that represents it, or ``-1`` if it was dropped
    (or fused into a catch-all token). ``counts`` (when ``track``): tokens entering each block.
    """

    num_prefix: int
    grid: tuple[int, int]
    training: bool
    track: bool = False
    origin: Optional[Tensor] = None
    stages: list[tuple[int, Tensor]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    aux: dict[str, Any] = field(default_factory=dict)
    #: (when ``track``) a reduction fused the tokens it removed into an extra token (EViT, SaiT with ``fuse``)
    fused: bool = False
    #: Eva models: the rotary rows of the tokens after the prefix as embedded (``B x P x D``, ``ops.rope``); a
    #: method that keeps, merges or adds tokens carries the rows along with them. None for timm ViTs
    rope: Optional[Tensor] = None
    #: mixed-resolution NaFlex batches: ``B x P`` bool over the current patch tokens, True for a token that holds
    #: real patches, False for padding (``ops.padding``); travels with the tokens. None: every token is real
    valid: Optional[Tensor] = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def enter(self, x: Tensor) -> None:
        """Call at the start of every block: records the token count when tracking."""
        if self.track:
            self.counts.append(x.shape[1])

    def start_tracking(self, batch: int, device: torch.device) -> None:
        self.origin = torch.arange(self.num_patches, device=device).expand(batch, -1).clone()

    def attn_mask(self, dtype: torch.dtype) -> Optional[Tensor]:
        """The additive attention bias that hides padding keys (``B x 1 x 1 x N``), or None without padding."""
        return None if self.valid is None else padding.key_bias(self.valid, self.num_prefix, dtype)

    def keep(self, idx: Tensor, extra_synthetic: int = 0, extra_valid: Optional[Tensor] = None) -> None:
        """Patch tokens were gathered with ``idx`` (B x k, positions among current patch tokens), followed by
        ``extra_synthetic`` new tokens (live where ``extra_valid``, ``B x extra``, says; default: live)."""
        if self.valid is not None:
            valid = padding.take_live(self.valid, idx)
            if extra_synthetic:
                extra = extra_valid if extra_valid is not None else valid.new_ones(valid.shape[0], extra_synthetic)
                valid = torch.cat([valid, extra.to(torch.bool)], 1)
            self.valid = valid
        if self.track and self.origin is not None:
            origin = torch.gather(self.origin, 1, idx)
            if extra_synthetic:
                origin = torch.cat([origin, origin.new_full((origin.shape[0], extra_synthetic), -1)], 1)
                self.fused = True
            self.origin = origin

    def record(self, block: int, assignment: Optional[Tensor] = None) -> None:
        """Record the token map after a reduction at ``block`` (computed from ``origin`` unless given)."""
        if not self.track:
            return
        if assignment is None:
            assert self.origin is not None
            B = self.origin.shape[0]
            assignment = self.origin.new_full((B, self.num_patches), -1)
            pos = torch.arange(self.origin.shape[1], device=self.origin.device).expand(B, -1)
            real = self.origin >= 0
            assignment[real.nonzero(as_tuple=True)[0], self.origin[real]] = pos[real]
        self.stages.append((block, assignment))


@dataclass
class StepContext:
    """What the student passes over one micro-batch share. The trainer makes a new one for every micro-batch and
    hands it to ``training_passes`` and to every pass's ``aux_losses``; it is dropped afterwards, so nothing of one
    batch reaches the next (SaiT's dense pass leaves its selection target for the sparse pass in ``carry``)."""

    epoch: float = 0.0  # fractional epoch of this step (what ``on_train_progress`` was told)
    total_epochs: float = 0.0
    carry: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherOutput:
    """What the trainer computed on the dense teacher for a batch."""

    logits: Tensor
    tokens: Optional[Tensor] = None  # final normed tokens (B x N x C), prefix tokens included
    extras: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the method


# Method name -> class, filled by ``registry.register``; here so that a method's own messages can name the others.
_REGISTRY: dict[str, type[TokenMethod]] = {}


def padding_methods() -> str:
    """The methods that run mixed-resolution NaFlex batches (patch dictionaries with padding masks), for messages:
    ``dynamicvit (inference), evit, ...``."""
    return ", ".join(cls.padding_hint or cls.name for cls in _REGISTRY.values() if cls.padding_masks)


def exportable_methods() -> str:
    """The methods ``vitprune export`` turns into ONNX, for messages: ``dynamicvit, evit, ..., sait (fixed or dense
    mode)``."""
    return ", ".join(cls.export_hint or cls.name for cls in _REGISTRY.values() if cls.exportable)


class TokenMethod:
    """Base class of a token-sparsification method. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[MethodOptions]]
    needs_training: ClassVar[bool] = True
    #: parameter-name prefixes of modules the method adds (own learning rate in the trainer)
    new_module_prefixes: ClassVar[tuple[str, ...]] = ()
    #: design choices vitprune made where the paper is silent (shown by `vitprune methods`)
    notes: ClassVar[tuple[str, ...]] = ()
    #: the inference path keeps the same token counts for every image (static shapes, no host sync), so an ONNX
    #: export holds the pruning; a method opts in once its export is tested against PyTorch
    exportable: ClassVar[bool] = False
    #: how ``vitprune export``'s refusals name this method among those that export (e.g. a mode that does)
    export_hint: ClassVar[str] = ""
    #: the method keeps static token counts and carries NaFlexViT's padding masks through its token selection, so a
    #: patched NaFlexViT takes mixed-resolution patch dictionaries (``padding_check`` refuses the settings that
    #: cannot); ``padding_hint`` names it in refusals where only a mode does (``sait (fixed mode)``)
    padding_masks: ClassVar[bool] = False
    padding_hint: ClassVar[str] = ""
    #: what becomes of the patch tokens a stage removes, for token-map legends (a fused extra token is seen from
    #: the tracked state and said instead)
    removed_tokens: ClassVar[str] = "dropped"
    #: how the method works on a ViT without a class token, where that deviates from the paper (shown by
    #: `vitprune methods`, and in reports and cards of such models); empty: the paper's method applies as is
    no_class_token: ClassVar[str] = ""
    #: what rotary position embedding (timm Eva models) the tokens the method builds get: a token that keeps or
    #: merges into a patch keeps that patch's rope row; this says the choice for the others (fused, pooled...)
    #: (shown by `vitprune methods`, and in reports and cards of Eva models with rotary embeddings)
    rotary: ClassVar[str] = "every token the method keeps carries its own patch's rotary row."
    #: the same for BEiT's relative position bias (``ops.relpos``): which bias row and column a token the method
    #: builds gets (shown by `vitprune methods`, and in reports and cards of BEiT models with that bias)
    position_bias: ClassVar[str] = "every token the method keeps gets its own patch's bias row and column."
    #: arguments of the authors' training script that set an option (argument name -> option name), read from
    #: the ``args`` an official checkpoint stores when ``vitprune import-checkpoint`` imports it
    official_args: ClassVar[Mapping[str, str]] = {}
    #: the option values under which the method removes nothing, so the patched model computes exactly the dense
    #: model (every method declares it; the registry-wide contract tests check it bit for bit)
    noop_options: ClassVar[Optional[Mapping[str, Any]]] = None
    #: option values of a headline setting that removes tokens on a small ViT (8 x 8 patches, 3 blocks): the tests
    #: and benchmarks that loop over the registry apply it next to ``noop_options`` (every method declares it)
    sparse_options: ClassVar[Optional[Mapping[str, Any]]] = None

    def __init__(self, options: MethodOptions):
        self.options = options
        self.info: Optional[ViTInfo] = None
        self._attached: list[tuple[nn.Module, str]] = []

    def attach(self, parent: nn.Module, name: str, module: nn.Module) -> None:
        """Register a module the method adds (``patch`` uses this), so ``unpatch`` can take it away again."""
        parent.add_module(name, module)
        self._attached.append((parent, name))

    def unpatch(self, model: nn.Module) -> None:
        """Undo ``patch``: remove the modules added with ``attach``. Methods that change more override."""
        for parent, name in self._attached:
            delattr(parent, name)
        self._attached.clear()

    # -- contract --------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> ViTInfo:
        """Raise UnsupportedModelError if the model cannot be patched; return its facts."""
        return vit_info(model)

    def patch(self, model: nn.Module) -> None:
        """Add the method's modules to the model (in place). Default: none."""

    def forward_blocks(self, model: nn.Module, x: Tensor, state: TokenState) -> Tensor:
        """Run all blocks on the embedded tokens ``x`` (B x N x C). Default: the dense path."""
        for blk in model.blocks:
            state.enter(x)
            x = run_block(blk, x, state.rope, attn_mask=state.attn_mask(x.dtype))
        return x

    def token_schedule(self, model: nn.Module, img_size: Optional[tuple[int, int]] = None) -> list[int]:
        """Tokens (prefix included) entering each block in eval mode."""
        info = vit_info(model, img_size)
        return [info.num_prefix_tokens + info.num_patches] * info.depth

    def aux_losses(self, model: nn.Module, state: TokenState, teacher: Optional[TeacherOutput], *,
                   targets: Optional[Tensor] = None, step: Optional[StepContext] = None) -> dict[str, Tensor]:
        """Weighted auxiliary training losses (already multiplied by their weights) of one student pass: ``state``
        is that pass's, ``teacher`` what ``teacher_forward`` computed (None without a teacher), ``targets`` the
        micro-batch's labels (class indices, or soft targets ``B x classes``) and ``step`` its ``StepContext``. The
        trainer always passes both; other callers may not."""
        return {}

    def teacher_forward(self, teacher: nn.Module, images: Tensor) -> TeacherOutput:
        """What the trainer computes on the teacher; methods needing more (attention maps...) override."""
        tokens = teacher.forward_features(images)
        return TeacherOutput(logits=teacher.forward_head(tokens), tokens=tokens)

    def training_passes(self, step: Optional[StepContext] = None) -> list[dict[str, Any]]:
        """Runtime settings for each student forward over one micro-batch (SaiT: dense and sparse)."""
        return [{}]

    def on_train_progress(self, model: nn.Module, epoch: float, total_epochs: float) -> None:
        """Called by the trainer before each step with the fractional epoch (schedules)."""

    def state_dict(self) -> dict[str, Any]:
        """The method's own training state that neither the weights nor the options hold (what
        ``on_train_progress`` set...), as plain data (numbers, strings, booleans, None, lists, dicts): the trainer
        saves it in every checkpoint, which is read back with ``weights_only``. Default: none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (from a checkpoint file: keys may be missing)."""

    def default_recipe(self) -> dict[str, Any]:
        """The paper's fine-tuning recipe adapted to vitprune; trainer flags override each key.

        Keys the trainer reads (all optional; the trainer has defaults for the rest):
        ``epochs``; ``lr`` (peak learning rate at a global batch of ``lr_batch_ref`` images, scaled linearly);
        ``lr_batch_ref``; ``backbone_lr_scale`` (backbone lr = lr x this; modules named by
        ``new_module_prefixes`` get lr x 1); ``freeze_backbone_epochs`` (backbone lr 0 for these first epochs);
        ``warmup_epochs``; ``min_lr``; ``weight_decay``; ``kd_weight`` and ``kd_temperature`` (the trainer's KL
        on logits against the dense teacher); ``cls_weight`` (weight of the label cross-entropy);
        ``label_smoothing``; ``frozen`` (parameter names kept out of the optimizer, e.g. ``cls_token``,
        ``pos_embed``); ``train_mode_eval`` (fine-tune with dropout/drop-path off, as EViT's script does);
        ``drop_path``; ``clip_grad``. Method-specific loss weights live in the method's options, and
        ``aux_losses`` returns only method-specific terms (the logit KD is the trainer's).
        """
        return {}

    def report_notes(self, model: nn.Module) -> list[str]:
        """Lines a report should show about how this model was set up (e.g. DGE's untrained-router start); a
        model without a class token gets the method's ``no_class_token`` deviation."""
        notes = []
        if self.no_class_token and class_token(model) is None:
            notes.append(f"no class token: {self.no_class_token}")
        if getattr(model, "rope", None) is not None:
            notes.append(f"{ROTARY_NOTE}: {self.rotary}")
        if family(model) == "beit" and getattr(model.blocks[0].attn, "relative_position_bias_table", None) is not None:
            notes.append(f"{POSITION_BIAS_NOTE}: {self.position_bias}")
        return notes

    def pool(self, model: nn.Module, x: Tensor, pool_type: Optional[str], state: TokenState) -> Optional[Tensor]:
        """Pool the final tokens for the head when the method must (ToMe: size-weighted average); None = timm's."""
        return None

    def calibrate(self, model: nn.Module, images: Tensor) -> Optional[dict[str, Any]]:
        """Choose data-dependent run-time defaults on held-out images (SaiT: its adaptive threshold), set them in
        the options, and return what was chosen for the report; None when the method has nothing to calibrate.
        The trainer calls it on validation images after training."""
        return None

    def macs(self, model: nn.Module, images: Tensor) -> Optional[float]:
        """Mean MACs per image when fvcore cannot count them (input-dependent token counts); else None."""
        return None

    def padding_check(self, model: nn.Module) -> None:
        """Raise ``UnsupportedModelError`` (one line) when the current settings cannot run a NaFlex patch
        dictionary (mixed resolutions with padding masks)."""
        if not self.padding_masks:
            raise UnsupportedModelError(
                f"{self.title} chooses its token counts per image, so it cannot run NaFlex patch dictionaries with "
                f"padding masks (mixed resolutions); methods that do: {padding_methods()}; {self.name} takes whole "
                "images (one resolution per batch).")

    def export_check(self, model: nn.Module) -> None:
        """Raise ``ExportError`` (one line) when the current settings cannot be exported with the pruning inside."""
        if not self.exportable:
            raise ExportError(
                f"{self.title} chooses its token counts per image, which a static ONNX graph cannot hold; methods "
                f"that export: {exportable_methods()}.")

    def convert_official_state_dict(self, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Map an official release's state dict onto this model's keys; raise MethodOptionError on unknown keys."""
        return dict(state_dict)

    # -- runtime settings ---------------------------------------------------------------------
    #: names of the options that may change at run time without retraining (e.g. SaiT mode, EViT keep rate):
    #: derived from the options' ``"runtime": True`` metadata when the class is defined, never declared here
    runtime_options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "runtime_options" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: mark run-time options with metadata={{'runtime': True}} on their "
                            "Options fields instead of a runtime_options tuple")
        options = getattr(cls, "Options", None)
        cls.runtime_options = runtime_options(options) if options is not None else ()

    @contextmanager
    def overrides(self, **values: Any) -> Iterator[None]:
        """Temporarily change run-time options (one training pass, one evaluation)."""
        saved = self.options
        if values:
            self._set_runtime(values)
        try:
            yield
        finally:
            self.options = saved

    def set_runtime(self, **values: Any) -> None:
        """Change run-time options of a trained method (refused for the others); a given option the resulting
        setting ignores (SaiT's ``threshold`` in fixed mode) is reported with a ``VitpruneWarning``."""
        self._set_runtime(values)
        warn_ignored(self.options, values)

    def _set_runtime(self, values: dict[str, Any]) -> None:
        names = {s.name for s in option_specs(self)}
        for k in values:
            if k not in names:
                known = ", ".join(f"`{n}`" for n in sorted(names)) or "none"
                raise MethodOptionError(f"`{k}` is not an option of {self.name} (its options: {known}).")
            if k not in self.runtime_options:
                allowed = ", ".join(f"`{n}`" for n in self.runtime_options) or "none"
                raise MethodOptionError(f"`{k}` cannot be changed at run time for {self.name} (run-time options: "
                                        f"{allowed}); it needs retraining.")
        merged = {**self.options.to_dict(), **values}
        self.options = type(self.options).from_dict(self.name, merged)

    # -- helpers --------------------------------------------------------------------------------
    def options_dict(self) -> dict[str, Any]:
        return self.options.to_dict()

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options_dict().items())
        return f"{self.name}({opts})"


# ------------------------------------------------------------------------------------------ the patched model


class PatchedViT:
    """Mixin placed in front of the model's own timm class by ``apply_method``.

    Only ``forward_features`` changes: timm's embedding (patch embed, position embedding, prefix tokens,
    ``norm_pre``), then the method's ``forward_blocks``, then timm's final ``norm``. Heads are timm's.
    """

    vitprune_method: TokenMethod
    _vitprune_track: bool = False
    #: per-forward attributes (tensors of the last pass, possibly part of an autograd graph): never copied
    _TRANSIENT = ("vitprune_state", "_vitprune_pool_state")

    def __getstate__(self):
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in self._TRANSIENT}

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("vitprune-patched models do not take attention masks")
        x, rope = embed(self, x)
        x, _ = self._run_method(x, _grid_of(self, x), rope=rope)
        return self.norm(x)

    def _run_method(self, x: Tensor, grid: tuple[int, int], rope: Optional[Tensor] = None,
                    valid: Optional[Tensor] = None) -> tuple[Tensor, TokenState]:
        """The method's blocks on the embedded tokens ``x``; the state is kept where training, token maps and the
        method's pooling read it."""
        state = TokenState(num_prefix=self.num_prefix_tokens, grid=grid, training=self.training,
                           track=self._vitprune_track, rope=rope, valid=valid)
        if state.track:
            state.start_tracking(x.shape[0], x.device)
        method = self.vitprune_method
        x = method.forward_blocks(self, x, state)
        if self.training or state.track:
            self.vitprune_state = state
        if type(method).pool is not TokenMethod.pool:
            self._vitprune_pool_state = state  # consumed by pool() in timm's forward_head
        return x, state

    def pool(self, x: Tensor, pool_type: Optional[str] = None) -> Tensor:
        out = self._vitprune_pool(x, pool_type)
        return super().pool(x, pool_type) if out is None else out

    def _vitprune_pool(self, x: Tensor, pool_type: Optional[str]) -> Optional[Tensor]:
        """The method's pooling of this forward's final tokens, or None where timm's own is right."""
        state = self.__dict__.pop("_vitprune_pool_state", None)
        return None if state is None else self.vitprune_method.pool(self, x, pool_type, state)


class PatchedBeit(PatchedViT):
    """:class:`PatchedViT` for timm's ``Beit``, whose head pools inline: its pooling is read through ``pool`` (the
    same ops as timm's ``forward_head``), so that a method can pool the live tokens."""

    def pool(self, x: Tensor, pool_type: Optional[str] = None) -> Tensor:
        out = self._vitprune_pool(x, pool_type)
        if out is not None:
            return out
        kind = self.global_pool if pool_type is None else pool_type
        return x[:, self.num_prefix_tokens:].mean(dim=1) if kind == "avg" else x[:, 0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool:
            x = self.pool(x)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)


class PatchedNaFlex(PatchedViT):
    """:class:`PatchedViT` for timm's ``NaFlexVit``: whole images (a fixed resolution per batch) as
    :class:`PatchedViT`; NaFlex's patch dictionaries (``patches``, ``patch_coord``, ``patch_valid``: mixed
    resolutions padded to one sequence length) as timm's own forward takes them, for the methods with
    ``padding_masks`` (the others refuse in one line): the validity of each token travels in ``TokenState.valid``,
    attention hides padding keys, and the pooled head (``_pool``) reads live tokens only."""

    def forward(self, x: Any, patch_coord: Optional[Tensor] = None, patch_valid: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        if isinstance(x, dict):
            patch_valid = x.get("patch_valid", patch_valid)
            patch_coord = x.get("patch_coord", patch_coord)
            attn_mask = x.get("attn_mask", attn_mask)
            x = x["patches"]
        if patch_coord is None and patch_valid is None:  # whole images (an attention mask is refused there)
            return self.forward_head(self.forward_features(x, attn_mask=attn_mask))
        features = self.forward_features(x, patch_coord=patch_coord, patch_valid=patch_valid, attn_mask=attn_mask)
        return self.forward_head(features["patches"], patch_valid=features["patch_valid"])

    def forward_features(self, x: Tensor, patch_coord: Optional[Tensor] = None, patch_valid: Optional[Tensor] = None,
                         attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Any:
        if patch_coord is None and patch_valid is None:
            return super().forward_features(x, attn_mask, is_causal)
        method = self.vitprune_method
        method.padding_check(self)
        if attn_mask is not None or is_causal:
            raise UnsupportedModelError(
                "a vitprune-patched NaFlexViT builds its attention mask from `patch_valid` (it follows the tokens "
                "the method keeps); pass the patch dictionary without `attn_mask`.")
        if patch_coord is None or patch_valid is None:
            raise ValueError("a NaFlex patch dictionary needs both `patch_coord` and `patch_valid`.")
        if self.rope is not None:
            raise UnsupportedModelError(
                "vitprune runs NaFlex patch dictionaries (mixed resolutions) on NaFlexViTs with learned or "
                "factorized position embeddings; this one has rotary embeddings: pass whole images (one resolution "
                "per batch).")
        e = self._forward_embeds(x, patch_coord=patch_coord, patch_valid=patch_valid, attn_mask=None)
        x = e["patches"]
        valid = e["patch_valid"].to(torch.bool)
        # no 2-D grid is shared by the batch: the token maps address the padded sequence's slots as one row
        x, state = self._run_method(x, (1, x.shape[1] - self.num_prefix_tokens), valid=valid)
        return {"patches": self.norm(x), "patch_valid": state.valid}  # carried with the tokens the method kept

    def _pool(self, x: Tensor, pool_type: Optional[str] = None, patch_valid: Optional[Tensor] = None) -> Tensor:
        out = self._vitprune_pool(x, pool_type)
        return super()._pool(x, pool_type, patch_valid) if out is None else out


def _grid_of(model: nn.Module, x: Tensor) -> tuple[int, int]:
    n = x.shape[1] - model.num_prefix_tokens
    g = patch_grid(model)
    if g[0] * g[1] == n:
        return (int(g[0]), int(g[1]))
    side = int(round(math.sqrt(n)))  # dynamic image size: square grids
    return (side, n // side)


_PATCHED_CLASSES: dict[type, type] = {}


def patched_class(base: type) -> type:
    if issubclass(base, PatchedViT):
        return base
    if base not in _PATCHED_CLASSES:

        mixin = PatchedBeit if issubclass(base, Beit) else PatchedNaFlex if issubclass(base, NaFlexVit) else PatchedViT
        _PATCHED_CLASSES[base] = type(f"Vitprune{base.__name__}", (mixin, base), {"__module__": __name__})
    return _PATCHED_CLASSES[base]


def unpatched_class(cls: type) -> type:
    return next(b for b in cls.__mro__[1:] if not issubclass(b, PatchedViT)) if issubclass(cls, PatchedViT) else cls


class tracking:
    """Context manager: record token maps and counts during forward passes (``model.vitprune_state``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.model._vitprune_track = True
        return self.model

    def __exit__(self, *exc) -> None:
        self.model._vitprune_track = False
