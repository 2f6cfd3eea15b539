"""Rich tables for reports (the CLI prints these; ``--json`` prints the reports' dicts instead)."""
from __future__ import annotations

from itertools import groupby
from typing import Optional

from rich.markup import escape
from rich.table import Table

from ..api import ModelStats, ProfileReport

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
    c, d = report.compressed, report.dense
    title = f"{report.model}" + (f" · {describe_method(c)}" if c else "")
    how = (f" · {report.runtime_info}" if report.runtime_info else f" · compiled ({report.compiled})"
           if report.compiled else " · eager")
    caption = (f"{report.device_name} · {report.dtype} · batch {report.batch_size} · input "
               f"{'×'.join(map(str, report.input_size))}" + how)
    table = Table(title=escape(title), caption=escape(caption), title_justify="left", caption_justify="left")
    table.add_column("")
    table.add_column("dense", justify="right")
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
    if d.throughput is not None:
        row(f"throughput (img/s, batch {report.batch_size})", d.throughput, c.throughput if c else None, 1)
    if d.latency_ms is not None:
        row("latency (ms, batch 1, median)", d.latency_ms, c.latency_ms if c else None, 2, inverse=True)
    tokens = ["tokens entering blocks", compact_schedule(d.tokens)]
    if c:
        tokens += [compact_schedule(c.tokens), ""]
    table.add_row(*tokens)
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
    if report.latency_ratio is not None:
        notes.append("latency ratio > 1× means the compressed model answers faster than the dense one.")
    return notes


def methods_tables(info: list[dict]) -> list[Table]:
    """One table per method: its options with type, default and help; paper and notes in the caption."""
    tables = []
    for m in info:
        caption = [m["paper"]]
        if m["runtime_options"]:
            caption.append("switchable at run time: " + ", ".join(m["runtime_options"]))
        caption += [f"note: {n}" for n in m["notes"]]
        caption = [escape(c) for c in caption]
        training = "fine-tune with `vitprune compress`" if m["needs_training"] else "works off the shelf"
        t = Table(title=f"[bold]{m['name']}[/] — {escape(m['title'])}: {escape(m['summary'])} ({training})",
                  title_justify="left",
                  caption="\n".join(caption), caption_justify="left", expand=False)
        t.add_column("option")
        t.add_column("type")
        t.add_column("default")
        t.add_column("meaning")
        for o in m["options"]:
            flag = "--" + o["name"].replace("_", "-")
            t.add_row(flag, escape(o["type"].replace("typing.", "")), escape(str(o["default"])), escape(o["help"]))
        tables.append(t)
    return tables
