"""Recipe files: ``vitprune compress --config recipe.yaml``.

A recipe file is a YAML mapping (read with ``yaml.SafeLoader``: data only; at most ``MAX_BYTES``; no aliases, so
a few hundred bytes cannot expand to gigabytes; a key given twice is refused, not "last wins") whose keys are the
command's long option names with underscores (``keep_rate``, ``epochs``, ``lr``, ``batch_size``, ``r`` or ``tome_r``...; ``model`` for
the argument): every option of the command, the method options included. Its values become the command's defaults
through click's ``default_map`` (read by an eager ``--config`` callback, before the other flags are parsed), so a
flag typed on the command line wins over the file, and the file over the built-in defaults; click's parameter
source (``DEFAULT_MAP``) then tells which values came from the file. A list where a flag takes one text value is
written as that flag's comma list (``scale: [0.5, 1]`` is ``--scale 0.5,1``).

``--print-config`` prints the settings that would run in the same format (``settings_yaml``): a file that
``--config`` reads back.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from ..files import RefusedPath, read_text

#: the command's own parameters that a recipe file cannot set
NOT_IN_FILES = ("config", "print_config")
#: the largest recipe file read (a recipe is a few dozen lines)
MAX_BYTES = 1 << 20


def _loader() -> type:
    """``yaml.SafeLoader`` that refuses aliases (``*name``: the alias bomb's way to grow) and a mapping key given
    twice, each as a ``yaml.YAMLError`` with the place in the file."""
    class RecipeLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"found the alias *{event.anchor}; a recipe file cannot use aliases, write the "
                    "value out", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice; give it once", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return RecipeLoader


def file_keys(command: Any) -> dict[str, Any]:
    """Recipe-file key -> the command's parameter: its name and each long option's name with underscores."""
    keys: dict[str, Any] = {}
    for p in command.params:
        if p.name in NOT_IN_FILES:
            continue
        keys[p.name] = p
        for opt in p.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = p
    return keys


def read_recipe_file(path: str) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``UsageError`` in one line for a missing file, bad YAML or another kind of
    document."""
    try:
        text = read_text(Path(path).expanduser(), limit=MAX_BYTES)
    except RefusedPath as e:
        if "larger than" in str(e):
            raise UsageError(f"`config` {path} is over {MAX_BYTES:,} bytes; a recipe file is at most "
                             f"{MAX_BYTES:,}.") from None
        raise UsageError(f"`config` {path}: cannot read it ({e}).") from None
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise UsageError(f"`config` {path}: cannot read it ({why}).") from None
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader (data only), aliases refused
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UsageError(f"`config` {path} is not valid YAML{where} ({problem}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"`config` {path} must be a mapping of option names to values (e.g. `epochs: 10`), not a "
                         f"{type(data).__name__}.")
    return data


def config_defaults(command: Any, path: str) -> dict[str, Any]:
    """The recipe file at ``path`` as click defaults for ``command`` (parameter name -> value); an unknown key is
    one line that names it and the closest known key."""
    data = read_recipe_file(path)
    keys = file_keys(command)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        param = keys.get(str(key))
        if param is None:
            close = difflib.get_close_matches(str(key), list(keys), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"`config` {path}: unknown key {key!r}{hint}; the keys are the long option names of "
                             "`vitprune compress --help` with underscores.")
        if param.name in defaults:
            raise UsageError(f"`config` {path} sets {param.name!r} twice (as {key!r} too); give it once.")
        defaults[param.name] = _as_flag_value(param, value)
    return defaults


def _as_flag_value(param: Any, value: Any) -> Any:
    """A YAML value as the flag would receive it: a list for a repeatable flag, a comma list for a one-value flag
    given a list."""
    if getattr(param, "multiple", False):
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        raise UsageError(f"`{param.name}` takes one value, not a mapping ({value!r}).")
    return value


def from_file(ctx: Any) -> set[str]:
    """The command's parameters whose value came from the recipe file (click's parameter source)."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "DEFAULT_MAP"}


def settings_yaml(plan: dict[str, Any], run: dict[str, Any]) -> str:
    """The settings that would run as a recipe file: ``run`` (the command's own settings, by key) with the plan's
    model, method, output, device, precision, the method's options and the recipe (augmentation as its flags) over
    them."""
    recipe = dict(plan["recipe"])
    augment = recipe.pop("augment")
    settings = {"model": plan["model"], "method": plan["method"], "data": plan["data"], "output": plan["output"],
                **plan["options"], **recipe, "no_augment": augment is None, **(augment or {}), **run,
                "device": plan["device"], "precision": plan["precision"]}
    return yaml.safe_dump(settings, sort_keys=False, default_flow_style=None)

