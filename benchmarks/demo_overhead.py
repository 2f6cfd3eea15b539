"""Where the demo's batch-1 time goes: process CPU time per forward of the dense demo teacher, DynamicViT keep 0.7
on it, and DynamicViT with a zero-cost predictor (the method's best case at this size: pruned blocks and gathers
only), at batch 1 and 32, one thread, interleaved, as paired ratios (dense / model: > 1 is less work).

    python benchmarks/demo_overhead.py [--threads 1] [--rounds 15]

CPU time (``time.process_time``) rather than wall time, so other jobs on a shared machine do not decide the ratios;
the predictors are untrained (speed does not depend on their weights).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import vitprune


class FreePredictor(torch.nn.Module):
    """Scores every token with two of its channels: no work, so only the pruned blocks and the gathers remain."""

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        return x[..., :2]


def models() -> dict[str, torch.nn.Module]:
    dense = vitprune.load_model("demo").eval()
    dvit = vitprune.apply_method(copy.deepcopy(dense), "dynamicvit", keep_rate=0.7).eval()
    free = copy.deepcopy(dvit)
    for i in range(len(free.score_predictor)):
        free.score_predictor[i] = FreePredictor()
    return {"dense": dense, "dynamicvit": dvit, "dynamicvit, free predictor": free}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ms = models()
    for bs, per_round in ((1, 20), (32, 3)):
        x = torch.randn(bs, 3, 32, 32, generator=torch.Generator().manual_seed(0))

        def cpu_ms(m: torch.nn.Module) -> float:
            t = time.process_time()
            for _ in range(per_round):
                m(x)
            return (time.process_time() - t) / per_round * 1e3

        with torch.inference_mode():
            for m in ms.values():
                for _ in range(5):
                    m(x)
            r: dict[str, list[float]] = {k: [] for k in ms}
            for _ in range(args.rounds):
                for k, m in ms.items():
                    r[k].append(cpu_ms(m))
        for k in ms:
            q = statistics.quantiles([a / b for a, b in zip(r["dense"], r[k])], n=4, method="inclusive")
            print(f"batch {bs:>2}  {k:<28} CPU ms/forward {statistics.median(r[k]):8.3f}   dense/this "
                  f"{q[1]:.2f}× (IQR {q[0]:.2f}–{q[2]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
