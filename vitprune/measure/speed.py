"""Throughput and latency, measured fairly: several models in one process, interleaved, after warm-up.

* GPU: CUDA events around each timed run; fp16 or bf16 autocast (default fp16), or fp32.
* CPU: ``time.perf_counter`` (CPU work is synchronous); fp32 (bf16 autocast on request).
* Throughput: images/s at ``batch_size``; each repeat times ``iters`` forward passes of every model in turn
  (the order rotates each repeat), and the median over repeats is reported.
* Latency: batch 1, one forward per sample, models interleaved sample by sample; the median in milliseconds.
* Every timed run also records the process CPU time it used (``time.process_time``, all threads; CPU runs only):
  what the forward cost in work, which other jobs on the machine do not inflate.
* Ratios between two models (``paired``): the median over rounds of the per-round ratio, with its quartiles and
  range. Round ``i`` of every model ran back to back, so a load that comes and goes moves both sides of a pair.
* When is the machine too busy for a verdict (``busy_reasons``): when the paired ratios' interquartile range is
  more than ``BUSY_SPREAD`` (20 %) of their median (the rounds disagree), or when the timed process got less than
  ``BUSY_CPU_SHARE`` (0.85) of a core on average (median over runs of CPU time / wall time; the kernel gave the
  rest to other jobs). A measurement that trips either rule reports its numbers but says "machine busy: speed not
  conclusive" instead of "faster"/"slower".
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

import platform

from ..errors import DeviceError, MethodOptionError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: Optional[str] = None) -> torch.device:
    """``cuda`` when available unless told otherwise; a clear error for ``cuda`` without a GPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # "gpu", "tpu", typos: torch lists every backend it knows
        dev = None
    if dev is None or dev.type not in ("cuda", "cpu"):
        raise DeviceError(f"device {device!r} is not supported; use `device` cuda (an NVIDIA GPU, or cuda:N) or "
                          "`device` cpu.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("`device` cuda was asked for but no CUDA GPU is available here; use `device` cpu.")
    return dev


def resolve_dtype(dtype: Optional[str], device: torch.device) -> str:
    """Default fp16 autocast on GPU, fp32 on CPU. fp16 on CPU is refused (no fast kernels there)."""
    if dtype is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise MethodOptionError(f"`dtype` must be one of fp16, bf16, fp32, not {dtype!r}.")
    if device.type == "cpu" and dtype == "fp16":
        raise DeviceError("fp16 inference is a GPU setting; on CPU use `dtype` fp32 or bf16.")
    return dtype


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


#: paired ratios' interquartile range over their median above which the rounds disagree too much for a verdict
BUSY_SPREAD = 0.20
#: median CPU time / wall time of the timed runs below which the process was starved by other jobs (CPU only)
BUSY_CPU_SHARE = 0.85
#: what tables, report.json and model cards say instead of a verdict when ``busy_reasons`` is not empty
BUSY_TEXT = "machine busy: speed not conclusive"


@dataclass
class Timing:
    throughput: Optional[float]  # images / s at batch_size
    latency_ms: Optional[float]  # median ms per image at batch 1
    batch_size: int
    repeats: int
    # every repeat's images / s and every latency sample (ms), in round order, when benchmark(samples=True):
    # round i of one model ran next to round i of the others, so per-round ratios pair runs made close in time
    throughput_samples: Optional[list[float]] = None
    latency_samples_ms: Optional[list[float]] = None
    # process CPU time (ms) of each timed run, in the same order (CPU runs; None on a GPU): per image at batch_size
    # for the throughput rounds, per forward at batch 1 for the latency samples; and CPU time / wall time per run
    cpu_ms_samples: Optional[list[float]] = None
    cpu_latency_ms_samples: Optional[list[float]] = None
    cpu_share_samples: Optional[list[float]] = None

    @property
    def cpu_ms(self) -> Optional[float]:
        """Median process CPU time per image at ``batch_size`` (ms)."""
        return statistics.median(self.cpu_ms_samples) if self.cpu_ms_samples else None

    @property
    def cpu_latency_ms(self) -> Optional[float]:
        """Median process CPU time of one batch-1 forward (ms)."""
        return statistics.median(self.cpu_latency_ms_samples) if self.cpu_latency_ms_samples else None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("throughput_samples", "latency_samples_ms", "cpu_ms_samples", "cpu_latency_ms_samples",
                    "cpu_share_samples"):
            if d[key] is None:
                del d[key]
        return d


@dataclass
class Schedule:
    """How one timing run is laid out: the throughput batch, warm-up calls, interleaved rounds, calls per round and
    batch-1 latency samples (``default``: per device; ``vitprune.settings.SpeedSettings`` is what a user asks)."""

    batch_size: int
    warmup: int
    repeats: int
    iters: int
    latency_samples: int

    @classmethod
    def default(cls, device: torch.device, batch_size: Optional[int] = None) -> "Schedule":
        if device.type == "cuda":
            return cls(batch_size or 256, warmup=10, repeats=10, iters=10, latency_samples=100)
        # one batch per round and many interleaved rounds: paired ratios with a spread that means something
        return cls(batch_size or 32, warmup=1, repeats=6, iters=1, latency_samples=20)


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], object], n: int) -> float:
        """Seconds for ``n`` calls of ``fn`` (``last_cpu``: the process CPU seconds they took; None on a GPU)."""
        self.last_cpu: Optional[float] = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        wall = time.perf_counter() - t0
        self.last_cpu = time.process_time() - c0
        return wall


def benchmark(
    models: dict[str, nn.Module],
    input_size: tuple[int, int, int],
    *,
    device: torch.device,
    dtype: str,
    settings: Schedule,
    latency: bool = True,
    throughput: bool = True,
    on_step: Optional[Callable[[], None]] = None,
    samples: bool = False,
) -> dict[str, Timing]:
    """Time every model on the same random inputs, interleaved; returns name -> Timing with every sample (for
    ``compare``; ``samples`` is accepted for older callers and changes nothing)."""
    names = list(models)
    clock = _Clock(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    big = torch.randn(settings.batch_size, *input_size, generator=gen).to(device)
    one = torch.randn(1, *input_size, generator=gen).to(device)
    rates: dict[str, list[float]] = {n: [] for n in names}
    lats: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    cpu_lat: dict[str, list[float]] = {n: [] for n in names}
    share: dict[str, list[float]] = {n: [] for n in names}

    def cpu_of(n: str, secs: float, per: int, into: dict[str, list[float]]) -> None:
        if clock.last_cpu is not None:
            into[n].append(clock.last_cpu * 1000.0 / per)
            share[n].append(clock.last_cpu / secs if secs > 0 else 1.0)

    def run(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        def f():
            with autocast(device, dtype):
                return model(x)
        return f

    try:
        with torch.inference_mode():
            for m in models.values():
                m.eval()
            if throughput:
                for n in names:
                    clock.time(run(models[n], big), settings.warmup)
                for r in range(settings.repeats):
                    for j in range(len(names)):
                        n = names[(r + j) % len(names)]
                        secs = clock.time(run(models[n], big), settings.iters)
                        rates[n].append(settings.iters * settings.batch_size / secs)
                        cpu_of(n, secs, settings.iters * settings.batch_size, cpu)
                    if on_step:
                        on_step()
            if latency:
                for n in names:
                    clock.time(run(models[n], one), max(3, settings.warmup))
                for s in range(settings.latency_samples):
                    for j in range(len(names)):
                        n = names[(s + j) % len(names)]
                        secs = clock.time(run(models[n], one), 1)
                        lats[n].append(secs * 1000.0)
                        cpu_of(n, secs, 1, cpu_lat)
                    if on_step and s % max(1, settings.latency_samples // settings.repeats) == 0:
                        on_step()
    except torch.cuda.OutOfMemoryError:
        raise DeviceError(
            f"the GPU ran out of memory at batch size {settings.batch_size}; try a smaller `batch_size`."
        ) from None
    return {
        n: Timing(
            throughput=statistics.median(rates[n]) if rates[n] else None,
            latency_ms=statistics.median(lats[n]) if lats[n] else None,
            batch_size=settings.batch_size,
            repeats=settings.repeats,
            throughput_samples=rates[n] or None,
            latency_samples_ms=lats[n] or None,
            cpu_ms_samples=cpu[n] or None,
            cpu_latency_ms_samples=cpu_lat[n] or None,
            cpu_share_samples=share[n] or None,
        )
        for n in names
    }


@dataclass
class Paired:
    """Per-round ratios of one model's speed to another's (> 1: faster): median, quartiles, range, rounds."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: int

    @property
    def spread(self) -> float:
        """Interquartile range over the median."""
        return (self.q3 - self.q1) / self.median if self.median else float("inf")

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def paired(model: Optional[list[float]], base: Optional[list[float]], *, times: bool) -> Optional[Paired]:
    """``model``'s speed over ``base``'s, round by round (``times``: the samples are times, so base / model; else
    rates, model / base). None without at least one pair."""
    pairs = [(b / m if times else m / b) for m, b in zip(model or [], base or []) if m and b]
    if not pairs:
        return None
    q1, _, q3 = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) > 1 else (pairs[0],) * 3
    return Paired(median=statistics.median(pairs), q1=q1, q3=q3, low=min(pairs), high=max(pairs),
                  rounds=len(pairs))


def busy_reasons(ratios: list[Optional[Paired]], cpu_shares: Optional[list[float]] = None) -> list[str]:
    """Why these paired ratios are not a verdict (empty: they are): see the module doc for the two rules."""
    reasons = []
    for r in ratios:
        if r is not None and r.rounds >= 3 and r.spread > BUSY_SPREAD:
            reasons.append(f"paired ratios spread {r.spread:.0%} of their median (interquartile range "
                           f"{r.q1:.2f}–{r.q3:.2f}×; above {BUSY_SPREAD:.0%})")
            break
    if cpu_shares:
        share = statistics.median(cpu_shares)
        if share < BUSY_CPU_SHARE:
            reasons.append(f"the timed process got {share:.2f} of a core (CPU time / wall time; below "
                           f"{BUSY_CPU_SHARE:.2f})")
    return reasons


@dataclass
class Comparison:
    """A model's speed against the dense model timed beside it: paired ratios (> 1: faster) of throughput, batch-1
    latency, and process CPU time per image at the batch size and at batch 1; ``busy``: why it is not a verdict."""

    throughput: Optional[Paired] = None
    latency: Optional[Paired] = None
    cpu: Optional[Paired] = None
    cpu_latency: Optional[Paired] = None
    cpu_share: Optional[float] = None
    busy: list[str] = field(default_factory=list)

    @property
    def conclusive(self) -> bool:
        return not self.busy

    def to_dict(self) -> dict:
        out: dict = {}
        for key in ("throughput", "latency", "cpu", "cpu_latency"):
            r = getattr(self, key)
            out[f"{key}_ratio"] = None if r is None else r.to_dict()
        out["cpu_share"] = None if self.cpu_share is None else round(self.cpu_share, 3)
        out["busy"] = list(self.busy)
        out["verdict"] = BUSY_TEXT if self.busy else "conclusive"
        out["rule"] = (f"{BUSY_TEXT} when the paired ratios' interquartile range is over {BUSY_SPREAD:.0%} of their "
                       f"median, or the timed process got under {BUSY_CPU_SHARE} of a core (CPU time / wall time)")
        return out


def paired_median(comparison: Optional[dict], key: str) -> Optional[float]:
    """The median of one paired ratio (``"throughput_ratio"``, ``"latency_ratio"``...) of a
    ``Comparison.to_dict()``; None when it was not measured."""
    r = (comparison or {}).get(key)
    return None if r is None else r["median"]


def compare(model: Timing, base: Timing) -> Comparison:
    """``model`` against ``base`` (timed in the same interleaved rounds): paired ratios and the busy rules."""
    c = Comparison(
        throughput=paired(model.throughput_samples, base.throughput_samples, times=False),
        latency=paired(model.latency_samples_ms, base.latency_samples_ms, times=True),
        cpu=paired(model.cpu_ms_samples, base.cpu_ms_samples, times=True),
        cpu_latency=paired(model.cpu_latency_ms_samples, base.cpu_latency_ms_samples, times=True))
    shares = (model.cpu_share_samples or []) + (base.cpu_share_samples or [])
    c.cpu_share = statistics.median(shares) if shares else None
    c.busy = busy_reasons([c.throughput, c.latency], shares)
    return c


def speed_change(ratio: Optional[float], conclusive: bool = True) -> str:
    """How every table says a speed ratio (the compressed model's speed over the dense one's, from paired rounds):
    ``1.31× faster``, ``0.82× (slower)``; ``0.98× (not conclusive)`` when the machine was busy."""
    if ratio is None:
        return ""
    if not conclusive:
        return f"{ratio:.2f}× (not conclusive)"
    if f"{ratio:.2f}" == "1.00":
        return "1.00× (same)"
    return f"{ratio:.2f}× faster" if ratio > 1 else f"{ratio:.2f}× (slower)"
