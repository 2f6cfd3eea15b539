"""Accuracy benchmark on the bundled demo at equal cost: every available method compressed from the demo teacher
with ``vitprune.compress`` (the library call behind ``vitprune compress``), on CPU, with the demo recipe, each at the
setting whose counted GMACs are ``--target-gmacs`` x the dense model's (``vitprune.budget.solve_for_gmacs``: keep
rate, ToMe's r, DGE's budget, SaiT's fixed-mode keep rate; within 1 %, or the closest whole-number r).

    python benchmarks/accuracy.py                          # all methods at 0.65x dense GMACs, seed 0
    python benchmarks/accuracy.py --methods evit tome --seeds 0,1,2
    python benchmarks/accuracy.py --target-gmacs 0.5 --json out.json
    python benchmarks/accuracy.py --smoke --json /tmp/a.json   # one method, a couple of steps (the test)

Prints one table (val top-1 mean and range over the seeds, the setting solved, GMACs) and writes a JSON file
(default ``benchmarks/results/accuracy-gmacs<RATIO>.json``) with one row per method: a run of some methods replaces
their rows and keeps the others (each row records the command and date that produced it).

What is reported is the val split's top-1 (359 digits; one image is 0.28 points): the demo data has no third,
held-out split (scikit-learn's 1,797 digits are all in train or val, and changing them would change every demo
number), and the recipe is the demo preset, not tuned per method. This is a script, not a test: it trains each
method for the demo schedule (one to two minutes per run on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

import vitprune
from vitprune.budget import solve_for_gmacs
from vitprune.methods import method_names

TARGET = 0.5  # points of top-1 the compressed model may lose
SMOKE_METHOD = "evit"
SMOKE_EPOCHS = 0.02  # of the demo's 22 steps per epoch: one step


def budget_settings(name: str, ratio: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the options for compress, the budget record) of ``name`` at ``ratio`` x the demo teacher's GMACs."""
    solution = solve_for_gmacs(vitprune.load_model("demo"), name, ratio)
    print(f"{name}: {solution.describe()}", flush=True)
    return solution.options, solution.record()


def seeds_arg(values: list[str]) -> list[int]:
    """``--seeds 0,1,2`` or ``--seeds 0 1 2``."""
    return [int(v) for text in values for v in text.split(",") if v.strip()]


def merged_rows(path: Path, new: list[dict]) -> list[dict]:
    """``new`` rows plus the rows of ``path`` for methods not run now, in the registry's method order."""
    old = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    by_method = {r["method"]: r for r in old}
    by_method.update({r["method"]: r for r in new})
    order = {name: i for i, name in enumerate(method_names())}
    return sorted(by_method.values(), key=lambda r: order.get(r["method"], len(order)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=None, help="default: every available method")
    ap.add_argument("--target-gmacs", type=float, default=0.65, help="fraction of the dense GMACs (default 0.65)")
    ap.add_argument("--epochs", type=float, default=None, help="default: the demo recipe (10)")
    ap.add_argument("--out-dir", type=Path, default=Path("vitprune-out/accuracy"))
    ap.add_argument("--json", type=Path, default=None,
                    help="default: benchmarks/results/accuracy-gmacs<RATIO>.json")
    ap.add_argument("--seeds", nargs="+", default=["0"], help="training seeds, e.g. 0,1,2 (default: 0)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"{SMOKE_METHOD} only, {SMOKE_EPOCHS:g} epochs (a step): checks the script runs")
    args = ap.parse_args(argv)
    if args.json is None:
        args.json = Path(__file__).parent / "results" / f"accuracy-gmacs{args.target_gmacs:g}.json"
    methods = [SMOKE_METHOD] if args.smoke else (args.methods or method_names())
    epochs = SMOKE_EPOCHS if args.smoke else args.epochs
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    for name in methods:
        opts, budget = budget_settings(name, args.target_gmacs)
        runs = []
        for seed in seeds_arg(args.seeds):
            t0 = time.perf_counter()
            res = vitprune.compress("demo", name, "demo", str(args.out_dir / f"{name}-seed{seed}"),
                                    epochs=epochs, seed=seed, overwrite=True, speed=False, **opts)
            m = res.metrics
            runs.append({"seed": seed, "top1": m["top1"], "gmacs": m["gmacs"],
                         "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"{name} seed {seed}: top-1 {m['top1']:.2f} (teacher {m['dense_top1']:.2f}), "
                  f"{m['gmacs'] * 1e3:.1f} MMACs, {runs[-1]['wall_s']:.0f} s", flush=True)
        top1 = [x["top1"] for x in runs]
        mean = sum(top1) / len(top1)
        row = {"method": name, "options": opts, "budget": budget, "split": "val", "teacher_top1": m["dense_top1"],
               "top1": mean, "top1_min": min(top1), "top1_max": max(top1), "delta": mean - m["dense_top1"],
               "gmacs": sum(x["gmacs"] for x in runs) / len(runs),  # trained routers (DGE) differ per seed
               "dense_gmacs": m["dense_gmacs"], "epochs": res.recipe["epochs"],
               "wall_s": round(sum(x["wall_s"] for x in runs) / len(runs), 1), "runs": runs,
               "within_target": mean - m["dense_top1"] >= -TARGET - 1e-9,
               "command": command, "date": date.today().isoformat()}
        rows.append(row)
    rows = merged_rows(args.json, rows)

    lines = table(rows)
    print("\n".join(lines))
    meta = {"target_gmacs": args.target_gmacs, "split": "val", "target_points": TARGET, "device": "cpu",
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "versions": {"vitprune": vitprune.__version__, "torch": torch.__version__}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "rows": rows, "table": lines}, indent=2) + "\n")
    print(f"wrote {args.json}")


def table(rows: list[dict]) -> list[str]:
    """The Markdown table: val top-1 as the mean over the seeds with its range."""
    lines = ["| method | setting (solved) | GMACs × dense | teacher top-1 | compressed top-1, mean (range) | seeds | "
             "Δ top-1 | time per run |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        seeds = ",".join(str(r["seed"]) for r in row["runs"])
        lines.append(f"| {row['method']} | {setting} | {row['gmacs'] / row['dense_gmacs']:.3f} | "
                     f"{row['teacher_top1']:.2f} | {row['top1']:.2f} ({row['top1_min']:.2f}–{row['top1_max']:.2f}) | "
                     f"{seeds} | {row['delta']:+.2f}{'' if row['within_target'] else ' ✗'} | "
                     f"{row['wall_s']:.0f} s |")
    return lines


if __name__ == "__main__":
    main()
