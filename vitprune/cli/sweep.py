"""`vitprune sweep`: one method at several settings of an option, measured side by side, with a Pareto plot."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..errors import UsageError
from ..settings import SpeedSettings, SweepConfig, help_of
from ._options import method_options, parse_value, run_settings, sweep_flags, sweep_values
from .common import speed_option, AllowLargeOpt, DeviceOpt, MethodOpt, Steps, err, print_json
from .common import out as console


def _values(text: str, flag: str) -> list[Any]:
    vals = [parse_value(t) for t in text.split(",") if t.strip()]
    bad = [v for v in vals if isinstance(v, (str, bool)) or v is None]
    if not vals or bad:
        raise UsageError(f"{flag} takes numbers separated by commas (e.g. 0.5,0.7,0.9), got {text!r}.")
    return vals


@sweep_values()
@method_options()
@run_settings(SweepConfig)
def sweep(
    model: Annotated[str, typer.Argument(help=help_of(SweepConfig, "model"))] = "demo",
    method: MethodOpt = None,
    values: Annotated[Optional[str], typer.Option(
        help="values of --option (default: the method's headline option).", rich_help_panel="Values to sweep "
        "(one of these)")] = None,
    option: Annotated[Optional[str], typer.Option(
        help="the method option --values sweeps.", rich_help_panel="Values to sweep (one of these)")] = None,
    target_gmacs: Annotated[Optional[str], typer.Option(
        "--target-gmacs", metavar="RATIOS", help="fractions of the dense GMACs, e.g. 0.5,0.6,0.7: the method's "
        "headline option is solved for each (within 1 %, else the closest), so methods compare at equal cost.",
        rich_help_panel="Values to sweep (one of these)")] = None,
    device: DeviceOpt = None,
    dtype: speed_option("dtype") = None,
    batch_size: speed_option("batch_size") = None,
    repeats: speed_option("repeats") = None,
    no_latency: speed_option("latency") = False,
    no_speed: speed_option("speed") = False,
    json_out: Annotated[bool, typer.Option("--json", help="print sweep.json instead of the table.")] = False,
    allow_large: AllowLargeOpt = False,
    settings: dict[str, Any] = {},  # noqa: B006 - replaced by the sweep's settings flags (vitprune.settings)
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
    swept: dict[str, tuple[str, str]] = {},  # noqa: B006 - replaced by the value flags (see _options)
) -> None:
    """Accuracy, GMACs and throughput of one method over several settings, with a Pareto plot.

    Give the values with the flag of the option they set (--keep-rates, --r-values...; see Values to sweep), or
    --values with --option NAME for any other option; fix the method's other options with their flags. Writes
    OUT/sweep.json and OUT/pareto.png (top-1 vs throughput with the dense model as the reference; without --data,
    GMACs vs throughput).
    """
    from ..sweeps import sweep as do_sweep  # deferred: CLI startup
    from ..report.tables import sweep_table  # deferred: CLI startup

    given = [(flag, name, text) for name, (flag, text) in swept.items()]
    if values is not None:
        given.append(("--values", option.replace("-", "_") if option else None, values))
    if target_gmacs is not None:
        given.append(("--target-gmacs", None, target_gmacs))
    if len(given) != 1:
        names = ", ".join(flag for flag, _, _ in given) or "none"
        raise UsageError(f"give the values to sweep with exactly one of {', '.join(sweep_flags())}, --values or "
                         f"--target-gmacs (given: {names}).")
    (flag, name, text), = given
    if option is not None and flag != "--values":
        raise UsageError(f"`option` goes with `values`; {flag} already names the option ({name}).")
    vals = _values(text, flag)
    ratios = vals if flag == "--target-gmacs" else None

    steps = Steps()

    def progress(e: dict[str, Any]) -> None:
        if json_out:
            return
        if e["event"] != "point_done":
            where = f"[{e['index'] + 1}/{e['total']}] " if "index" in e else ""
            steps.start(where + e["message"])  # evaluating the dense model, each point, the measurement
            return
        steps.end()
        p = e["point"]
        parts = [f"{e.get('option') or name or 'value'}={p.value}", f"{p.gmacs:.4f} GMACs"]
        if p.throughput is not None:
            parts.append(f"{p.throughput:,.1f} img/s")
        if p.top1 is not None:
            parts.append(f"top-1 {p.top1:.2f} %")
        err.print(f"[{e['index'] + 1}/{e['total']}] " + ", ".join(parts), markup=False, highlight=False)

    try:
        timing = SpeedSettings(device=device, dtype=dtype, batch_size=batch_size, repeats=repeats, speed=not no_speed,
                               latency=not (no_latency or no_speed))
        res = do_sweep(model, method, vals, option=name, target_gmacs=ratios, timing=timing, progress=progress,
                       **settings, **method_options)
        steps.end()
    finally:
        steps.close()
    if json_out:
        print_json(res.to_dict())
        return
    console.print(sweep_table(res))
    for note in res.notes:
        console.print(f"[dim]· {escape(note)}[/]")
    console.print(f"Wrote {', '.join(res.files)}", markup=False, highlight=False)
