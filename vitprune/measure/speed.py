"""Throughput and latency, measured fairly: several models in one process, interleaved, after warm-up.

* GPU: CUDA events around each timed run; fp16 or bf16 autocast (default fp16), or fp32.
* CPU: ``time.perf_counter`` (CPU work is synchronous); fp32 (bf16 autocast on request).
* Throughput: images/s at ``batch_size``; each repeat times ``iters`` forward passes of every model in turn
  (the order rotates each repeat), and the median over repeats is reported.
* Latency: batch 1, one forward per sample, models interleaved sample by sample; the median in milliseconds.
"""
from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

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
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("throughput_samples", "latency_samples_ms"):
            if d[key] is None:
                del d[key]
        return d


@dataclass
class SpeedSettings:
    batch_size: int
    warmup: int
    repeats: int
    iters: int
    latency_samples: int

    @classmethod
    def default(cls, device: torch.device, batch_size: Optional[int] = None) -> "SpeedSettings":
        if device.type == "cuda":
            return cls(batch_size or 256, warmup=10, repeats=10, iters=10, latency_samples=100)
        return cls(batch_size or 32, warmup=1, repeats=3, iters=1, latency_samples=10)


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], object], n: int) -> float:
        """Seconds for ``n`` calls of ``fn``."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0


def benchmark(
    models: dict[str, nn.Module],
    input_size: tuple[int, int, int],
    *,
    device: torch.device,
    dtype: str,
    settings: SpeedSettings,
    latency: bool = True,
    throughput: bool = True,
    on_step: Optional[Callable[[], None]] = None,
    samples: bool = False,
) -> dict[str, Timing]:
    """Time every model on the same random inputs, interleaved; returns name -> Timing (with every sample when
    ``samples``)."""
    names = list(models)
    clock = _Clock(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    big = torch.randn(settings.batch_size, *input_size, generator=gen).to(device)
    one = torch.randn(1, *input_size, generator=gen).to(device)
    rates: dict[str, list[float]] = {n: [] for n in names}
    lats: dict[str, list[float]] = {n: [] for n in names}

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
                    if on_step:
                        on_step()
            if latency:
                for n in names:
                    clock.time(run(models[n], one), max(3, settings.warmup))
                for s in range(settings.latency_samples):
                    for j in range(len(names)):
                        n = names[(s + j) % len(names)]
                        lats[n].append(clock.time(run(models[n], one), 1) * 1000.0)
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
            throughput_samples=rates[n] if samples and rates[n] else None,
            latency_samples_ms=lats[n] if samples and lats[n] else None,
        )
        for n in names
    }
