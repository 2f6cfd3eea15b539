"""What the command line knows before it imports the library: the methods (names, papers, options as flags) and
the recipe keys' help, read from ``catalog.json`` next to this file.

Why a file: importing torch, timm and the method modules takes seconds (tens on a loaded machine), and
``vitprune --version``, ``--help``, ``COMMAND --help``, ``vitprune methods`` and every usage error (an unknown flag,
a misspelt method name) need none of it, yet the commands' flags are derived from the methods' options. So the
CLI reads their description from data and imports the library only when a command runs.

The method modules stay the one source. Each method's options dataclass, with every option's help, flag and roles
in its field metadata, lives in the method's own file (``vitprune/methods/<name>.py``), and
:func:`vitprune.methods.describe_methods` reads it; ``catalog.json`` is that output and
:func:`vitprune.train.recipe.recipe_help`'s, written down by ``python -m vitprune.cli.catalog``. A test
(tests/test_cli_startup.py) fails, naming that command, whenever the file and the modules differ, so it cannot
drift; and a command that runs hands the options to the library, which checks them again with the real classes.
A new method is still one module (plus its line in ``vitprune/methods/__init__.py``), then that one command.

When the library is imported already, its registry is read instead of the file: a program that registers a
method of its own (``@vitprune.methods.register``) before it builds the commands gets that method's flags and
name everywhere, as before; for the built-in methods both give the same answer (the test above).
"""
from __future__ import annotations

import difflib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError

PATH = Path(__file__).with_name("catalog.json")
REGENERATE = "python -m vitprune.cli.catalog"


@lru_cache(maxsize=None)
def catalog() -> dict[str, Any]:
    """``{"methods": describe_methods(), "recipe_help": recipe_help()}`` as the file holds them."""
    return json.loads(PATH.read_text(encoding="utf-8"))


def methods() -> list[dict[str, Any]]:
    """Every method as :func:`vitprune.methods.describe_methods` describes it, in registration order: from the
    registry when the library is imported already (methods registered by the program included), else the file."""
    registry = sys.modules.get("vitprune.methods")  # the package: imported in full, every method registered
    if registry is not None and hasattr(registry, "describe_methods"):
        return json.loads(json.dumps(registry.describe_methods()))
    return catalog()["methods"]


def recipe_help() -> dict[str, str]:
    """Each recipe key's help (``vitprune.train.recipe.recipe_help``)."""
    return catalog()["recipe_help"]


def recipe_types() -> dict[str, str]:
    """Each recipe key's type as ``Recipe`` writes it (``vitprune.train.recipe.recipe_types``)."""
    return catalog()["recipe_types"]


def _key(name: str) -> str:
    """As the registry compares method names: case, dashes and underscores do not matter."""
    return name.lower().replace("-", "").replace("_", "")


def find_method(name: str) -> dict[str, Any]:
    """The method called ``name`` (spelt as the registry accepts it); else ``UsageError`` (exit 2) with the
    closest names."""
    for m in methods():
        if _key(m["name"]) == _key(name):
            return m
    names = [m["name"] for m in methods()]
    close = difflib.get_close_matches(_key(name), names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown method {name!r}{hint} (methods: {', '.join(names)}).")


def check_method(value: Optional[str]) -> Optional[str]:
    """A ``--method`` flag's callback: an unknown name is a usage error before anything is imported."""
    if value is not None:
        find_method(value)
    return value


_PLAIN = re.compile(r"(?:Optional\[(\w+)\]|(\w+)(?: \| None)?)")


def cli_type(type_name: str) -> Any:
    """The type click converts a flag's text to, from the option's type as ``describe_methods`` names it: bool,
    int, float or str for plain (optional) fields; None for the rest (lists, unions), whose text the commands parse
    (``_options.parse_value``) and the method's options check."""
    m = _PLAIN.fullmatch(type_name)
    name = m and (m.group(1) or m.group(2))
    return {"bool": bool, "int": int, "float": float, "str": str}.get(name or "")


def build() -> dict[str, Any]:
    """The catalog as the library describes it now (imports the library)."""
    from ..methods import describe_methods  # deferred: CLI startup
    from ..train.recipe import recipe_help as library_recipe_help  # deferred: CLI startup
    from ..train.recipe import recipe_types as library_recipe_types  # deferred: CLI startup

    return json.loads(json.dumps({"methods": describe_methods(), "recipe_help": library_recipe_help(),
                                  "recipe_types": library_recipe_types()}))


def main() -> None:
    """``python -m vitprune.cli.catalog``: write catalog.json from the library."""
    data = build()
    PATH.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote vitprune/cli/{PATH.name}: {len(data['methods'])} methods, {len(data['recipe_help'])} recipe keys")


if __name__ == "__main__":
    main()
