"""vitprune: make pretrained Vision Transformers faster by token sparsification.

Public API (imported lazily, so ``vitprune --help`` stays fast)::

    model = vitprune.load_model("deit_small_patch16_224")        # timm name, hf-hub:org/repo, folder or "demo"
    vitprune.apply_method(model, "dynamicvit", keep_rate=0.7)     # patch in place
    report = vitprune.profile("deit_small_patch16_224", method="evit", keep_rate=0.7, pretrained=False)
    vitprune.save(model, "out/")                                   # a Hugging Face Hub model folder
    model = vitprune.load("out/")                                  # rebuilds it exactly
    vitprune.export("out/")                                        # out/model.onnx, pruning inside, checked
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vitprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "load_model": "vitprune.hub",
    "load": "vitprune.hub",
    "save": "vitprune.hub",
    "apply_method": "vitprune.methods",
    "list_methods": "vitprune.methods",
    "profile": "vitprune.api",
    "count_macs": "vitprune.measure",
    "import_checkpoint": "vitprune.hub.convert",
    "optimize": "vitprune.fastpath",
    "evaluate": "vitprune.api",
    "push": "vitprune.hub.push",
    "visualize": "vitprune.tokenmaps",
    "sweep": "vitprune.sweeps",
    "compress": "vitprune.compression",
    "export": "vitprune.exporter",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vitprune' has no attribute {name!r}")
