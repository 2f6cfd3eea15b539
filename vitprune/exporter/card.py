"""The model card's ONNX section: how to run ``model.onnx`` in ONNX Runtime (five lines), what the export was
checked against, and its measured speed when it was measured (``report.json``'s ``onnx`` section)."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from .graph import INPUT_NAME

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def onnx_card_lines(record: Optional[Mapping[str, Any]], config: Mapping[str, Any],
                    repo_id: Optional[str] = None) -> list[str]:
    """Markdown lines for a folder with ``model.onnx`` (``record``: report.json's ``onnx`` section, if any)."""
    record = dict(record or {})
    cfg = config.get("pretrained_cfg") or {}
    size = (record.get("input_size") or cfg.get("input_size") or [3, 224, 224])[1:]
    name = record.get("file") or "model.onnx"
    where = f'hf_hub_download({json.dumps(repo_id)}, "{name}")' if repo_id else json.dumps(name)
    code = ["import numpy as np, onnxruntime as ort, PIL.Image"]
    if repo_id:
        code.append("from huggingface_hub import hf_hub_download")
    code += [f"session = ort.InferenceSession({where})",
             f'x = (np.asarray(PIL.Image.open("image.jpg").convert("RGB").resize(({size[1]}, {size[0]})), '
             f"np.float32) / 255 - {_floats(cfg.get('mean', IMAGENET_MEAN))}) / {_floats(cfg.get('std', IMAGENET_STD))}",
             f'logits = session.run(None, {{"{record.get("input_name", INPUT_NAME)}": '
             "x.transpose(2, 0, 1)[None].astype(np.float32)})[0]"]
    batch = record.get("batch", "dynamic")
    lines = ["", "## Run it with ONNX Runtime", "",
             f"`{name}` holds the pruning inside the graph (exported by `vitprune export`"
             + (f", opset {record['opset']}" if record.get("opset") else "")
             + (", any batch size" if batch == "dynamic" else f", batch {batch}") + "); no PyTorch needed:",
             "", "```python", *code, "```", "",
             "(A plain resize; the model's own preprocessing is timm's evaluation transform: resize, center crop, "
             "normalise.)"]
    check = record.get("verification")
    if check:
        sizes = " and ".join(str(b) for b in check.get("batch_sizes", []))
        lines += ["", f"Checked at export against PyTorch on {check.get('images')} (batch {sizes}): max |Δlogit| "
                  f"{check.get('max_abs_diff', 0):.1e}, argmax agrees {check.get('argmax_agree')}/"
                  f"{check.get('compared')}."]
    lines += _speed_lines(record.get("speed"))
    return lines


def _speed_lines(speed: Optional[Mapping[str, Any]]) -> list[str]:
    from ..report.card import speed_rows

    if not speed or not (speed.get("dense") or {}).get("throughput"):
        return []
    d, c = speed["dense"], speed.get("compressed") or {}
    rows, notes = speed_rows(d, c, speed.get("speed"), speed.get("batch_size"))
    table = ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return ["", f"Measured in {speed.get('runtime_info') or 'ONNX Runtime'} on {speed.get('device_name')}, dense and "
            "compressed ONNX files timed side by side (interleaved, medians):", "",
            "| | dense | compressed | ratio |", "|---|---:|---:|---:|", *table,
            *(["", " ".join(notes)] if notes else [])]


__all__ = ["onnx_card_lines"]
