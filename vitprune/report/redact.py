"""What a saved run may say about the machine it ran on: locations as names, never the user's absolute paths.

``report.json``, ``config.json`` and the model card travel (``vitprune push``); they name the data, the output
folder and the models as the user would say them to someone else:

* a local path is its name relative to the working folder when it lies inside it (``data/digits``), else its last
  component (``digits``): never an absolute path, never the home folder;
* a base model is a Hub repo (``hf-hub:org/name``), a timm name, ``demo``, or for a local folder what it was made
  from when that folder recorded it (its own vitprune ``base_model``, the Hub repo of a Hugging Face cache
  snapshot, or a transformers config's ``_name_or_path`` when that is a Hub repo id), else its timm (or
  transformers) architecture followed by ``(local weights)``: never the folder's name;
* the recorded command keeps every argument but the local paths, which are redacted as above.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Optional

import timm
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..modelfolder import VITPRUNE_KEY, is_transformers_config, read_config

#: model specs that are names, not paths
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
LOCAL_WEIGHTS = " (local weights)"
#: flags of `vitprune compress` (and friends) whose value is a location
PATH_FLAGS = ("-o", "--output", "--out", "-d", "--data", "--teacher")
#: flags that only say how the run was started (a resumed or overwriting run is reproduced without them)
RUN_ONLY_FLAGS = ("--resume", "--no-resume", "--overwrite", "--no-overwrite")


def _home() -> Optional[Path]:
    try:
        return Path.home()
    except RuntimeError:  # no home folder known
        return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _working_folder() -> Optional[Path]:
    """The working folder, when names relative to it say nothing private: not ``/`` and not a folder above the
    home folder (``/home``), whose relative names would spell the home folder out."""
    cwd = Path(os.path.abspath(Path.cwd()))
    home = _home()
    if cwd == Path(cwd.anchor) or (home is not None and cwd in Path(os.path.abspath(home)).parents):
        return None
    return cwd


def public_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working folder when inside it (``.`` for the folder itself), else its last
    component."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    cwd = _working_folder()
    if cwd is not None:
        for here, there in ((p, cwd), (p.resolve(), cwd.resolve())):
            if _inside(here, there):
                return here.relative_to(there).as_posix() if here != there else "."
    return p.name or "."


def is_local_path(spec: str) -> bool:
    """Whether a model/data/output argument names a place on this machine (not ``demo``, a timm name or a Hub
    repo)."""
    spec = str(spec)
    if spec.startswith(_HUB_PREFIXES):
        return False
    if spec.startswith("local-dir:") or spec.startswith((".", "~")) or "/" in spec or os.sep in spec:
        return True
    return Path(spec).exists()


def public_spec(spec: Optional[str]) -> Optional[str]:
    """A model, data or output argument as it may be published: local paths through :func:`public_path`."""
    if spec is None or not is_local_path(spec):
        return spec
    spec = str(spec)
    return public_path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec)


def public_model(spec: str) -> str:
    """What a MODEL argument stands for off this machine (see the module docstring)."""
    spec = str(spec)
    if spec.startswith(_HUB_PREFIXES):
        return "hf-hub:" + spec.split(":", 1)[1]
    if not is_local_path(spec):
        return spec  # demo or a timm name
    folder = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
    parts = Path(os.path.abspath(folder)).parts
    for i, part in enumerate(parts[:-1]):  # a Hugging Face cache snapshot: models--org--name/snapshots/<rev>
        if part.startswith("models--") and parts[i + 1] == "snapshots" and part.count("--") == 2:
            return "hf-hub:" + "/".join(part.split("--")[1:])
    try:
        config = read_config(folder)
    except Exception:  # noqa: BLE001 - unreadable here: loading it reports the problem
        config = None
    if not isinstance(config, dict):
        return "a local model"
    converted = public_base(config)  # a transformers folder: the Hub repo it names, else its architecture
    if converted is not None:
        return converted
    section = config.get(VITPRUNE_KEY)
    recorded = section.get("base_model") if isinstance(section, dict) else None
    if isinstance(recorded, str) and _is_public_base(recorded):
        return recorded
    arch = config.get("architecture")
    return f"{arch}{LOCAL_WEIGHTS}" if isinstance(arch, str) and arch else "a local model"


def public_base(cfg: dict[str, Any]) -> Optional[str]:
    """What a local transformers folder is, by its config: ``hf-hub:`` + its ``_name_or_path`` when that is a Hub
    repo id, else its transformers architecture with ``(local weights)``; None for a config that is not
    transformers'."""
    if not is_transformers_config(cfg):
        return None
    name = cfg.get("_name_or_path")
    if isinstance(name, str) and name.count("/") == 1 and not name.startswith((".", "~", "/")):
        try:
            validate_repo_id(name)
            return f"hf-hub:{name}"
        except HFValidationError:
            pass
    archs = cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    return f"{arch or cfg['model_type']}{LOCAL_WEIGHTS}"


def _is_public_base(spec: str) -> bool:
    if spec == "demo" or spec.startswith(_HUB_PREFIXES) or spec.endswith(LOCAL_WEIGHTS):
        return True
    if is_local_path(spec) or any(c.isspace() for c in spec):
        return False
    return timm.is_model(spec) or timm.is_model(spec.split(".")[0])


def public_command(command: str) -> str:
    """The recorded command with its local paths redacted and without ``--resume``/``--overwrite`` (the command
    that makes the model again from nothing)."""
    try:
        args = shlex.split(command)
    except ValueError:
        return ""
    out: list[str] = []
    path_next = False
    for arg in args:
        if arg in RUN_ONLY_FLAGS:
            continue
        if path_next:
            out.append(public_spec(arg) or arg)
            path_next = False
            continue
        flag, eq, value = arg.partition("=")
        if arg.startswith("-") and eq and flag in PATH_FLAGS:
            out.append(f"{flag}={public_spec(value)}")
            continue
        if arg in PATH_FLAGS:
            path_next = True
            out.append(arg)
            continue
        is_path = not arg.startswith("-") and not arg.startswith(_HUB_PREFIXES) and (
            arg.startswith(("/", "~", "local-dir:")) or Path(arg).expanduser().exists())
        out.append(public_spec(arg) if is_path else arg)
    return shlex.join(out)


def _forms(path: str) -> set[str]:
    """The ways an absolute path may appear in text: as given, with ``~`` expanded, absolute, resolved."""
    raw = path[len("local-dir:"):] if path.startswith("local-dir:") else path
    p = Path(raw).expanduser()
    found = {str(p), os.path.abspath(p), str(Path(os.path.abspath(p)).resolve())}
    return {f for f in found if os.path.isabs(f) and f != os.sep}


def scrub(data: Any, paths: Iterable[Optional[str]]) -> Any:
    """``data`` (JSON-like) with every absolute form of each local path in ``paths`` replaced by its public name,
    then any remaining mention of the working folder made relative and of the home folder made ``~``."""
    rules: list[tuple[str, str]] = []
    for path in paths:
        if path and is_local_path(path):
            public = public_spec(path) or ""
            rules += [(form, public) for form in _forms(str(path))]
    cwd = _working_folder()
    home = _home()
    if cwd is not None:  # anything else below the working folder: its relative name
        rules += [(str(cwd) + os.sep, ""), (str(cwd), ".")]
    if home is not None:
        rules += [(form, "~") for form in _forms(str(home))]
    rules.sort(key=lambda r: -len(r[0]))
    patterns = [(re.compile(re.escape(form) + r"(?![\w.-])" if not form.endswith(os.sep) else re.escape(form)), to)
                for form, to in rules]

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            for pattern, to in patterns:
                value = pattern.sub(lambda _m, to=to: to, value)
            return value
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value

    return fix(data)


__all__ = ["public_path", "public_spec", "public_model", "public_base", "public_command", "scrub", "is_local_path",
           "LOCAL_WEIGHTS"]
