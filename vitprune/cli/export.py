"""`vitprune export`: a model to ONNX with its pruning inside, checked in ONNX Runtime before it is reported."""
from __future__ import annotations

from typing import Any

from rich.markup import escape

from ..settings import ExportSettings
from ._options import method_options, run_settings
from .common import AllowLargeOpt, JsonOpt, MethodOpt, ModelArg, out, print_budget, print_json, step


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


@method_options()
@run_settings(ExportSettings)
def export(
    model: ModelArg = "demo",
    method: MethodOpt = None,
    settings: dict[str, Any] = {},  # noqa: B006 - replaced by the export's settings flags (vitprune.settings)
    json_out: JsonOpt = False,
    allow_large: AllowLargeOpt = False,
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Export to ONNX with the pruning inside; ONNX Runtime must give PyTorch's logits before the file is written.

    A folder's run-time options can be changed for the export (e.g. --mode fixed on SaiT); with --method a dense
    model is patched first, as in `vitprune profile`.
    """
    from ..exporter import export as do_export  # deferred: CLI startup
    from ..report.tables import profile_table  # deferred: CLI startup

    def run():
        return do_export(model, method=method, **settings, **method_options)

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
