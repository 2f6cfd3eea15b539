"""Export a model to an ONNX graph with the dynamo exporter, and read the graph's token count per block.

The token check is what stops a silent fallback to the dense graph: a pruned model whose blocks all run on the full
token set would still give *some* logits. The exporter records, for every node, the module scopes it came from
(``pkg.torch.onnx.name_scopes``) and the static shape of every value. The first node under ``blocks.{i}.norm1``
that reads a ``batch x tokens x embed_dim`` value reads the block's input, so its second dimension is the number of
tokens entering block ``i``, whatever the method did before it (gathers, merges, carried tokens). The counts are
compared with the method's ``token_schedule`` (the dense model: every patch and prefix token in every block). A
count that is not a static number (a data-dependent shape) or a block without such a node fails the check too:
an export is reported only when every block's count is the schedule's.

The exporter also records each node's Python stack trace, which names files of the user's environment (the
virtual environment, the home folder). Before the file is kept, every doc string and every metadata entry of the
graph is removed except the module scopes (``strip_metadata``): ``model.onnx`` holds no local path.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import re
import warnings
from importlib import import_module
from typing import Any, Optional

import torch
from torch import nn

from importlib.metadata import version

from ..errors import ExportError
from ..measure.ort import INPUT_NAME, OUTPUT_NAME  # also imported from here and from vitprune.exporter
from ..methods.base import patch_grid
from ..report.tables import compact_schedule

#: the modules ``torch.onnx.export(..., dynamo=True)`` needs, and ONNX Runtime for checking and timing
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")
EXTRA = 'pip install "vitprune[export]"'
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
_NORM1 = re.compile(r"^blocks\.(\d+)\.norm1$")


def require_export_deps() -> None:
    """Raise one line naming the extra when onnx, onnxscript or onnxruntime cannot be imported."""
    missing = []
    for name in EXPORT_MODULES:
        try:
            import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          f"installed; install the extra: {EXTRA}.")


def export_versions() -> dict[str, str]:
    return {name: version(name) for name in EXPORT_MODULES}


def compact(counts: list[Any]) -> str:
    """``[197, 197, 140]`` -> ``197×2 140×1`` (``?`` for a count the graph does not fix)."""
    return compact_schedule(["?" if c is None else c for c in counts])


def expected_tokens(model: nn.Module, input_size: tuple[int, int, int]) -> list[int]:
    """Tokens entering each block at inference: the method's schedule, or every token for a dense model."""
    method = getattr(model, "vitprune_method", None)
    if method is not None:
        return list(method.token_schedule(model, tuple(input_size[1:])))
    grid = patch_grid(model, tuple(input_size[1:]))
    return [int(grid[0]) * int(grid[1]) + model.num_prefix_tokens] * len(model.blocks)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int, int], *,
                batch_size: Optional[int] = None, opset: Optional[int] = None) -> list[int]:
    """Write ``model`` (eval mode, fp32, CPU) to ``path`` with ``torch.onnx.export(..., dynamo=True)`` and check
    its token count per block against the schedule; returns the counts.

    The batch axis is dynamic unless ``batch_size`` is given. The example batch has 2 images when the axis is
    dynamic: torch.export specializes a dimension traced at size 1. ``opset`` defaults to the exporter's own.
    """
    method = getattr(model, "vitprune_method", None)
    if method is not None:
        method.export_check(model)
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"--batch-size must be a positive number, got {batch_size}.")
    model = model.eval()
    example = torch.zeros(batch_size or 2, *input_size)
    dynamic = None if batch_size else ({0: torch.export.Dim("batch")},)
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                        verbose=False)
        except torch.onnx.errors.OnnxExporterError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ExportError(f"torch.onnx.export could not export this model: {first}") from None
        program.save(str(path))
    import onnx  # optional extra

    graph = onnx.load(str(path), load_external_data=False)
    if opset is not None:
        got = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
        if got != opset:
            raise ExportError(f"the exporter could not convert the graph to opset {opset} (it has opset {got}); "
                              "use --opset 18 or newer.")
    counts = graph_token_counts(graph, len(model.blocks), model.embed_dim)
    check_token_counts(counts, expected_tokens(model, input_size),
                       method.name if method is not None else "the dense model")
    strip_metadata(graph)
    onnx.save_model(graph, str(path))  # weights beyond 2 GB stay in their external-data file, referenced as before
    return [int(c) for c in counts]


def strip_metadata(proto: Any) -> None:
    """Remove from an ``onnx.ModelProto`` (in place) every doc string and metadata entry except the module scopes
    the token check reads: the exporter's stack traces name local files."""
    def clean(item: Any, keep: tuple[str, ...] = ()) -> None:
        if hasattr(item, "metadata_props"):
            kept = [(p.key, p.value) for p in item.metadata_props if p.key in keep]
            del item.metadata_props[:]
            for key, value in kept:
                item.metadata_props.add(key=key, value=value)
        if hasattr(item, "doc_string"):
            item.doc_string = ""

    def graph(g: Any) -> None:
        clean(g)
        for vi in [*g.input, *g.output, *g.value_info, *g.initializer, *g.sparse_initializer]:
            clean(vi)
        nodes(g.node)

    def nodes(items: Any) -> None:
        for node in items:
            clean(node, (_SCOPE_KEY,))
            for attr in node.attribute:
                attr.doc_string = ""
                if attr.HasField("g"):
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)

    clean(proto)
    graph(proto.graph)
    for fn in proto.functions:
        clean(fn)
        nodes(fn.node)


def graph_token_counts(graph: Any, depth: int, embed_dim: int) -> list[Optional[int]]:
    """Tokens entering each of the ``depth`` blocks in an exported ``onnx.ModelProto`` (None where the graph does
    not fix the number)."""
    import onnx  # optional extra

    shapes = _shapes(graph)
    if not shapes:
        shapes = _shapes(onnx.shape_inference.infer_shapes(graph))
    counts: list[Optional[int]] = [None] * depth
    for node in graph.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == _SCOPE_KEY), None)
        if not scopes:
            continue
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        for scope in names:
            m = _NORM1.match(str(scope))
            if not m or int(m.group(1)) >= depth or counts[int(m.group(1))] is not None:
                continue
            for name in node.input:
                dims = shapes.get(name)
                if dims is not None and len(dims) == 3 and dims[2] == embed_dim:
                    counts[int(m.group(1))] = dims[1] if isinstance(dims[1], int) else None
                    break
    return counts


def check_token_counts(counts: list[Optional[int]], expected: list[int], what: str) -> None:
    """``ExportError`` unless the graph's count per block is the schedule's (a dense graph for a pruned model, a
    data-dependent count, or a block the check cannot read)."""
    if list(counts) != list(expected):
        raise ExportError(
            f"the exported graph runs its blocks on {compact(counts)} tokens but {what}'s schedule is "
            f"{compact(expected)}: the pruning is not in the graph as expected, so the export was not written.")


def _shapes(graph: Any) -> dict[str, list[Any]]:
    """value name -> dims (an int, or the symbol's name for a dynamic dimension)."""
    out = {}
    for vi in [*graph.graph.value_info, *graph.graph.input, *graph.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return out


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines and warnings are not for vitprune's users; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


__all__ = ["EXTRA", "INPUT_NAME", "OUTPUT_NAME", "check_token_counts", "compact", "expected_tokens", "export_onnx",
           "export_versions", "graph_token_counts", "require_export_deps"]
