"""ONNX export with the pruning inside (``vitprune.export``), checked against the method's token schedule and
against PyTorch in ONNX Runtime. Needs the optional extra ``vitprune[export]`` (onnx, onnxscript, onnxruntime);
nothing here imports them until an export runs."""
from .core import ExportResult, export, record_in_folder
from .graph import (
    EXTRA, INPUT_NAME, OUTPUT_NAME, check_token_counts, export_onnx, graph_token_counts, require_export_deps,
)
from .verify import RELATIVE_TOLERANCE, Verification, sample_images, verify

__all__ = [
    "EXTRA", "ExportResult", "INPUT_NAME", "OUTPUT_NAME", "RELATIVE_TOLERANCE", "Verification", "check_token_counts",
    "export", "export_onnx", "graph_token_counts", "record_in_folder", "require_export_deps", "sample_images",
    "verify",
]
