"""The speed rows of a dense-vs-compressed table, in the one wording ``compress``, ``profile``, the model card and
its ONNX section share: paired ratios in words with their interquartile range, CPU time, the busy-machine note,
and the notes that say how to read them."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from ..measure.speed import BUSY_TEXT, speed_change


def number(v: Any, digits: int) -> str:
    """A finite number with thousands separators and ``digits`` decimals; ``-`` for anything else."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    return f"{v:,.{digits}f}"


def latency_change(dense_ms: Optional[float], compressed_ms: Optional[float]) -> str:
    """"1.25× faster" / "0.76× (slower)": the compressed model's batch-1 speed against the dense one's (dense
    latency over compressed latency), in the one wording every table uses (``speed.speed_change``)."""
    if not dense_ms or not compressed_ms:
        return ""
    return speed_change(dense_ms / compressed_ms)


def _ratio_cell(r: Optional[Mapping[str, Any]], fallback: Optional[float], conclusive: bool,
                words: Callable[[Optional[float], bool], str]) -> str:
    """A speed ratio as tables show it: the paired median in words, then its interquartile range."""
    if r is None:
        return words(fallback, True) if fallback is not None else ""
    cell = words(r["median"], conclusive)
    return cell + (f", IQR {r['q1']:.2f}–{r['q3']:.2f}" if r.get("rounds", 0) > 1 else "")


def _cpu_words(ratio: Optional[float], conclusive: bool = True) -> str:
    if ratio is None:
        return ""
    if f"{ratio:.2f}" == "1.00":
        return "1.00× (same)"
    return f"{ratio:.2f}× less" if ratio > 1 else f"{ratio:.2f}× (more)"


def speed_rows(dense: Mapping[str, Any], compressed: Mapping[str, Any], speed: Optional[Mapping[str, Any]],
               batch_size: Any) -> tuple[list[list[str]], list[str]]:
    """The speed rows of a dense-vs-compressed table (label, dense, compressed, change) and the lines that say how
    to read them, for ``compress``, ``profile`` and the model card alike: throughput and batch-1 latency as paired
    ratios ("1.31× faster" / "0.82× (slower)", interquartile range over the rounds), process CPU time per image,
    and "machine busy: speed not conclusive" instead of a verdict when the rounds say the machine was busy."""
    speed = speed or {}
    conclusive = not speed.get("busy")
    bs = f", batch {batch_size}" if batch_size is not None else ""
    rows: list[list[str]] = []

    def num(v: Any, digits: int) -> str:
        return number(v, digits)

    def fallback(a: Any, b: Any) -> Optional[float]:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v for v in (a, b))
        return b / a if ok else None

    d, c = dense, compressed
    if d.get("throughput") is not None or c.get("throughput") is not None:
        rows.append([f"throughput (img/s{bs})", num(d.get("throughput"), 1), num(c.get("throughput"), 1),
                     _ratio_cell(speed.get("throughput_ratio"), fallback(d.get("throughput"), c.get("throughput")),
                                 conclusive, speed_change)])
    if d.get("latency_ms") is not None or c.get("latency_ms") is not None:
        rows.append(["latency (ms, batch 1, median)", num(d.get("latency_ms"), 2), num(c.get("latency_ms"), 2),
                     _ratio_cell(speed.get("latency_ratio"), fallback(c.get("latency_ms"), d.get("latency_ms")),
                                 conclusive, speed_change)])
    if d.get("cpu_ms") is not None and c.get("cpu_ms") is not None:
        rows.append([f"CPU time (ms/img{bs})", num(d["cpu_ms"], 3), num(c["cpu_ms"], 3),
                     _ratio_cell(speed.get("cpu_ratio"), fallback(c["cpu_ms"], d["cpu_ms"]), True, _cpu_words)])
    if d.get("cpu_latency_ms") is not None and c.get("cpu_latency_ms") is not None:
        rows.append(["CPU time (ms, batch 1)", num(d["cpu_latency_ms"], 2), num(c["cpu_latency_ms"], 2),
                     _ratio_cell(speed.get("cpu_latency_ratio"), fallback(c["cpu_latency_ms"], d["cpu_latency_ms"]),
                                 True, _cpu_words)])
    notes: list[str] = []
    if speed.get("throughput_ratio") or speed.get("latency_ratio"):
        notes.append("speed changes: the median of per-round ratios, dense and compressed timed back to back in each "
                     "round (IQR: their interquartile range); CPU time: the process's CPU time per forward, all "
                     "threads, which other jobs on the machine do not inflate.")
    if not conclusive:
        notes.append(f"{BUSY_TEXT}: " + "; ".join(speed["busy"]) + ".")
    return rows, notes


def reading_notes(dense: Mapping[str, Any], compressed: Mapping[str, Any], batch_size: Any,
                  speed: Optional[Mapping[str, Any]] = None) -> list[str]:
    """What a reader of a dense-vs-compressed table may wonder about, in one line each: more parameters than
    dense (the method's own modules), and a throughput gain next to a batch-1 latency loss."""
    notes = []
    if dense.get("params") and (compressed.get("params") or 0) > dense["params"]:
        notes.append(f"params: +{(compressed['params'] - dense['params']) / 1e6:.3f} M for the method's own modules "
                     "(their MACs are in the GMACs).")
    thr, lat = (compressed.get("throughput"), dense.get("throughput")), (compressed.get("latency_ms"),
                                                                          dense.get("latency_ms"))
    if None not in thr + lat and thr[0] > thr[1] and lat[0] > lat[1] and not (speed or {}).get("busy"):
        batch = f" (batch {batch_size})" if batch_size else ""
        notes.append(f"throughput{batch} gains from fewer tokens; at batch 1 the method's own steps "
                     "(scoring, gathering tokens) cost more than the tokens save on this device, so latency is higher.")
    return notes


__all__ = ["latency_change", "number", "reading_notes", "speed_rows"]
