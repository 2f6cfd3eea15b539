"""int8 ONNX files made from the fp32 export, verified like it: ``vitprune export ... --quantize int8``.

Modes (ONNX Runtime's quantization tool, on the matrix products only: ``MatMul`` and ``Gemm``, which hold nearly
all of a ViT's MACs; LayerNorm, softmax, GELU and the method's token ops stay fp32):

* ``int8`` (dynamic): weights int8 per tensor, activations quantized per batch at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``). Needs no data.
* ``int8-static``: QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs that ONNX Runtime fuses into int8
  kernels), activation ranges calibrated (min/max) on images read through the model's own evaluation
  preprocessing: ``--calibrate-data DATA`` (any ``--data`` form vitprune reads; a saved folder's own training data
  by default), ``--calibrate-images N`` of its train split, evenly spaced.

What is checked before an int8 file is reported:

* the token schedule, read from the quantized graph as from the fp32 one (``graph.graph_token_counts``): the
  tokens entering each block must still be the method's schedule, so a quantized pruned model never becomes a
  dense one;
* agreement with the PyTorch model on the check images (batch 1 and the whole batch, as ``verify``): argmax
  agreement and max |Δlogit|, recorded, not held to the fp32 tolerance;
* the accuracy drop: with ``eval_data``, top-1 of the fp32 and the int8 files on that split (default test); the
  drop is fp32 top-1 − int8 top-1 in points. Without it, the drop is the share of check-image outputs whose argmax
  differs from PyTorch's (in points: PyTorch's predictions as the labels), an upper bound of the top-1 change on
  those images. A drop above ``max_drop`` (default 1.0) refuses the file unless ``force``; a forced file is marked
  in ``report.json`` and the card.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

import platform

from ..errors import ExportError
from ..data import build_split, collate, eval_transform
from ..measure.ort import OrtModel
from ..report.redact import public_spec
from ..train.evaluate import evaluate
from .graph import INPUT_NAME, check_token_counts, expected_tokens, export_onnx, graph_token_counts
from .verify import compare

MODES = ("int8", "int8-static")
OP_TYPES = ["MatMul", "Gemm"]
DEFAULT_MAX_DROP = 1.0
DEFAULT_CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 8
SUFFIX = "-int8"


def int8_path(path: str | os.PathLike) -> Path:
    """Where the int8 file of ``path`` goes: ``model.onnx`` -> ``model-int8.onnx`` (same folder)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{SUFFIX}{path.suffix}")


def check_mode(mode: Optional[str]) -> Optional[str]:
    if mode is not None and mode not in MODES:
        raise ExportError(f"--quantize {mode}: vitprune quantizes to {' or '.join(MODES)}.")
    return mode


def cpu_int8_isa() -> str:
    """The CPU's int8 dot-product instructions, from ``/proc/cpuinfo``'s flags: AMX-INT8, AVX-512 VNNI, AVX-VNNI,
    or none of them (int8 products then run on plain AVX2/AVX-512 integer code, which gains less)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"int8 instruction set unknown ({platform.machine() or 'this platform'})"
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
            break
    found = [name for flag, name in (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX-512 VNNI"),
                                     ("avx_vnni", "AVX-VNNI")) if flag in flags]
    if found:
        return "int8: " + ", ".join(found)
    if "asimddp" in flags:
        return "int8: Arm dot product (asimddp)"
    base = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"int8: no VNNI ({base})"


def mode_label(mode: str, calibration: Optional[str] = None) -> str:
    """How a file was quantized, for captions: ``dynamic int8 (MatMul/Gemm)`` or ``static int8 QDQ ...``."""
    if mode == "int8":
        return "dynamic int8 (MatMul/Gemm)"
    return "static int8 QDQ (MatMul/Gemm" + (f", calibrated on {calibration})" if calibration else ")")


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs advice on the root logger ("consider pre-processing"); not for our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _reader(batches: Sequence[torch.Tensor], input_name: str):
    """A ``CalibrationDataReader`` over batches of preprocessed images."""
    from onnxruntime.quantization import CalibrationDataReader  # optional extra

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: b.detach().cpu().contiguous().numpy()} for b in batches])

        def get_next(self):
            return next(self._it, None)

    return Reader()


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "int8", *,
                  calibration: Optional[Sequence[torch.Tensor]] = None) -> None:
    """Write the int8 version of the fp32 file ``src`` to ``dst`` (``mode``: see the module doc; ``int8-static``
    needs ``calibration``: batches of preprocessed images)."""
    check_mode(mode)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static  # optional extra

    with _quiet():
        if mode == "int8":
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=OP_TYPES, weight_type=QuantType.QInt8)
            return
        if not calibration:
            raise ExportError("--quantize int8-static needs calibration images: give --calibrate-data DATA.")
        quantize_static(str(src), str(dst), _reader(calibration, INPUT_NAME), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=OP_TYPES, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)


def check_quantized_tokens(path: str | os.PathLike, model: nn.Module, input_size: tuple[int, int, int]) -> list[int]:
    """The tokens entering each block in the quantized graph, which must be the method's schedule (as the fp32
    export's)."""
    import onnx  # optional extra

    method = getattr(model, "vitprune_method", None)
    counts = graph_token_counts(onnx.load(str(path), load_external_data=False), len(model.blocks), model.embed_dim)
    check_token_counts(counts, expected_tokens(model, input_size),
                       (method.name if method is not None else "the dense model") + " (int8 file)")
    return [int(c) for c in counts]


def calibration_batches(model: nn.Module, data: Any, count: int = DEFAULT_CALIBRATION_IMAGES,
                        batch_size: int = CALIBRATION_BATCH) -> tuple[list[torch.Tensor], str]:
    """(batches, description): ``count`` images of ``data``'s train split (evenly spaced), read through ``model``'s
    evaluation transform."""
    if count < 1:
        raise ExportError(f"--calibrate-images must be a positive number, got {count}.")
    dataset = build_split(data, "train", eval_transform(model))
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        n = len(dataset)
        picks = sorted({int(i * n / min(count, n)) for i in range(min(count, n))})
        dataset = torch.utils.data.Subset(dataset, picks)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    batches, seen = [], 0
    for batch in loader:
        if batch.images.numel():
            batches.append(batch.images[: count - seen])
            seen += batches[-1].shape[0]
        if seen >= count:
            break
    if not seen:
        raise ExportError(f"--calibrate-data {data}: no readable image in its train split.")

    return batches, f"{seen} {public_spec(str(data))} train images"


class _OrtModule(nn.Module):
    """An ONNX file as a module, so that ``vitprune.train.evaluate`` scores it exactly as it scores a model."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()

        self.ort = OrtModel(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.ort(x))


def evaluate_files(files: dict[str, str | os.PathLike], model: nn.Module, data: Any, split: str = "test",
                   batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Top-1/top-5/loss of each ONNX file on ``data``'s ``split``, read through ``model``'s preprocessing with its
    labels mapped onto ``model``'s head (as ``vitprune eval``)."""
    dataset = build_split(data, split, eval_transform(model), model=model)
    return {key: evaluate(_OrtModule(path), dataset, batch_size=batch_size, device="cpu", dtype="fp32").to_dict()
            for key, path in files.items()}


@dataclass
class Int8Result:
    """What ``vitprune export --quantize`` made and measured (report.json's ``onnx.int8``)."""

    file: str
    mode: str
    label: str
    tokens: list[int]
    size_bytes: int
    agreement: dict[str, Any]  # argmax agreement and max |Δlogit| against PyTorch on the check images
    drop: float  # points: fp32 top-1 - int8 top-1 on eval_data, else the check images' argmax disagreement
    drop_on: str  # what the drop was measured on
    max_drop: float
    forced: bool = False
    calibration: Optional[str] = None
    eval: Optional[dict[str, Any]] = None  # {"data", "split", "fp32": {...}, "int8": {...}}
    isa: str = field(default_factory=cpu_int8_isa)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        a = self.agreement
        line = (f"int8 vs PyTorch on {a['images']}: argmax agrees {a['argmax_agree']}/{a['compared']}"
                f", max |Δlogit| {a['max_abs_diff']:.2g} (logit scale {a['logit_scale']:.2g})")
        if self.eval:
            e = self.eval
            line += (f"; top-1 on {e['data']} {e['split']}: fp32 {e['fp32']['top1']:.2f}%, int8 "
                     f"{e['int8']['top1']:.2f}% ({e['int8']['top1'] - e['fp32']['top1']:+.2f} pt)")
        return line


def quantize_export(model: nn.Module, fp32: Path, dst: Path, mode: str, *, input_size: tuple[int, int, int],
                    images: torch.Tensor, images_what: str, batch_size: Optional[int] = None,
                    calibrate_data: Any = None, calibrate_images: int = DEFAULT_CALIBRATION_IMAGES,
                    eval_data: Any = None, eval_split: str = "test", max_drop: float = DEFAULT_MAX_DROP,
                    force: bool = False) -> Int8Result:
    """Quantize the checked fp32 file ``fp32`` into ``dst`` and check it (module doc); ``ExportError`` (one line)
    when the token schedule is not in the int8 graph, or when its drop exceeds ``max_drop`` and not ``force``."""
    calibration, what = None, None
    if mode == "int8-static":
        if calibrate_data is None:
            raise ExportError("--quantize int8-static needs calibration images: give --calibrate-data DATA (e.g. "
                              "the data the model was trained on).")
        calibration, what = calibration_batches(model, calibrate_data, calibrate_images)
    quantize_onnx(fp32, dst, mode, calibration=calibration)
    tokens = check_quantized_tokens(dst, model, input_size)
    got = compare(OrtModel(dst), model, images, images_what, batch_size=batch_size)
    agreement = {k: v for k, v in asdict(got).items() if k != "tolerance"}
    evals = None
    if eval_data is not None:
        scores = evaluate_files({"fp32": fp32, "int8": dst}, model, eval_data, eval_split)

        shown = public_spec(str(eval_data))
        evals = {"data": shown, "split": eval_split, **scores}
        drop = scores["fp32"]["top1"] - scores["int8"]["top1"]
        drop_on = f"top-1 on {shown} {eval_split} (fp32 file - int8 file)"
    else:
        drop = 100.0 * (got.compared - got.argmax_agree) / max(1, got.compared)
        drop_on = f"argmax disagreement with PyTorch on {images_what}"
    result = Int8Result(file=dst.name, mode=mode, label=mode_label(mode, what), tokens=tokens,
                        size_bytes=dst.stat().st_size, agreement=agreement, drop=drop, drop_on=drop_on,
                        max_drop=max_drop, forced=False, calibration=what, eval=evals)
    if drop > max_drop:
        if not force:
            how = "" if eval_data is not None else "; measure top-1 with --eval-data DATA"
            raise ExportError(f"the int8 file loses {drop:.2f} points ({drop_on}), more than --max-drop "
                              f"{max_drop:g}; it was not written{how}, or write it anyway with --force.")
        result.forced = True
    return result


def prepare_files(models: dict[str, nn.Module], files: dict[str, Any], folder: str | os.PathLike, mode: str,
                  input_size: tuple[int, int, int], calibration: Optional[Sequence[torch.Tensor]] = None
                  ) -> dict[str, Any]:
    """For timing: the fp32 and int8 files of each model (``KEY`` and ``KEY-int8``), exported into ``folder``
    where ``files`` has none, token counts checked in both."""
    paths = dict(files)
    for key, m in models.items():
        if key not in paths:
            paths[key] = Path(folder) / f"{key}.onnx"
            export_onnx(m.cpu(), paths[key], input_size)
        q = f"{key}{SUFFIX}"
        if q not in paths:
            paths[q] = Path(folder) / f"{q}.onnx"
            quantize_onnx(paths[key], paths[q], mode, calibration=calibration)
            check_quantized_tokens(paths[q], m, input_size)
    return paths


__all__ = ["DEFAULT_CALIBRATION_IMAGES", "DEFAULT_MAX_DROP", "Int8Result", "MODES", "OP_TYPES", "SUFFIX",
           "calibration_batches", "check_mode", "check_quantized_tokens", "cpu_int8_isa", "evaluate_files",
           "int8_path", "mode_label", "prepare_files", "quantize_export", "quantize_onnx"]
