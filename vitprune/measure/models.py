"""The one measurement of models side by side: what ``vitprune profile``, ``sweep`` and ``compress`` report.

``measure_models({"dense": d, "compressed": c, ...})`` counts each model's parameters, GMACs (fvcore, or the
method's analytic per-image count) and tokens entering each block, at one input size for all of them (the first
model's own: ``flops.model_input_size``, so a ViT built with ``img_size=64`` is measured at 64 px), then times them
together, interleaved in every repeat so the ratios are fair on a busy machine (every model after the first gets
``ModelStats.speed``: paired per-round ratios to the first, CPU-time ratios and whether the machine was too busy
for a verdict, ``speed.compare``): in PyTorch (``speed.benchmark``,
optionally compiled with ``vitprune.optimize``) or, with ``runtime="onnxruntime"``, exported to ONNX and timed in
ONNX Runtime (``ort.benchmark_onnx``; ``onnx_files`` are files exported already).
"""
from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import timm
import torch
from torch import nn

from .. import __version__
from ..errors import MethodOptionError
from ..exporter.graph import export_onnx, export_versions, require_export_deps
from ..methods.base import patch_grid
from .flops import count_macs, count_params, model_input_size
from ..settings import SpeedSettings, check_ranges
from .speed import Schedule, Timing, benchmark, compare, device_name, resolve_device, resolve_dtype
from .ort import benchmark_onnx, runtime_label
from ..fastpath import check_mode, optimize

RUNTIMES = ("torch", "onnxruntime")


@dataclass
class ModelStats:
    """Cost of one model: parameters, MACs per image, measured speed, tokens entering each block."""

    params: int
    gmacs: float
    throughput: Optional[float] = None
    latency_ms: Optional[float] = None
    tokens: Optional[list[int]] = None
    method: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    macs_source: str = "fvcore"
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpu_ms: Optional[float] = None  # median process CPU time per image at the batch size (ms; CPU runs)
    cpu_latency_ms: Optional[float] = None  # median process CPU time of one batch-1 forward (ms; CPU runs)
    #: against the first model measured beside it (the dense one): ``speed.Comparison.to_dict()``
    speed: Optional[dict[str, Any]] = None


@dataclass
class Measurement:
    """``measure_models``'s result: each model's ``ModelStats`` and how they were measured."""

    stats: dict[str, ModelStats]
    device: str
    device_name: str
    dtype: str
    batch_size: int
    input_size: tuple[int, int, int]
    repeats: int
    versions: dict[str, str]
    compiled: Optional[str] = None
    runtime: str = "torch"
    runtime_info: Optional[str] = None


def versions(runtime: str = "torch") -> dict[str, str]:
    """The versions a measurement depends on (vitprune, torch, timm, Python; ONNX's with ``onnxruntime``)."""
    out = {"vitprune": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version()}
    if runtime == "onnxruntime":
        out.update(export_versions())
    return out


def check_settings(timing: SpeedSettings) -> Optional[str]:
    """Refuse settings that do not go together, before any model is loaded; returns the dtype to use."""
    runtime, compile, dtype = timing.runtime, timing.compile, timing.dtype
    check_ranges(timing)  # batch_size, repeats: the bounds declared with them
    resolve_device(timing.device)  # a device this machine cannot use: refused before a model is loaded (or fetched)
    if compile is not None:
        check_mode(compile, "compile")
    if runtime not in RUNTIMES:
        raise MethodOptionError(f"`runtime` must be one of {', '.join(RUNTIMES)}, not {runtime!r}.")
    if runtime != "onnxruntime":
        return dtype

    require_export_deps()
    if compile and compile != "none":
        raise MethodOptionError("`compile` times PyTorch models; it does not apply to `runtime` onnxruntime.")
    if dtype not in (None, "fp32"):
        raise MethodOptionError(f"`runtime` onnxruntime times the fp32 export; `dtype` {dtype} does not apply.")
    return "fp32"


def model_stats(model: nn.Module, input_size: tuple[int, int, int]) -> ModelStats:
    """Parameters, MACs and the token schedule of one model (dense: every token in every block)."""
    mc = count_macs(model, input_size)
    method = getattr(model, "vitprune_method", None)
    if method is None:
        grid = patch_grid(model)
        tokens = [grid[0] * grid[1] + model.num_prefix_tokens] * len(model.blocks)
        return ModelStats(params=count_params(model), gmacs=mc.gmacs, tokens=tokens, macs_source=mc.source,
                          uncounted_ops=mc.uncounted)
    return ModelStats(
        params=count_params(model), gmacs=mc.gmacs, tokens=method.token_schedule(model), method=method.name,
        options=method.options_dict(), macs_source=mc.source, uncounted_ops=mc.uncounted,
        notes=method.report_notes(model))


def measure_models(
    models: dict[str, nn.Module],
    timing: SpeedSettings = SpeedSettings(),
    *,
    onnx_files: Optional[dict[str, str | os.PathLike]] = None,
    on_step: Optional[Callable[[], None]] = None,
) -> Measurement:
    """Count and time ``models`` side by side (see the module doc) as ``timing`` says: throughput at its batch size
    (``speed``) and batch-1 latency (``latency``), on its device and runtime."""
    dtype = check_settings(timing)
    speed, latency, runtime = timing.speed, timing.latency, timing.runtime
    dev = resolve_device(timing.device)
    dt = resolve_dtype(dtype, dev)
    input_size = model_input_size(next(iter(models.values())))
    stats = {key: model_stats(m, input_size) for key, m in models.items()}
    settings = Schedule.default(dev, timing.batch_size)
    if timing.repeats is not None:
        settings.repeats = timing.repeats
    compiled = timing.compile if timing.compile and timing.compile != "none" else None
    runtime_info = None
    if (speed or latency) and runtime == "onnxruntime":
        timings = _time_onnx(models, input_size, dev, settings, onnx_files or {}, speed, latency, on_step)
        runtime_info = runtime_label(dev)
    elif speed or latency:
        timings = benchmark({k: _prepared(m, dev, compiled) for k, m in models.items()}, input_size, device=dev,
                            dtype=dt, settings=settings, latency=latency, throughput=speed, on_step=on_step)
    else:
        timings = {}
    first = next(iter(models))
    for key, timing in timings.items():
        st = stats[key]
        st.throughput, st.latency_ms = timing.throughput, timing.latency_ms
        st.cpu_ms, st.cpu_latency_ms = timing.cpu_ms, timing.cpu_latency_ms
        if key != first:
            st.speed = compare(timing, timings[first]).to_dict()
    return Measurement(stats=stats, device=dev.type, device_name=device_name(dev), dtype=dt,
                       batch_size=settings.batch_size, input_size=input_size, repeats=settings.repeats,
                       versions=versions(runtime), compiled=compiled, runtime=runtime, runtime_info=runtime_info)


def _prepared(model: nn.Module, dev: torch.device, compiled: Optional[str]) -> nn.Module:
    model = model.to(dev)
    if compiled is None:
        return model

    return optimize(model, compiled, device=dev)


def _time_onnx(models: dict[str, nn.Module], input_size: tuple[int, int, int], dev: torch.device,
               settings: Schedule, files: dict[str, Any], speed: bool, latency: bool,
               on_step: Optional[Callable[[], None]]) -> dict[str, Timing]:
    """Export each model without a file in ``files`` (dynamic batch, token counts checked) and time them all in
    ONNX Runtime, interleaved."""
    with tempfile.TemporaryDirectory(prefix="vitprune-onnx-") as tmp:
        paths = dict(files)
        for key, m in models.items():
            if key not in paths:
                paths[key] = os.path.join(tmp, f"{key}.onnx")
                export_onnx(m.cpu(), paths[key], input_size)
        return benchmark_onnx({k: paths[k] for k in models}, input_size, device=dev, settings=settings,
                              latency=latency, throughput=speed, on_step=on_step)


__all__ = ["Measurement", "ModelStats", "RUNTIMES", "check_settings", "measure_models", "model_stats", "versions"]
