"""Rich tables for reports (the CLI prints these; ``--json`` prints the reports' dicts instead)."""
from __future__ import annotations

from dataclasses import asdict
from itertools import groupby
from typing import TYPE_CHECKING, Any, Optional

from rich.markup import escape
from rich.table import Table

from . import DENSE_SAME_WEIGHTS, DENSE_TEACHER, sweep_dense
from .card import reading_notes, short_method, speed_rows

if TYPE_CHECKING:  # annotations only: the reports this module renders
    from ..api import ProfileReport
    from ..measure.models import ModelStats

GMACS_LABEL = "GMACs (papers' GFLOPs)"


def compact_schedule(tokens: Optional[list[int]]) -> str:
    """``[197, 197, 140, 140]`` -> ``197×2 140×2``."""
    if not tokens:
        return "-"
    return " ".join(f"{k}×{len(list(g))}" for k, g in groupby(tokens))


def _fmt(v: Optional[float], digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _ratio(new: Optional[float], old: Optional[float], inverse: bool = False) -> str:
    if new is None or old is None or new == 0 or old == 0:
        return ""
    r = old / new if inverse else new / old
    return f"{r:.2f}×"


def describe_method(stats: ModelStats) -> str:
    if stats.method is None:
        return "dense"
    opts = ", ".join(f"{k}={v}" for k, v in stats.options.items() if v is not None)
    return f"{stats.method}({opts})"


def profile_table(report: ProfileReport) -> Table:
    if report.quantize:
        return int8_profile_table(report)
    c, d = report.compressed, report.dense
    title = f"{report.model}" + (f" · {describe_method(c)}" if c else "")
    how = (f" · {report.runtime_info}" if report.runtime_info else f" · compiled ({report.compiled})"
           if report.compiled else " · eager")
    caption = (f"{report.device_name} · {report.dtype} · batch {report.batch_size} · input "
               f"{'×'.join(map(str, report.input_size))}" + how)
    if c:
        caption += f"\n{DENSE_SAME_WEIGHTS}: the same model without the method"
    table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
    table.add_column("")
    table.add_column(DENSE_SAME_WEIGHTS if c else "dense", justify="right")
    if c:
        table.add_column("compressed", justify="right")
        table.add_column("ratio", justify="right")

    def row(label: str, dv, cv, digits: int, inverse: bool = False) -> None:
        cells = [label, _fmt(dv, digits)]
        if c:
            cells += [_fmt(cv, digits), _ratio(cv, dv, inverse)]
        table.add_row(*cells)

    row("params (M)", d.params / 1e6, c.params / 1e6 if c else None, 2)
    row(GMACS_LABEL, d.gmacs, c.gmacs if c else None, 3)
    if c:
        for r in speed_rows(asdict(d), asdict(c), c.speed, report.batch_size)[0]:
            table.add_row(*r)
    else:
        if d.throughput is not None:
            row(f"throughput (img/s, batch {report.batch_size})", d.throughput, None, 1)
        if d.latency_ms is not None:
            row("latency (ms, batch 1, median)", d.latency_ms, None, 2)
        if d.cpu_ms is not None:
            row(f"CPU time (ms/img, batch {report.batch_size})", d.cpu_ms, None, 3)
    tokens = ["tokens entering blocks", compact_schedule(d.tokens)]
    if c:
        tokens += [compact_schedule(c.tokens), ""]
    table.add_row(*tokens)
    return table


def int8_profile_table(report: ProfileReport) -> Table:
    """fp32 and int8 ONNX files, dense and compressed, timed side by side: one row each, ratios to dense fp32."""
    c, d = report.compressed, report.dense
    title = f"{report.model}" + (f" · {describe_method(c)}" if c else "") + f" · {report.quantize}"
    caption = (f"{report.device_name} · batch {report.batch_size} (throughput) and 1 (latency) · input "
               f"{'×'.join(map(str, report.input_size))} · {report.runtime_info}\n{report.quantize_info}"
               f"\nratios to the dense fp32 file, timed in the same interleaved run")
    table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
    for col in ("", GMACS_LABEL, f"img/s (batch {report.batch_size})", "× dense fp32", "latency (ms)",
                "× dense fp32 "):
        table.add_column(col, justify="left" if not col else "right")
    rows = [("dense fp32", d), ("dense int8", report.dense_int8)]
    if c:
        rows += [("compressed fp32", c), ("compressed int8", report.compressed_int8)]
    for label, st in rows:
        if st is None:
            continue
        table.add_row(label, _fmt(st.gmacs, 3), _fmt(st.throughput, 1), _ratio(st.throughput, d.throughput),
                      _fmt(st.latency_ms, 2), _ratio(st.latency_ms, d.latency_ms, inverse=True))
    return table


def profile_notes(report: ProfileReport) -> list[str]:
    notes = []
    for label, st in (("dense", report.dense), ("compressed", report.compressed)):
        if st is None:
            continue
        if st.uncounted_ops:
            ops = ", ".join(f"{k} ×{v}" for k, v in sorted(st.uncounted_ops.items()))
            notes.append(f"{label}: not counted by fvcore (GMACs are a lower bound): {ops}")
        notes += [f"{label}: {n}" for n in st.notes]
        if st.macs_source == "method":
            notes.append(f"{label}: GMACs counted from the per-image token decisions (mean over the batch).")
    if report.compressed is not None and not report.quantize:
        d, c = asdict(report.dense), asdict(report.compressed)
        notes += speed_rows(d, c, report.compressed.speed, report.batch_size)[1]
        notes += reading_notes(d, c, report.batch_size, report.compressed.speed)
    if report.quantize and report.speedup_vs_dense_int8 is not None:
        notes.append(f"compressed int8 vs dense int8: {report.speedup_vs_dense_int8:.2f}× throughput.")
    return notes


def compress_table(report: dict[str, Any]) -> Table:
    """The table `vitprune compress` ends with: the dense teacher against the compressed model."""
    d, c, m = report["dense"], report["compressed"], report["measure"]
    what = short_method(report["method"], report["options"])
    srows, snotes = speed_rows(d, c, m.get("speed"), m["batch_size"])
    caption = [f"{m['device_name']} · {m['dtype']} · throughput batch {m['batch_size']}, latency batch 1",
               f"{DENSE_TEACHER}: {report.get('teacher') or 'the dense model'}, distilled into the compressed model",
               *snotes, *reading_notes(d, c, m["batch_size"], m.get("speed"))]
    table = Table(title=escape(f"{report['model']} · {what} · {report['data']['data']} val"),
                  caption=escape("\n".join(caption)), title_justify="left", caption_justify="left")
    for col, just in (("", "left"), (DENSE_TEACHER, "right"), ("compressed", "right"), ("change", "right")):
        table.add_column(col, justify=just)

    def fmt(v, digits):
        return "-" if v is None else f"{v:,.{digits}f}"

    def row(label, key, digits, change):
        dv, cv = d.get(key), c.get(key)
        table.add_row(label, fmt(dv, digits), fmt(cv, digits), change(dv, cv) if None not in (dv, cv) else "")

    if c.get("cosine") is not None:  # a model without a classifier: agreement with the teacher's embeddings
        row("cosine to teacher", "cosine", 4, lambda a, b: f"{b - a:+.4f}")
    else:
        row("top-1 (%)", "top1", 2, lambda a, b: f"{b - a:+.2f} pt")
        row("top-5 (%)", "top5", 2, lambda a, b: f"{b - a:+.2f} pt")
        row("loss", "loss", 4, lambda a, b: f"{b - a:+.4f}")
    table.add_row("params (M)", fmt(d["params"] / 1e6, 3), fmt(c["params"] / 1e6, 3),
                  f"{c['params'] / d['params']:.2f}×")
    row(GMACS_LABEL, "gmacs", 4, lambda a, b: f"{b / a:.2f}×")
    for r in srows:
        table.add_row(*r)
    return table


def sweep_table(result: Any) -> Table:
    """The table of a sweep: the dense reference row, then one row per value."""
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
    caption += f"\n{sweep_dense(result.mode)}"
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

