"""Speed of every vitprune method next to the dense timm model, measured in one process on one device.

    python benchmarks/speed.py                          # GPU: DeiT-S, bs 256 and 1, fp16 and bf16, eager + compiled
    python benchmarks/speed.py --device cpu --sessions 3 --check
                                                        # CPU: DeiT-S, batch 8 and 1, fp32 eager, 2 threads
    python benchmarks/speed.py --device cpu --smoke     # CPU smoke run (tiny model, small batch), as the tests do
    python benchmarks/speed.py --device cpu --runtime onnxruntime --batch-size 8   # the ONNX exports in ONNX Runtime
    python benchmarks/speed.py --device cpu --runtime onnxruntime --quantize int8  # fp32 and int8 files side by side

For each dtype, all models (dense + each method at its headline setting) are timed interleaved — each repeat runs
every model in turn, rotating the order — and the median over repeats is reported (vitprune.measure.speed):
throughput at the batch size, latency at batch 1. A ratio to dense is the median of per-round ratios (each round's
runs were made seconds apart). ``--sessions N`` repeats that whole measurement N times; the table gives the median
of the N ratios and their range (on a shared machine the range is the noise).
"Compiled" variants go through ``vitprune.optimize`` (torch.compile; CUDA graphs on GPU); their ratios are to the
compiled dense model (the eager ones to the eager dense model: timm's fused-SDPA DeiT-S).

``--quantize int8`` (or ``int8-static``, calibrated on the 8 demo check digits: enough to time the graph) also
quantizes every export (vitprune.exporter.quantize, token counts checked in the int8 graph) and times the int8 files
(``NAME+int8``) interleaved with the fp32 ones; their ``ratio`` is to the dense fp32 file (what the user had), with
``ratio_vs_dense_int8`` beside it, and the JSON's ``int8`` section has, per method, ``speedup`` (int8 vs dense fp32),
``speedup_vs_dense_int8`` and ``retained`` (``speedup`` over fp32 speedup × dense int8 speedup: 1.0 when the two
gains multiply). The caption names ONNX Runtime's version, the quantization mode and the CPU's int8 instructions.

``--check`` compares each method's ratios with its target (``TARGETS``; ``INT8_TARGETS`` for the int8 files) and
exits 1 when one falls below ``--check-fraction`` of it (default 0.9: room for noise). Writes a JSON file with the
device, versions, settings and every number.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Optional

import torch

import vitprune
from vitprune.api import versions
from vitprune.measure import count_macs
from vitprune.measure.flops import model_input_size
from vitprune.measure.speed import Schedule, benchmark, device_name, resolve_device
from vitprune.methods import method_names

#: each method at the setting its paper headlines (all ≈ 3.0 GMAC on DeiT-S for the first three)
HEADLINE: dict[str, dict] = {
    "dynamicvit": {"keep_rate": 0.7},
    "evit": {"keep_rate": 0.7},
    "evovit": {"keep_rate": 0.5},
    "tome": {"r": 13},
    "dge": {"budget": 0.5, "router_init": "budget"},  # untrained routers start ~dense
    "sait": {"mode": "fixed", "keep_rate": 0.5},  # the static-shape mode (adaptive counts vary per image)
}

#: variants measured next to the methods: name -> (method, attributes set on the method after patching)
VARIANTS: dict[str, tuple[str, dict]] = {
    "tome-fused": ("tome", {"fused_merge": True}),  # matching + merge compiled per block (the warm-up compiles)
}

#: speed targets as ratios to the dense model of the same run: (throughput at the batch size, batch-1 latency);
#: ("flops", f) = f x the FLOP ratio counted in the same run. CPU (fp32 eager, 2 threads): each static method
#: within 5 % of its FLOP ratio at batch 8 and faster than dense at batch 1; DGE (whose routed blocks keep every
#: token as a key) at least 1.5x and 1.3x. GPU (H100-class, fp16/bf16): the product targets at batch 256, and no
#: method slower than dense at batch 1.
TARGETS: dict[str, dict[str, tuple]] = {
    "cpu": {**{m: (("flops", 0.95), 1.0) for m in HEADLINE}, "dge": (1.5, 1.3)},
    "cuda": {"dynamicvit": (1.45, 1.0), "evit": (1.45, 1.0), "evovit": (1.45, 1.0), "tome": (1.5, 1.0),
             "sait": (1.3, 1.0), "dge": (1.3, 1.0)},
}


#: int8 files (CPU, 2 threads, batch 8), as ratios to the dense fp32 file; every method's int8 file must also keep
#: INT8_RETAINED of (its fp32 speedup x the dense int8 speedup), and answer faster than dense int8 at batch 1
INT8_TARGETS: dict[str, float] = {"dynamicvit": 2.5, "evit": 2.5, "evovit": 2.5, "tome": 2.8}
INT8_RETAINED = 0.9


def exportable(methods: list[str]) -> list[str]:
    """The methods ``vitprune export`` turns into ONNX (the others are named and skipped)."""
    from vitprune.methods import create_method

    keep = []
    for m in methods:
        if create_method(m, **HEADLINE.get(m, {})).exportable:
            keep.append(m)
        else:
            print(f"skipping {m}: no static inference path to export to ONNX", flush=True)
    return keep


def timings(models: dict[str, torch.nn.Module], input_size, dev, dtype: str, settings, onnx: bool,
            quantize: Optional[str] = None) -> dict:
    """One interleaved measurement of every model, every sample kept (for paired ratios). ``onnx``: export every
    model (token counts checked against its schedule) and time the files in ONNX Runtime with torch's thread count
    (vitprune.measure.ort) instead of eager PyTorch; ``quantize``: the int8 file of each too (``NAME+int8``)."""
    if not onnx:
        return benchmark(models, input_size, device=dev, dtype=dtype, settings=settings, samples=True)
    import tempfile

    from vitprune.exporter import export_onnx, require_export_deps
    from vitprune.measure.ort import benchmark_onnx

    require_export_deps()
    with tempfile.TemporaryDirectory(prefix="vitprune-speed-") as tmp:
        files = {}
        for name, m in models.items():
            files[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(m.cpu(), files[name], input_size)
            if quantize:
                from vitprune.exporter.quantize import check_quantized_tokens, quantize_onnx

                files[f"{name}+int8"] = Path(tmp) / f"{name}-int8.onnx"
                quantize_onnx(files[name], files[f"{name}+int8"], quantize, calibration=calibration(m, quantize))
                check_quantized_tokens(files[f"{name}+int8"], m, input_size)
        return benchmark_onnx(files, input_size, device=dev, settings=settings, samples=True)


def calibration(model: torch.nn.Module, quantize: str):
    """int8-static: the 8 demo check digits through the model's preprocessing (a speed run needs a calibrated
    graph, not calibrated accuracy); dynamic: none."""
    if quantize != "int8-static":
        return None
    from vitprune.exporter import sample_images

    return [sample_images(model)[0]]


def load_baseline(path: Path):
    """The ``vitprune`` package of another source tree (e.g. ``git worktree add /tmp/base <commit>``: pass
    ``/tmp/base``), imported as ``vitprune_baseline`` next to this one, so that its methods run in the same process,
    interleaved with these (before/after a change)."""
    import importlib.util

    pkg = Path(path) / "vitprune"
    spec = importlib.util.spec_from_file_location("vitprune_baseline", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline {path}: no vitprune package there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build(model_name: str, smoke: bool, methods: list[str], baseline=None) -> dict[str, torch.nn.Module]:
    if smoke:
        import timm

        torch.manual_seed(0)
        # 4 blocks hold every method's pruning (DynamicViT/EViT/ToMe in several); --runtime onnxruntime exports each
        dense = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=4,
                                  embed_dim=48, num_heads=3, num_classes=10).eval()
    else:
        dense = vitprune.load_model(model_name, pretrained=False)
    models = {"dense": dense}
    for name in methods:
        method, attrs = VARIANTS.get(name, (name, {}))
        models[name] = vitprune.apply_method(copy.deepcopy(dense), method, **HEADLINE.get(method, {}))
        for key, value in attrs.items():
            setattr(models[name].vitprune_method, key, value)
        if baseline is not None and name not in VARIANTS:
            models[f"{name}@baseline"] = baseline.apply_method(copy.deepcopy(dense), name, **HEADLINE.get(name, {}))
    return models


def method_of(name: str) -> str:
    """The method a measured model runs: ``tome-fused+compiled`` -> ``tome``, ``dense+compiled`` -> ``dense``,
    ``dge@baseline`` -> ``dge``."""
    base = name.split("+")[0].split("@")[0]
    return VARIANTS.get(base, (base, {}))[0]


def settings_for(args: argparse.Namespace, dev: torch.device) -> Schedule:
    if args.smoke:
        return Schedule(batch_size=args.batch_size or 4, warmup=1, repeats=args.repeats or 2, iters=1,
                             latency_samples=2)
    if dev.type == "cuda":
        s = Schedule.default(dev, args.batch_size)
    else:  # one batch per sample and many interleaved samples: medians that hold on a shared 2-core machine
        s = Schedule(batch_size=args.batch_size or 8, warmup=2, repeats=12, iters=1, latency_samples=24)
    if args.repeats:
        s.repeats, s.latency_samples = args.repeats, max(s.latency_samples, 2 * args.repeats)
    return s


def paired_ratio(model: list[float], dense: list[float], inverse: bool) -> float:
    """Median over rounds of the model's speed over dense's in the same round (``inverse``: for times, dense over
    model). A round runs every model once, in turn, so a pair was measured within seconds: a load that comes and
    goes on a shared machine moves both sides of a pair, not the ratio."""
    return statistics.median((d / m) if inverse else (m / d) for m, d in zip(model, dense))


def summarize(sessions: list[dict[str, dict]], gmacs: dict[str, float]) -> dict[str, dict]:
    """Per model: the median throughput and latency over sessions; each session's ratio to the matching dense model
    (eager to ``dense``, compiled to ``dense+compiled``: the median of per-round paired ratios), their median and
    range over sessions; and the FLOP ratio."""
    out = {}
    for name in sessions[0]:
        base = "dense+compiled" if name.endswith("+compiled") else "dense"
        row = {k: sessions[0][name][k] for k in ("batch_size", "repeats")}
        for key, samples, label, inverse in (("throughput", "throughput_samples", "ratio", False),
                                             ("latency_ms", "latency_samples_ms", "latency_ratio", True)):
            if sessions[0][name][key] is None:
                row[key] = row[label] = None
                continue
            per = [paired_ratio(s[name][samples], s[base][samples], inverse) for s in sessions]
            row[key] = statistics.median(s[name][key] for s in sessions)
            row[f"{key}_sessions"] = [s[name][key] for s in sessions]
            row[label], row[f"{label}_range"] = statistics.median(per), [min(per), max(per)]
            if name.endswith("+int8") and "dense+int8" in sessions[0]:
                row[f"{label}_vs_dense_int8"] = statistics.median(
                    paired_ratio(s[name][samples], s["dense+int8"][samples], inverse) for s in sessions)
        row["flop_ratio"] = gmacs["dense"] / gmacs[method_of(name)]
        out[name] = row
    return out


def int8_summary(run: dict) -> dict:
    """Per method with an int8 file: ``speedup`` (int8 vs dense fp32), ``speedup_vs_dense_int8``, its fp32
    speedup, the dense int8 speedup, and ``retained`` = speedup / (fp32 speedup x dense int8 speedup)."""
    out = {}
    dense_int8 = (run.get("dense+int8") or {}).get("ratio")
    for name, row in run.items():
        if not name.endswith("+int8") or name == "dense+int8" or name.startswith("_"):
            continue
        fp32 = run[name[: -len("+int8")]]
        product = fp32["ratio"] * dense_int8 if fp32.get("ratio") and dense_int8 else None
        out[name[: -len("+int8")]] = {
            "speedup": row["ratio"], "speedup_vs_dense_int8": row.get("ratio_vs_dense_int8"),
            "latency_ratio": row.get("latency_ratio"),
            "latency_ratio_vs_dense_int8": row.get("latency_ratio_vs_dense_int8"),
            "speedup_fp32": fp32.get("ratio"), "speedup_dense_int8": dense_int8,
            "retained": row["ratio"] / product if product else None,
            "target": INT8_TARGETS.get(method_of(name))}
    return out


def targets(device: str, name: str, flop_ratio: float) -> Optional[tuple[float, float]]:
    """(throughput target at the batch size, batch-1 latency target) as ratios to dense; None for dense (and for
    int8 files, checked by ``check`` from ``INT8_TARGETS``)."""
    if name.endswith("+int8"):
        return None
    rule = TARGETS.get(device, {}).get(method_of(name))
    if rule is None:
        return None
    thr, lat = rule
    if isinstance(thr, tuple):
        thr = thr[1] * flop_ratio
    return thr, lat


def check(results: dict, fraction: float) -> list[str]:
    """Every measured ratio below ``fraction`` x its target, one line each (empty: all pass)."""
    failures = []
    for dt, run in results["runs"].items():
        for name, row in run.items():
            if name.startswith("_") or "@" in name:  # bookkeeping, or another version measured for comparison
                continue
            want = targets(results["device"], name, row["flop_ratio"])
            if want is None:
                continue
            for key, label, target in (("ratio", f"batch {row['batch_size']}", want[0]),
                                       ("latency_ratio", "batch 1", want[1])):
                got = row.get(key)
                if got is not None and got < fraction * target:
                    failures.append(f"{name} {dt} {label}: {got:.2f}x dense < {fraction:.2f} x target {target:.2f}x")
        if results["device"] != "cpu":
            continue
        for method, row in int8_summary(run).items():
            if row["target"] and row["speedup"] < fraction * row["target"]:
                failures.append(f"{method}+int8 {dt}: {row['speedup']:.2f}x dense fp32 < {fraction:.2f} x target "
                                f"{row['target']:.2f}x")
            if row["retained"] is not None and row["retained"] < INT8_RETAINED:
                failures.append(f"{method}+int8 {dt}: keeps {row['retained']:.2f} of fp32 speedup x dense int8 "
                                f"speedup < {INT8_RETAINED}")
            if row["latency_ratio_vs_dense_int8"] is not None and row["latency_ratio_vs_dense_int8"] < 1.0:
                failures.append(f"{method}+int8 {dt} batch 1: slower than dense int8 "
                                f"({row['latency_ratio_vs_dense_int8']:.2f}x)")
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtypes", default=None, help="comma list of fp16,bf16,fp32 (default fp16,bf16 on GPU, fp32 CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="throughput batch (default 256 GPU, 8 CPU)")
    ap.add_argument("--methods", default="all",
                    help=f"comma list of methods and variants ({', '.join(VARIANTS)}), or 'all' (with the variants "
                         "on GPU)")
    ap.add_argument("--compile", choices=["none", "auto", "both"], default=None,
                    help="none: eager only; auto: compiled only; both (GPU default): eager and compiled")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds per session")
    ap.add_argument("--sessions", type=int, default=1, help="whole measurements: ratios as median and range")
    ap.add_argument("--check", action="store_true", help="exit 1 when a ratio is below --check-fraction x its target")
    ap.add_argument("--check-fraction", type=float, default=0.9)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a source tree of another vitprune version: its methods are measured too, as NAME@baseline")
    ap.add_argument("--smoke", action="store_true", help="tiny model and few repeats (CPU CI smoke)")
    ap.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                    help="onnxruntime: time the ONNX exports (fp32, torch's thread count) instead of eager PyTorch")
    ap.add_argument("--quantize", choices=["int8", "int8-static"], default=None,
                    help="with --runtime onnxruntime: also time each export's int8 file (NAME+int8)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default benchmarks/results/speed.json, speed_onnxruntime.json for onnxruntime)")
    args = ap.parse_args(argv)
    onnx = args.runtime == "onnxruntime"
    if args.quantize and not onnx:
        ap.error("--quantize times int8 ONNX files: add --runtime onnxruntime")
    if args.out is None:
        args.out = Path(f"benchmarks/results/speed_onnxruntime{'_' + args.quantize if args.quantize else ''}.json"
                        if onnx else "benchmarks/results/speed.json")

    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or 2)
    dtypes = args.dtypes.split(",") if args.dtypes else (["fp16", "bf16"] if dev.type == "cuda" else ["fp32"])
    compile_mode = args.compile or ("both" if dev.type == "cuda" else "none")
    if args.methods == "all":
        methods = method_names() + (list(VARIANTS) if dev.type == "cuda" and not onnx else [])
    else:
        methods = args.methods.split(",")
    if onnx:  # the exports are fp32 graphs, timed as they are
        dtypes, compile_mode, methods = ["fp32"], "none", exportable(methods)
    settings = settings_for(args, dev)

    models = build(args.model, args.smoke, methods, load_baseline(args.baseline) if args.baseline else None)
    input_size = model_input_size(models["dense"])
    gmacs = {name: count_macs(m, input_size).gmacs for name, m in models.items()
             if name not in VARIANTS and "@" not in name}
    for m in models.values():
        m.to(dev)

    results: dict = {"device": dev.type, "device_name": device_name(dev), "model": "tiny (smoke)" if args.smoke
                     else args.model, "input_size": list(input_size), "batch_size": settings.batch_size,
                     "settings": vars(settings), "sessions": args.sessions,
                     "headline": {m: HEADLINE.get(method_of(m), {}) for m in methods},
                     "variants": {v: VARIANTS[v][1] for v in methods if v in VARIANTS},
                     "baseline": str(args.baseline) if args.baseline else None,
                     "versions": versions(args.runtime), "date": date.today().isoformat(), "gmacs": gmacs,
                     "runtime": args.runtime, "runs": {}}
    if onnx:
        from vitprune.measure.ort import runtime_label

        results["runtime_info"] = runtime_label(dev)
    if args.quantize:
        from vitprune.exporter.quantize import cpu_int8_isa, mode_label

        results["quantize"] = args.quantize
        results["quantize_info"] = (f"{mode_label(args.quantize, '8 demo digits' if args.quantize == 'int8-static' else None)}"
                                    f" · {cpu_int8_isa()}")
    for dt in dtypes:
        variants = {}
        if compile_mode in ("none", "both"):
            variants.update({f"{n}": m for n, m in models.items()})
        if compile_mode in ("auto", "both"):
            variants.update({f"{n}+compiled": vitprune.optimize(m) for n, m in models.items()})
        t0 = time.time()
        sessions = [{n: t.to_dict() for n, t in timings(variants, input_size, dev, dt, settings, onnx,
                                                        args.quantize).items()}
                    for _ in range(args.sessions)]
        results["runs"][dt] = summarize(sessions, gmacs)
        if args.quantize:
            results.setdefault("int8", {})[dt] = int8_summary(results["runs"][dt])
        results["runs"][dt]["_seconds"] = round(time.time() - t0, 1)
        print(table(results, dt), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    if args.check:
        failures = check(results, args.check_fraction)
        for line in failures:
            print(f"BELOW TARGET: {line}")
        if failures:
            return 1
        print(f"check: every ratio at or above {args.check_fraction:.2f} x its target")
    return 0


def table(results: dict, dt: str) -> str:
    run, n = results["runs"][dt], results["sessions"]
    spread = f", median (range) of {n} sessions" if n > 1 else ""
    lines = [f"\n{results['device_name']} · {dt} · batch {results['batch_size']} (throughput) and 1 (latency){spread}"
             f" · {results['model']} · torch {results['versions']['torch']} · timm {results['versions']['timm']}"
             + (f" · {results['runtime_info']}" if results.get("runtime_info") else "")
             + (f" · {results['quantize_info']}" if results.get("quantize_info") else ""),
             f"{'model':<24}{'GMACs':>7}{'FLOPs×':>8}{'img/s':>10}{'× dense':>18}{'lat ms':>9}{'lat × dense':>18}"
             f"{'target':>12}"]

    def ratio(row: dict, key: str) -> str:
        if row.get(key) is None:
            return "-"
        lo, hi = row[f"{key}_range"]
        return f"{row[key]:.2f}×" + (f" ({lo:.2f}-{hi:.2f})" if n > 1 else "")

    for name, row in run.items():
        if name.startswith("_"):
            continue
        want = targets(results["device"], name, row["flop_ratio"])
        goal = f"{want[0]:.2f}/{want[1]:.2f}" if want else "-"
        thr = f"{row['throughput']:,.0f}" if row["throughput"] else "-"
        lat = f"{row['latency_ms']:.2f}" if row["latency_ms"] else "-"
        lines.append(f"{name:<24}{results['gmacs'][method_of(name)]:>7.3f}{row['flop_ratio']:>7.2f}×{thr:>10}"
                     f"{ratio(row, 'ratio'):>18}{lat:>9}{ratio(row, 'latency_ratio'):>18}{goal:>12}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
