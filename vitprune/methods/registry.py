"""Method name -> class. Each method module registers its class with ``@register``; ``vitprune/methods/__init__.py``
imports every method module once, so the registry is complete as soon as ``vitprune.methods`` is imported (as
timm's model registry is filled by its model modules)."""
from __future__ import annotations

from typing import Any

import sys

from ..errors import MethodOptionError
from ..settings import reserved_names
from .base import _REGISTRY, TokenMethod, _expected, option_specs


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register(cls: type[TokenMethod]) -> type[TokenMethod]:
    """Add a method class under its ``name``; a name taken already (also spelt with other dashes or case) is a
    programming error."""
    for other_name, other in _REGISTRY.items():
        if _key(other_name) == _key(cls.name):
            raise ValueError(f"a method named {other_name!r} is registered already ({other.__module__}."
                             f"{other.__qualname__}); {cls.__module__}.{cls.__qualname__} needs another name")
    specs = option_specs(cls)  # the options' metadata is read once here, so a typo in it fails at import
    clash = sorted(s.name for s in specs if s.name in reserved_names())
    if clash:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__}: option(s) {', '.join(clash)} have the name of a run "
                         "setting (vitprune.settings.reserved_names()), which vitprune.compress and the other jobs "
                         "would take as their own; rename the field")
    _REGISTRY[cls.name] = cls
    _document_notes(cls)
    return cls


def _document_notes(cls: type[TokenMethod]) -> None:
    """Append the method's ``notes`` (its choices where the paper is silent and its deviations from the paper or
    the reference code) to its module's docstring: stated once, in ``notes``, and read in both places."""
    module = sys.modules.get(cls.__module__)
    if module is None or not cls.notes or NOTES_HEADING in (module.__doc__ or ""):
        return
    items = "\n".join(f"* {note}" for note in cls.notes)
    module.__doc__ = f"{(module.__doc__ or '').rstrip()}\n\n{NOTES_HEADING} (``{cls.__name__}.notes``):\n\n{items}\n"


NOTES_HEADING = "vitprune's choices and deviations from the paper and the reference code"


def method_names() -> list[str]:
    """Registered methods, in registration order."""
    return list(_REGISTRY)


def method_classes() -> list[type[TokenMethod]]:
    return list(_REGISTRY.values())


def get_method_class(name: str) -> type[TokenMethod]:
    for n, cls in _REGISTRY.items():
        if _key(n) == _key(name):
            return cls
    raise MethodOptionError(f"unknown method {name!r}; available: {', '.join(method_names())}.")


def create_method(name: str, **options: Any) -> TokenMethod:
    cls = get_method_class(name)
    return cls(cls.Options.from_dict(cls.name, options))


def describe_methods() -> list[dict[str, Any]]:
    """Every method with its paper, summary, notes and options (name, flag, type, default, help and roles)."""
    out = []
    for name, cls in _REGISTRY.items():
        opts = [{"name": s.name, "flag": s.flag, "aliases": list(s.aliases), "type": _type_name(s.type),
                 "accepts": _expected(s.type), "default": s.default, "help": s.help, "headline": s.headline, "runtime": s.runtime,
                 "sweep_flag": s.sweep_flag, "applies_when": dict(s.applies_when)} for s in option_specs(cls)]
        out.append({
            "name": name, "title": cls.title, "paper": cls.paper, "summary": cls.summary,
            "needs_training": cls.needs_training, "runtime_options": list(cls.runtime_options),
            "notes": [*cls.notes, *([f"No class token (deviation from the paper): {cls.no_class_token}"]
                                     if cls.no_class_token else []),
                      f"Rotary position embeddings (timm Eva models): {cls.rotary}",
                      f"Relative position bias (timm BEiT models): {cls.position_bias}"], "options": opts,
        })
    return out


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")
