"""`vitprune push`, `vitprune visualize` and `vitprune sweep`: parse, call the library, render."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from .app import app
from .common import (
    BudgetOpt, ExtraOpt, KeepRateOpt, MethodOpt, ModeOpt, RegionOpt, ROpt, ThresholdOpt, _parse_value, err,
    method_options, out, print_json, user_errors,
)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ------------------------------------------------------------------------------------------ push


@app.command()
def push(
    folder: Annotated[str, typer.Argument(help="a folder saved by vitprune (e.g. the output of `vitprune compress`).")],
    repo: Annotated[str, typer.Option("--repo", "-r", help="Hub repo to upload to, as user/name (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="create the repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(
        help="branch to push to (created from main if missing; default main).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="list the files and print the model card that would go; send nothing.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="commit message.")] = None,
    include: Annotated[Optional[list[str]], typer.Option(
        "--include", help="also send files matching this glob, relative to the folder (repeatable), e.g. teacher, "
        "'samples/*.png'; still only files inside the folder.")] = None,
    include_onnx: Annotated[bool, typer.Option(
        "--include-onnx", help="upload model.onnx too, exported into the folder first when missing (`vitprune "
                               "export`; needs vitprune[export]).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON.")] = False,
) -> None:
    """Upload a saved model folder to the Hugging Face Hub with a model card generated from its run.

    Sends the model, not the disk: config.json, model.safetensors, report.json, train_log.jsonl, model.onnx, the
    images the card shows and the card (README.md, regenerated from config.json and report.json so that it names
    the repo); anything else only with --include. Files that lead outside the folder are refused. The token comes
    from HF_TOKEN or `hf auth login`; it is never printed. The local folder is not changed.
    """
    with user_errors():
        from ..hub.push import push as do_push

        kwargs = dict(private=private, revision=revision, commit_message=message, include=include or ())
        if dry_run:
            result = do_push(folder, repo, dry_run=True, include_onnx=include_onnx, **kwargs)
        else:
            with err.status(f"uploading {escape(folder)} to {escape(repo)}…"):
                result = do_push(folder, repo, include_onnx=include_onnx, **kwargs)
        if json_out:
            print_json(result.to_dict())
            return
        from rich.table import Table

        verb = "Would upload" if result.dry_run else "Uploaded"
        table = Table(title=f"{verb} to {escape(result.repo_id)} ({'private' if result.private else 'public'}, "
                      f"branch {escape(result.revision)})", title_justify="left")
        table.add_column("file")
        table.add_column("size", justify="right")
        table.add_column("")
        why = {"generated": "generated model card", "included": "--include"}
        for f in result.files:
            table.add_row(escape(f.path), _size(f.size), why.get(f.source, ""))
        table.add_row(f"{len(result.files)} files", _size(result.total_bytes), "", style="bold")
        out.print(table)
        for note in result.notes:
            out.print(f"[dim]· {escape(note)}[/]")
        if result.dry_run:
            out.rule("README.md (model card)")
            out.print(result.card, markup=False, highlight=False)
            out.print(f"Dry run: nothing was sent. Push with: vitprune push {folder} --repo {result.repo_id}",
                      markup=False, highlight=False)
        else:
            out.print(f"Done: {result.url} · load it with vitprune.load(\"hf-hub:{result.repo_id}\")",
                      markup=False, highlight=False)


# ------------------------------------------------------------------------------------------ visualize


def _int_list(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    from ..errors import MethodOptionError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise MethodOptionError(f"{flag} takes block numbers like 3,6,9, got {text!r}.") from None


@app.command()
def visualize(
    model: Annotated[str, typer.Argument(
        help="a compressed model (folder or hf-hub:user/name), or a dense one (timm name, 'demo'...) with --method.")],
    images: Annotated[list[str], typer.Argument(
        help="image files (any format PIL reads), or demo:N for the N-th digit of the bundled demo val split.")],
    output: Annotated[str, typer.Option("--out", "-o", help="PNG file to write.")] = "tokens.png",
    method: MethodOpt = None,
    keep_rate: KeepRateOpt = None,
    r: ROpt = None,
    budget: BudgetOpt = None,
    region_size: RegionOpt = None,
    threshold: ThresholdOpt = None,
    mode: ModeOpt = None,
    opt: ExtraOpt = None,
    blocks: Annotated[Optional[str], typer.Option(
        help="only these stages (0-based blocks after which tokens changed), e.g. 3,6,9 (default: all).")] = None,
    dpi: Annotated[int, typer.Option(help="resolution (100: 200-pixel panels).")] = 100,
    no_weights: Annotated[bool, typer.Option(
        "--no-weights", help="build the architecture with random weights (download nothing).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the token counts per stage as JSON.")] = False,
) -> None:
    """Draw which tokens each stage keeps: one row per image, the input then one column per stage.

    Pruned patches are greyed out; patches merged into one token (ToMe) share a colour; pooled regions (DGE) are
    coloured by their granularity. Images go through the model's own timm eval transform.
    """
    with user_errors():
        from ..report.plots import require_matplotlib, visualize as do_visualize

        require_matplotlib()
        opts = method_options(keep_rate, r, budget, region_size, threshold, opt, mode)
        with err.status("running the model with token tracking and drawing…"):
            res = do_visualize(model, images, output, method=method, blocks=_int_list(blocks, "--blocks"), dpi=dpi,
                               pretrained=not no_weights, **opts)
        if json_out:
            print_json({"out": str(res.path), "size": list(res.size), **res.maps.to_dict()})
            return
        maps = res.maps
        P = maps.grid[0] * maps.grid[1]
        out.print(f"Wrote {res.path} ({res.size[0]}×{res.size[1]} px): {len(maps.labels)} image(s) × "
                  f"{len(maps.stages)} stage(s) of {maps.model} · {maps.method}", markup=False, highlight=False)
        for s in maps.stages:
            kept = [maps.kept(s, i) for i in range(len(maps.labels))]
            shown = ", ".join(map(str, kept))
            out.print(f"  after block {s.block}: {shown} of {P} patch tokens", highlight=False)
        if not maps.stages:
            out.print("  (the method changed no tokens for these images)", highlight=False)


# ------------------------------------------------------------------------------------------ sweep

_VALUE_FLAGS = {"keep_rates": "keep_rate", "r_values": "r", "budgets": "budget", "thresholds": "threshold"}


def _values(text: str, flag: str) -> list[Any]:
    from ..errors import MethodOptionError

    vals = [_parse_value(t) for t in text.split(",") if t.strip()]
    bad = [v for v in vals if isinstance(v, (str, bool)) or v is None]
    if not vals or bad:
        raise MethodOptionError(f"{flag} takes numbers separated by commas (e.g. 0.5,0.7,0.9), got {text!r}.")
    return vals


def sweep_table(result: Any):
    from rich.table import Table

    from ..report.tables import GMACS_LABEL

    d = result.dense
    has_acc = d.get("top1") is not None
    has_speed = d.get("throughput") is not None
    has_lat = d.get("latency_ms") is not None
    has_params = any(p.params != d["params"] for p in result.points)
    caption = f"{result.device_name} · {result.dtype} · throughput at batch {result.batch_size}"
    if has_lat:
        caption += ", latency at batch 1"
    if not has_params:
        caption += f" · {d['params'] / 1e6:.2f} M parameters"
    if has_acc:
        caption += f" · top-1 on {result.data} val"
    table = Table(title=escape(f"{result.model} · {result.method} · {result.option} swept ({result.mode})"),
                  caption=escape(caption), title_justify="left", caption_justify="left")
    table.add_column(escape(result.option), no_wrap=True, min_width=len(result.option))
    table.add_column(GMACS_LABEL, justify="right")
    table.add_column("×dense", justify="right")
    if has_params:
        table.add_column("params (M)", justify="right")
    if has_speed:
        table.add_column("img/s", justify="right")
        table.add_column("speedup", justify="right")
    if has_lat:
        table.add_column("latency ms", justify="right")
    if has_acc:
        table.add_column("top-1 %", justify="right")
        table.add_column("Δ pt", justify="right")

    def num(v: Optional[float], digits: int) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    def row(label: str, p: dict, dense: bool) -> None:
        cells = [label, f"{p['gmacs']:.4f}", "1.00×" if dense else f"{p['gmacs'] / d['gmacs']:.2f}×"]
        if has_params:
            cells.append(f"{p['params'] / 1e6:.2f}")
        if has_speed:
            thr = p.get("throughput")
            cells += [num(thr, 0 if thr is not None and thr >= 100 else 1),
                      "1.00×" if dense else (f"{p['speedup']:.2f}×" if p.get("speedup") is not None else "-")]
        if has_lat:
            cells.append(num(p.get("latency_ms"), 2))
        if has_acc:
            cells += [num(p.get("top1"), 2),
                      "" if dense or p.get("top1") is None else f"{p['top1'] - d['top1']:+.2f}"]
        table.add_row(*cells, style="bold" if dense else None)

    row("dense", d, True)
    for p in result.points:
        row(str(p.value), p.__dict__, False)
    return table


@app.command()
def sweep(
    model: Annotated[str, typer.Argument(
        help="dense model (timm name, hf-hub:, folder, 'demo') with --method, or a compressed folder to sweep its "
        "run-time options.")] = "demo",
    method: MethodOpt = None,
    keep_rates: Annotated[Optional[str], typer.Option(
        help="sweep keep_rate over these values, e.g. 0.5,0.6,0.7,0.8,0.9 (DynamicViT, EViT, Evo-ViT, SaiT).")]
        = None,
    r_values: Annotated[Optional[str], typer.Option(
        "--r-values", help="sweep ToMe's r (tokens merged per block) over these values, e.g. 4,8,12,16.")] = None,
    budgets: Annotated[Optional[str], typer.Option(help="sweep DGE's budget over these values.")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="sweep SaiT's threshold over these values.")] = None,
    values: Annotated[Optional[str], typer.Option(
        help="values of --option (default: the method's headline option: keep_rate, r, budget or threshold).")]
        = None,
    option: Annotated[Optional[str], typer.Option(help="the method option --values sweeps.")] = None,
    opt: ExtraOpt = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="add top-1 accuracy on this data's val split ('demo', a folder...).")] = None,
    val_split: Annotated[Optional[float], typer.Option(help="held-out fraction for one-folder data.")] = None,
    epochs: Annotated[Optional[float], typer.Option(
        help="fine-tune every point for this many epochs with `vitprune compress` (needs --data).")] = None,
    output: Annotated[str, typer.Option("--out", "-o", help="folder for sweep.json and pareto.png.")] =
        "vitprune-sweep",
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda when available).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp16, bf16 or fp32 (default fp16 on GPU, fp32 on CPU).")]
        = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="throughput batch size (default 256 on GPU, 32 on CPU).")] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1, help="timed repeats per point (median).")] = None,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="skip the batch-1 latency timing.")] = False,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="GMACs (and accuracy) only, no timing.")] = False,
    no_weights: Annotated[bool, typer.Option(
        "--no-weights", help="random weights (speed and GMACs only; download nothing).")] = False,
    no_plot: Annotated[bool, typer.Option(
        "--no-plot", help="write sweep.json and print the table only (no matplotlib needed).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print sweep.json instead of the table.")] = False,
) -> None:
    """Accuracy, GMACs and throughput of one method over several settings, with a Pareto plot.

    Give the values with the flag of the option they set: --keep-rates, --r-values (ToMe), --budgets (DGE),
    --thresholds (SaiT), or --values with --option NAME for any other option. Fix the method's other options with
    --opt KEY=VALUE. Writes OUT/sweep.json and OUT/pareto.png (top-1 vs throughput with the dense model as the
    reference; without --data, GMACs vs throughput).
    """
    with user_errors():
        from ..errors import MethodOptionError
        from ..sweeps import sweep as do_sweep

        given = {flag: text for flag, text in (("keep_rates", keep_rates), ("r_values", r_values),
                                               ("budgets", budgets), ("thresholds", thresholds),
                                               ("values", values)) if text is not None}
        if len(given) != 1:
            names = ", ".join("--" + f.replace("_", "-") for f in given) if given else "none"
            raise MethodOptionError(
                "give the values to sweep with exactly one of --keep-rates, --r-values, --budgets, --thresholds or "
                f"--values (given: {names}).")
        flag, text = next(iter(given.items()))
        if flag != "values" and option is not None:
            raise MethodOptionError(f"--option goes with --values; --{flag.replace('_', '-')} already names the "
                                    f"option ({_VALUE_FLAGS[flag]}).")
        swept = option.replace("-", "_") if flag == "values" and option else _VALUE_FLAGS.get(flag)
        vals = _values(text, "--" + flag.replace("_", "-"))
        fixed = method_options(extra=opt)

        def progress(e: dict[str, Any]) -> None:
            if json_out:
                return
            if e["event"] == "point_done":
                p = e["point"]
                parts = [f"{swept or 'value'}={p.value}", f"{p.gmacs:.4f} GMACs"]
                if p.throughput is not None:
                    parts.append(f"{p.throughput:,.1f} img/s")
                if p.top1 is not None:
                    parts.append(f"top-1 {p.top1:.2f} %")
                err.print(f"[{e['index'] + 1}/{e['total']}] " + ", ".join(parts), markup=False, highlight=False)

        res = do_sweep(model, method, vals, option=swept, data=data, epochs=epochs, out=output, device=device,
                       dtype=dtype, batch_size=batch_size, repeats=repeats, speed=not no_speed,
                       latency=not (no_latency or no_speed), pretrained=not no_weights, val_split=val_split,
                       plot=not no_plot, progress=progress, **fixed)
        if json_out:
            print_json(res.to_dict())
            return
        out.print(sweep_table(res))
        for note in res.notes:
            out.print(f"[dim]· {escape(note)}[/]")
        out.print(f"Wrote {', '.join(res.files)}", markup=False, highlight=False)
