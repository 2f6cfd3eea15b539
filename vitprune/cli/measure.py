"""`vitprune profile`, `vitprune methods` and `vitprune import-checkpoint`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from .app import app
from .common import (
    BudgetOpt, ExtraOpt, KeepRateOpt, MethodOpt, ModeOpt, ModelArg, RegionOpt, ROpt, ThresholdOpt, err, method_options, out,
    print_json, user_errors,
)


@app.command()
def profile(
    model: ModelArg = "demo",
    method: MethodOpt = None,
    keep_rate: KeepRateOpt = None,
    r: ROpt = None,
    budget: BudgetOpt = None,
    region_size: RegionOpt = None,
    threshold: ThresholdOpt = None,
    mode: ModeOpt = None,
    opt: ExtraOpt = None,
    no_weights: Annotated[bool, typer.Option(
        "--no-weights", help="build the architecture with random weights; download nothing.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda when available).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="throughput batch size (default 256 on GPU, 32 on CPU).")] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="fp16, bf16 or fp32 (default: fp16 autocast on GPU, fp32 on CPU).")] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1, help="timed repeats (median is reported).")] = None,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="count parameters and GMACs only.")] = False,
    compile: Annotated[Optional[str], typer.Option(
        "--compile", help="time both models through vitprune.optimize: auto (CUDA graphs + compile on GPU), compile, "
                          "cudagraphs, max-autotune.")] = None,
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch, or onnxruntime: export both models to ONNX (pruning inside, token counts "
                          "checked) and time the files in ONNX Runtime with torch's thread count. Needs "
                          "vitprune[export].")] = "torch",
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON.")] = False,
) -> None:
    """Parameters, GMACs, throughput and latency: dense, and compressed beside it with --method."""
    with user_errors():
        from .. import api
        from ..report.tables import profile_notes, profile_table

        opts = method_options(keep_rate, r, budget, region_size, threshold, opt, mode)

        def run():
            return api.profile(model, method, pretrained=not no_weights, device=device, dtype=dtype,
                               batch_size=batch_size, speed=not no_speed, latency=not no_speed, repeats=repeats,
                               compile=compile, runtime=runtime, **opts)

        if json_out:
            print_json(run().to_dict())
            return
        what = "exporting to ONNX, " if runtime == "onnxruntime" and not no_speed else ""
        with err.status(f"loading, {what}counting and timing (dense and compressed, interleaved)…"):
            report = run()
        out.print(profile_table(report))
        for note in profile_notes(report):
            out.print(f"[dim]· {escape(note)}[/]")


@app.command()
def methods(
    json_out: Annotated[bool, typer.Option("--json", help="print as JSON.")] = False,
) -> None:
    """List the token methods with their options, defaults and papers."""
    with user_errors():
        from ..methods import describe_methods
        from ..report.tables import methods_tables

        info = describe_methods()
        if json_out:
            print_json(info)
            return
        for table in methods_tables(info):
            out.print(table)


@app.command("import-checkpoint")
def import_checkpoint(
    file: Annotated[str, typer.Argument(help="official checkpoint (.pth with a 'model' entry, or .safetensors).")],
    method: Annotated[str, typer.Option("--method", "-m", help="dynamicvit, evit, evovit or tome.")],
    output: Annotated[str, typer.Option("--output", "-o", help="folder to save the vitprune model in.")],
    base: Annotated[str, typer.Option(help="timm architecture the checkpoint was trained from.")] =
        "deit_small_patch16_224",
    keep_rate: KeepRateOpt = None,
    r: ROpt = None,
    opt: ExtraOpt = None,
    key: Annotated[Optional[str], typer.Option(help="entry holding the weights (default: model, state_dict...).")]
        = None,
) -> None:
    """Turn a checkpoint released by a method's authors into a vitprune model folder."""
    with user_errors():
        from ..hub import save
        from ..hub.convert import import_checkpoint as do_import
        from ..hub.lock import output_lock
        from ..hub.save import check_overwritable

        with output_lock(output, "import-checkpoint"):  # refused at once when another run writes there
            check_overwritable(output)
            model = do_import(file, base, method, key=key, **method_options(keep_rate, r, extra=opt))
            folder = save(model, output, base_model=base)
        out.print(f"Imported {escape(file)} as {escape(model.vitprune_method.describe())} on {escape(base)} → "
                  f"{escape(str(folder))}", highlight=False)
