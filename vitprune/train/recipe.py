"""The fine-tuning recipe: trainer defaults, the method's paper recipe over them, the demo preset, the user's values.

A ``Recipe`` is a dataclass: each field is one key, with its trainer default and a help text in its metadata
(``recipe_help()``; the command line's recipe flags and a recipe file use the same names). Layers are plain
mappings of some of these keys, merged by ``build_recipe``; a key that is not a field is an error, whether it
comes from the user (``MethodOptionError``, one line) or from a method's ``default_recipe()`` (``TypeError``: a bug
in the method, which a silent fallback to the trainer default would hide).

Precedence (later wins): the trainer's defaults (``Recipe()``) < ``method.default_recipe()`` < demo preset (only
for ``data="demo"``, only keys the user did not set) < the user's values. The recipe used, with where each key came
from (``trainer``, ``method``, ``data``, ``demo``, ``user``; ``config file`` for the user's keys that a recipe
file set, see ``vitprune compress --config``), is written into the output's ``config.json``
(``vitprune.recipe``) and ``report.json`` (``recipe`` and ``recipe_sources``).

The demo preset: the papers' schedules (30 epochs on ImageNet, lr per 512-1024 images) would take hours on 2 CPU
cores and barely move a 0.7 M-parameter model at a batch of 64, so ``data="demo"`` uses ``DEMO_EPOCHS`` epochs,
rescales the warm-up and frozen phases to the same fraction of training, uses a higher learning rate
(``lr_batch_ref`` = the demo batch, so the peak lr is not scaled down, and ``DEMO_LR_MULT`` x the method's lr),
lets the backbone learn at least ``DEMO_MIN_BACKBONE_LR_SCALE`` x lr (a 0.01 backbone scale barely moves it in
220 steps: DynamicViT 95.0 % vs 96.4 % with 0.1), clips the gradient norm at ``DEMO_CLIP_GRAD`` (at that lr a new
module can saturate in the first epoch and never recover: DynamicViT seed 1 kept every token at one stage in
training and ended at 88.6 %; clipped, seeds 0/1/2 end at 96.4/96.4/97.5 %) and turns stochastic depth off (10
epochs of a 6-block model: ToMe 98.6 % without, 97.5 % with 0.1). The digits also train without augmentation by
default (a data hint). Every key the preset sets is marked ``demo`` in the recorded sources; user values still win.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from timm.optim import list_optimizers

from ..data import DEFAULT_AUGMENT
from ..errors import MethodOptionError


def _key(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Recipe:
    """Every setting of a fine-tuning run that decides its result (besides data, batch and seed)."""

    epochs: float = _key(30, "training epochs (fractions allowed)")
    lr: float = _key(5e-5, "peak learning rate for a global batch of lr_batch_ref images (scaled linearly)")
    lr_batch_ref: int = _key(512, "the global batch the lr refers to")
    backbone_lr_scale: float = _key(1.0, "backbone lr = lr x this (the method's new modules and a new head: lr x 1)")
    freeze_backbone_epochs: float = _key(0, "backbone lr 0 for these first epochs")
    warmup_epochs: float = _key(1, "linear warm-up epochs from warmup_lr (per iteration), then cosine to min_lr")
    warmup_lr: float = _key(1e-6, "lr at the start of warm-up")
    min_lr: float = _key(1e-6, "floor of the cosine schedule")
    weight_decay: float = _key(0.05, "weight decay (never on biases, norms, other 1-D parameters)")
    optimizer: str = _key("adamw", "optimizer, by timm's name (timm.optim.create_optimizer_v2: adamw, lamb, sgd, "
                          "adan, lion...; see timm.optim.list_optimizers())")
    layer_decay: Optional[float] = _key(None, "layer-wise lr decay (timm's, as BEiT): block i of N trains at lr x "
                                        "this^(N + 1 - i); None: off")
    kd_weight: float = _key(0.5, "weight of the soft distillation (KL on logits) from the teacher; a model without a "
                            "classifier learns the teacher's embedding by cosine distance, kd_weight x (1 - cos)")
    kd_temperature: float = _key(1.0, "distillation temperature T (the KL is scaled by T**2, as DeiT)")
    cls_weight: float = _key(1.0, "weight of the label cross-entropy")
    label_smoothing: float = _key(0.1, "label smoothing of the cross-entropy, in [0, 1)")
    frozen: list[str] = _key([], "parameter names or prefixes (* wildcards) kept out of the optimizer")
    train_mode_eval: bool = _key(False, "fine-tune with dropout, drop-path and attention dropout off")
    drop_path: Optional[float] = _key(None, "stochastic depth rate at the last block (None keeps the model's)")
    clip_grad: Optional[float] = _key(None, "clip the gradient norm to this (None: no clipping)")
    augment: Optional[dict[str, Any]] = _key(dict(DEFAULT_AUGMENT), "timm training augmentation (keys of "
                                             "DEFAULT_AUGMENT); None trains on the evaluation transform")

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """``MethodOptionError`` for a value out of range or of the wrong type."""
        for name in _NUMBER_KEYS:
            _check_number(name, getattr(self, name))
        if self.lr_batch_ref is None or self.lr_batch_ref <= 0:
            raise MethodOptionError(f"`lr_batch_ref` must be > 0, got {self.lr_batch_ref!r}.")
        if self.kd_temperature <= 0:
            raise MethodOptionError(f"`kd_temperature` must be > 0, got {self.kd_temperature}.")
        if self.label_smoothing >= 1:
            raise MethodOptionError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}.")
        for name in ("drop_path", "clip_grad"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), "a number >= 0 or None")
        if self.drop_path is not None and self.drop_path >= 1:
            raise MethodOptionError(f"`drop_path` must be < 1, got {self.drop_path}.")
        if not isinstance(self.train_mode_eval, bool):
            raise MethodOptionError(f"`train_mode_eval` must be true or false, got {self.train_mode_eval!r}.")
        if isinstance(self.frozen, str) or not all(isinstance(f, str) for f in self.frozen or []):
            raise MethodOptionError(f"`frozen` must be a list of parameter names, got {self.frozen!r}.")
        if self.augment is not None:
            _check_augment(self.augment)
        _check_optimizer(self.optimizer)
        if self.layer_decay is not None and (isinstance(self.layer_decay, bool) or not isinstance(
                self.layer_decay, (int, float)) or not 0 < self.layer_decay <= 1):
            raise MethodOptionError(f"`layer_decay` must be a number in (0, 1] or None, got {self.layer_decay!r}.")


#: keys that hold a number >= 0
_NUMBER_KEYS = ("lr", "backbone_lr_scale", "freeze_backbone_epochs", "warmup_epochs", "warmup_lr", "min_lr",
                "weight_decay", "kd_weight", "kd_temperature", "cls_weight", "label_smoothing", "epochs")


def _check_number(name: str, v: Any, what: str = "a number >= 0") -> None:
    """A finite number >= 0: inf and nan are refused too (an infinite lr, weight or epoch count cannot train)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise MethodOptionError(f"`{name}` must be a finite {what[2:]}, got {v!r}.")


def _check_optimizer(name: Any) -> None:
    """An optimizer timm's factory knows (``create_optimizer_v2``'s names; a ``lookahead_`` prefix too)."""
    known = list_optimizers()
    base = name.lower().split("_")[-1] if isinstance(name, str) else None
    if base not in known:
        close = difflib.get_close_matches(str(name).lower(), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise MethodOptionError(f"`optimizer` {name!r} is not one of timm's optimizers{hint}; e.g. adamw, lamb, sgd, "
                                "adan, lion (timm.optim.list_optimizers()).")


def _check_augment(aug: Any) -> None:
    if not isinstance(aug, Mapping):
        raise MethodOptionError(f"`augment` must be a dict of augmentation settings or None, got {aug!r}.")
    bad = sorted(set(aug) - set(DEFAULT_AUGMENT))
    if bad:
        raise MethodOptionError(f"unknown augmentation key(s) {', '.join(bad)}; known: "
                                f"{', '.join(sorted(DEFAULT_AUGMENT))}.")
    for k in ("scale", "ratio"):
        v = aug[k]
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not 0 < float(v[0]) <= float(v[1]):
            raise MethodOptionError(f"`{k}` takes two numbers MIN,MAX with 0 < MIN <= MAX, got {v!r}.")
    if not 0 <= float(aug["hflip"]) <= 1 or not 0 <= float(aug["re_prob"]) <= 1:
        raise MethodOptionError("`hflip` and `re_prob` are probabilities in [0, 1].")


def recipe_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Recipe)]


def recipe_help() -> dict[str, str]:
    """Each recipe key's help text (the command line's recipe flags and a recipe file use these names)."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(Recipe)}


def recipe_types() -> dict[str, str]:
    """Each recipe key's type as written in ``Recipe`` (``float``, ``Optional[float]``, ``list[str]``...): the
    command line's recipe flags convert their text by it."""
    return {f.name: str(f.type) for f in dataclasses.fields(Recipe)}


def unknown_keys(values: Mapping[str, Any]) -> Optional[str]:
    """A one-line description of the keys of ``values`` that are not recipe keys (None when all are)."""
    unknown = sorted(set(values) - set(recipe_keys()))
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], recipe_keys(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown recipe key(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(recipe_keys()))}"


#: the demo preset (see the module docstring)
DEMO_EPOCHS = 10
DEMO_LR_MULT = 4.0
DEMO_MIN_BACKBONE_LR_SCALE = 0.1
DEMO_CLIP_GRAD = 1.0

#: defaults for fine-tuning a teacher whose head was replaced (dense, labels only); recorded as the ``method`` layer
TEACHER_RECIPE: dict[str, Any] = {"kd_weight": 0.0, "cls_weight": 1.0, "backbone_lr_scale": 0.1, "lr": 5e-4,
                                  "freeze_backbone_epochs": 0}


def build_recipe(
    method_recipe: Optional[Mapping[str, Any]] = None,
    user: Optional[Mapping[str, Any]] = None,
    *,
    demo: bool = False,
    batch_size: int = 64,
    augment_hints: Optional[Mapping[str, Any]] = None,
    augment_default: bool = True,
    base: Optional[Recipe] = None,
    method: str = "the method",
) -> tuple[Recipe, dict[str, str]]:
    """The merged recipe and, for each key, where its value came from (trainer, method, data, demo, user).

    ``augment_hints`` (from the data) adjust the augmentation defaults; ``augment_default=False`` (the data asks
    for none) trains on the evaluation transform unless the user gives augmentation settings. A user ``augment``
    of None turns augmentation off; a dict sets some of its keys. ``method`` names the method in the error about an
    unknown key of its ``default_recipe()``.
    """
    user = dict(user or {})
    problem = unknown_keys(user)
    if problem:
        raise MethodOptionError(problem + ".")
    problem = unknown_keys(method_recipe or {})
    if problem:
        raise TypeError(f"{method}'s default_recipe() returns an {problem}.")
    values = (base or Recipe()).to_dict()
    source = {k: "trainer" for k in values}
    for k, v in (method_recipe or {}).items():
        values[k], source[k] = copy.deepcopy(v), "method"
    aug = values["augment"] if values["augment"] is not None else dict(DEFAULT_AUGMENT)
    if augment_hints:
        aug = {**aug, **augment_hints}
        source["augment"] = "data"
    if demo:
        _demo_preset(values, source, user, batch_size)
    _user_augment(values, source, user.pop("augment", "unset"), aug, augment_default)
    for k, v in user.items():
        values[k], source[k] = copy.deepcopy(v), "user"
    recipe = Recipe(**values)
    recipe.validate()
    return recipe, source


def _demo_preset(values: dict[str, Any], source: dict[str, str], user: Mapping[str, Any], batch_size: int) -> None:
    """The demo preset (see the module docstring) on every key the user did not set."""

    def put(key: str, value: Any) -> None:
        values[key], source[key] = value, "demo"

    paper_epochs = float(values["epochs"]) or 1.0
    if "epochs" not in user:
        put("epochs", DEMO_EPOCHS)
    frac = float(user.get("epochs", values["epochs"])) / paper_epochs
    for k in ("warmup_epochs", "freeze_backbone_epochs"):
        if k not in user and values[k]:
            put(k, round(float(values[k]) * frac, 3))
    if "lr" not in user:
        put("lr", float(values["lr"]) * DEMO_LR_MULT)
    if "lr_batch_ref" not in user:
        put("lr_batch_ref", batch_size)
    if "backbone_lr_scale" not in user and float(values["backbone_lr_scale"]) < DEMO_MIN_BACKBONE_LR_SCALE:
        put("backbone_lr_scale", DEMO_MIN_BACKBONE_LR_SCALE)
    if "clip_grad" not in user and values["clip_grad"] is None:
        put("clip_grad", DEMO_CLIP_GRAD)
    if "drop_path" not in user and values["drop_path"]:
        put("drop_path", 0.0)


def _user_augment(values: dict[str, Any], source: dict[str, str], asked: Any, aug: dict[str, Any],
                  augment_default: bool) -> None:
    """The augmentation: the user's (None: off; a dict: those keys over ``aug``), else ``aug`` or none as the data
    asks."""
    if asked is None:
        values["augment"], source["augment"] = None, "user"
    elif isinstance(asked, Mapping):
        values["augment"], source["augment"] = {**aug, **asked}, "user"
    elif asked != "unset":
        raise MethodOptionError(f"`augment` must be a dict of augmentation settings or None, got {asked!r}.")
    elif augment_default:
        values["augment"] = aug
    else:
        values["augment"], source["augment"] = None, "data"


def scaled_lr(recipe: Recipe, global_batch: int) -> float:
    """Peak learning rate for ``global_batch`` images per optimizer step (linear scaling rule)."""
    return float(recipe.lr) * global_batch / float(recipe.lr_batch_ref)
