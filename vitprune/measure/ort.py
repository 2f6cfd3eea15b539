"""ONNX Runtime sessions set up like the PyTorch runs they are compared with, and timing of ONNX files.

* Threads: the CPU execution provider gets ``intra_op_num_threads = torch.get_num_threads()`` (and one inter-op
  thread, sequential execution), so a dense-vs-compressed ratio and a PyTorch-vs-ONNX comparison use the same
  cores. Every table that shows ONNX Runtime timings says so in its caption.
* Graph optimizations: ``ORT_ENABLE_ALL`` (ONNX Runtime's default: constant folding, LayerNorm/GELU/MatMul+bias
  fusions, NCHWc layouts), applied when the session is created, for dense and compressed files alike.
* No spin-waiting (``session.intra_op.allow_spinning = 0``): ONNX Runtime's idle pool threads spin by default, which
  on a CPU shared with other work burns the time slices the working threads need, and costs more the more (and
  shorter) ops a graph runs, as pruned graphs do (gathers, smaller matmuls). Measured on DeiT-S, 2 threads on 2
  shared cores, batch 8, interleaved medians: with spinning, dense 3.63 s and DynamicViT/EViT/ToMe 1.47/1.50/1.59x;
  without, dense 3.29 s and 1.54/1.62/1.77x, while the single-thread CPU-time ratios (the work each graph does) are
  1.53/1.51/1.66x. Both models always get the same setting; ``spin=True`` restores ONNX Runtime's default.
* ``OrtModel`` wraps a session as a callable on torch tensors, so ``speed.benchmark`` times it exactly like a
  PyTorch model: same inputs, same interleaving, same medians.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import DeviceError
from .speed import Schedule, Timing, benchmark

RUNTIME_NAME = "onnxruntime"
#: the names of a vitprune ONNX file's input and output (``exporter.graph`` writes them; the model card's ONNX
#: snippet feeds the input by name)
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


def providers_for(device: torch.device) -> list[str]:
    """The execution providers for ``device``: CUDA (with CPU for unsupported nodes) or CPU."""
    import onnxruntime as ort  # optional extra

    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceError("ONNX Runtime here has no CUDAExecutionProvider (install onnxruntime-gpu); use "
                              "`device` cpu.")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: str | os.PathLike, device: Optional[torch.device] = None, threads: Optional[int] = None,
                spin: bool = False):
    """An ``InferenceSession`` on ``path`` with torch's intra-op thread count, all graph optimizations and (unless
    ``spin``) no spin-waiting threads."""
    import onnxruntime as ort  # optional extra

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: no per-session warnings on the console
    return ort.InferenceSession(str(path), opts, providers=providers_for(device or torch.device("cpu")))


class OrtModel:
    """An ONNX Runtime session called like a model: ``logits = OrtModel(path)(images)`` (a torch tensor in, a
    numpy array out)."""

    def __init__(self, path: str | os.PathLike, device: Optional[torch.device] = None,
                 threads: Optional[int] = None):
        self.path = Path(path)
        self.session = ort_session(path, device, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor):
        return self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]

    def eval(self) -> "OrtModel":  # the benchmark puts its models in eval mode
        return self


def runtime_label(device: torch.device, threads: Optional[int] = None) -> str:
    """How ONNX Runtime timings were made, for table captions: version, provider, threads."""
    import onnxruntime as ort  # optional extra

    provider = providers_for(device)[0]
    if device.type == "cuda":
        return f"ONNX Runtime {ort.__version__} ({provider})"
    n = int(threads or torch.get_num_threads())
    return f"ONNX Runtime {ort.__version__} ({provider}, {n} intra-op threads = torch's, no spin-wait)"


def benchmark_onnx(
    files: dict[str, str | os.PathLike],
    input_size: tuple[int, int, int],
    *,
    device: torch.device,
    settings: Schedule,
    latency: bool = True,
    throughput: bool = True,
    on_step: Optional[Callable[[], None]] = None,
    samples: bool = False,
) -> dict[str, Timing]:
    """Time ONNX files in ONNX Runtime side by side (fp32 inputs, interleaved, medians), like ``benchmark``."""
    models = {name: OrtModel(path, device) for name, path in files.items()}
    # session.run returns when the outputs are on the host, whatever the provider: wall-clock timing on host
    # inputs (CUDA events would time torch's stream, which ONNX Runtime does not use)
    return benchmark(models, input_size, device=torch.device("cpu"), dtype="fp32", settings=settings,
                     latency=latency, throughput=throughput, on_step=on_step, samples=samples)


__all__ = ["OrtModel", "RUNTIME_NAME", "benchmark_onnx", "ort_session", "providers_for", "runtime_label"]
