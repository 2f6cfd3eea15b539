"""``vitprune profile FOLDER --update-card``: a saved model's speed measured again, written into its report.json and
model card.

A model saved on a busy machine keeps the speed it was measured at; re-measuring it later (on idle cores, on the
machine it will run on) replaces the speed section of ``report.json`` — each side's throughput, latency and CPU
time, the paired ratios and the busy verdict, the device and the settings — and re-renders the card from it, in one
atomic update of the folder (``hub.save.update_files``: under its lock, the old set or the new one, never a mix).
Accuracy, GMACs, training and the rest of the record are kept as they were. The dense model timed is the saved
model's own backbone without the method: the same architecture as the teacher it was distilled from, so the same
cost per image.
"""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any, Mapping

from ..errors import OutputFolderError
from ..files import inside, read_text
from ..modelfolder import CONFIG_NAME, read_config
from ..hub.save import update_files

#: per-model keys a re-measurement replaces
SPEED_KEYS = ("throughput", "latency_ms", "cpu_ms", "cpu_latency_ms")


def updated_report(report: Mapping[str, Any], profile: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` (a saved report.json) with its speed replaced by ``profile`` (``ProfileReport.to_dict()`` of the
    same folder): pure, so the merge is testable without timing anything."""
    out = json.loads(json.dumps(report))  # a deep copy of plain JSON
    for side in ("dense", "compressed"):
        src = profile.get(side) or {}
        out.setdefault(side, {})
        for key in SPEED_KEYS:
            out[side][key] = src.get(key)
    out["speedup"], out["latency_ratio"] = profile.get("speedup"), profile.get("latency_ratio")
    measure = dict(out.get("measure") or {})
    measure.update({"device": profile.get("device"), "device_name": profile.get("device_name"),
                    "dtype": profile.get("dtype"), "batch_size": profile.get("batch_size"), "latency_batch_size": 1,
                    "input_size": list(profile.get("input_size") or measure.get("input_size") or []),
                    "speed": profile.get("speed"), "remeasured": date.today().isoformat(),
                    "remeasured_with": (profile.get("versions") or {})})
    out["measure"] = measure
    return out


def update_speed(folder: str | Path, profile: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``profile``'s speed into ``folder``'s report.json and config.json metrics and re-render its card, as
    one new version of the folder; returns the new report."""
    folder = Path(folder)
    rep_file = folder / "report.json"
    if not rep_file.is_file():
        raise OutputFolderError(f"{folder.name} has no report.json (it is written by `vitprune compress`); there is "
                                "no card speed table to update.")
    try:
        report = json.loads(read_text(inside(folder, "report.json")))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise OutputFolderError(f"{folder.name}/report.json is not valid JSON; it cannot be updated.") from None
    new = updated_report(report, profile)
    config = read_config(folder)
    metrics = ((config.get("vitprune") or {}).get("metrics"))
    files: dict[str, str] = {"report.json": json.dumps(new, indent=2) + "\n"}
    if isinstance(metrics, dict):
        for key, side, name in (("throughput", "compressed", "throughput"), ("dense_throughput", "dense",
                                                                             "throughput")):
            if key in metrics:
                metrics[key] = new[side].get(name)
        if "speedup" in metrics:
            metrics["speedup"] = new["speedup"]
        files[CONFIG_NAME] = json.dumps(config, indent=2) + "\n"
    update_files(folder, files, card=True)
    return new


__all__ = ["SPEED_KEYS", "update_speed", "updated_report"]
