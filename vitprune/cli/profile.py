"""`vitprune profile`: parameters, GMACs, throughput and latency of a model, dense and compressed side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ._options import method_options
from .common import (speed_option, AllowLargeOpt, DeviceOpt, JsonOpt, MethodOpt, ModelArg, NoWeightsOpt, TargetGmacsOpt, out,
                     print_budget, print_json, step)


@method_options()
def profile(
    model: ModelArg = "demo",
    method: MethodOpt = None,
    no_weights: NoWeightsOpt = False,
    device: DeviceOpt = None,
    batch_size: speed_option("batch_size") = None,
    dtype: speed_option("dtype") = None,
    repeats: speed_option("repeats") = None,
    no_speed: speed_option("speed") = False,
    compile_auto: Annotated[bool, typer.Option(
        "--compile", help="time both models through vitprune.optimize (torch.compile; CUDA graphs on GPU): "
                          "--compile-mode auto.")] = False,
    compile: speed_option("compile") = None,
    runtime: speed_option("runtime") = "torch",
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", metavar="MODE", help="with --runtime onnxruntime: also quantize both files (int8: dynamic; "
                                           "int8-static: QDQ calibrated on the demo check digits) and time dense "
                                           "and compressed, fp32 and int8, side by side.")] = None,
    target_gmacs: TargetGmacsOpt = None,
    json_out: JsonOpt = False,
    allow_large: AllowLargeOpt = False,
    update_card: Annotated[bool, typer.Option(
        "--update-card", help="MODEL is a folder saved by `vitprune compress`: measure it again and write the new "
                              "speed into its report.json and model card (one atomic update of the folder).")] = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Parameters, GMACs, throughput and latency: dense, and compressed beside it.

    With --method, MODEL (dense) is patched with the method and its options; a compressed folder is profiled as
    saved, its run-time options (e.g. --keep-rate, --mode) changed for this run when given.
    """
    from .. import api  # deferred: CLI startup
    from ..report.tables import profile_notes, profile_table  # deferred: CLI startup

    if update_card:
        _check_update_card(model, method, method_options, no_speed, compile or compile_auto, runtime, target_gmacs)

    def run():
        return api.profile(model, method, pretrained=not no_weights, device=device, dtype=dtype,
                           batch_size=batch_size, speed=not no_speed, latency=not no_speed, repeats=repeats,
                           compile=compile or ("auto" if compile_auto else None), runtime=runtime,
                           target_gmacs=target_gmacs, quantize=quantize, **method_options)

    if json_out:
        report = run()
        if update_card:
            from ..report.remeasure import update_speed  # deferred: CLI startup

            update_speed(model, report.to_dict())
        print_json(report.to_dict())
        return
    what = "exporting to ONNX, " if runtime == "onnxruntime" and not no_speed else ""
    doing = "counting" if no_speed else f"{what}counting and timing (dense and compressed, interleaved)"
    with step(f"loading, {doing}"):
        report = run()
    print_budget(report.budget)
    out.print(profile_table(report))
    for note in profile_notes(report):
        out.print(f"[dim]· {escape(note)}[/]")
    if update_card:
        from ..report.remeasure import update_speed  # deferred: CLI startup

        update_speed(model, report.to_dict())
        out.print(f"updated the speed in {escape(str(model))}/report.json and its model card (README.md)")


def _check_update_card(model: str, method: Optional[str], options: dict[str, Any], no_speed: bool, compiled: Any,
                       runtime: str, target_gmacs: Optional[float]) -> None:
    """--update-card re-measures a saved compressed folder as `compress` measured it: nothing else."""
    from ..errors import UsageError  # deferred: CLI startup

    folder = Path(model).expanduser()
    if not (folder / "report.json").is_file():
        raise UsageError(f"--update-card takes a folder saved by `vitprune compress` (with a report.json); "
                         f"{model!r} is not one.")
    clash = [flag for flag, given in (("--method", method), ("method options", options), ("--no-speed", no_speed),
                                      ("--compile", compiled), ("--runtime", runtime != "torch"),
                                      ("--target-gmacs", target_gmacs is not None)) if given]
    if clash:
        raise UsageError(f"--update-card measures the saved model as `compress` does (eager PyTorch, as saved); "
                         f"drop {', '.join(clash)}.")
