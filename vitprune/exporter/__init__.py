"""ONNX export with the pruning inside (``vitprune.export``), checked against the method's token schedule and
against PyTorch in ONNX Runtime. Needs the optional extra ``vitprune[export]`` (onnx, onnxscript, onnxruntime);
nothing here imports them until an export runs.

The export job's names (``export``, ``ExportResult``, ``record_in_folder``: ``exporter.core``, a layer above the
rest of the package) are imported when first used, so that importing ``exporter.graph`` (``measure.models``) or
``exporter.quantize`` (``api``) does not import the job, which imports them."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .graph import (
    EXTRA, INPUT_NAME, OUTPUT_NAME, check_token_counts, export_onnx, graph_token_counts, require_export_deps,
)
from .verify import RELATIVE_TOLERANCE, Verification, sample_images, verify

if TYPE_CHECKING:
    from .core import ExportResult, export, record_in_folder

_CORE = ("ExportResult", "export", "record_in_folder")

__all__ = [
    "EXTRA", "ExportResult", "INPUT_NAME", "OUTPUT_NAME", "RELATIVE_TOLERANCE", "Verification", "check_token_counts",
    "export", "export_onnx", "graph_token_counts", "record_in_folder", "require_export_deps", "sample_images",
    "verify",
]


def __getattr__(name: str):
    if name in _CORE:
        return getattr(import_module(f"{__name__}.core"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CORE))
