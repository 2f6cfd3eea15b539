"""`vitprune export`: a model to ONNX with its pruning inside, checked in ONNX Runtime before it is reported."""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..errors import UsageError
from ._options import method_options
from .common import (AllowLargeOpt, JsonOpt, MethodOpt, ModelArg, NoWeightsOpt, TargetGmacsOpt, err, out,
                     print_budget, print_json, step)


class Format(str, Enum):
    onnx = "onnx"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


@method_options()
def export(
    model: ModelArg = "demo",
    format: Annotated[Format, typer.Option("--format", "-f", help="file format.")] = Format.onnx,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="file to write (default: DIR/model.onnx for a folder DIR, else "
                               "vitprune-out/<model>[-<method>].onnx).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="fix the batch axis to N (default: dynamic).")] = None,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="a dynamic batch axis, one file for any batch size (the default).")] = False,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    method: MethodOpt = None,
    images: Annotated[Optional[list[str]], typer.Option(
        "--images", help="an image file or demo:N to check the export on (repeatable; default: 8 demo digits "
                         "through the model's own preprocessing).")] = None,
    measure: Annotated[bool, typer.Option(
        "--measure", help="also time the dense and the compressed ONNX files in ONNX Runtime, side by side "
                          "(recorded in report.json and the model card of a folder).")] = False,
    repeats: Annotated[Optional[int], typer.Option(min=1, help="--measure: timed repeats (median).")] = None,
    no_weights: NoWeightsOpt = False,
    target_gmacs: TargetGmacsOpt = None,
    json_out: JsonOpt = False,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Export to ONNX with the pruning inside; ONNX Runtime must give PyTorch's logits before the file is written.

    A folder's run-time options can be changed for the export (e.g. --mode fixed on SaiT); with --method a dense
    model is patched first, as in `vitprune profile`.
    """
    if batch_size is not None and dynamic_batch:
        raise UsageError("give `batch_size` N or `dynamic_batch`, not both.")
    from ..exporter import export as do_export
    from ..report.tables import profile_table

    def run():
        return do_export(model, output, method=method, format=format.value, batch_size=batch_size, opset=opset,
                         images=images, measure=measure, repeats=repeats, pretrained=not no_weights,
                         target_gmacs=target_gmacs, **method_options)

    if json_out:
        print_json(run().to_dict())
        return
    with step(f"exporting {model} to ONNX and checking it in ONNX Runtime"):
        result = run()
    print_budget(result.budget)
    from ..exporter.graph import compact
    from ..report.card import short_method

    what = short_method(result.method, result.options)
    batch = "dynamic batch" if result.batch == "dynamic" else f"batch {result.batch}"
    out.print(f"Exported {escape(result.model)} · {escape(what)} → {escape(str(result.path))} "
              f"({_size(result.size_bytes)}, opset {result.opset}, {batch}, {result.seconds:.0f} s)",
              highlight=False)
    owner = f"{result.method}'s" if result.method else "the dense"
    out.print(f"· tokens entering blocks in the graph: {compact(result.tokens)} ({owner} schedule)",
              highlight=False)
    if result.verification is not None:
        out.print(f"· {escape(result.verification.summary())}", highlight=False)
    if result.speed is not None:
        out.print(profile_table(result.speed))
