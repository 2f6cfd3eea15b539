"""A timm/vitprune ``config.json`` checked (types, ranges, the model args timm may take, a Vision Transformer, the
vitprune section) and built on the ``meta`` device before anything is allocated; ``.build()`` makes the real model.
Local folders, Hub repos and converted transformers checkpoints are all built through ``plan_model``."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Optional

import timm
import torch
from timm.models._hub import _parse_model_cfg
from torch import nn

from ..errors import ModelNotFoundError
from ..methods import create_method, patch_with
from ..methods.base import check_vit
from ..modelfolder import CONFIG_NAME, VITPRUNE_KEY
from ..train.losses import EMBEDDING
from .limits import check_size

#: bounds on the integer model_args of a ViT config (beyond any published ViT, far below a runaway allocation)
INT_ARGS = {"img_size": (1, 8192), "patch_size": (1, 1024), "in_chans": (1, 1024), "num_classes": (0, 10**6),
            "embed_dim": (1, 16384), "depth": (1, 256), "num_heads": (1, 1024), "reg_tokens": (0, 1024),
            "num_features": (0, 10**6)}
#: the ``model_args`` keys a config.json may pass to ``timm.create_model``: the settings of timm's
#: VisionTransformer and Eva (what timm's save_for_hf records, and vitprune's transformers conversion writes), all
#: plain values. Keys that make timm read files or fetch weights (``checkpoint_path``, ``pretrained_cfg``,
#: ``pretrained_cfg_overlay``, ``cache_dir``...) or take Python classes are not among them.
MODEL_ARGS = frozenset({
    "act_layer", "attn_drop_rate", "attn_layer", "attn_only_layer_scale", "attn_pool_mlp_ratio",
    "attn_pool_num_heads", "attn_type", "class_token", "depth", "drop_path_rate", "drop_rate", "dynamic_img_pad",
    "dynamic_img_size", "embed_dim", "embed_norm_layer", "fc_norm", "final_norm", "fix_init", "global_pool",
    "head_init_scale", "img_size", "in_chans", "init_values", "mlp_ratio", "no_embed_class", "norm_layer",
    "num_classes", "num_heads", "num_kv_heads", "num_reg_tokens", "patch_drop_rate", "patch_size",
    "pool_include_prefix", "pos_drop_rate", "pos_embed", "pre_norm", "proj_bias", "proj_drop_rate", "qk_norm",
    "qkv_bias", "qkv_fused", "ref_feat_shape", "reg_tokens", "rope_grid_indexing", "rope_grid_offset",
    "rope_jitter_coords", "rope_mrope_section", "rope_rescale_coords", "rope_rotate_half", "rope_shift_coords",
    "rope_temperature", "rope_type", "scale_attn_inner", "scale_attn_norm", "scale_mlp", "scale_mlp_norm",
    "swiglu_align_to", "swiglu_mlp", "use_abs_pos_emb", "use_fc_norm", "use_post_norm",
    "use_post_transformer_norm", "use_pre_transformer_norm", "use_rot_pos_emb", "weight_init",
})


def _check_args(args: dict[str, Any], where: str) -> None:
    for key in args:
        if key not in MODEL_ARGS and key != "num_classes":
            raise ModelNotFoundError(f"{where}: model_args {key!r} is not a setting vitprune passes to timm (it "
                                     "accepts the plain settings of a ViT or EVA, e.g. img_size, depth, num_heads).")
    for key, (lo, hi) in INT_ARGS.items():
        if key not in args or (key in ("num_classes", "num_features") and args[key] is None):
            continue
        v = args[key]
        values = v if key == "img_size" and isinstance(v, (list, tuple)) and len(v) == 2 else [v]
        if not all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in values):
            raise ModelNotFoundError(f"{where}: {key} must be an integer from {lo} to {hi}, got {v!r}.")
    ratio = args.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 64):
        raise ModelNotFoundError(f"{where}: mlp_ratio must be a number in (0, 64], got {ratio!r}.")


def _architecture(cfg: dict[str, Any], source: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(pretrained_cfg, architecture, model_args) of a config, each checked for type and range."""
    where = f"{source}/{CONFIG_NAME}"
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelNotFoundError(f"{where} names no architecture (an \"architecture\" string).")
    for key in ("pretrained_cfg", "model_args"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise ModelNotFoundError(f"{where}: {key} must be an object, got {type(cfg[key]).__name__}.")
    if not timm.is_model(arch):
        raise ModelNotFoundError(f"{source} names architecture {arch!r}, which this timm does not know; upgrade timm.")
    _check_args({"num_classes": cfg.get("num_classes"), **cfg.get("model_args", {})}, where)
    try:
        return _parse_model_cfg(json.loads(json.dumps(cfg)), {"source": source})
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ModelNotFoundError(f"{where} is malformed ({type(e).__name__}: {e}).") from None


@dataclass
class _Plan:
    """A checked config: what to build, and that model built on the ``meta`` device (no memory)."""

    arch: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any]
    method: Optional[str]
    options: dict[str, Any]
    where: str
    meta: Optional[nn.Module] = None
    #: the architecture takes ``weight_init`` (timm's VisionTransformer does, Eva does not)
    skips_init: bool = True
    #: the vitprune section's ``output``: "embedding" for a head whose output is an embedding (CLIP's projection)
    output: Optional[str] = None

    def build(self, meta: bool = False) -> nn.Module:
        skip = {"weight_init": "skip"} if meta and self.skips_init and "weight_init" not in self.model_args else {}
        try:
            with torch.device("meta") if meta else contextlib.nullcontext():
                model = timm.create_model(self.arch, pretrained=False, pretrained_cfg=self.pretrained_cfg,
                                          **self.model_args, **skip)
        except Exception as e:  # noqa: BLE001 - a config another tool wrote: whatever fails to build is its problem
            first = " ".join(str(e).split())[:200]
            raise ModelNotFoundError(f"{self.where} does not describe a {self.arch} timm can build "
                                     f"({type(e).__name__}: {first}).") from None
        if self.method:
            with torch.device("meta") if meta else contextlib.nullcontext():
                patch_with(model, create_method(self.method, **self.options))  # recorded, not asked: no warnings
        if self.output is not None:
            model.vitprune_output = self.output
        return model


def plan_model(cfg: dict[str, Any], source: str) -> _Plan:
    """Check a timm/vitprune ``config.json`` (types, sizes, a Vision Transformer, the vitprune section) and build
    it on the ``meta`` device: one-line errors, nothing allocated; ``.build()`` then makes the real model."""
    where = f"{source}/{CONFIG_NAME}"
    pretrained_cfg, arch, model_args = _architecture(cfg, source)
    with torch.device("meta"):  # a ViT at all (before the config's arguments)? (no weight init on meta)
        skips_init = True
        try:
            default = timm.create_model(arch, pretrained=False, weight_init="skip")
        except TypeError:  # an architecture without that argument (timm's Eva; or not a ViT at all)
            skips_init = False
            default = timm.create_model(arch, pretrained=False)
        check_vit(default, source)
    section = cfg.get(VITPRUNE_KEY) or {}
    method = section.get("method") if isinstance(section, dict) else None
    options = (section.get("options") if isinstance(section, dict) else None) or {}
    if not isinstance(section, dict) or not isinstance(method or "", str) or not isinstance(options, dict):
        raise ModelNotFoundError(f"{where}: the vitprune section must be an object with a method name and options.")
    output = section.get("output")
    if output not in (None, EMBEDDING):
        raise ModelNotFoundError(f"{where}: the vitprune section's output must be {EMBEDDING!r} or absent, got "
                                 f"{output!r}.")
    plan = _Plan(arch, pretrained_cfg, model_args, method, options, where, skips_init=skips_init, output=output)
    plan.meta = plan.build(meta=True)
    check_size(plan.meta, where)  # tokens per image and bytes against the memory available now
    return plan


def build_from_config(cfg: dict[str, Any], *, source: str) -> nn.Module:
    """Create the (random-weight) architecture a timm/vitprune ``config.json`` describes, method included, once
    ``plan_model`` has checked it on the ``meta`` device."""
    return plan_model(cfg, source).build()


__all__ = ["INT_ARGS", "MODEL_ARGS", "plan_model", "build_from_config"]
