"""`vitprune export`: a model to ONNX with its pruning inside, checked in ONNX Runtime before it is reported."""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..errors import UsageError
from ._options import method_options
from .common import (AllowLargeOpt, JsonOpt, MethodOpt, ModelArg, NoWeightsOpt, TargetGmacsOpt, out,
                     print_budget, print_json, step)


class Format(str, Enum):
    onnx = "onnx"


class Quantize(str, Enum):
    int8 = "int8"
    int8_static = "int8-static"


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
    quantize: Annotated[Optional[Quantize], typer.Option(
        "--quantize", help="also write the int8 file beside the fp32 one (model-int8.onnx): int8 (dynamic, no "
                           "data) or int8-static (QDQ, calibrated on --calibrate-data). Its token schedule and "
                           "accuracy are checked first.")] = None,
    calibrate_data: Annotated[Optional[str], typer.Option(
        "--calibrate-data", help="int8-static: the images to calibrate on (any --data form; default: a saved "
                                 "folder's training data), through the model's preprocessing.")] = None,
    calibrate_images: Annotated[Optional[int], typer.Option(
        "--calibrate-images", min=1, help="int8-static: how many train images to calibrate on (default 64).")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval-data", help="--quantize: top-1 of the fp32 and int8 files on this data's test split, side by "
                            "side ('demo', a folder, hf:org/name...).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        "--max-drop", help="--quantize: refuse an int8 file that loses more top-1 points than this (default "
                           "1.0; without --eval-data: its argmax disagreement with PyTorch on the check images).")]
        = None,
    force: Annotated[bool, typer.Option(
        "--force", help="--quantize: write the int8 file even above --max-drop (the card says so).")] = False,
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
    from ..exporter import export as do_export  # deferred: CLI startup
    from ..report.tables import profile_table  # deferred: CLI startup

    def run():
        return do_export(model, output, method=method, format=format.value, batch_size=batch_size, opset=opset,
                         images=images, measure=measure, repeats=repeats, pretrained=not no_weights,
                         target_gmacs=target_gmacs, quantize=quantize.value if quantize else None,
                         calibrate_data=calibrate_data, calibrate_images=calibrate_images, eval_data=eval_data,
                         max_drop=max_drop, force=force, **method_options)

    if json_out:
        print_json(run().to_dict())
        return
    with step(f"exporting {model} to ONNX and checking it in ONNX Runtime"):
        result = run()
    print_budget(result.budget)
    from ..exporter.graph import compact  # deferred: CLI startup
    from ..report.card import short_method  # deferred: CLI startup

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
    q = result.int8
    if q is not None:
        out.print(f"Wrote {escape(str(result.path.with_name(q.file)))} ({_size(q.size_bytes)}, {escape(q.label)}); "
                  f"tokens entering blocks: {compact(q.tokens)}", highlight=False)
        out.print(f"· {escape(q.summary())}", highlight=False)
        if q.forced:
            out.print(f"[yellow]· written with --force: it loses {q.drop:.2f} points ({escape(q.drop_on)}), more "
                      f"than --max-drop {q.max_drop:g}[/]", highlight=False)
    if result.speed is not None:
        out.print(profile_table(result.speed))
