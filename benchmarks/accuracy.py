"""Accuracy benchmark on the bundled demo at equal cost: every available method compressed from the demo teacher
with ``vitprune.compress`` (the library call behind ``vitprune compress``), on CPU, with the demo recipe, each at the
setting whose counted GMACs are ``--target-gmacs`` x the dense model's (``vitprune.budget.solve_for_gmacs``: keep
rate, ToMe's r, DGE's budget, SaiT's fixed-mode keep rate; within 1 %, or the closest whole-number r).

    python benchmarks/accuracy.py                          # all methods at 0.65x dense GMACs, seed 0
    python benchmarks/accuracy.py --methods evit tome --seeds 0,1,2
    python benchmarks/accuracy.py --target-gmacs 0.5 --json out.json
    python benchmarks/accuracy.py --smoke --json /tmp/a.json   # one method, a couple of steps (the test)

Prints one table (test top-1 mean and range over the seeds, val top-1 next to it, the setting solved, GMACs) and
writes a JSON file (default ``benchmarks/results/accuracy-gmacs<RATIO>.json``) with one row per method: a run of
some methods replaces their rows and keeps the others (each row records the command and date that produced it).

What is reported is the demo's test split's top-1 (178 digits; one image is 0.56 points), which neither training
nor ``compress`` reads; val top-1 (181 digits, what ``compress`` reports and what the demo recipe was chosen on)
stands next to it. The recipe is the demo preset, not tuned per method. This is a script, not a test: it trains
each method for the demo schedule (one to two minutes per run on 2 CPU cores), then scores the saved model on test.

JSON format: the file's ``demo_split`` ("train 1438 / val 181 / test 178") says which split of the demo its rows
are on; rows of a file without it (made when val was all 359 held-out digits and there was no test split) are
not merged with new ones. In a row, ``top1``/``top1_min``/``top1_max``/``delta``/``teacher_top1`` are val
top-1 as before (``split`` says "val"), and ``test_top1``/``test_top1_min``/``test_top1_max``/``test_delta``/
``teacher_test_top1`` are the same on test; each run has ``top1`` (val) and ``test_top1``. ``within_target`` is
judged on test.
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
DEMO_SPLIT = "train 1438 / val 181 / test 178"  # examples/make_demo_data.py
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
    """``new`` rows plus the rows of ``path`` for methods not run now, in the registry's method order; rows made
    on another split of the demo (a file whose ``demo_split`` differs) are left out."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    old = saved.get("rows", [])
    if old and saved.get("demo_split") != DEMO_SPLIT:
        print(f"{path}: its rows are on another split of the demo ({saved.get('demo_split') or 'val = 359 digits'}); "
              "not merged", flush=True)
        old = []
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
    teacher_test = vitprune.evaluate("demo", "demo", split="test", device="cpu").top1
    for name in methods:
        opts, budget = budget_settings(name, args.target_gmacs)
        runs = []
        for seed in seeds_arg(args.seeds):
            t0 = time.perf_counter()
            res = vitprune.compress("demo", name, "demo", str(args.out_dir / f"{name}-seed{seed}"),
                                    epochs=epochs, seed=seed, overwrite=True, speed=False, **opts)
            m = res.metrics
            wall = round(time.perf_counter() - t0, 1)  # the compress run (training, val, GMACs), not the test pass
            test = vitprune.evaluate(vitprune.load(res.output), "demo", split="test", device="cpu").top1
            runs.append({"seed": seed, "top1": m["top1"], "test_top1": test, "gmacs": m["gmacs"], "wall_s": wall})
            print(f"{name} seed {seed}: test top-1 {test:.2f} (teacher {teacher_test:.2f}), val {m['top1']:.2f} "
                  f"(teacher {m['dense_top1']:.2f}), {m['gmacs'] * 1e3:.1f} MMACs, {wall:.0f} s", flush=True)
        val, test = stats([x["top1"] for x in runs]), stats([x["test_top1"] for x in runs])
        row = {"method": name, "options": opts, "budget": budget, "split": "val", "teacher_top1": m["dense_top1"],
               "top1": val[0], "top1_min": val[1], "top1_max": val[2], "delta": val[0] - m["dense_top1"],
               "teacher_test_top1": teacher_test, "test_top1": test[0], "test_top1_min": test[1],
               "test_top1_max": test[2], "test_delta": test[0] - teacher_test,
               "gmacs": sum(x["gmacs"] for x in runs) / len(runs),  # trained routers (DGE) differ per seed
               "dense_gmacs": m["dense_gmacs"], "epochs": res.recipe["epochs"],
               "wall_s": round(sum(x["wall_s"] for x in runs) / len(runs), 1), "runs": runs,
               "within_target": test[0] - teacher_test >= -TARGET - 1e-9,
               "command": command, "date": date.today().isoformat()}
        rows.append(row)
    rows = merged_rows(args.json, rows)

    lines = table(rows)
    print("\n".join(lines))
    meta = {"target_gmacs": args.target_gmacs, "split": "val", "headline_split": "test", "demo_split": DEMO_SPLIT,
            "target_points": TARGET, "device": "cpu",
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "versions": {"vitprune": vitprune.__version__, "torch": torch.__version__}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "rows": rows, "table": lines}, indent=2) + "\n")
    print(f"wrote {args.json}")


def stats(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max)."""
    return sum(values) / len(values), min(values), max(values)


def table(rows: list[dict]) -> list[str]:
    """The Markdown table: test top-1 as the mean over the seeds with its range, and val top-1 the same way."""
    lines = ["| method | setting (solved) | GMACs × dense | teacher test top-1 | test top-1, mean (range) | "
             "Δ test top-1 | teacher val top-1 | val top-1, mean (range) | seeds | time per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        seeds = ",".join(str(r["seed"]) for r in row["runs"])
        lines.append(f"| {row['method']} | {setting} | {row['gmacs'] / row['dense_gmacs']:.3f} | "
                     f"{row['teacher_test_top1']:.2f} | {spread(row, 'test_top1')} | "
                     f"{row['test_delta']:+.2f}{'' if row['within_target'] else ' ✗'} | "
                     f"{row['teacher_top1']:.2f} | {spread(row, 'top1')} | {seeds} | {row['wall_s']:.0f} s |")
    return lines


def spread(row: dict, key: str) -> str:
    """``mean (min–max)`` of ``row[key]``."""
    return f"{row[key]:.2f} ({row[key + '_min']:.2f}–{row[key + '_max']:.2f})"


if __name__ == "__main__":
    main()
