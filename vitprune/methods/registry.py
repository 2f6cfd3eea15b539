"""Method name -> class. Each method module registers itself with ``@register``; ``vitprune methods`` reads this."""
from __future__ import annotations

import dataclasses
from importlib import import_module
from typing import Any

from ..errors import MethodOptionError
from .base import TokenMethod

_REGISTRY: dict[str, type[TokenMethod]] = {}
#: modules that define the methods (imported on first use so the registry is complete)
_METHOD_MODULES = ("dynamicvit", "evit", "evovit", "tome", "dge", "sait")
_loaded = False


def register(cls: type[TokenMethod]) -> type[TokenMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for mod in _METHOD_MODULES:
            try:
                import_module(f"vitprune.methods.{mod}")
            except ModuleNotFoundError as e:  # a method whose file has not landed yet
                if e.name != f"vitprune.methods.{mod}":
                    raise
        _loaded = True


def method_names() -> list[str]:
    _load_all()
    return [m for m in _METHOD_MODULES if m in _REGISTRY] + sorted(set(_REGISTRY) - set(_METHOD_MODULES))


def get_method_class(name: str) -> type[TokenMethod]:
    _load_all()
    key = name.lower().replace("-", "").replace("_", "")
    for n, cls in _REGISTRY.items():
        if n.replace("-", "").replace("_", "") == key:
            return cls
    raise MethodOptionError(f"unknown method {name!r}; available: {', '.join(method_names())}.")


def create_method(name: str, **options: Any) -> TokenMethod:
    cls = get_method_class(name)
    return cls(cls.Options.from_dict(cls.name, options))


def exportable_methods() -> str:
    """The methods ``vitprune export`` turns into ONNX, for messages: ``dynamicvit, evit, ..., sait (fixed or dense
    mode)``."""
    _load_all()
    return ", ".join(_REGISTRY[n].export_hint or n for n in method_names() if _REGISTRY[n].exportable)


def describe_methods() -> list[dict[str, Any]]:
    """Every method with its paper, summary, notes and options (name, type, default, help)."""
    out = []
    for name in method_names():
        cls = _REGISTRY[name]
        opts = []
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            opts.append({"name": f.name, "type": str(f.type), "default": default, "help": f.metadata.get("help", "")})
        out.append({
            "name": name, "title": cls.title, "paper": cls.paper, "summary": cls.summary,
            "needs_training": cls.needs_training, "runtime_options": list(cls.runtime_options),
            "notes": list(cls.notes), "options": opts,
        })
    return out
