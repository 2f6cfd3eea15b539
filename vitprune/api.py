"""Library entry points that combine loading, patching and measuring (the CLI only parses and renders these)."""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

from torch import nn

import tempfile

from .errors import MethodOptionError
from .settings import SpeedSettings, split_kwargs, takes_settings
from .hub import load_model
from .measure.speed import paired_median, resolve_device
from .measure.models import RUNTIMES, ModelStats, check_settings, measure_models, versions
from .train.evaluate import EvalResult
from .train.evaluate import evaluate as evaluate_model
from .measure.flops import model_input_size
from .methods import apply_method, dense_copy, get_method
from .budget import solve_for_gmacs
from .exporter.quantize import check_mode, cpu_int8_isa, mode_label, prepare_files
from .exporter.verify import sample_images

__all__ = ["ModelStats", "ProfileReport", "RUNTIMES", "evaluate", "profile", "resolve_models", "versions"]

ModelLike = Union[str, nn.Module]


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
    budget: Optional[dict[str, Any]] = None  # target_gmacs: the solved setting (BudgetSolution.record)
    #: ``quantize`` (onnxruntime): the int8 files timed beside the fp32 ones, and how they were made
    quantize: Optional[str] = None
    dense_int8: Optional[ModelStats] = None
    compressed_int8: Optional[ModelStats] = None
    quantize_info: Optional[str] = None  # the quantization mode and the CPU's int8 instruction set

    def _final(self) -> Optional[ModelStats]:
        """What the user deploys: the compressed model, int8 when quantized (the dense int8 one without a method)."""
        if self.quantize:
            return self.compressed_int8 if self.compressed is not None else self.dense_int8
        return self.compressed

    @staticmethod
    def _ratio(new: Optional[ModelStats], old: Optional[ModelStats], key: str) -> Optional[float]:
        if new is None or old is None or getattr(new, key) is None or getattr(old, key) is None:
            return None
        a, b = getattr(new, key), getattr(old, key)
        return a / b if key == "throughput" else b / a

    def _paired(self, key: str) -> Optional[float]:
        return paired_median(self.compressed.speed if self.compressed is not None else None, key)

    @property
    def speedup(self) -> Optional[float]:
        """compressed throughput / dense throughput: the median of the per-round paired ratios; quantized: the
        compressed int8 file against the dense fp32 one."""
        if self.quantize:
            return self._ratio(self._final(), self.dense, "throughput")
        return self._paired("throughput_ratio") or self._ratio(self.compressed, self.dense, "throughput")

    @property
    def speedup_vs_dense_int8(self) -> Optional[float]:
        """quantized: the compressed int8 file against the dense int8 one (what pruning adds to int8)."""
        return self._ratio(self.compressed_int8, self.dense_int8, "throughput") if self.compressed else None

    @property
    def latency_ratio(self) -> Optional[float]:
        """dense latency / compressed latency (> 1: the compressed model answers faster at batch 1), the median of
        the per-sample paired ratios; quantized: the dense fp32 file against the compressed int8 one."""
        if self.quantize:
            return self._ratio(self._final(), self.dense, "latency_ms")
        return self._paired("latency_ratio") or self._ratio(self.compressed, self.dense, "latency_ms")

    @property
    def speed(self) -> Optional[dict[str, Any]]:
        """The compressed model's paired speed comparison with dense (``speed.Comparison.to_dict()``)."""
        return None if self.compressed is None else self.compressed.speed

    @property
    def gmacs_ratio(self) -> Optional[float]:
        return None if self.compressed is None else self.compressed.gmacs / self.dense.gmacs

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["speedup"] = self.speedup
        out["latency_ratio"] = self.latency_ratio
        if self.quantize:
            out["speedup_vs_dense_int8"] = self.speedup_vs_dense_int8
            out["latency_ratio_vs_dense_int8"] = (self._ratio(self.compressed_int8, self.dense_int8, "latency_ms")
                                                  if self.compressed else None)
            out["speedup_fp32"] = self._ratio(self.compressed, self.dense, "throughput")
            out["speedup_dense_int8"] = self._ratio(self.dense_int8, self.dense, "throughput")
        out["gmacs_ratio"] = self.gmacs_ratio
        out["speed"] = self.speed
        out["units"] = {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": "images/s",
                        "latency_ms": "ms per image at batch 1 (median)",
                        "cpu_ms": "process CPU ms per image at the batch size (median)",
                        "cpu_latency_ms": "process CPU ms per batch-1 forward (median)"}
        return out


def resolve_models(
    model: ModelLike, method: Optional[str], method_options: dict[str, Any], *, pretrained: bool = True,
) -> tuple[str, nn.Module, Optional[nn.Module]]:
    """(name, dense, compressed-or-None) for MODEL and an optional method (see :func:`resolve_budget`)."""
    return resolve_budget(model, method, method_options, pretrained=pretrained)[:3]


def resolve_budget(
    model: ModelLike, method: Optional[str], method_options: dict[str, Any], *, pretrained: bool = True,
    target_gmacs: Optional[float] = None,
) -> tuple[str, nn.Module, Optional[nn.Module], Any]:
    """(name, dense, compressed-or-None, budget solution-or-None) for MODEL and an optional method.

    A compressed model (a saved folder, or a patched module) comes back as the compressed one, with its dense
    backbone beside it; ``method_options`` without a method are then its run-time overrides (``set_runtime``: EViT's
    keep rate, SaiT's mode...), applied to a copy of a module passed in. On a dense model they need a method.
    ``target_gmacs`` (a dense model with a method): the method's headline option is solved for that fraction of the
    dense GMACs (:func:`vitprune.budget.solve_for_gmacs`), and the solution comes back fourth.
    """
    name = model if isinstance(model, str) else type(model).__name__
    loaded = load_model(model, pretrained=pretrained) if isinstance(model, str) else model
    existing = get_method(loaded)
    if target_gmacs is not None and (existing is not None or method is None):
        raise MethodOptionError("`target_gmacs` solves a method's option on a dense model: give a dense model and "
                                "`method`.")
    if existing is not None:
        if method is not None:
            raise MethodOptionError(f"{name} is already compressed with {existing.name}; give its dense base model "
                                    "to try another method.")
        compressed = loaded
        if method_options:
            compressed = copy.deepcopy(loaded) if loaded is model else loaded
            get_method(compressed).set_runtime(**method_options)
        return name, dense_copy(loaded), compressed, None
    if method_options and method is None:
        names = ", ".join(f"`{k}`" for k in method_options)
        raise MethodOptionError(f"{names} needs `method` (see `vitprune methods`), or a compressed model.")
    if method is None:
        return name, loaded, None, None
    solution = None
    if target_gmacs is not None:
        solution = solve_for_gmacs(loaded, method, target_gmacs, **method_options)
        method_options = solution.untrained_options
    return name, loaded, apply_method(copy.deepcopy(loaded), method, **method_options), solution


@takes_settings(SpeedSettings)
def profile(
    model: ModelLike = "demo",
    method: Optional[str] = None,
    *,
    pretrained: bool = True,
    timing: Optional[SpeedSettings] = None,
    on_step: Optional[Callable[[], None]] = None,
    onnx_files: Optional[dict[str, str | os.PathLike]] = None,
    target_gmacs: Optional[float] = None,
    quantize: Optional[str] = None,
    calibration: Any = None,
    **options: Any,
) -> ProfileReport:
    """Parameters, GMACs, throughput and batch-1 latency of MODEL, and of MODEL with ``method`` beside it.

    Both are measured in this process, interleaved, so the ratio is fair (``measure.models.measure_models``, the
    measurement ``sweep`` and ``compress`` use too). ``pretrained=False`` builds the architecture with random
    weights (enough for FLOPs and speed). ``compile`` (a ``vitprune.optimize`` mode such as ``"auto"``) times both
    models compiled the same way. ``runtime="onnxruntime"`` exports both models to ONNX (token counts checked, as
    ``vitprune.export`` does) and times the files in ONNX Runtime instead, fp32, with torch's thread count;
    ``onnx_files`` (``{"dense"|"compressed": path}``) times files already exported. ``method_options`` without a
    method change a compressed model's run-time options for this measurement. ``target_gmacs`` (e.g. 0.65) solves
    the method's headline option for that fraction of the dense GMACs (``ProfileReport.budget`` says what it chose).
    ``quantize`` (``"int8"`` or ``"int8-static"``, with ``runtime="onnxruntime"``) also quantizes both files
    (``vitprune.exporter.quantize``; token counts checked in the int8 graphs) and times the four side by side:
    ``speedup`` is then the compressed int8 file against the dense fp32 one. ``calibration``: batches of
    preprocessed images for ``int8-static`` (default: the 8 demo check digits; enough to time the graph).
    How models are timed is one ``SpeedSettings`` (``timing``), or its fields as keywords over it (``device``,
    ``dtype``, ``batch_size``, ``repeats``, ``speed``, ``latency``, ``compile``, ``runtime``); any other keyword is
    an option of the method.
    """
    given, method_options = split_kwargs(SpeedSettings, options)
    timing = dataclasses.replace(timing or SpeedSettings(), **given)
    check_settings(timing)
    speed, latency, runtime = timing.speed, timing.latency, timing.runtime
    if quantize is not None:
        check_mode(quantize)
        if runtime != "onnxruntime":
            raise MethodOptionError("`quantize` times int8 ONNX files: use it with `runtime` onnxruntime.")
    name, dense, compressed, solution = resolve_budget(model, method, method_options, pretrained=pretrained,
                                                       target_gmacs=target_gmacs)
    models = {"dense": dense} if compressed is None else {"dense": dense, "compressed": compressed}
    if quantize is None or not (speed or latency):
        m = measure_models(models, timing, onnx_files=onnx_files, on_step=on_step)
        quantize_info = None
    else:
        m, quantize_info = _measure_int8(models, quantize, calibration, timing, onnx_files=onnx_files,
                                         on_step=on_step)
    return ProfileReport(
        model=name, dense=m.stats["dense"], compressed=m.stats.get("compressed"), device=m.device,
        device_name=m.device_name, dtype=m.dtype, batch_size=m.batch_size, input_size=m.input_size,
        versions=m.versions, compiled=m.compiled, runtime=m.runtime, runtime_info=m.runtime_info,
        budget=None if solution is None else solution.record(), quantize=quantize if quantize_info else None,
        dense_int8=m.stats.get("dense-int8"), compressed_int8=m.stats.get("compressed-int8"),
        quantize_info=quantize_info)



def _measure_int8(models: dict[str, nn.Module], mode: str, calibration: Any, timing: SpeedSettings, *,
                  onnx_files: Any, on_step: Optional[Callable[[], None]]) -> tuple[Any, str]:
    """The fp32 and int8 files of every model timed side by side, interleaved (``measure_models``); returns the
    measurement and the caption's quantization note."""
    input_size = model_input_size(models["dense"])
    what = None
    if mode == "int8-static" and calibration is None:
        x, what = sample_images(models["dense"])
        calibration = [x]
    with tempfile.TemporaryDirectory(prefix="vitprune-int8-") as tmp:
        files = prepare_files(models, dict(onnx_files or {}), tmp, mode, input_size, calibration)
        every = {**models, **{f"{k}-int8": v for k, v in models.items()}}
        m = measure_models(every, dataclasses.replace(timing, runtime="onnxruntime"), onnx_files=files,
                           on_step=on_step)
    return m, f"{mode_label(mode, what)} · {cpu_int8_isa()}"


def evaluate(model: ModelLike, data: Any = "demo", **kwargs: Any) -> EvalResult:
    """``vitprune.train.evaluate.evaluate`` (same keyword arguments) on ``model`` or a MODEL spec (``demo``, a timm
    name, ``hf-hub:org/name``, a folder), which is loaded with ``vitprune.load_model`` once ``device`` is checked (a
    device this machine cannot use is refused before anything is loaded or downloaded)."""
    resolve_device(kwargs.get("device"))
    return evaluate_model(load_model(model) if isinstance(model, str) else model, data, **kwargs)
