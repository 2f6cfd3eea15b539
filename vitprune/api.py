"""Library entry points that combine loading, patching and measuring (the CLI only parses and renders these)."""
from __future__ import annotations

import copy
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .errors import MethodOptionError
from .measure.flops import count_macs, count_params
from .measure.speed import SpeedSettings, Timing, benchmark, device_name, resolve_device, resolve_dtype

ModelLike = Union[str, nn.Module]


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


@dataclass
class ProfileReport:
    model: str
    dense: ModelStats
    compressed: Optional[ModelStats]
    device: str
    device_name: str
    dtype: str
    batch_size: int
    input_size: tuple[int, int, int]
    versions: dict[str, str] = field(default_factory=dict)
    compiled: Optional[str] = None
    runtime: str = "torch"  # "torch" or "onnxruntime" (both models exported to ONNX and timed there)
    runtime_info: Optional[str] = None  # how the runtime was set up (version, provider, threads)

    @property
    def speedup(self) -> Optional[float]:
        c, d = self.compressed, self.dense
        if c is None or c.throughput is None or d.throughput is None:
            return None
        return c.throughput / d.throughput

    @property
    def latency_ratio(self) -> Optional[float]:
        """dense latency / compressed latency (> 1: the compressed model answers faster at batch 1)."""
        c, d = self.compressed, self.dense
        if c is None or c.latency_ms is None or d.latency_ms is None:
            return None
        return d.latency_ms / c.latency_ms

    @property
    def gmacs_ratio(self) -> Optional[float]:
        return None if self.compressed is None else self.compressed.gmacs / self.dense.gmacs

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["speedup"] = self.speedup
        out["latency_ratio"] = self.latency_ratio
        out["gmacs_ratio"] = self.gmacs_ratio
        out["units"] = {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": "images/s",
                        "latency_ms": "ms per image at batch 1 (median)"}
        return out


RUNTIMES = ("torch", "onnxruntime")


def versions(runtime: str = "torch") -> dict[str, str]:
    import timm

    from . import __version__

    out = {"vitprune": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version()}
    if runtime == "onnxruntime":
        from .exporter.graph import export_versions

        out.update(export_versions())
    return out


def resolve_models(
    model: ModelLike, method: Optional[str], method_options: dict[str, Any], *, pretrained: bool = True,
) -> tuple[str, nn.Module, Optional[nn.Module]]:
    """(name, dense, compressed-or-None) for MODEL and an optional method.

    A saved compressed model comes back as the compressed one, with its dense backbone beside it.
    """
    from .hub import load_model
    from .methods import apply_method, dense_copy, get_method

    if method is None and method_options:
        flags = ", ".join("--" + k.replace("_", "-") for k in method_options)
        raise MethodOptionError(f"{flags} needs --method (see `vitprune methods`).")
    name = model if isinstance(model, str) else type(model).__name__
    loaded = load_model(model, pretrained=pretrained) if isinstance(model, str) else model
    if get_method(loaded) is not None:
        if method is not None:
            raise MethodOptionError(
                f"{name} is already compressed with {get_method(loaded).name}; give its dense base model to try "
                "another method.")
        return name, dense_copy(loaded), loaded
    if method is None:
        return name, loaded, None
    return name, loaded, apply_method(copy.deepcopy(loaded), method, **method_options)


def profile(
    model: ModelLike = "demo",
    method: Optional[str] = None,
    *,
    pretrained: bool = True,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    batch_size: Optional[int] = None,
    speed: bool = True,
    latency: bool = True,
    repeats: Optional[int] = None,
    compile: Optional[str] = None,
    on_step: Optional[Callable[[], None]] = None,
    runtime: str = "torch",
    onnx_files: Optional[dict[str, str | os.PathLike]] = None,
    **method_options: Any,
) -> ProfileReport:
    """Parameters, GMACs, throughput and batch-1 latency of MODEL, and of MODEL with ``method`` beside it.

    Both are measured in this process, interleaved, so the ratio is fair. ``pretrained=False`` builds the
    architecture with random weights (enough for FLOPs and speed). ``compile`` (a ``vitprune.optimize`` mode such as
    ``"auto"``) times both models compiled the same way. ``runtime="onnxruntime"`` exports both models to ONNX
    (token counts checked, as ``vitprune.export`` does) and times the files in ONNX Runtime instead, fp32, with
    torch's thread count; ``onnx_files`` (``{"dense"|"compressed": path}``) times files already exported.
    """
    if batch_size is not None and batch_size < 1:
        raise MethodOptionError(f"batch size must be a positive number, got {batch_size}.")
    if compile is not None:
        from .fastpath import check_mode

        check_mode(compile, "compile")
    if runtime not in RUNTIMES:
        raise MethodOptionError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}.")
    if runtime == "onnxruntime":
        from .exporter.graph import require_export_deps

        require_export_deps()
        if compile and compile != "none":
            raise MethodOptionError("--compile times PyTorch models; it does not apply to --runtime onnxruntime.")
        if dtype not in (None, "fp32"):
            raise MethodOptionError(f"--runtime onnxruntime times the fp32 export; --dtype {dtype} does not apply.")
        dtype = "fp32"
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name, dense, compressed = resolve_models(model, method, method_options, pretrained=pretrained)
    from .measure.flops import model_input_size

    input_size = model_input_size(dense)
    settings = SpeedSettings.default(dev, batch_size)
    if repeats is not None:
        settings.repeats = repeats

    def stats(m: nn.Module) -> ModelStats:
        mc = count_macs(m, input_size)
        method_obj = getattr(m, "vitprune_method", None)
        tokens = method_obj.token_schedule(m) if method_obj is not None else None
        return ModelStats(
            params=count_params(m), gmacs=mc.gmacs, tokens=tokens,
            method=method_obj.name if method_obj else None,
            options=method_obj.options_dict() if method_obj else {},
            macs_source=mc.source, uncounted_ops=mc.uncounted,
            notes=method_obj.report_notes(m) if method_obj else [],
        )

    dense_stats = stats(dense)
    comp_stats = stats(compressed) if compressed is not None else None
    if dense_stats.tokens is None:
        n = dense.patch_embed.num_patches + dense.num_prefix_tokens
        dense_stats.tokens = [n] * len(dense.blocks)
    runtime_info = None
    timings: dict[str, Timing] = {}
    if (speed or latency) and runtime == "onnxruntime":
        from .measure.ort import runtime_label

        models = {"dense": dense} if compressed is None else {"dense": dense, "compressed": compressed}
        timings = _time_onnx(models, input_size, dev, settings, onnx_files or {}, speed, latency, on_step)
        runtime_info = runtime_label(dev)
    elif speed or latency:
        from .fastpath import optimize

        def prepared(m: nn.Module) -> nn.Module:
            m = m.to(dev)
            return optimize(m, compile, device=dev) if compile and compile != "none" else m

        models = {"dense": prepared(dense)}
        if compressed is not None:
            models["compressed"] = prepared(compressed)
        timings = benchmark(
            models, input_size, device=dev, dtype=dt, settings=settings, latency=latency, throughput=speed,
            on_step=on_step,
        )
    if timings:
        for key, st in (("dense", dense_stats), ("compressed", comp_stats)):
            if st is not None:
                st.throughput, st.latency_ms = timings[key].throughput, timings[key].latency_ms
    return ProfileReport(
        model=name, dense=dense_stats, compressed=comp_stats, device=dev.type, device_name=device_name(dev),
        dtype=dt, batch_size=settings.batch_size, input_size=input_size, versions=versions(runtime),
        compiled=compile if compile and compile != "none" else None, runtime=runtime, runtime_info=runtime_info,
    )


def _time_onnx(models: dict[str, nn.Module], input_size: tuple[int, int, int], dev: torch.device,
               settings: SpeedSettings, files: dict[str, Any], speed: bool, latency: bool,
               on_step: Optional[Callable[[], None]]) -> dict[str, Timing]:
    """Export each model without a file in ``files`` (dynamic batch, token counts checked) and time them all in
    ONNX Runtime, interleaved."""
    from .exporter.graph import export_onnx
    from .measure.ort import benchmark_onnx

    with tempfile.TemporaryDirectory(prefix="vitprune-onnx-") as tmp:
        paths = dict(files)
        for key, m in models.items():
            if key not in paths:
                paths[key] = os.path.join(tmp, f"{key}.onnx")
                export_onnx(m.cpu(), paths[key], input_size)
        return benchmark_onnx({k: paths[k] for k in models}, input_size, device=dev, settings=settings,
                              latency=latency, throughput=speed, on_step=on_step)
