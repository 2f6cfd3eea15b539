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

import difflib
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import ModelNotFoundError
from ..files import RefusedPath, check_regular, inside
from ..tensorfiles import read_tensors
from ..methods.base import check_vit
# the folder format and the config checks, where they live (also imported from here: hub.load.MODEL_ARGS...)
from ..modelfolder import (  # noqa: F401
    CONFIG_NAME, MAX_CONFIG_BYTES, VITPRUNE_KEY, WEIGHTS_NAME, parse_config, read_config, read_config_bytes,
    read_vitprune_section,
)
from .plan import INT_ARGS, MODEL_ARGS, _Plan, build_from_config, plan_model  # noqa: F401
from .remote import ARCHITECTURE_ONLY, hub_call as _hub_call  # noqa: F401
from .save import current_version, is_our_link
from .transformers import is_transformers_config, load_transformers_folder, load_transformers_hub


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


# --------------------------------------------------------------------------------------------- checks


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else " See `timm.list_models('*vit*')` for names."


# --------------------------------------------------------------------------------------------- loading

#: weights files of a plain timm folder vitprune reads (as tensors only) when it has no model.safetensors
TORCH_WEIGHTS = ("pytorch_model.bin", "model.pth", "pytorch_model.pth")
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}



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
    """A plain timm folder's PyTorch weights file, read as tensors only (``vitprune.tensorfiles.read_tensors``: a pickle
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
