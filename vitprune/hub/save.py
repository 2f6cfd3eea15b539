"""Save a model as a folder that is a Hugging Face Hub model repo.

Layout: ``model.safetensors`` (all weights, method modules included), ``config.json`` (timm's own export:
``architecture``, ``num_classes``, ``pretrained_cfg``, ``model_args``; plus a ``vitprune`` section), ``README.md``
(model card) and any extra files (``report.json``...).

Atomicity: every file is first written complete into a hidden staging folder next to the target; then
``config.json`` of the target is removed, the other files are moved in with ``os.replace``, and the new
``config.json`` is moved in last. A folder without ``config.json`` does not load, so an interrupted save leaves
either the old model, or a folder that refuses to load, never a mix that loads. Files in the folder that the save
does not write (checkpoints, logs) are left alone.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from .load import CONFIG_NAME, VITPRUNE_KEY, WEIGHTS_NAME


def vitprune_section(
    model: nn.Module,
    *,
    base_model: Optional[str] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    from .. import __version__

    method = getattr(model, "vitprune_method", None)
    return {
        "version": __version__,
        "method": method.name if method is not None else None,
        "options": method.options_dict() if method is not None else {},
        "base_model": base_model or getattr(model, "vitprune_base_model", None) or getattr(model, "vitprune_source", None),
        "recipe": dict(recipe) if recipe else None,
        "metrics": dict(metrics) if metrics else None,
    }


def default_card(section: Mapping[str, Any]) -> str:
    """A minimal model card; ``vitprune.report.card`` writes the full one when metrics are known."""
    method = section.get("method") or "none (dense)"
    base = section.get("base_model") or "unknown"
    return (
        "---\ntags:\n- vitprune\n- image-classification\n---\n\n"
        f"# vitprune model\n\nBase model: `{base}`. Token-sparsification method: `{method}`.\n\n"
        "Load it with:\n\n```python\nimport vitprune\nmodel = vitprune.load(\"path/or/hf-hub:user/name\")\n```\n"
    )


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write one file atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    base_model: Optional[str] = None,
    recipe: Optional[Mapping[str, Any]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    card: Optional[str] = None,
    extra_files: Optional[Mapping[str, bytes | str]] = None,
) -> Path:
    """Save ``model`` (dense or patched) into ``folder``; ``vitprune.load(folder)`` rebuilds it exactly."""
    from timm.models._hub import save_for_hf

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".vitprune-staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = folder / f".vitprune-staging-{uuid.uuid4().hex[:8]}"
    section = vitprune_section(model, base_model=base_model, recipe=recipe, metrics=metrics)
    try:
        save_for_hf(model, str(staging), model_config={VITPRUNE_KEY: section}, safe_serialization=True)
        (staging / "README.md").write_text(card if card is not None else default_card(section))
        for name, data in (extra_files or {}).items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        mode = 0o666 & ~_umask()
        for f in staging.rglob("*"):
            if f.is_file():
                os.chmod(f, mode)  # some writers create 0600 temp files; saved models follow the umask
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        # commit: config.json out first, in last
        (folder / CONFIG_NAME).unlink(missing_ok=True)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_vitprune_section(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``vitprune`` section of a saved folder's config.json ({} for a plain timm folder)."""
    cfg = json.loads((Path(folder) / CONFIG_NAME).read_text())
    return cfg.get(VITPRUNE_KEY) or {}


__all__ = ["save", "write_atomic", "read_vitprune_section", "WEIGHTS_NAME"]
