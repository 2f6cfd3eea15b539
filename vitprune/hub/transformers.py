"""Hugging Face ``transformers`` checkpoints (ViT, DeiT, DINOv2) as the equivalent timm ``VisionTransformer``.

A ``config.json`` with a ``model_type`` (and no timm ``architecture``) is a transformers model. ``vit``, ``deit`` and
``dinov2`` / ``dinov2_with_registers`` are mapped; anything else is refused in one line naming these. The timm model
is built from the config's fields through :func:`vitprune.hub.plan.plan_model` (so the same type, range and memory
checks apply as to a timm config), and the weights are renamed onto it tensor by tensor:

* query/key/value projections become timm's fused ``qkv``; LayerScale ``lambda1`` becomes ``gamma``; DINOv2's
  packed SwiGLU (``weights_in``: gate then value halves) is timm's ``SwiGLUPacked``;
* ``vit``: class token, ``*ForImageClassification``'s linear head on it;
* ``deit``: ``DeiTForImageClassificationWithTeacher`` (and the headless ``DeiTModel``) is timm's
  ``VisionTransformerDistilled`` - class and distillation heads, averaged at inference as transformers does;
  ``DeiTForImageClassification`` (one head on the class token) keeps the distillation token as one register token;
* ``dinov2``: LayerScale always, registers for ``dinov2_with_registers`` (the class token's position embedding folded
  into the class token, as timm's own DINOv2-with-registers models hold it). ``Dinov2ForImageClassification``'s head
  reads the class token concatenated with the mean of the patch tokens, a pooling timm's ``VisionTransformer`` does
  not have: the backbone loads without a head (``num_classes=0``) and a warning says so;
* the pooler of ``ViTModel``/``DeiTModel`` (dense + tanh, unused by classification) and the mask token (masked
  pre-training only) are not part of a timm ViT and are dropped.

The model is built for the size the image processor feeds it (``preprocessor_config.json``: the crop, else the
resize; without one, the config's ``image_size``). When that grid differs from the stored position embeddings,
they are resampled once, at conversion, exactly as transformers interpolates them at that size (bicubic,
``align_corners=False``; antialiased for ``dinov2_with_registers``), so the logits are transformers' at that size.
The layer-norm epsilon (transformers ViT/DeiT: 1e-12, timm: 1e-6) is set on every norm of the converted model; the
config records the timm architecture only, so a converted model saved by vitprune reloads with timm's 1e-6.
Preprocessing (size, crop, resampling, mean and std, with transformers' rescale factor folded into mean and std)
and the label names (``id2label``, unless they are transformers' ``LABEL_i`` placeholders) go into timm's
``pretrained_cfg``.

Weights: ``model.safetensors``; a repo without it may offer ``pytorch_model.bin``, read as tensors only
(``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

from huggingface_hub import errors as hf_errors, hf_hub_download
from safetensors import SafetensorError, safe_open

from ..errors import ModelNotFoundError, UnsupportedModelError
from ..modelfolder import is_transformers_config, parse_config, read_config_bytes
from ..offline import ensure_offline_if_unreachable
from ..report.redact import is_local_path, public_base, public_model  # public_base: also imported from here
from ..train.losses import EMBEDDING
from .checkpoint import read_state_dict
from .plan import plan_model
from .remote import hub_call, not_found

log = logging.getLogger("vitprune")

PREPROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"

SUPPORTED = ("transformers ViT (model_type vit), DeiT (deit, distilled included), DINOv2 (dinov2, "
             "dinov2_with_registers), CLIP vision towers (clip_vision_model, or clip: the vision part of CLIPModel) "
             "and SigLIP vision towers (siglip_vision_model, or siglip: the vision part of SiglipModel; SigLIP 2's "
             "fixed-resolution checkpoints are saved as siglip) checkpoints")

#: model_type -> (prefix of the backbone's tensors in a model with a head, {architecture: head kind})
#: head kinds: "none" (backbone), "cls" (linear on the class token), "distilled" (class + distillation heads,
#: averaged), "cls_mean" (DINOv2's linear on [class token, mean of patch tokens]: no timm equivalent, dropped)
FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
    "vit": ("vit", {"ViTModel": "none", "ViTForImageClassification": "cls"}),
    "deit": ("deit", {"DeiTModel": "none", "DeiTForImageClassification": "cls",
                      "DeiTForImageClassificationWithTeacher": "distilled"}),
    "dinov2": ("dinov2", {"Dinov2Model": "none", "Dinov2Backbone": "none",
                          "Dinov2ForImageClassification": "cls_mean"}),
    "dinov2_with_registers": ("dinov2_with_registers", {
        "Dinov2WithRegistersModel": "none", "Dinov2WithRegistersBackbone": "none",
        "Dinov2WithRegistersForImageClassification": "cls_mean"}),
}

#: vision towers of image-text models: model_type -> (prefix of the vision tensors, {architecture: head kind}).
#: head kinds: "pooled" (no head: the pooled embedding is the output: CLIP's post-normed class token, SigLIP's
#: attention pool), "projection" (CLIP's bias-free ``visual_projection`` on the pooled class token: the image
#: embedding), "avg_cls" (SiglipForImageClassification: a linear head on the mean of the normed tokens).
#: ``clip`` and ``siglip`` are the full image-text models: their ``vision_config`` and vision tensors are read, the
#: text tower and the logit scale/bias are dropped.
TOWERS: dict[str, tuple[str, dict[str, str]]] = {
    "clip_vision_model": ("vision_model", {"CLIPVisionModel": "pooled", "CLIPVisionModelWithProjection": "projection"}),
    "clip": ("vision_model", {"CLIPModel": "projection"}),
    "siglip_vision_model": ("vision_model", {"SiglipVisionModel": "pooled"}),
    "siglip": ("vision_model", {"SiglipModel": "pooled", "SiglipForImageClassification": "avg_cls"}),
}
FAMILIES.update(TOWERS)

#: model types transformers has that vitprune refuses with a reason beyond "not mapped"
REFUSED_WHY = {
    "siglip2": "transformers' siglip2 is the NaFlex variant (patches flattened at each image's own aspect ratio, "
               "padding masks, position embeddings resized per image), which a fixed-grid timm ViT does not "
               "express; SigLIP 2's fixed-resolution checkpoints (google/siglip2-*-patch16-224 and the like) are "
               "saved as siglip and load",
}
REFUSED_WHY["siglip2_vision_model"] = REFUSED_WHY["siglip2"]

#: transformers hidden_act -> timm act_layer (the tanh forms of GELU are one function up to float rounding)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu", "swish": "silu"}

#: (embed_dim, depth, num_heads) -> the size in timm's names, for naming the architecture only (every argument is
#: given explicitly)
SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
         (1280, 32, 16): "huge"}

#: PIL's resampling codes (what image processors store) -> timm's interpolation names
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

#: the image-processor defaults of each model type (transformers' ViTImageProcessor, DeiTImageProcessor and
#: BitImageProcessor, which DINOv2 uses), at the config's image size: (resize / crop, crop, square resize, resample,
#: mean, std)
_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
PROCESSOR_DEFAULTS = {
    "vit": dict(scale=1.0, crop=False, square=True, resample=2, stats=_STANDARD),
    "deit": dict(scale=256 / 224, crop=True, square=True, resample=3, stats=_STANDARD),
    "dinov2": dict(scale=1.0, crop=True, square=False, resample=3, stats=_CLIP),
    "dinov2_with_registers": dict(scale=1.0, crop=True, square=False, resample=3, stats=_CLIP),
    # CLIPImageProcessor: shortest edge to the image size, centre crop, bicubic, OpenAI's statistics;
    # SiglipImageProcessor: a square resize, bicubic, mean and std 0.5
    "clip": dict(scale=1.0, crop=True, square=False, resample=3, stats=_CLIP),
    "siglip": dict(scale=1.0, crop=False, square=True, resample=3, stats=_STANDARD),
}
PROCESSOR_DEFAULTS["clip_vision_model"] = PROCESSOR_DEFAULTS["clip"]
PROCESSOR_DEFAULTS["siglip_vision_model"] = PROCESSOR_DEFAULTS["siglip"]
#: processors whose integer ``size`` is the shortest edge (the others' is a square)
_SHORTEST_EDGE_PROCESSORS = ("BitImageProcessor", "CLIPImageProcessor", "ConvNextImageProcessor")

TIMM_LAYER_NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------- the config


@dataclass
class Conversion:
    """What a transformers config becomes: the timm config to build, and how to rename the weights onto it."""

    model_type: str
    architecture: str  # transformers' class name
    head: str  # see FAMILIES
    prefix: str  # of the backbone's tensors when the checkpoint has a head
    timm_config: dict[str, Any]
    layer_norm_eps: float
    swiglu: bool
    num_registers: int  # dinov2_with_registers' register tokens (DeiT's distillation token is not counted here)
    grid: tuple[int, int]  # the patch grid the timm model is built for
    antialias: bool  # how transformers resamples the position embeddings of this model type
    notes: list[str] = field(default_factory=list)
    tower: Optional[str] = None  # "clip" or "siglip": a vision tower (see TOWERS)

    @property
    def embedding(self) -> bool:
        """The output is an embedding, not class scores (CLIP's projection kept as the head)."""
        return self.head == "projection"

    @property
    def distilled(self) -> bool:
        return self.model_type == "deit" and self.head in ("distilled", "none")


def _int(cfg: dict[str, Any], key: str, default: Any, where: str, lo: int = 1, hi: int = 10**6) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelNotFoundError(f"{where}: {key} must be an integer from {lo} to {hi}, got {v!r}.")
    return v


def _pair(cfg: dict[str, Any], key: str, default: Any, where: str) -> tuple[int, int]:
    v = cfg.get(key, default)
    pair = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 8192 for x in pair):
        raise ModelNotFoundError(f"{where}: {key} must be an integer or a pair of integers from 1 to 8192, got {v!r}.")
    return pair[0], pair[1]


def _ratio(hidden: int, dim: int) -> float:
    """An mlp_ratio for which timm's ``int(dim * mlp_ratio)`` is exactly ``hidden``."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def _timm_name(kind: str, dim: int, depth: int, heads: int, patch: int, swiglu: bool, registers: bool) -> str:
    size = SIZES.get((dim, depth, heads))
    if kind == "distilled":
        candidates = [f"deit_{size}_distilled_patch16_224", "deit_base_distilled_patch16_224"]
    elif kind in ("clip", "siglip"):
        candidates = [f"vit_{size}_patch{patch}_{kind}_224", f"vit_base_patch16_{kind}_224"]
    elif kind == "dinov2":
        reg = "_reg4" if registers else ""
        # only timm's giant DINOv2 carries the SwiGLU MLP; every other size is named for its dimensions
        candidates = [f"vit_giant_patch14{reg}_dinov2"] if swiglu else [f"vit_{size}_patch14{reg}_dinov2",
                                                                         f"vit_base_patch14{reg}_dinov2"]
    else:
        candidates = [f"vit_{size}_patch{patch}_224", "vit_base_patch16_224"]
    return next(c for c in candidates if "None" not in c and timm.is_model(c))


def _labels(cfg: dict[str, Any], num_classes: int) -> Optional[list[str]]:
    """``id2label`` as a list by class index, or None when absent, incomplete or transformers' LABEL_i fillers."""
    id2label = cfg.get("id2label")
    if not isinstance(id2label, dict) or not num_classes:
        return None
    try:
        by_index = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    names = [by_index.get(i) for i in range(num_classes)]
    if len(by_index) != num_classes or not all(isinstance(n, str) for n in names):
        return None
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def _size(value: Any, square: bool, where: str, key: str) -> dict[str, int]:
    """An image processor's ``size``/``crop_size`` as ``{"height", "width"}`` or ``{"shortest_edge"}``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, dict):
        if set(value) >= {"height", "width"}:
            h, w = value["height"], value["width"]
            if all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (h, w)):
                return {"height": h, "width": w}
        elif set(value) == {"shortest_edge"} or (set(value) == {"shortest_edge", "longest_edge"}
                                                  and value.get("longest_edge") is None):
            s = value["shortest_edge"]
            if isinstance(s, int) and not isinstance(s, bool) and s > 0:
                return {"shortest_edge": s}
    raise ModelNotFoundError(f"{where}: {key} {value!r} is not a size vitprune can map to a fixed input (height "
                             "and width, or a shortest edge followed by a crop).")


def _crop_pct(crop: int, resized: int) -> float:
    """A crop_pct for which timm's ``floor(crop / crop_pct)`` is exactly ``resized``."""
    pct = crop / resized
    return pct if math.floor(crop / pct) == resized else crop / (resized + 0.25)


def preprocessing(model_type: str, cfg: dict[str, Any], proc: Optional[dict[str, Any]], where: str) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, crop_pct, crop_mode, mean, std) of a transformers model, from
    its image processor's settings when given, else the defaults of its model type's processor at the config's
    image size."""
    defaults = PROCESSOR_DEFAULTS[model_type]
    h, w = _pair(cfg, "image_size", 224, where)
    if proc is None:
        mean, std = defaults["stats"]
        side = round(h * defaults["scale"]), round(w * defaults["scale"])
        if defaults["square"]:
            resize: dict[str, int] = {"height": side[0], "width": side[1]}
        else:
            resize = {"shortest_edge": side[0]}
        crop = {"height": h, "width": w} if defaults["crop"] else None
        resample, rescale = defaults["resample"], 1 / 255
    else:
        where = f"{where.rsplit('/', 1)[0]}/{PREPROCESSOR_NAME}"
        kind = str(proc.get("image_processor_type") or proc.get("feature_extractor_type") or "")
        square = not kind.startswith(_SHORTEST_EDGE_PROCESSORS) if kind else defaults["square"]
        resize = _size(proc.get("size", {"height": h, "width": w}), square, where, "size") \
            if proc.get("do_resize", True) else {"height": h, "width": w}
        do_crop = proc.get("do_center_crop", defaults["crop"] if not kind else False)
        crop = _size(proc.get("crop_size", {"height": h, "width": w}), True, where, "crop_size") if do_crop else None
        if crop is not None and "height" not in crop:
            raise ModelNotFoundError(f"{where}: crop_size must give a height and width.")
        resample = proc.get("resample", defaults["resample"])
        mean, std = (proc.get("image_mean", defaults["stats"][0]), proc.get("image_std", defaults["stats"][1])) \
            if proc.get("do_normalize", True) else ((0.0,) * 3, (1.0,) * 3)
        rescale = proc.get("rescale_factor", 1 / 255) if proc.get("do_rescale", True) else 1.0
        if not (isinstance(rescale, (int, float)) and not isinstance(rescale, bool) and rescale > 0):
            raise ModelNotFoundError(f"{where}: rescale_factor must be a positive number, got {rescale!r}.")
    if resample not in RESAMPLE:
        raise ModelNotFoundError(f"{where}: resample {resample!r} is not one of PIL's filters 0-5.")
    stats = []
    for name, v in (("image_mean", mean), ("image_std", std)):
        v = [v] * 3 if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                             for x in v)):
            raise ModelNotFoundError(f"{where}: {name} must be a list of numbers, got {v!r}.")
        stats.append([float(x) for x in v])
    mean, std = stats
    if not all(s > 0 for s in std):
        raise ModelNotFoundError(f"{where}: image_std must be positive, got {std}.")
    # transformers: (pixel * rescale - mean) / std; timm: (pixel / 255 - mean') / std'  =>  mean' = mean / k,
    # std' = std / k with k = rescale * 255
    k = rescale * 255
    k = 1.0 if abs(k - 1) < 1e-9 else k  # 1/255 as a float
    mean, std = [m / k for m in mean], [s / k for s in std]
    if crop is None:
        if "height" not in resize:
            raise ModelNotFoundError(f"{where}: resizing the shortest edge without a crop gives images of varying "
                                     "shape; vitprune needs a fixed input size.")
        out = (resize["height"], resize["width"])
        crop_pct, mode = 1.0, "squash"
    else:
        out = (crop["height"], crop["width"])
        if "height" in resize:
            mode = "squash"
            crop_pct = _crop_pct(out[0], resize["height"])
            if math.floor(out[1] / crop_pct) != resize["width"]:
                raise ModelNotFoundError(f"{where}: resizing to {resize['height']}x{resize['width']} then cropping "
                                         f"{out[0]}x{out[1]} crops the two sides by different fractions, which "
                                         "timm's preprocessing cannot express.")
        else:
            if out[0] != out[1]:
                raise ModelNotFoundError(f"{where}: a {out[0]}x{out[1]} crop after resizing the shortest edge is not "
                                         "square, which timm's preprocessing cannot express.")
            mode = "center"
            crop_pct = _crop_pct(out[0], resize["shortest_edge"])
    return {"input_size": [3, out[0], out[1]], "interpolation": RESAMPLE[resample], "crop_pct": crop_pct,
            "crop_mode": mode, "mean": mean, "std": std}


def _architecture_of(heads: dict[str, str], names: Optional[set[str]]) -> str:
    """The class of a config that lists no ``architectures``: the one whose head tensors the checkpoint holds (the
    backbone without a checkpoint)."""
    kind = "none"
    if names and {"cls_classifier.weight", "distillation_classifier.weight"} <= names:
        kind = "distilled"
    elif names and "classifier.weight" in names:
        kind = "cls_mean" if "cls_mean" in heads.values() else "avg_cls" if "avg_cls" in heads.values() else "cls"
    elif names and "visual_projection.weight" in names:
        kind = "projection"
    fallback = next(iter(heads))  # a tower without head tensors: its first class (the pooled one, or CLIPModel)
    return next((a for a, h in heads.items() if h == kind), fallback)


def _vision_config(cfg: dict[str, Any], model_type: str, where: str) -> dict[str, Any]:
    """The config of the vision part: ``vision_config`` of a full image-text model, else the config itself."""
    if model_type not in ("clip", "siglip"):
        return cfg
    vision = cfg.get("vision_config", {})
    if vision is None:
        vision = {}
    if not isinstance(vision, dict):
        raise ModelNotFoundError(f"{where}: vision_config must be an object, got {type(vision).__name__}.")
    return vision


def _refuse(model_type: Any, named: Optional[str], where: str) -> UnsupportedModelError:
    what = f"{model_type!r}" + (f" ({named})" if named else "")
    why = f" ({REFUSED_WHY[model_type]})" if model_type in REFUSED_WHY else ""
    return UnsupportedModelError(f"{where} is a transformers {what} model{why}; vitprune converts {SUPPORTED} (or "
                                 "give a timm ViT).")


def plan_conversion(cfg: dict[str, Any], where: str, proc: Optional[dict[str, Any]] = None,
                    names: Optional[set[str]] = None) -> Conversion:
    """Check a transformers config.json and say what timm model it is (``names``: the checkpoint's tensor names,
    for a config that lists no ``architectures``); UnsupportedModelError in one line for anything that does not
    map."""
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures")
    named = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if model_type not in FAMILIES:
        raise _refuse(model_type, named, where)
    prefix, heads = FAMILIES[model_type]
    architecture = named or _architecture_of(heads, names)
    if architecture not in heads:
        raise UnsupportedModelError(f"{where} is a transformers {architecture}; of {model_type} vitprune converts "
                                    f"{', '.join(heads)}.")
    head = heads[architecture]
    tower = "clip" if model_type.startswith("clip") else "siglip" if model_type.startswith("siglip") else None
    top, cfg = cfg, _vision_config(cfg, model_type, where)
    notes = []
    dim = _int(cfg, "hidden_size", 768, where, hi=16384)
    depth = _int(cfg, "num_hidden_layers", 12, where, hi=256)
    num_heads = _int(cfg, "num_attention_heads", 12, where, hi=1024)
    if dim % num_heads or cfg.get("head_dim", dim // num_heads) != dim // num_heads:
        raise UnsupportedModelError(f"{where}: heads of {cfg.get('head_dim')} channels with hidden_size {dim} and "
                                    f"{num_heads} heads; a timm ViT splits hidden_size evenly over its heads.")
    patch = _pair(cfg, "patch_size", 32 if tower == "clip" else 16, where)
    if patch[0] != patch[1]:
        raise UnsupportedModelError(f"{where}: patch_size {list(patch)} is not square.")
    in_chans = _int(cfg, "num_channels", 3, where, hi=1024)
    eps = cfg.get("layer_norm_eps", 1e-12 if model_type in ("vit", "deit") else 1e-5 if tower == "clip" else 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ModelNotFoundError(f"{where}: layer_norm_eps must be a number in (0, 1), got {eps!r}.")
    qkv_bias = cfg.get("qkv_bias", True)
    if not isinstance(qkv_bias, bool):
        raise ModelNotFoundError(f"{where}: qkv_bias must be true or false, got {qkv_bias!r}.")
    swiglu = model_type.startswith("dinov2") and cfg.get("use_swiglu_ffn") is True
    act = cfg.get("hidden_act", {"clip": "quick_gelu", "siglip": "gelu_pytorch_tanh"}.get(tower or "", "gelu"))
    if not swiglu and act not in ACTIVATIONS:
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} has no timm equivalent vitprune maps (supported: "
                                    f"{', '.join(ACTIVATIONS)}).")
    if model_type.startswith("dinov2"):
        ratio = cfg.get("mlp_ratio", 4)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64:
            raise ModelNotFoundError(f"{where}: mlp_ratio must be a number in (0, 64], got {ratio!r}.")
        hidden = int(dim * ratio)
        if swiglu:  # transformers' SwiGLU: two thirds of the MLP width, rounded up to a multiple of 8, per half
            hidden = 2 * ((int(hidden * 2 / 3) + 7) // 8 * 8)
    else:
        hidden = _int(cfg, "intermediate_size", 4 * dim, where, hi=2**20)
    num_registers = _int(cfg, "num_register_tokens", 4, where, lo=0, hi=1024) \
        if model_type == "dinov2_with_registers" else 0
    size = preprocessing(model_type, cfg, proc, where)
    img = (size["input_size"][1], size["input_size"][2])
    if img[0] < patch[0] or img[1] < patch[1]:
        raise ModelNotFoundError(f"{where}: images of {img[0]}x{img[1]} are smaller than one {patch[0]}-pixel patch.")
    if tower == "siglip" and head == "pooled" and cfg.get("vision_use_head", True) is False:
        head = "avg"
        notes.append(f"{architecture} without its attention-pool head (vision_use_head false) has no pooled output "
                     "in transformers; the converted model pools by averaging its (normed) tokens")
    if head == "cls_mean":
        notes.append(f"{architecture}'s head (a linear layer on the class token concatenated with the mean of the "
                     "patch tokens) has no timm VisionTransformer equivalent; the backbone is loaded without a head")
        head_classes = 0
    elif head in ("none", "pooled", "avg"):
        head_classes = 0
    elif head == "projection":
        # CLIPModel: the top-level projection_dim; CLIPVisionModelWithProjection: its own
        head_classes = _int(top if model_type == "clip" else cfg, "projection_dim", 512, where, hi=2**20)
    else:
        id2label = top.get("id2label")
        head_classes = len(id2label) if isinstance(id2label, dict) and id2label else \
            _int(top, "num_labels", 2, where, lo=0)
    kind = "distilled" if model_type == "deit" and head in ("distilled", "none") else \
        "dinov2" if model_type.startswith("dinov2") else tower or "vit"
    args: dict[str, Any] = {
        "img_size": list(img), "patch_size": patch[0], "in_chans": in_chans, "num_classes": head_classes,
        "global_pool": "token", "embed_dim": dim, "depth": depth, "num_heads": num_heads,
        "mlp_ratio": _ratio(hidden, dim), "qkv_bias": qkv_bias,
    }
    if not swiglu:
        args["act_layer"] = ACTIVATIONS[act]
    if kind == "dinov2":
        scale = cfg.get("layerscale_value", 1.0)
        args["init_values"] = scale if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale \
            else 1.0  # any non-zero value: LayerScale is there either way and its weights are loaded
    if num_registers:
        args.update(reg_tokens=num_registers, no_embed_class=True)
    elif model_type == "deit" and kind == "vit":  # one head on the class token: the distillation token rides along
        args["reg_tokens"] = 1
    if tower == "clip":  # pre_layrnorm is timm's norm_pre (and makes timm's patch embedding bias-free, as CLIP's)
        args.update(class_token=True, pre_norm=True)
    elif tower == "siglip":  # no class token; the final norm on every token, then the pool
        args.update(class_token=False, global_pool="map" if head == "pooled" else "avg", fc_norm=False)
    labels = _labels(top, head_classes) if head not in ("projection",) else None
    pretrained_cfg: dict[str, Any] = {
        **size, "fixed_input_size": True, "num_classes": head_classes, "first_conv": "patch_embed.proj",
        "classifier": ["head", "head_dist"] if kind == "distilled" else "head",
    }
    if labels:
        pretrained_cfg["label_names"] = labels
    timm_config = {
        "architecture": _timm_name(kind, dim, depth, num_heads, patch[0], swiglu, bool(num_registers)),
        "num_classes": head_classes, "model_args": args, "pretrained_cfg": pretrained_cfg,
    }
    return Conversion(model_type, architecture, head, prefix, timm_config, float(eps), swiglu, num_registers,
                      (img[0] // patch[0], img[1] // patch[1]),
                      antialias=model_type == "dinov2_with_registers", notes=notes, tower=tower)


# --------------------------------------------------------------------------------------------- the weights


class _Tensors:
    """The tensors of a checkpoint, by name: shapes without reading data (safetensors), data on demand."""

    def __init__(self, path: Path, where: str):
        self.path, self.where = path, where
        self._open = None
        if path.name.endswith(".safetensors"):
            try:
                self._open = safe_open(str(path), framework="pt")
                self.shapes = {k: tuple(self._open.get_slice(k).get_shape()) for k in self._open.keys()}
            except (SafetensorError, OSError, ValueError) as e:
                raise ModelNotFoundError(f"{where}/{path.name} is damaged or truncated ({' '.join(str(e).split())}); "
                                         "download it again.") from None
            self._data: dict[str, torch.Tensor] = {}
        else:
            self._data = read_state_dict(path)
            self.shapes = {k: tuple(v.shape) for k, v in self._data.items()}

    def get(self, name: str) -> torch.Tensor:
        if name in self._data:
            return self._data[name].float()
        try:
            return self._open.get_tensor(name).float()
        except Exception as e:  # noqa: BLE001 - the header was fine; the data is not (or vanished meanwhile)
            raise ModelNotFoundError(f"{self.where}/{self.path.name} could not be read ({type(e).__name__}); "
                                     "download it again.") from None


@dataclass
class _Rule:
    sources: list[str]
    make: Callable[[list[torch.Tensor]], torch.Tensor]
    shape: Callable[[list[tuple[int, ...]]], tuple[int, ...]]


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 0)


def _cat_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return shapes[0] if len(shapes) == 1 else (sum(s[0] for s in shapes), *shapes[0][1:])


def _resample(pos: torch.Tensor, grid: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Patch position embeddings ``(1, N, C)`` on a square grid resampled to ``grid`` as transformers does when
    it interpolates them for an image of that many patches."""
    n, dim = pos.shape[1], pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ModelNotFoundError(f"position embeddings for {n} patches are not a square grid.")
    if (side, side) == tuple(grid):
        return pos
    img = pos.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False, antialias=antialias)
    return img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def _map_tensors(timm_keys: list[str], special: dict[str, _Rule],
                 block_sources: Callable[[str, str, str], list[str]], top_names: dict[str, str]) -> dict[str, _Rule]:
    """The rule of every timm tensor: its ``special`` rule, else the transformers tensors that ``block_sources(i,
    sub, param)`` names for ``blocks.{i}.{sub}.{param}`` or ``top_names`` for a top-level module, concatenated on
    the first axis (q, k, v into timm's qkv); ``UnsupportedModelError`` for a tensor nothing maps to."""
    same = _Rule([], _cat, _cat_shape)
    rules = {}
    for key in timm_keys:
        if key in special:
            rules[key] = special[key]
            continue
        module, _, param = key.rpartition(".")
        if module.startswith("blocks."):
            _, i, sub = module.split(".", 2)
            names = block_sources(i, sub, param)
        else:
            names = [f"{top_names[module]}.{param}"] if module in top_names else []
        if not names:
            raise UnsupportedModelError(f"the timm model has a tensor {key} that no transformers tensor maps to.")
        rules[key] = _Rule(names, same.make, same.shape)
    return rules


def _rules(conv: Conversion, timm_keys: list[str], prefix: str) -> dict[str, _Rule]:
    """For every tensor of the timm model: which transformers tensors make it, and how."""
    dinov2 = conv.model_type.startswith("dinov2")
    emb = f"{prefix}embeddings."
    n_prefix = 2 if conv.model_type == "deit" else 1  # position embeddings of the class (and distillation) token
    grid = conv.grid
    pos = f"{emb}position_embeddings"

    def pos_embed(t: list[torch.Tensor]) -> torch.Tensor:
        patches = _resample(t[0][:, n_prefix:], grid, conv.antialias)
        return patches if conv.num_registers else torch.cat([t[0][:, :n_prefix], patches], 1)

    def pos_shape(s: list[tuple[int, ...]]) -> tuple[int, ...]:
        n = grid[0] * grid[1] + (0 if conv.num_registers else n_prefix)
        return (1, n, s[0][2])

    special: dict[str, _Rule] = {
        "cls_token": _Rule([f"{emb}cls_token"] + ([pos] if conv.num_registers else []),
                           # with registers the class token's position embedding is folded into it
                           lambda t: t[0] + t[1][:, :1] if len(t) > 1 else t[0], lambda s: s[0]),
        "pos_embed": _Rule([pos], pos_embed, pos_shape),
        "reg_token": _Rule([f"{emb}register_tokens" if conv.num_registers else f"{emb}distillation_token"], _cat,
                           _cat_shape),
        "dist_token": _Rule([f"{emb}distillation_token"], _cat, _cat_shape),
    }
    block_names = {"norm1": "norm1" if dinov2 else "layernorm_before",
                   "norm2": "norm2" if dinov2 else "layernorm_after",
                   "attn.proj": "attention.output.dense",
                   "mlp.fc1": ("mlp.weights_in" if conv.swiglu else "mlp.fc1") if dinov2 else "intermediate.dense",
                   "mlp.fc2": ("mlp.weights_out" if conv.swiglu else "mlp.fc2") if dinov2 else "output.dense",
                   "ls1": "layer_scale1", "ls2": "layer_scale2"}
    top_names = {"patch_embed.proj": f"{emb}patch_embeddings.projection", "norm": f"{prefix}layernorm",
                 "head": "cls_classifier" if conv.head == "distilled" else "classifier",
                 "head_dist": "distillation_classifier"}
    def block_sources(i: str, sub: str, param: str) -> list[str]:
        layer = f"{prefix}encoder.layer.{i}."
        if sub == "attn.qkv":
            return [f"{layer}attention.attention.{p}.{param}" for p in ("query", "key", "value")]
        if sub in ("ls1", "ls2") and param == "gamma":
            return [f"{layer}{block_names[sub]}.lambda1"]
        return [f"{layer}{block_names[sub]}.{param}"] if sub in block_names else []

    return _map_tensors(timm_keys, special, block_sources, top_names)


def _tower_rules(conv: Conversion, timm_keys: list[str], prefix: str) -> dict[str, _Rule]:
    """For every tensor of the timm model of a CLIP or SigLIP vision tower: which transformers tensors make it."""
    emb = f"{prefix}embeddings."
    dim = conv.timm_config["model_args"]["embed_dim"]
    n_prefix = 1 if conv.tower == "clip" else 0  # CLIP's class token has a position embedding; SigLIP has none
    grid = conv.grid

    def pos_embed(t: list[torch.Tensor]) -> torch.Tensor:
        pos = t[0][None]  # nn.Embedding's (positions, dim) as timm's (1, positions, dim)
        return torch.cat([pos[:, :n_prefix], _resample(pos[:, n_prefix:], grid, False)], 1)

    def rows(lo: int, hi: int) -> _Rule:  # a slice of nn.MultiheadAttention's packed in-projection
        return _Rule([], lambda t: t[0][lo:hi], lambda s: (hi - lo, *s[0][1:]))

    special: dict[str, _Rule] = {
        "cls_token": _Rule([f"{emb}class_embedding"], lambda t: t[0].reshape(1, 1, -1), lambda s: (1, 1, s[0][-1])),
        "pos_embed": _Rule([f"{emb}position_embedding.weight"], pos_embed,
                           lambda s: (1, grid[0] * grid[1] + n_prefix, s[0][1])),
        "head.weight": _Rule(["classifier.weight" if conv.head == "avg_cls" else "visual_projection.weight"], _cat,
                             _cat_shape),
        # CLIP's projection has no bias: timm's head has one, held at zero (as timm's own CLIP models load it)
        "head.bias": _Rule(["classifier.bias"], _cat, _cat_shape) if conv.head == "avg_cls" else
        _Rule(["visual_projection.weight"], lambda t: torch.zeros(t[0].shape[0]), lambda s: (s[0][0],)),
        "attn_pool.latent": _Rule([f"{prefix}head.probe"], _cat, _cat_shape),
    }
    in_proj = f"{prefix}head.attention.in_proj_"
    for param, tail in (("weight", "weight"), ("bias", "bias")):
        q, kv = rows(0, dim), rows(dim, 3 * dim)
        special[f"attn_pool.q.{param}"] = _Rule([f"{in_proj}{tail}"], q.make, q.shape)
        special[f"attn_pool.kv.{param}"] = _Rule([f"{in_proj}{tail}"], kv.make, kv.shape)
    block_names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                   "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    top_names = {"patch_embed.proj": f"{emb}patch_embedding", "norm_pre": f"{prefix}pre_layrnorm",
                 "norm": f"{prefix}post_layernorm", "attn_pool.proj": f"{prefix}head.attention.out_proj",
                 "attn_pool.norm": f"{prefix}head.layernorm", "attn_pool.mlp.fc1": f"{prefix}head.mlp.fc1",
                 "attn_pool.mlp.fc2": f"{prefix}head.mlp.fc2"}
    def block_sources(i: str, sub: str, param: str) -> list[str]:
        layer = f"{prefix}encoder.layers.{i}."
        if sub == "attn.qkv":
            return [f"{layer}self_attn.{p}_proj.{param}" for p in ("q", "k", "v")]
        return [f"{layer}{block_names[sub]}.{param}"] if sub in block_names else []

    return _map_tensors(timm_keys, special, block_sources, top_names)


def _tower_dropped(name: str, prefix: str, head: str) -> bool:
    """Tensors of a CLIP/SigLIP checkpoint with no place in the vision tower's timm model: the text tower, its
    projection and the logit scale/bias of a full image-text model, the position ids buffer older checkpoints hold,
    and the attention-pool head SiglipForImageClassification carries but does not use."""
    return (name.startswith(("text_model.", "text_projection.")) or name in ("logit_scale", "logit_bias")
            or name == f"{prefix}embeddings.position_ids"
            or (head == "avg_cls" and name.startswith(f"{prefix}head.")))


#: transformers tensors that have no place in a timm ViT and are dropped: the mask token (masked pre-training) and
#: the pooler of ViTModel/DeiTModel (dense + tanh on the class token, unused by classification)
def _dropped(name: str, prefix: str) -> bool:
    return name == f"{prefix}embeddings.mask_token" or name.startswith(("pooler.", f"{prefix}pooler."))


def convert_state_dict(conv: Conversion, tensors: _Tensors, target: dict[str, torch.Tensor], where: str
                       ) -> dict[str, torch.Tensor]:
    """The timm state dict of a transformers checkpoint; names and shapes are checked before any data is read."""
    names = set(tensors.shapes)
    prefix = f"{conv.prefix}." if any(n.startswith(f"{conv.prefix}.") for n in names) else ""
    if conv.head == "cls_mean":
        names -= {"classifier.weight", "classifier.bias"}  # dropped with the warning of plan_conversion
    if conv.tower:
        rules = _tower_rules(conv, list(target), prefix)
        dropped = lambda n: _tower_dropped(n, prefix, conv.head)  # noqa: E731
    else:
        rules = _rules(conv, list(target), prefix)
        dropped = lambda n: _dropped(n, prefix)  # noqa: E731
    used = {s for r in rules.values() for s in r.sources}
    missing = sorted(used - names)
    unknown = sorted(n for n in names - used if not dropped(n))
    if missing or unknown:
        parts = ([f"missing {len(missing)} tensors (e.g. {missing[0]})"] if missing else []) + \
            ([f"{len(unknown)} tensors it does not map (e.g. {unknown[0]})"] if unknown else [])
        raise ModelNotFoundError(f"the weights in {where} do not fit its {conv.architecture} config: "
                                 f"{'; '.join(parts)}.")
    for key, rule in rules.items():
        shapes = [tensors.shapes[s] for s in rule.sources]
        want = tuple(target[key].shape)
        ok = len({s[1:] for s in shapes}) == 1 if len(shapes) > 1 and key.endswith("qkv.weight") else True
        if not ok or rule.shape(shapes) != want:
            raise ModelNotFoundError(f"the weights in {where} do not fit its {conv.architecture} config: "
                                     f"{rule.sources[0]} is {list(shapes[0])}, the model needs {list(want)} for {key}.")
    return {key: rule.make([tensors.get(s) for s in rule.sources]) for key, rule in rules.items()}


# --------------------------------------------------------------------------------------------- loading


def _read_json(path: Optional[Path], where: str) -> Optional[dict[str, Any]]:
    if path is None or not path.is_file():
        return None
    return parse_config(read_config_bytes(path, where), where)


def _finish(model: nn.Module, conv: Conversion) -> nn.Module:
    if conv.layer_norm_eps != TIMM_LAYER_NORM_EPS:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = conv.layer_norm_eps
    if conv.embedding:
        model.vitprune_output = EMBEDDING
    for note in conv.notes:
        log.warning(note)
    return model


def convert(cfg: dict[str, Any], where: str, *, preprocessor: Optional[Path] = None, weights: Optional[Path] = None
            ) -> nn.Module:
    """The timm ViT of a transformers config (``where`` names it in messages), with the weights of ``weights``
    (model.safetensors or pytorch_model.bin) or random ones when None."""
    proc = _read_json(preprocessor, f"{where}/{PREPROCESSOR_NAME}")
    tensors = _Tensors(weights, where) if weights is not None else None
    conv = plan_conversion(cfg, f"{where}/config.json", proc, set(tensors.shapes) if tensors else None)
    plan = plan_model(conv.timm_config, where)
    if tensors is None:
        return _finish(plan.build(), conv)
    state = convert_state_dict(conv, tensors, plan.meta.state_dict(), where)
    model = plan.build()
    model.load_state_dict(state, strict=True)
    return _finish(model, conv)


def _weights_in(folder: Path) -> Optional[Path]:
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def load_transformers_folder(folder: Path, cfg: dict[str, Any], *, pretrained: bool, source: str) -> nn.Module:
    """A local transformers model folder as a timm ViT."""
    weights = _weights_in(folder) if pretrained else None
    if pretrained and weights is None:
        raise ModelNotFoundError(f"{source} has no {SAFETENSORS_NAME} (or {PICKLE_NAME}).")
    model = convert(cfg, source, preprocessor=folder / PREPROCESSOR_NAME, weights=weights)
    model.vitprune_source = source
    if is_local_path(str(folder)):
        model.vitprune_base_model = public_model(str(folder))  # the Hub repo it came from, never a local path
    return model


def _optional_download(repo_id: str, filename: str, revision: Optional[str]) -> Optional[Path]:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (hf_errors.EntryNotFoundError, hf_errors.LocalEntryNotFoundError):
        return None


def load_transformers_hub(spec: str, repo_id: str, revision: Optional[str], cfg: dict[str, Any], *,
                          pretrained: bool) -> nn.Module:
    """A transformers repo on the Hub (or in the local cache) as a timm ViT: config (read already), image
    processor settings when the repo has them, and model.safetensors (pytorch_model.bin when it has none)."""
    plan_conversion(cfg, f"{spec}/config.json")  # refuse what does not map before downloading anything
    preprocessor = hub_call(spec, _optional_download, repo_id, PREPROCESSOR_NAME, revision)
    weights = None
    if pretrained:
        weights = hub_call(spec, _optional_download, repo_id, SAFETENSORS_NAME, revision)
        if weights is None:
            weights = hub_call(spec, _optional_download, repo_id, PICKLE_NAME, revision)
        if weights is None:
            raise not_found(f"{spec} ({SAFETENSORS_NAME} or {PICKLE_NAME})", ensure_offline_if_unreachable())
    model = convert(cfg, spec, preprocessor=preprocessor, weights=weights)
    model.vitprune_source = spec
    return model


__all__ = ["is_transformers_config", "plan_conversion", "convert", "preprocessing", "load_transformers_folder",
           "load_transformers_hub", "public_base", "SUPPORTED"]
