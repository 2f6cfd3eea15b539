"""Resolve a MODEL argument to a timm Vision Transformer.

MODEL may be:

* ``demo`` - the demo teacher bundled with vitprune (a small ViT trained on scikit-learn's digits);
* a timm model name (``deit_small_patch16_224``, with or without a ``.tag``);
* ``hf-hub:org/repo[@revision]`` - a timm or vitprune repo on the Hugging Face Hub (or in the local cache);
* a local folder: a timm folder (``config.json`` + weights) or a folder saved by ``vitprune.save``;
* a Hugging Face ``transformers`` ViT, DeiT or DINOv2 (a folder or ``hf-hub:``), converted to the equivalent timm
  ViT by :mod:`vitprune.hub.transformers`.

Without network access the local Hugging Face cache is used: either ``HF_HUB_OFFLINE=1`` is set, or a quick
reachability probe of the Hub endpoint fails, and vitprune switches huggingface_hub to offline mode so nothing
waits on retries.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
from functools import lru_cache
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from huggingface_hub import errors as hf_errors, hf_hub_download, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import ModelNotFoundError
from ..files import RefusedPath, read_bytes, read_tensors
from ..offline import ensure_offline_if_unreachable
from ..methods.base import check_vit
from ..train.losses import EMBEDDING
from .limits import check_size
from ..files import check_regular, inside
from ..methods import create_method, patch_with

VITPRUNE_KEY = "vitprune"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def demo_dir() -> Path:
    """The folder of the bundled demo teacher (a vitprune/timm model folder)."""
    return Path(str(resources.files("vitprune.assets").joinpath("demo")))


# --------------------------------------------------------------------------------------------- network


@lru_cache(maxsize=1)
def model_slug(spec: str) -> str:
    """A model spec as a file-name part: ``hf-hub:org/name`` -> ``name``, a folder -> its name."""
    name = spec.split(":", 1)[1] if spec.startswith(("hf-hub:", "local-dir:")) else spec
    name = Path(name.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


#: what the offline message adds when what is missing is only pretrained weights
ARCHITECTURE_ONLY = ("; for an architecture-only run (GMACs, tokens, speed, export) build it with random weights: "
                     "--no-weights (pretrained=False in Python)")


def _not_found(spec: str, offline: bool, cause: Exception | None = None, weights: bool = False) -> ModelNotFoundError:
    if offline:
        msg = (
            f"{spec} is not in the local Hugging Face cache and the Hub is offline or unreachable; "
            "download it once with network access, or point HF_HUB_CACHE at a cache that has it"
            + (ARCHITECTURE_ONLY if weights else "") + "."
        )
    else:
        msg = f"{spec} was not found on the Hugging Face Hub; check the repo name (and that you have access to it)."
    return ModelNotFoundError(msg)


def _hub_call(spec: str, fn, *args, weights: bool = False, **kwargs):
    """Run a huggingface_hub/timm call that may download, mapping hub errors to ModelNotFoundError (``weights``:
    the call fetches only pretrained weights, which an architecture-only run does without)."""
    offline = ensure_offline_if_unreachable()
    try:
        return fn(*args, **kwargs)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        raise _not_found(spec, True, e, weights=weights) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError) as e:
        raise _not_found(spec, offline, e) from None
    except hf_errors.HFValidationError:
        raise ModelNotFoundError(f"{spec!r} is not a valid Hub repo name or revision.") from None
    except (RuntimeError, OSError, ValueError) as e:  # weights that do not fit or do not read (safetensors, torch)
        if isinstance(e, hf_errors.HfHubHTTPError):
            raise
        first = " ".join(str(e).split())[:200]
        raise ModelNotFoundError(f"the weights of {spec} could not be loaded ({type(e).__name__}: {first}).") from None


# --------------------------------------------------------------------------------------------- checks


def _suggest(name: str) -> str:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else " See `timm.list_models('*vit*')` for names."


# --------------------------------------------------------------------------------------------- loading

#: a config.json is a few KB; anything this large is not one
MAX_CONFIG_BYTES = 16 * 2**20
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
#: weights files of a plain timm folder vitprune reads (as tensors only) when it has no model.safetensors
TORCH_WEIGHTS = ("pytorch_model.bin", "model.pth", "pytorch_model.pth")
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in a config.json's bytes, or ModelNotFoundError in one line."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelNotFoundError(f"{where} is {len(data) / 2**20:.0f} MB, not a model config.")
    try:
        cfg = json.loads(data)
    except json.JSONDecodeError as e:
        raise ModelNotFoundError(f"{where} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise ModelNotFoundError(f"{where} is not valid JSON text.") from None
    if not isinstance(cfg, dict):
        raise ModelNotFoundError(f"{where} holds a JSON {type(cfg).__name__}, not an object with the model's "
                                 "settings.")
    return cfg


def read_config(folder: str | os.PathLike, where: Optional[str] = None) -> dict[str, Any]:
    """The JSON object in ``folder``'s config.json (the one reader of config.json files), or ModelNotFoundError in
    one line (missing, too large, not JSON, not an object)."""
    folder = Path(folder)
    where = where or str(folder)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise ModelNotFoundError(f"{where} has no {CONFIG_NAME}; it is not a timm or vitprune model folder.")
    return parse_config(read_config_bytes(cfg_file, f"{where}/{CONFIG_NAME}"), f"{where}/{CONFIG_NAME}")


def read_config_bytes(path: str | os.PathLike, where: str) -> bytes:
    """A config file's bytes through the file gate (a regular file, at most ``MAX_CONFIG_BYTES`` + 1 read)."""
    try:
        return read_bytes(path, limit=MAX_CONFIG_BYTES)
    except RefusedPath as e:
        raise ModelNotFoundError(f"{where} is {e}; not a model config.") from None


def read_vitprune_section(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``vitprune`` section of a saved folder's config.json ({} for a plain timm folder)."""
    section = read_config(folder).get(VITPRUNE_KEY)
    return section if isinstance(section, dict) else {}


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
    import timm
    from timm.models._hub import _parse_model_cfg

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
        import timm

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
    import timm

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


def check_weights(model: nn.Module, weights: Path, where: str) -> None:
    """Every tensor of ``model`` (on any device, ``meta`` included) against the safetensors header of ``weights``:
    names, shapes and kinds (floating or not), read without loading any data. ModelNotFoundError in one line."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelNotFoundError(f"{where}/{WEIGHTS_NAME} is damaged or truncated ({' '.join(str(e).split())}); "
                                 "save or download it again.") from None
    own = model.state_dict()
    missing = [k for k in own if k not in header]
    unexpected = [k for k in header if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
        raise ModelNotFoundError(f"the weights in {where} do not match its config: {'; '.join(parts)}.")
    for k, t in own.items():
        shape, dtype = header[k]
        if shape != tuple(t.shape):
            raise ModelNotFoundError(f"the weights in {where} do not match its config: {k} is {list(shape)} in "
                                     f"{WEIGHTS_NAME}, {list(t.shape)} in the model.")
        if (dtype in _FLOAT_DTYPES) != t.is_floating_point():
            raise ModelNotFoundError(f"the weights in {where} do not match its config: {k} is {dtype} in "
                                     f"{WEIGHTS_NAME}, {str(t.dtype).removeprefix('torch.')} in the model.")


def _model_files(folder: Path) -> Path:
    """Where to read config.json and model.safetensors: in a folder saved by vitprune, the version both
    top-level links lead to, resolved once (a save switching versions meanwhile cannot hand over a mix)."""
    from .save import current_version, is_our_link

    if all(is_our_link(folder, name) for name in (CONFIG_NAME, WEIGHTS_NAME)):
        version = current_version(folder)
        if version is not None:
            return version
    return folder


def load_folder(folder: Path, *, pretrained: bool = True, source: Optional[str] = None,
                root: Optional[Path] = None) -> nn.Module:
    """Load a local timm or vitprune folder (``config.json`` + ``model.safetensors``).

    Nothing is allocated before the config is checked and, with weights, before every tensor's name, shape and
    kind in the safetensors header matches the model built on the ``meta`` device. The weights file must be a
    regular file inside ``root`` (default: the folder; for a Hub download, the repo's cache folder, whose snapshot
    files are links to its blobs).
    """
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    where = source or str(folder)
    files = _model_files(folder)
    cfg = read_config(files, where)
    from .transformers import is_transformers_config, load_transformers_folder

    if is_transformers_config(cfg):
        return load_transformers_folder(files, cfg, pretrained=pretrained, source=where)
    if pretrained:
        weights = files / WEIGHTS_NAME
        plan = plan_model(cfg, where)
        if not os.path.lexists(weights):
            if VITPRUNE_KEY not in cfg:  # a plain timm folder may hold pytorch_model.bin: read as tensors only
                model = _load_torch_weights(plan, files, where, root)
                model.vitprune_source = source or str(folder)
                return model
            raise ModelNotFoundError(f"{where} has no {WEIGHTS_NAME}; the save did not finish.")
        try:
            files_inside = inside_folder(root, files / WEIGHTS_NAME)
        except RefusedPath as e:
            raise ModelNotFoundError(f"{where}/{WEIGHTS_NAME}: {e}.") from None
        check_weights(plan.meta, files_inside, where)
        model = plan.build()
        try:
            state = load_file(str(files_inside))
        except Exception as e:  # noqa: BLE001 - the header was fine; the data is not (or vanished meanwhile)
            raise ModelNotFoundError(f"{where}/{WEIGHTS_NAME} could not be read ({type(e).__name__}); load it "
                                     "again.") from None
        model.load_state_dict(state, strict=True)
    else:
        model = build_from_config(cfg, source=where)
    model.vitprune_source = source or str(folder)
    return model


def inside_folder(root: Path, path: Path) -> Path:
    """``path`` (under ``root``) resolved inside ``root``, a regular file (``RefusedPath`` otherwise)."""
    path = inside(root, os.path.relpath(path, root), what="file")
    check_regular(path)
    return path


def _load_torch_weights(plan: "_Plan", folder: Path, where: str, root: Path) -> nn.Module:
    """A plain timm folder's PyTorch weights file, read as tensors only (``vitprune.files.read_tensors``: a pickle
    that would run code is refused unread), checked against the model built on ``meta`` and loaded strictly."""
    name = next((n for n in TORCH_WEIGHTS if os.path.lexists(folder / n)), None)
    if name is None:
        raise ModelNotFoundError(f"{where} has no weights ({WEIGHTS_NAME} or {', '.join(TORCH_WEIGHTS)}).")
    try:
        state = read_tensors(inside_folder(root, folder / name))
    except Exception as e:  # noqa: BLE001 - a pickle with code, another program's objects, a FIFO, a link out
        raise ModelNotFoundError(f"{where}/{name} is not a file of tensors vitprune reads ({type(e).__name__}); "
                                 f"save it as {WEIGHTS_NAME}.") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(f"{where}/{name} does not hold a state dict of tensors.")
    own = plan.meta.state_dict()
    wrong = [k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own]
    if wrong or extra:
        first = (wrong or extra)[0]
        raise ModelNotFoundError(f"the weights in {where}/{name} do not match its config (e.g. {first}).")
    model = plan.build()
    model.load_state_dict(state, strict=True)
    return model


def _load_hub(spec: str, *, pretrained: bool) -> nn.Module:
    import timm

    repo = spec[len("hf-hub:"):]
    repo_id, _, revision = repo.partition("@")
    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("not org/name")
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelNotFoundError(f"{spec!r} is not a Hub repo name; write it as hf-hub:org/name (letters, digits, "
                                 "'-', '_', '.').") from None
    cfg_path = _hub_call(spec, hf_hub_download, repo_id, CONFIG_NAME, revision=revision or None)
    cfg = parse_config(read_config_bytes(cfg_path, f"{spec}/{CONFIG_NAME}"), f"{spec}/{CONFIG_NAME}")
    from .transformers import is_transformers_config, load_transformers_hub

    if is_transformers_config(cfg):
        return load_transformers_hub(spec, repo_id, revision or None, cfg, pretrained=pretrained)
    if VITPRUNE_KEY not in cfg:  # a timm repo: checked (type, size, ViT) before timm downloads its weights
        plan_model(cfg, spec)
    if VITPRUNE_KEY in cfg:
        if not pretrained:
            return build_from_config(cfg, source=spec)
        folder = _hub_call(
            spec, snapshot_download, repo_id, revision=revision or None,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], weights=True,
        )
        model = load_folder(Path(folder), source=spec, root=Path(folder).parents[1])  # models--org--name/
        return model
    model = _hub_call(spec, timm.create_model, spec, pretrained=pretrained, weights=True)
    model.vitprune_source = spec
    return model


def load_model(spec: str = "demo", *, pretrained: bool = True) -> nn.Module:
    """Load MODEL (``demo``, a timm name, ``hf-hub:org/repo``, or a local folder) as a timm ViT in eval mode.

    Saved vitprune models come back with their method applied. ``pretrained=False`` builds the architecture with
    random weights (enough for FLOPs and speed) and downloads no weights.
    """
    import timm

    spec = str(spec)
    if spec == "demo":
        model = load_folder(demo_dir(), pretrained=pretrained, source="demo")
    elif spec.startswith("hf-hub:") or spec.startswith("hf_hub:"):
        model = _load_hub("hf-hub:" + spec.split(":", 1)[1], pretrained=pretrained)
    elif spec.startswith("local-dir:") or os.sep in spec or spec.startswith(".") or Path(spec).is_dir():
        folder = Path(spec.split(":", 1)[1] if spec.startswith("local-dir:") else spec).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"folder {folder} does not exist; give a timm model name, hf-hub:org/repo or a folder.")
        model = load_folder(folder, pretrained=pretrained)
    else:
        if not timm.is_model(spec.split(".")[0]) and not timm.is_model(spec):
            raise ModelNotFoundError(f"unknown model {spec!r}: not a timm model name or a folder.{_suggest(spec)}")
        with torch.device("meta"):  # check the architecture before downloading any weights
            check_vit(timm.create_model(spec, pretrained=False), spec)
        model = _hub_call(spec, timm.create_model, spec, pretrained=pretrained, weights=True)
        model.vitprune_source = spec
    check_vit(model, spec)
    return model.eval()


def load(spec: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by ``vitprune.save`` (a folder or ``hf-hub:user/name``), method and weights included."""
    spec = str(spec)
    if not (spec.startswith("hf-hub:") or spec == "demo"):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"folder {folder} does not exist.")
    return load_model(spec, pretrained=True)
