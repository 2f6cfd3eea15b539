"""README's two headline tables (accuracy at equal GMACs, CPU speed), rendered from the benchmark results.

The tables sit between ``<!-- headline-accuracy:begin/end -->`` and ``<!-- headline-speed:begin/end -->`` markers;
each gets one caption line (device, threads, versions, date, source file) read from the JSON.

    python benchmarks/headline.py           # print both tables
    python benchmarks/headline.py --write   # replace them in README.md

A test keeps README's tables equal to what this script renders from the committed JSON files.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ACCURACY = ROOT / "benchmarks" / "results" / "accuracy-gmacs0.65.json"
SPEED = ROOT / "benchmarks" / "results" / "speed_cpu.json"
NAMES = {"dynamicvit": "DynamicViT", "evit": "EViT", "evovit": "Evo-ViT", "tome": "ToMe", "dge": "DGE",
         "sait": "SaiT"}


def _versions(versions: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {versions[k].split('+')[0]}" for k in keys if k in versions)


def _setting(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items() if k != "router_init")


def accuracy_table(res: dict) -> str:
    rows = res["rows"]
    dates = sorted({r["date"] for r in rows if r.get("date")})
    seeds = sorted({run["seed"] for r in rows for run in r["runs"]})
    lines = [f"Demo digits, every method at {res['target_gmacs']}× the dense GMACs, {rows[0]['epochs']} epochs, test "
             f"top-1 (178 digits, one = 0.56 points), mean (range) over seeds {', '.join(map(str, seeds))} · "
             f"{res['device'].upper()} ({res['cpu']}, {res['threads']} thread{'s' if res['threads'] != 1 else ''}) · "
             f"{_versions(res['versions'], ('vitprune', 'torch'))} · {' to '.join(dates)} · "
             f"`{ACCURACY.relative_to(ROOT).as_posix()}`",
             "",
             "| method | setting (solved) | GMACs × dense | teacher test top-1 | test top-1 | Δ |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {_setting(r['options'])} | {r['gmacs'] / r['dense_gmacs']:.3f} | "
                     f"{r['teacher_test_top1']:.2f} | {r['test_top1']:.2f} ({r['test_top1_min']:.2f}–"
                     f"{r['test_top1_max']:.2f}) | {r['test_delta']:+.2f} |")
    return "\n".join(lines)


def speed_table(res: dict) -> str:
    run = res["runs"]["fp32"]
    dense = run["dense"]
    lines = [f"DeiT-S (`{res['model']}`, random weights), fp32 eager PyTorch, batch {dense['batch_size']} throughput "
             f"and batch-1 latency, × dense: median (range) over {res.get('sessions', 1)} sessions · "
             f"{res['device_name']} · {_versions(res['versions'], ('vitprune', 'torch', 'timm'))} · {res['date']} · "
             f"`{SPEED.relative_to(ROOT).as_posix()}`",
             "",
             f"| method | setting | GMACs | batch {dense['batch_size']} throughput | batch 1 latency |",
             "|---|---|---|---|---|",
             f"| dense | — | {res['gmacs']['dense']:.3f} | {dense['throughput']:.1f} img/s | "
             f"{dense['latency_ms']:.1f} ms |"]
    for method, options in res["headline"].items():
        m = run[method]
        lo, hi = m["ratio_range"]
        llo, lhi = m["latency_ratio_range"]
        lines.append(f"| {NAMES.get(method, method)} | {_setting(options)} | {res['gmacs'][method]:.3f} | "
                     f"{m['ratio']:.2f}× ({lo:.2f}–{hi:.2f}) | {m['latency_ratio']:.2f}× ({llo:.2f}–{lhi:.2f}) |")
    return "\n".join(lines)


def tables() -> dict[str, str]:
    """Marker name -> the table (with its caption) that belongs between that marker pair."""
    return {"headline-accuracy": accuracy_table(json.loads(ACCURACY.read_text())),
            "headline-speed": speed_table(json.loads(SPEED.read_text()))}


def block(text: str, name: str) -> str:
    """The text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, flags=re.S)
    if m is None:
        raise SystemExit(f"{README.name} has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return m.group(1).rstrip("\n")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="replace README's headline tables with the rendered ones")
    args = ap.parse_args(argv)
    rendered = tables()
    if not args.write:
        print("\n\n".join(rendered.values()))
        return 0
    text = README.read_text()
    for name, table in rendered.items():
        block(text, name)
        text = re.sub(rf"<!-- {name}:begin -->\n.*?<!-- {name}:end -->",
                      lambda _: f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->", text, flags=re.S)
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(README)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
