"""The model card's ONNX section: how to run ``model.onnx`` in ONNX Runtime (five lines), what the export was
checked against, and its measured speed when it was measured (``report.json``'s ``onnx`` section)."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from ..measure.ort import INPUT_NAME
from .speedrows import speed_rows

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

    def snippet(file: str) -> list[str]:
        where = f'hf_hub_download({json.dumps(repo_id)}, "{file}")' if repo_id else json.dumps(file)
        code = ["import numpy as np, onnxruntime as ort, PIL.Image"]
        if repo_id:
            code.append("from huggingface_hub import hf_hub_download")
        return code + [
            f"session = ort.InferenceSession({where})",
            f'x = (np.asarray(PIL.Image.open("image.jpg").convert("RGB").resize(({size[1]}, {size[0]})), '
            f"np.float32) / 255 - {_floats(cfg.get('mean', IMAGENET_MEAN))}) / {_floats(cfg.get('std', IMAGENET_STD))}",
            f'logits = session.run(None, {{"{record.get("input_name", INPUT_NAME)}": '
            "x.transpose(2, 0, 1)[None].astype(np.float32)})[0]"]

    code = snippet(name)
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
    lines += _int8_lines(record.get("int8"), snippet)
    return lines


def _int8_lines(int8: Optional[Mapping[str, Any]], snippet: Any) -> list[str]:
    """The int8 file (``report.json``'s ``onnx.int8``): how it was made, what it was checked on, five lines to
    run it."""
    if not int8:
        return []
    name = int8.get("file") or "model-int8.onnx"
    a = int8.get("agreement") or {}
    lines = ["", "### int8", "",
             f"`{name}` is the same graph with its matrix products in int8 ({int8.get('label', int8.get('mode'))}); "
             f"the token schedule was checked in the int8 graph too. Against PyTorch on {a.get('images')}: argmax "
             f"agrees {a.get('argmax_agree')}/{a.get('compared')}, max |Δlogit| {a.get('max_abs_diff', 0):.2g}."]
    e = int8.get("eval")
    if e:
        lines += ["", f"| {e['data']} {e['split']} | fp32 file | int8 file |", "|---|---:|---:|",
                  f"| top-1 (%) | {e['fp32']['top1']:.2f} | {e['int8']['top1']:.2f} |"]
    if int8.get("forced"):
        lines += ["", f"**Written with `--force`:** it loses {int8['drop']:.2f} points ({int8.get('drop_on')}), more "
                  f"than the {int8.get('max_drop'):g}-point limit."]
    lines += ["", "Run it as the fp32 file, same input:", "", "```python", *snippet(name), "```"]
    return lines


def _speed_lines(speed: Optional[Mapping[str, Any]]) -> list[str]:
    if not speed or not (speed.get("dense") or {}).get("throughput"):
        return []
    d, c = speed["dense"], speed.get("compressed") or {}

    def cell(st: Mapping[str, Any], key: str, digits: int) -> str:
        return "-" if st.get(key) is None else f"{st[key]:,.{digits}f}"

    if speed.get("quantize"):
        return _int8_speed_lines(speed, cell)
    rows, notes = speed_rows(d, c, speed.get("speed"), speed.get("batch_size"))
    table = ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return ["", f"Measured in {speed.get('runtime_info') or 'ONNX Runtime'} on {speed.get('device_name')}, dense and "
            "compressed ONNX files timed side by side (interleaved, medians):", "",
            "| | dense | compressed | ratio |", "|---|---:|---:|---:|", *table,
            *(["", " ".join(notes)] if notes else [])]


def _int8_speed_lines(speed: Mapping[str, Any], cell: Any) -> list[str]:
    d = speed["dense"]
    rows = []
    for label, key in (("dense fp32", "dense"), ("dense int8", "dense_int8"), ("compressed fp32", "compressed"),
                       ("compressed int8", "compressed_int8")):
        st = speed.get(key)
        if not st:
            continue
        thr = f"{st['throughput'] / d['throughput']:.2f}×" if st.get("throughput") and d.get("throughput") else ""
        lat = (f"{d['latency_ms'] / st['latency_ms']:.2f}×" if st.get("latency_ms") and d.get("latency_ms")
               else "")
        rows.append(f"| {label} | {cell(st, 'throughput', 1)} | {thr} | {cell(st, 'latency_ms', 2)} | {lat} |")
    return ["", f"Measured in {speed.get('runtime_info') or 'ONNX Runtime'} on {speed.get('device_name')} "
            f"({speed.get('quantize_info')}), the four files timed side by side (interleaved, medians; ratios to "
            "the dense fp32 file):", "",
            f"| | img/s (batch {speed.get('batch_size')}) | × dense fp32 | latency (ms, batch 1) | × dense fp32 |",
            "|---|---:|---:|---:|---:|", *rows]


__all__ = ["onnx_card_lines"]
