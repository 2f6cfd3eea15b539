"""``vitprune.export``: a model (dense, compressed, or dense + a method) to an ONNX file with the pruning inside,
checked before it is reported.

Order of work: resolve the model (a saved folder's run-time options can be changed, as ``eval`` does), refuse a
setting without a static inference path (``method.export_check``), export into a temporary file next to the
output, check the graph's token count per block against the method's schedule, run ONNX Runtime and PyTorch on the
same images, optionally time the dense and compressed files side by side, and only then move the file into place.
A failed check writes nothing.

Into a saved folder (``DIR/model.onnx``) the export is also recorded in ``report.json`` (an ``onnx`` section: opset,
batch axis, token counts, the check, the timing when measured) and the model card is regenerated, so that it
shows how to run the file in ONNX Runtime.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from torch import nn

from ..errors import ExportError, when_full
from ..hub.load import model_slug
from .graph import INPUT_NAME, OUTPUT_NAME, export_onnx, export_versions, require_export_deps
from .verify import Verification, sample_images, verify
from ..hub.save import update_files
from ..measure.flops import model_input_size
from ..measure.ort import OrtModel
from ..report.card import read_folder
from ..api import profile, resolve_budget
from ..settings import ExportSettings, flag, split_kwargs, takes_settings
from .quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DROP, int8_path, quantize_export

ModelLike = Union[str, os.PathLike, nn.Module]
FILE_NAME = "model.onnx"
FORMATS = flag(ExportSettings, "format").choices  # ("onnx",)
#: where exports of a model name (or of a folder with another method) go by default: beside compress's outputs
DEFAULT_DIR = "vitprune-out"


@dataclass
class ExportResult:
    path: Path
    model: str
    method: Optional[str]  # the method's name; None for a dense model
    options: dict[str, Any]
    opset: int
    batch: Union[str, int]  # "dynamic" or the fixed batch size
    input_size: tuple[int, int, int]
    tokens: list[int]  # tokens entering each block in the exported graph (checked against the schedule)
    size_bytes: int
    seconds: float
    verification: Optional[Verification] = None
    speed: Any = None  # a ProfileReport (runtime "onnxruntime") when measured
    versions: dict[str, str] = field(default_factory=dict)
    format: str = "onnx"
    budget: Optional[dict[str, Any]] = None  # target_gmacs: the solved setting (BudgetSolution.record)
    int8: Any = None  # an Int8Result (exporter.quantize) when --quantize made the int8 file beside this one

    def record(self) -> dict[str, Any]:
        """What report.json keeps about the export (paths relative to the folder)."""
        return {
            "file": self.path.name, "format": self.format, "opset": self.opset, "batch": self.batch,
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "input_size": list(self.input_size),
            "tokens": self.tokens, "method": self.method, "options": self.options,
            "verification": self.verification.to_dict() if self.verification else None,
            "speed": self.speed.to_dict() if self.speed is not None else None,
            "versions": self.versions, "date": time.strftime("%Y-%m-%d"),
            **({"budget": self.budget} if self.budget else {}),
            **({"int8": self.int8.to_dict()} if self.int8 is not None else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.record(), "path": str(self.path), "model": self.model, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 2)}


@takes_settings(ExportSettings)
def _export(
    model: ModelLike = "demo",
    output: Optional[str | os.PathLike] = None,
    *,
    method: Optional[str] = None,
    on_step: Optional[Callable[[], None]] = None,
    **settings: Any,
) -> ExportResult:
    """Export MODEL (a name, ``hf-hub:`` repo, folder, ``demo`` or module) to ONNX with its pruning inside.

    ``method`` and its options patch a dense model first (as ``profile``); options without ``method`` change a
    compressed model's run-time options (SaiT ``mode="fixed"``...). The batch axis is dynamic unless
    ``batch_size`` is given. Before the file is written: the graph's token counts per block must be the method's
    schedule, and (``check=True``) ONNX Runtime must give PyTorch's logits on ``images`` (default: 8 demo digits
    through the model's preprocessing) within ``RELATIVE_TOLERANCE`` of their scale. ``measure`` also times the
    dense and the compressed files in ONNX Runtime, side by side (``result.speed``). ``target_gmacs`` with
    ``method`` solves the method's headline option for that fraction of the dense GMACs (``result.budget``).

    ``quantize`` (``"int8"`` dynamic, or ``"int8-static"`` calibrated on ``calibrate_data``: see
    ``vitprune.exporter.quantize``) also writes the int8 file beside the fp32 one (``model-int8.onnx``), after its
    token schedule, its agreement with PyTorch and (``eval_data``) its top-1 next to the fp32 file's are checked:
    a drop above ``max_drop`` points refuses both files unless ``force``. ``result.int8`` says what was measured.

    Default output: ``DIR/model.onnx`` for a folder ``DIR``; otherwise ``vitprune-out/<model>[-<method>].onnx``.
    The settings (``ExportSettings``, ``vitprune.settings``), by name; any other keyword is an option of the method:
    """
    given, method_options = split_kwargs(ExportSettings, settings)
    s = ExportSettings(output=output, **given)
    s.validate()
    batch_size, quantize, images, check, calibrate_data = s.batch_size, s.quantize, s.images, s.check, s.calibrate_data
    require_export_deps()

    folder = _folder_of(model)
    name, net, budget = _resolve(model, method, method_options, s.pretrained, s.target_gmacs)
    m_obj = getattr(net, "vitprune_method", None)
    if m_obj is not None:
        m_obj.export_check(net)  # before anything slow
    out = Path(output).expanduser() if output is not None else _default_output(name, folder, method)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"-o {out}: give a file name ending in .onnx.")
    if out.is_dir():
        raise ExportError(f"-o {out} is a folder; give a file name ending in .onnx.")
    input_size = model_input_size(net)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vitprune-export-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        tokens = export_onnx(net, staged, input_size, batch_size=batch_size, opset=s.opset)
        verification = None
        if check:
            x, what = sample_images(net, images)
            verification = verify(OrtModel(staged), net, x, what, batch_size=batch_size)
        int8 = None
        if quantize is not None:
            if calibrate_data is None and quantize == "int8-static" and folder is not None:
                calibrate_data = _folder_data(folder)
            qx, qwhat = (x, what) if check else sample_images(net, images)
            int8 = quantize_export(net, staged, int8_path(staged), quantize, input_size=tuple(input_size),
                                   images=qx, images_what=qwhat, batch_size=batch_size,
                                   calibrate_data=calibrate_data,
                                   calibrate_images=s.calibrate_images or DEFAULT_CALIBRATION_IMAGES,
                                   eval_data=s.eval_data, eval_split=s.eval_split,
                                   max_drop=DEFAULT_MAX_DROP if s.max_drop is None else s.max_drop, force=s.force)
        speed = None
        if s.measure:
            key = "compressed" if m_obj is not None else "dense"
            files = {key: staged}
            if int8 is not None:
                files[f"{key}-int8"] = int8_path(staged)
            speed = profile(net, runtime="onnxruntime", onnx_files=files, repeats=s.repeats,
                            batch_size=s.measure_batch_size, on_step=on_step, quantize=quantize)
            speed.model = name
        import onnx  # optional extra

        graph_opset = next(o.version for o in onnx.load(str(staged), load_external_data=False).opset_import
                           if o.domain in ("", "ai.onnx"))
        result = ExportResult(
            path=out, model=name, method=m_obj.name if m_obj else None,
            options=m_obj.options_dict() if m_obj else {}, opset=int(graph_opset),
            batch=batch_size if batch_size else "dynamic", input_size=tuple(input_size), tokens=tokens,
            size_bytes=staged.stat().st_size, seconds=time.perf_counter() - t0, verification=verification,
            speed=speed, versions=export_versions(), budget=budget, int8=int8,
        )
        made = list(Path(tmp).iterdir())  # the file (and its external data, for models over 2 GB)
        if folder is not None and out.parent.resolve() == folder.resolve() and _saved_by_vitprune(folder):
            record_in_folder(folder, result, made)
        else:
            for f in made:
                os.replace(f, out.parent / f.name)
    return result



@functools.wraps(_export)
def export(*args: Any, **kwargs: Any) -> ExportResult:
    # a full disk (or a file size limit) while writing: one line; the staged file is gone with its temporary
    # folder and nothing was moved into place
    with when_full(lambda why: ExportError(f"cannot write the ONNX file: {why}; nothing was replaced (a model.onnx "
                                           "there before is as it was).")):
        return _export(*args, **kwargs)


def _saved_by_vitprune(folder: Path) -> bool:
    try:
        return bool(read_folder(folder)[0])
    except Exception:  # noqa: BLE001 - an unreadable config.json is not a vitprune folder
        return False


def record_in_folder(folder: Path, result: ExportResult, made: Sequence[Path]) -> None:
    """Put the export into a saved vitprune folder with the rest of the model: ``model.onnx`` (and its external
    data), report.json's ``onnx`` section and the regenerated card, switched in as one new version of the folder
    (``vitprune.hub.save.update_files``: under the folder's lock, never half-written)."""
    _, report, _ = read_folder(folder)
    files: dict[str, Any] = {f.name: f for f in made}
    if report is not None:
        report["onnx"] = result.record()
        files["report.json"] = json.dumps(report, indent=2, default=str, allow_nan=False) + "\n"
    # an int8 file of an earlier export was made from the model.onnx this one replaces: it leaves with it
    update_files(folder, files, card=True, drop=[int8_path(result.path).name])


def _folder_data(folder: Path) -> Optional[str]:
    """The data a saved folder was trained on (report.json's ``data.data``), for static calibration."""
    try:
        report = read_folder(folder)[1] or {}
    except Exception:  # noqa: BLE001 - an unreadable report: no data spec
        return None
    spec = (report.get("data") or {}).get("data")
    return str(spec) if spec else None


def _folder_of(model: ModelLike) -> Optional[Path]:
    if isinstance(model, nn.Module):
        return None
    spec = str(model)
    if spec.startswith("local-dir:"):
        spec = spec.split(":", 1)[1]
    elif spec == "demo" or spec.startswith(("hf-hub:", "hf_hub:")):
        return None
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def _resolve(model: ModelLike, method: Optional[str], options: dict[str, Any], pretrained: bool,
             target_gmacs: Optional[float]) -> tuple[str, nn.Module, Optional[dict[str, Any]]]:
    """(name, the model to export, the budget's record): compressed with run-time options, dense + method (its
    headline option solved for ``target_gmacs`` when given), or dense."""
    spec = model if isinstance(model, nn.Module) else str(model)
    name, dense, compressed, solution = resolve_budget(spec, method, options, pretrained=pretrained,
                                                       target_gmacs=target_gmacs)
    net = compressed if compressed is not None else dense
    if any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).cpu()  # the exporter traces on CPU; the caller's model stays where it is
    budget = None if solution is None else solution.record()
    return name, net.float().eval(), budget


def _default_output(name: str, folder: Optional[Path], method: Optional[str]) -> Path:
    if folder is not None and method is None:
        return folder / FILE_NAME
    return Path(DEFAULT_DIR) / (model_slug(name) + (f"-{method}" if method else "") + ".onnx")


__all__ = ["ExportResult", "FILE_NAME", "export", "record_in_folder"]
