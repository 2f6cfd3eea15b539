"""`vitprune profile`: parameters, GMACs, throughput and latency of a model, dense and compressed side by side."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ._options import method_options
from .common import (DeviceOpt, JsonOpt, MethodOpt, ModelArg, NoWeightsOpt, TargetGmacsOpt, err, out, print_budget,
                     print_json)


@method_options()
def profile(
    model: ModelArg = "demo",
    method: MethodOpt = None,
    no_weights: NoWeightsOpt = False,
    device: DeviceOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="throughput batch size (default 256 on GPU, 32 on CPU).")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="fp16, bf16 or fp32 (default: fp16 autocast on GPU, fp32 on CPU).")] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1, help="timed repeats (median is reported).")] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="count parameters and GMACs only.")] = False,
    compile_auto: Annotated[bool, typer.Option(
        "--compile", help="time both models through vitprune.optimize (torch.compile; CUDA graphs on GPU), mode "
                          "auto.")] = False,
    compile: Annotated[Optional[str], typer.Option(
        "--compile-mode", metavar="MODE", help="the vitprune.optimize mode (implies --compile): auto (CUDA graphs + "
                                               "compile on GPU, compile on CPU), compile, cudagraphs, "
                                               "max-autotune, none.")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch, or onnxruntime: export both models to ONNX (pruning inside, token counts "
                          "checked) and time the files in ONNX Runtime with torch's thread count. Needs "
                          "vitprune[export].")] = "torch",
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", metavar="MODE", help="with --runtime onnxruntime: also quantize both files (int8: dynamic; "
                                           "int8-static: QDQ calibrated on the demo check digits) and time dense "
                                           "and compressed, fp32 and int8, side by side.")] = None,
    target_gmacs: TargetGmacsOpt = None,
    json_out: JsonOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Parameters, GMACs, throughput and latency: dense, and compressed beside it.

    With --method, MODEL (dense) is patched with the method and its options; a compressed folder is profiled as
    saved, its run-time options (e.g. --keep-rate, --mode) changed for this run when given.
    """
    from .. import api
    from ..report.tables import profile_notes, profile_table

    def run():
        return api.profile(model, method, pretrained=not no_weights, device=device, dtype=dtype,
                           batch_size=batch_size, speed=not no_speed, latency=not no_speed, repeats=repeats,
                           compile=compile or ("auto" if compile_auto else None), runtime=runtime,
                           target_gmacs=target_gmacs, quantize=quantize, **method_options)

    if json_out:
        print_json(run().to_dict())
        return
    what = "exporting to ONNX, " if runtime == "onnxruntime" and not no_speed else ""
    with err.status(f"loading, {what}counting and timing (dense and compressed, interleaved)…"):
        report = run()
    print_budget(report.budget)
    out.print(profile_table(report))
    for note in profile_notes(report):
        out.print(f"[dim]· {escape(note)}[/]")
