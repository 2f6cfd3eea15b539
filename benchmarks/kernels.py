"""Where the GPU time goes: a torch.profiler kernel summary of dense DeiT-S and each method at its headline setting.

    python benchmarks/kernels.py                       # GPU: bs 256, fp16 autocast, eager
    python benchmarks/kernels.py --methods dynamicvit --compiled

For every model, a few forward passes are profiled after warm-up; CUDA kernel time is grouped into categories
(matrix products, fused attention, normalisation, element-wise, token ops = sort/top-k/gather/scatter/index,
reductions, copies, other) and the top kernels are listed. On CPU (``--device cpu``, ``--threads``) the same summary
covers CPU operators' self time. Writes a JSON file next to the printed tables: the evidence for which kernels stand
between a method and its speed target.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

import vitprune
from vitprune.api import versions
from vitprune.measure.flops import model_input_size
from vitprune.measure.speed import autocast, device_name, resolve_device, resolve_dtype



_SIBLINGS: dict[str, object] = {}


def _sibling(name: str):
    """benchmarks/NAME.py as a module object named ``vitprune_bench_NAME``: imported by file, never as a top-level
    ``NAME`` (a benchmark named like a package, e.g. Hugging Face's ``kernels``, would shadow it), without
    ``sys.path``, and held in ``sys.modules`` only while its file runs (dataclasses look their module up there)."""
    import importlib.util

    if name not in _SIBLINGS:
        full = f"vitprune_bench_{name}"
        spec = importlib.util.spec_from_file_location(full, Path(__file__).resolve().with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(full, None)
        _SIBLINGS[name] = module
    return _SIBLINGS[name]


HEADLINE, build = _sibling("speed").HEADLINE, _sibling("speed").build

#: kernel (GPU) or operator (CPU) name pattern -> category; first match wins, case-insensitive
CATEGORIES = [
    ("attention", r"flash|fmha|attention|sdpa"),
    ("matmul", r"gemm|cutlass|xmma|cublas|matmul|ampere_|sm80_|nvjet|aten::(addmm|mm|bmm|linear)$"),
    ("norm", r"norm"),
    ("token ops", r"sort|topk|gather|scatter|index|radix|cub::|masked|nonzero"),
    ("reduction", r"reduce|sum|mean|max|softmax"),
    ("copy", r"copy|cat|contiguous"),
    ("element-wise", r"elementwise|vectorized|gelu|add|mul|triton_"),
]


def category(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name, re.IGNORECASE):
            return cat
    return "other"


def profile_model(model, x, dev, dtype: str, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU

    def sync():
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(5):
            with autocast(dev, dtype):
                model(x)
        sync()
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with autocast(dev, dtype):
                    model(x)
            sync()
    # the profiler's own per-name totals; GPU: kernel time, CPU: each operator's self time (children once, as
    # themselves), both in microseconds over ``steps`` forwards
    rows = [(e.key, (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000.0 / steps, e.count / steps)
            for e in prof.key_averages() if e.device_type == want]
    by_cat: dict[str, float] = defaultdict(float)
    for name, ms, _ in rows:
        by_cat[category(name)] += ms
    top = sorted(rows, key=lambda r: -r[1])[:12]
    return {
        "ms_per_forward": sum(ms for _, ms, _ in rows),
        "calls_per_forward": sum(calls for _, _, calls in rows),
        "by_category_ms": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "top": [{"name": n[:120], "ms": ms, "calls": calls, "category": category(n)} for n, ms, calls in top],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dtype", default=None, help="fp16 (GPU default), bf16 or fp32 (CPU default)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compiled", action="store_true", help="profile vitprune.optimize(model, 'compile') instead")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (to try the script)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, CPU operators (the tests run it so)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels.json"))
    args = ap.parse_args(argv)
    dev = resolve_device("cpu" if args.smoke else args.device)
    if dev.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    methods = list(HEADLINE) if args.methods == "all" else args.methods.split(",")
    models = build(args.model, args.smoke, methods)
    x = torch.randn(args.batch_size, *model_input_size(models["dense"]), device=dev)
    args.dtype = resolve_dtype(args.dtype, dev)
    out = {"model": "tiny (smoke)" if args.smoke else args.model, "device_name": device_name(dev),
           "batch_size": args.batch_size, "dtype": args.dtype, "compiled": args.compiled, "versions": versions(),
           "date": date.today().isoformat(), "models": {}}
    cats = [c for c, _ in CATEGORIES] + ["other"]
    what = "GPU kernel" if dev.type == "cuda" else "CPU operator"
    print(f"{device_name(dev)} · {args.dtype} · batch {args.batch_size} · {what} ms per forward by category")
    print(f"{'model':<12}{'total':>8}{'calls':>9}" + "".join(f"{c[:10]:>11}" for c in cats))
    for name, m in models.items():
        m = m.to(dev).eval()
        if args.compiled:
            m = vitprune.optimize(m, "compile")
        r = profile_model(m, x, dev, args.dtype, args.steps)
        out["models"][name] = r
        print(f"{name:<12}{r['ms_per_forward']:>8.2f}{r['calls_per_forward']:>9.0f}"
              + "".join(f"{r['by_category_ms'].get(c, 0.0):>11.2f}" for c in cats), flush=True)
        m.cpu()
    for name, r in out["models"].items():
        print(f"\n{name}: top {'kernels' if dev.type == 'cuda' else 'operators'} (ms per forward)")
        for k in r["top"][:8]:
            print(f"  {k['ms']:7.3f}  x{k['calls']:<4.0f} {k['category']:<12} {k['name'][:90]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
