"""Resolve a MODEL argument to a timm Vision Transformer.

MODEL may be:

* ``demo`` - the demo teacher bundled with vitprune (a small ViT trained on scikit-learn's digits);
* a timm model name (``deit_small_patch16_224``, with or without a ``.tag``);
* ``hf-hub:org/repo[@revision]`` - a timm or vitprune repo on the Hugging Face Hub (or in the local cache);
* a local folder: a timm folder (``config.json`` + weights) or a folder saved by ``vitprune.save``.

Without network access the local Hugging Face cache is used: either ``HF_HUB_OFFLINE=1`` is set, or a quick
reachability probe of the Hub endpoint fails, and vitprune switches huggingface_hub to offline mode so nothing
waits on retries.
"""
from __future__ import annotations

import difflib
import json
import os
import socket
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ModelNotFoundError, UnsupportedModelError

VITPRUNE_KEY = "vitprune"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def demo_dir() -> Path:
    """The folder of the bundled demo teacher (a vitprune/timm model folder)."""
    return Path(str(resources.files("vitprune.assets").joinpath("demo")))


# --------------------------------------------------------------------------------------------- network


@lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 2.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_offline_if_unreachable() -> bool:
    """Switch huggingface_hub to offline mode when the Hub cannot be reached; return True when offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries that read the environment themselves
        return True
    return False


def _not_found(spec: str, offline: bool, cause: Exception | None = None) -> ModelNotFoundError:
    if offline:
        msg = (
            f"{spec} is not in the local Hugging Face cache and the Hub is offline or unreachable; "
            "download it once with network access, or point HF_HUB_CACHE at a cache that has it."
        )
    else:
        msg = f"{spec} was not found on the Hugging Face Hub; check the repo name (and that you have access to it)."
    return ModelNotFoundError(msg)


def _hub_call(spec: str, fn, *args, **kwargs):
    """Run a huggingface_hub/timm call that may download, mapping hub errors to ModelNotFoundError."""
    from huggingface_hub import errors as hf_errors

    offline = ensure_offline_if_unreachable()
    try:
        return fn(*args, **kwargs)
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        raise _not_found(spec, True, e) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError) as e:
        raise _not_found(spec, offline, e) from None


# --------------------------------------------------------------------------------------------- checks


def check_vit(model: nn.Module, spec: str = "the model") -> None:
    """Raise UnsupportedModelError unless ``model`` is a timm VisionTransformer."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        kind = type(model).__name__
        raise UnsupportedModelError(
            f"{spec} is a {kind}, not a Vision Transformer; vitprune works on timm VisionTransformer models "
            "(deit_*, vit_*, including distilled and register variants)."
        )


def _suggest(name: str) -> str:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else " See `timm.list_models('*vit*')` for names."


# --------------------------------------------------------------------------------------------- loading


def read_config(folder: Path) -> dict[str, Any]:
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise ModelNotFoundError(f"{folder} has no {CONFIG_NAME}; it is not a timm or vitprune model folder.")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelNotFoundError(f"{cfg_file} is not valid JSON ({e.msg} at line {e.lineno}).") from None


def build_from_config(cfg: dict[str, Any], *, source: str) -> nn.Module:
    """Create the (random-weight) architecture a timm/vitprune ``config.json`` describes, method included."""
    import timm

    from timm.models._hub import _parse_model_cfg

    pretrained_cfg, arch, model_args = _parse_model_cfg(json.loads(json.dumps(cfg)), {"source": source})
    if not timm.is_model(arch):
        raise ModelNotFoundError(f"{source} names architecture {arch!r}, which this timm does not know; upgrade timm.")
    model = timm.create_model(arch, pretrained=False, pretrained_cfg=pretrained_cfg, **model_args)
    section = cfg.get(VITPRUNE_KEY) or {}
    if section.get("method"):
        from ..methods import apply_method

        apply_method(model, section["method"], **(section.get("options") or {}))
    return model


def _model_files(folder: Path) -> Path:
    """Where to read config.json and model.safetensors: in a folder saved by vitprune, the version both
    top-level links lead to, resolved once (a save switching versions meanwhile cannot hand over a mix)."""
    from .save import current_version, is_our_link

    if all(is_our_link(folder, name) for name in (CONFIG_NAME, WEIGHTS_NAME)):
        version = current_version(folder)
        if version is not None:
            return version
    return folder


def load_folder(folder: Path, *, pretrained: bool = True, source: Optional[str] = None) -> nn.Module:
    """Load a local timm or vitprune folder (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = _model_files(folder)
    cfg = read_config(files)
    model = build_from_config(cfg, source=source or str(folder))
    if pretrained:
        weights = files / WEIGHTS_NAME
        if not weights.is_file():
            if VITPRUNE_KEY not in cfg:  # a plain timm folder may hold pytorch_model.bin: let timm read it
                import timm

                model = timm.create_model(f"local-dir:{folder}", pretrained=True)
                return model
            raise ModelNotFoundError(f"{folder} has no {WEIGHTS_NAME}; the save did not finish.")
        state = load_file(str(weights))
        _load_exact(model, state, str(folder))
    model.vitprune_source = source or str(folder)
    return model


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})")
        raise ModelNotFoundError(f"the weights in {where} do not match its config: {'; '.join(parts)}.")


def _load_hub(spec: str, *, pretrained: bool) -> nn.Module:
    import timm
    from huggingface_hub import hf_hub_download, snapshot_download

    repo = spec[len("hf-hub:"):]
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1:
        raise ModelNotFoundError(f"{spec} is not a Hub repo name; write it as hf-hub:org/name.")
    cfg_path = _hub_call(spec, hf_hub_download, repo_id, CONFIG_NAME, revision=revision or None)
    cfg = json.loads(Path(cfg_path).read_text())
    if VITPRUNE_KEY in cfg:
        if not pretrained:
            return build_from_config(cfg, source=spec)
        folder = _hub_call(
            spec, snapshot_download, repo_id, revision=revision or None,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
        model = load_folder(Path(folder), source=spec)
        return model
    model = _hub_call(spec, timm.create_model, spec, pretrained=pretrained)
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
        model = _hub_call(spec, timm.create_model, spec, pretrained=pretrained)
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
