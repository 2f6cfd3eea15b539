"""The fine-tuning recipe: trainer defaults, the method's paper recipe over them, the demo preset, the user's flags.

Precedence (later wins): ``TRAINER_DEFAULTS`` < ``method.default_recipe()`` < demo preset (only for ``--data demo``,
only keys the user did not set) < the user's values. The recipe actually used, with where each key came from, is
written into the output's ``config.json`` (``vitprune.recipe``) and ``report.json``.

Keys (the vocabulary of ``TokenMethod.default_recipe``):

* ``epochs``; ``lr`` (peak learning rate for a global batch of ``lr_batch_ref`` images; the trainer scales it
  linearly with the real global batch = batch size x processes x accumulation steps); ``lr_batch_ref``;
* ``backbone_lr_scale`` (backbone lr = lr x this; the method's new modules, named by ``new_module_prefixes``, and
  a freshly replaced head get lr x 1); ``freeze_backbone_epochs`` (backbone lr 0 for these first epochs);
* ``warmup_epochs`` (linear from ``warmup_lr``, per iteration), then cosine to ``min_lr`` (per iteration);
* ``weight_decay`` (AdamW; never on biases, norms, other 1-D parameters or the model's ``no_weight_decay()``);
* ``kd_weight``, ``kd_temperature`` (soft distillation on logits, see ``losses``), ``cls_weight``,
  ``label_smoothing``;
* ``frozen`` (parameter names or prefixes, ``*`` wildcards allowed, kept out of the optimizer and unchanged);
* ``train_mode_eval`` (fine-tune with dropout, drop-path and attention dropout off; the method still sees
  training mode); ``drop_path`` (set the stochastic-depth rate, linear over blocks; None keeps the model's);
  ``clip_grad`` (max gradient norm, None = off);
* ``augment`` (timm training augmentation: ``scale``, ``ratio``, ``hflip``, ``color_jitter``, ``auto_augment``,
  ``re_prob``; None = no augmentation, the evaluation transform).

The demo preset: the papers' schedules (30 epochs on ImageNet, lr per 512-1024 images) would take hours on 2 CPU
cores and barely move a 0.7 M-parameter model at a batch of 64, so ``--data demo`` uses ``DEMO_EPOCHS`` epochs,
rescales the warm-up and frozen phases to the same fraction of training, uses a higher learning rate
(``lr_batch_ref`` = the demo batch, so the peak lr is not scaled down, and ``DEMO_LR_MULT`` x the method's lr),
lets the backbone learn at least ``DEMO_MIN_BACKBONE_LR_SCALE`` x lr (a 0.01 backbone scale barely moves it in
220 steps: DynamicViT 95.0 % vs 96.4 % with 0.1), clips the gradient norm at ``DEMO_CLIP_GRAD`` (at that lr a new
module can saturate in the first epoch and never recover: DynamicViT seed 1 kept every token at one stage in
training and ended at 88.6 %; clipped, seeds 0/1/2 end at 96.4/96.4/97.5 %) and turns stochastic depth off (10
epochs of a 6-block model: ToMe 98.6 % without, 97.5 % with 0.1). The digits also train without augmentation by default (a data hint).
Every key the preset sets is marked ``demo`` in the recorded sources; flags still win.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

from ..data import DEFAULT_AUGMENT
from ..errors import MethodOptionError

TRAINER_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "lr": 5e-5,
    "lr_batch_ref": 512,
    "backbone_lr_scale": 1.0,
    "freeze_backbone_epochs": 0,
    "warmup_epochs": 1,
    "warmup_lr": 1e-6,
    "min_lr": 1e-6,
    "weight_decay": 0.05,
    "kd_weight": 0.5,
    "kd_temperature": 1.0,
    "cls_weight": 1.0,
    "label_smoothing": 0.1,
    "frozen": [],
    "train_mode_eval": False,
    "drop_path": None,
    "clip_grad": None,
    "augment": dict(DEFAULT_AUGMENT),
}

#: the demo preset (see the module docstring)
DEMO_EPOCHS = 10
DEMO_LR_MULT = 4.0
DEMO_MIN_BACKBONE_LR_SCALE = 0.1
DEMO_CLIP_GRAD = 1.0

#: defaults for fine-tuning a teacher whose head was replaced (dense, labels only)
TEACHER_RECIPE: dict[str, Any] = {"kd_weight": 0.0, "cls_weight": 1.0, "backbone_lr_scale": 0.1, "lr": 5e-4,
                                  "freeze_backbone_epochs": 0}

_FLOAT_KEYS = ("lr", "backbone_lr_scale", "freeze_backbone_epochs", "warmup_epochs", "warmup_lr", "min_lr",
               "weight_decay", "kd_weight", "kd_temperature", "cls_weight", "label_smoothing", "epochs")


def known_keys() -> list[str]:
    return sorted(TRAINER_DEFAULTS)


def build_recipe(
    method_recipe: Optional[Mapping[str, Any]] = None,
    user: Optional[Mapping[str, Any]] = None,
    *,
    demo: bool = False,
    batch_size: int = 64,
    augment_hints: Optional[Mapping[str, Any]] = None,
    augment_default: bool = True,
    base: Optional[Mapping[str, Any]] = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged recipe and, for each key, where its value came from (trainer, method, data, demo, user).

    ``augment_hints`` (from the data) adjust the augmentation defaults; ``augment_default=False`` (the data asks
    for none) trains on the evaluation transform unless the user gives augmentation settings. A user ``augment``
    of None turns augmentation off; a dict sets some of its keys.
    """
    user = dict(user or {})
    unknown = sorted(set(user) - set(TRAINER_DEFAULTS))
    if unknown:
        raise MethodOptionError(f"unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(known_keys())}.")
    recipe = copy.deepcopy(dict(base if base is not None else TRAINER_DEFAULTS))
    source = {k: "trainer" for k in recipe}
    for k, v in (method_recipe or {}).items():
        if k not in TRAINER_DEFAULTS:
            continue  # a method key the trainer does not read
        recipe[k], source[k] = copy.deepcopy(v), "method"
    aug = recipe.get("augment") if recipe.get("augment") is not None else dict(DEFAULT_AUGMENT)
    if augment_hints:
        aug = {**aug, **augment_hints}
        source["augment"] = "data"
    if demo:
        paper_epochs = float(recipe["epochs"]) or 1.0
        if "epochs" not in user:
            recipe["epochs"], source["epochs"] = DEMO_EPOCHS, "demo"
        frac = float(user.get("epochs", recipe["epochs"])) / paper_epochs
        for k in ("warmup_epochs", "freeze_backbone_epochs"):
            if k not in user and recipe[k]:
                recipe[k], source[k] = round(float(recipe[k]) * frac, 3), "demo"
        if "lr" not in user:
            recipe["lr"], source["lr"] = float(recipe["lr"]) * DEMO_LR_MULT, "demo"
        if "lr_batch_ref" not in user:
            recipe["lr_batch_ref"], source["lr_batch_ref"] = batch_size, "demo"
        if "backbone_lr_scale" not in user and float(recipe["backbone_lr_scale"]) < DEMO_MIN_BACKBONE_LR_SCALE:
            recipe["backbone_lr_scale"], source["backbone_lr_scale"] = DEMO_MIN_BACKBONE_LR_SCALE, "demo"
        if "clip_grad" not in user and recipe.get("clip_grad") is None:
            recipe["clip_grad"], source["clip_grad"] = DEMO_CLIP_GRAD, "demo"
        if "drop_path" not in user and recipe.get("drop_path"):
            recipe["drop_path"], source["drop_path"] = 0.0, "demo"
    user_aug = user.pop("augment", "unset")
    if user_aug is None:
        recipe["augment"], source["augment"] = None, "user"
    elif isinstance(user_aug, Mapping):
        recipe["augment"], source["augment"] = {**aug, **user_aug}, "user"
    elif user_aug != "unset":
        raise MethodOptionError(f"augment must be a dict of augmentation settings or None, got {user_aug!r}.")
    elif augment_default:
        recipe["augment"] = aug
    else:
        recipe["augment"], source["augment"] = None, "data"
    for k, v in user.items():
        recipe[k], source[k] = copy.deepcopy(v), "user"
    validate(recipe)
    return recipe, source


def validate(recipe: Mapping[str, Any]) -> None:
    for k in _FLOAT_KEYS:
        v = recipe.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
            raise MethodOptionError(f"{k.replace('_', '-')} must be a number >= 0, got {v!r}.")
    if recipe["lr_batch_ref"] is None or recipe["lr_batch_ref"] <= 0:
        raise MethodOptionError(f"lr-batch-ref must be > 0, got {recipe['lr_batch_ref']!r}.")
    if recipe["kd_temperature"] <= 0:
        raise MethodOptionError(f"kd-temperature must be > 0, got {recipe['kd_temperature']}.")
    if recipe["label_smoothing"] >= 1:
        raise MethodOptionError(f"label-smoothing must be in [0, 1), got {recipe['label_smoothing']}.")
    for k in ("drop_path", "clip_grad"):
        v = recipe.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise MethodOptionError(f"{k.replace('_', '-')} must be a number >= 0 or none, got {v!r}.")
    if recipe.get("drop_path") is not None and recipe["drop_path"] >= 1:
        raise MethodOptionError(f"drop-path must be < 1, got {recipe['drop_path']}.")
    frozen = recipe.get("frozen") or []
    if isinstance(frozen, str) or not all(isinstance(f, str) for f in frozen):
        raise MethodOptionError(f"frozen must be a list of parameter names, got {frozen!r}.")
    aug = recipe.get("augment")
    if aug is not None:
        bad = sorted(set(aug) - set(DEFAULT_AUGMENT))
        if bad:
            raise MethodOptionError(f"unknown augmentation key(s) {', '.join(bad)}; known: "
                                    f"{', '.join(sorted(DEFAULT_AUGMENT))}.")
        for k in ("scale", "ratio"):
            v = aug[k]
            if not isinstance(v, (list, tuple)) or len(v) != 2 or not 0 < float(v[0]) <= float(v[1]):
                raise MethodOptionError(f"{k} takes two numbers MIN,MAX with 0 < MIN <= MAX, got {v!r}.")
        if not 0 <= float(aug["hflip"]) <= 1 or not 0 <= float(aug["re_prob"]) <= 1:
            raise MethodOptionError("hflip and re-prob are probabilities in [0, 1].")


def scaled_lr(recipe: Mapping[str, Any], global_batch: int) -> float:
    """Peak learning rate for ``global_batch`` images per optimizer step (linear scaling rule)."""
    return float(recipe["lr"]) * global_batch / float(recipe["lr_batch_ref"])
