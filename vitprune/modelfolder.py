"""A model folder's file names and its ``config.json``, read through the file gate.

The one reader of config.json files: loading (``vitprune.hub``), saving, the model card and the redaction of base
model names (``vitprune.report``) all read a folder's config here, so none of them imports another for it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .errors import ModelNotFoundError
from .files import RefusedPath, read_bytes

VITPRUNE_KEY = "vitprune"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

#: a config.json is a few KB; anything this large is not one
MAX_CONFIG_BYTES = 16 * 2**20


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


def is_transformers_config(cfg: dict[str, Any]) -> bool:
    """Whether a parsed config.json is transformers' (a ``model_type``) rather than timm's (an ``architecture``)."""
    return isinstance(cfg.get("model_type"), str) and "architecture" not in cfg


__all__ = ["VITPRUNE_KEY", "WEIGHTS_NAME", "CONFIG_NAME", "MAX_CONFIG_BYTES", "parse_config", "read_config",
           "read_config_bytes", "read_vitprune_section", "is_transformers_config"]
