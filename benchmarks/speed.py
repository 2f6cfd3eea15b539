"""Speed of every vitprune method next to the dense timm model, measured in one process on one device.

    python benchmarks/speed.py                          # GPU: DeiT-S, bs 256 and 1, fp16 and bf16, eager + compiled
    python benchmarks/speed.py --device cpu --smoke     # CPU smoke run (tiny model, small batch), as the tests do
    python benchmarks/speed.py --device cpu --runtime onnxruntime --batch-size 8   # the ONNX exports in ONNX Runtime

For each dtype, all models (dense + each method at its headline setting) are timed interleaved — each repeat runs
every model in turn, rotating the order — and the median over repeats is reported (vitprune.measure.speed).
"Compiled" variants go through ``vitprune.optimize`` (torch.compile; CUDA graphs on GPU), and their ratios are
given against both the eager dense model (the baseline every paper and PERF.md use: timm's fused-SDPA DeiT-S) and
the compiled dense model. Writes a JSON file with the device, versions, settings and every number.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

import vitprune
from vitprune.api import versions
from vitprune.measure import count_macs
from vitprune.measure.flops import model_input_size
from vitprune.measure.speed import SpeedSettings, benchmark, device_name, resolve_device
from vitprune.methods import method_names

#: each method at the setting its paper headlines (all ≈ 3.0 GMAC on DeiT-S for the first three)
HEADLINE: dict[str, dict] = {
    "dynamicvit": {"keep_rate": 0.7},
    "evit": {"keep_rate": 0.7},
    "evovit": {"keep_rate": 0.5},
    "tome": {"r": 13},
    "dge": {"budget": 0.5, "router_init": "budget"},  # untrained routers start ~dense
    "sait": {},
}
#: ``--runtime onnxruntime``: settings that replace a headline one without a static inference path to export
ONNX_HEADLINE: dict[str, dict] = {"sait": {"mode": "fixed", "keep_rate": 0.5}}


def headline(method: str, runtime: str) -> dict:
    return {**HEADLINE.get(method, {}), **(ONNX_HEADLINE.get(method, {}) if runtime == "onnxruntime" else {})}


def exportable(methods: list[str]) -> list[str]:
    """The methods ``vitprune export`` turns into ONNX (the others are named and skipped)."""
    from vitprune.methods import create_method

    keep = []
    for m in methods:
        if create_method(m, **headline(m, "onnxruntime")).exportable:
            keep.append(m)
        else:
            print(f"skipping {m}: no static inference path to export to ONNX", flush=True)
    return keep


def onnx_timings(models: dict[str, torch.nn.Module], input_size, dev, settings) -> dict:
    """Export every model (token counts checked against its schedule) and time the files in ONNX Runtime,
    interleaved, with torch's thread count (vitprune.measure.ort)."""
    import tempfile

    from vitprune.exporter import export_onnx, require_export_deps
    from vitprune.measure.ort import benchmark_onnx

    require_export_deps()
    with tempfile.TemporaryDirectory(prefix="vitprune-speed-") as tmp:
        files = {}
        for name, m in models.items():
            files[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(m.cpu(), files[name], input_size)
        return benchmark_onnx(files, input_size, device=dev, settings=settings)


def build(model_name: str, smoke: bool, methods: list[str], runtime: str = "torch") -> dict[str, torch.nn.Module]:
    if smoke:
        import timm

        torch.manual_seed(0)
        dense = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=12,
                                  embed_dim=48, num_heads=3, num_classes=10).eval()
    else:
        dense = vitprune.load_model(model_name, pretrained=False)
    models = {"dense": dense}
    for m in methods:
        models[m] = vitprune.apply_method(copy.deepcopy(dense), m, **headline(m, runtime))
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtypes", default=None, help="comma list of fp16,bf16,fp32 (default fp16,bf16 on GPU, fp32 CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="throughput batch (default 256 GPU, 32 CPU)")
    ap.add_argument("--methods", default="all", help="comma list or 'all'")
    ap.add_argument("--compile", choices=["none", "auto", "both"], default=None,
                    help="none: eager only; auto: compiled only; both (GPU default): eager and compiled")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model and few repeats (CPU CI smoke)")
    ap.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                    help="onnxruntime: time the ONNX exports (fp32, torch's thread count) instead of eager PyTorch")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default benchmarks/results/speed.json, speed_onnxruntime.json for onnxruntime)")
    args = ap.parse_args(argv)
    onnx = args.runtime == "onnxruntime"
    if args.out is None:
        args.out = Path("benchmarks/results/speed_onnxruntime.json" if onnx else "benchmarks/results/speed.json")

    dev = resolve_device(args.device)
    dtypes = args.dtypes.split(",") if args.dtypes else (["fp16", "bf16"] if dev.type == "cuda" else ["fp32"])
    compile_mode = args.compile or ("both" if dev.type == "cuda" else "none")
    methods = method_names() if args.methods == "all" else args.methods.split(",")
    if onnx:  # the exports are fp32 graphs, timed as they are
        dtypes, compile_mode, methods = ["fp32"], "none", exportable(methods)
    settings = SpeedSettings.default(dev, args.batch_size)
    if args.smoke:
        settings = SpeedSettings(batch_size=args.batch_size or 4, warmup=1, repeats=args.repeats or 2, iters=1,
                                 latency_samples=2)
    elif args.repeats:
        settings.repeats = args.repeats

    models = build(args.model, args.smoke, methods, args.runtime)
    input_size = model_input_size(models["dense"])
    gmacs = {name: count_macs(m, input_size).gmacs for name, m in models.items()}
    for m in models.values():
        m.to(dev)

    results: dict = {"device": dev.type, "device_name": device_name(dev), "model": "tiny (smoke)" if args.smoke
                     else args.model, "input_size": list(input_size), "batch_size": settings.batch_size,
                     "settings": vars(settings), "headline": {m: headline(m, args.runtime) for m in methods},
                     "versions": versions(args.runtime), "date": date.today().isoformat(), "gmacs": gmacs,
                     "runtime": args.runtime, "runs": {}}
    if onnx:
        from vitprune.measure.ort import runtime_label

        results["runtime_info"] = runtime_label(dev)
    for dt in dtypes:
        variants = {}
        if compile_mode in ("none", "both"):
            variants.update({f"{n}": m for n, m in models.items()})
        if compile_mode in ("auto", "both"):
            variants.update({f"{n}+compiled": vitprune.optimize(m) for n, m in models.items()})
        t0 = time.time()
        if onnx:
            timings = onnx_timings(variants, input_size, dev, settings)
        else:
            timings = benchmark(variants, input_size, device=dev, dtype=dt, settings=settings)
        results["runs"][dt] = {n: t.to_dict() for n, t in timings.items()}
        results["runs"][dt]["_seconds"] = round(time.time() - t0, 1)
        print(table(results, dt), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


def table(results: dict, dt: str) -> str:
    run = results["runs"][dt]
    base = run["dense"] if "dense" in run else None
    basec = run.get("dense+compiled")
    lines = [f"\n{results['device_name']} · {dt} · batch {results['batch_size']} (throughput) and 1 (latency) · "
             f"{results['model']} · torch {results['versions']['torch']} · timm {results['versions']['timm']}"
             + (f" · {results['runtime_info']}" if results.get("runtime_info") else ""),
             f"{'model':<22}{'GMACs':>7}{'img/s':>11}{'× dense':>9}{'× dense+c':>11}{'lat ms':>9}{'lat × dense':>13}"]
    for name, t in run.items():
        if name.startswith("_"):
            continue
        g = results["gmacs"][name.split("+")[0]]
        def ratio(a: dict | None, key: str, inverse: bool = False) -> str:
            if not a:
                return "-"
            return f"{(a[key] / t[key]) if inverse else (t[key] / a[key]):.2f}×"

        lines.append(f"{name:<22}{g:>7.3f}{t['throughput']:>11,.0f}{ratio(base, 'throughput'):>9}"
                     f"{ratio(basec, 'throughput'):>11}{t['latency_ms']:>9.2f}{ratio(base, 'latency_ms', True):>13}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
