"""``vitprune.sweep`` (this module is ``vitprune.sweeps``): one method at several settings of its headline option (keep rate, ToMe's r, DGE's budget,
SaiT's threshold...): GMACs and parameters counted as ``vitprune profile`` counts them, throughput and latency
timed with the same benchmark, the dense model and every setting in one run interleaved in each repeat (so the
ratios are fair even when the machine's load changes), and, with data, top-1 as ``vitprune eval`` computes it;
written as ``sweep.json`` and ``pareto.png`` (accuracy vs throughput with the dense model as the reference point;
without data, GMACs vs throughput).

How each point is made depends on MODEL and the method, never on the method's name:

* **run-time** - MODEL is a model compressed (and trained) with the method and the swept option is one of the
  method's ``runtime_options`` (EViT's and DynamicViT's keep rate, SaiT's keep rate / threshold / mode): the one
  checkpoint is evaluated at every value (``set_runtime``), no training;
* **off the shelf** - MODEL is dense and no ``epochs`` are given: the method is applied at every value. Fine for
  methods without learned modules (ToMe, EViT; accuracy is then the off-the-shelf accuracy, which the notes say
  for methods meant to be fine-tuned). A method whose new modules must be trained (predictors, routers) is
  refused when accuracy is asked for; without data its GMACs and speed are still measured;
* **trained** - MODEL is dense and ``epochs`` is given: every point is fine-tuned with ``vitprune.compress`` into
  ``OUT/points/<option>-<value>`` and its report is used.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import MethodOptionError

SWEEP_JSON = "sweep.json"
PARETO_PNG = "pareto.png"


@dataclass
class SweepPoint:
    value: Any
    options: dict[str, Any]
    gmacs: float
    params: int
    throughput: Optional[float] = None
    latency_ms: Optional[float] = None
    speedup: Optional[float] = None  # throughput / dense throughput measured interleaved with it
    gmacs_ratio: Optional[float] = None
    tokens: Optional[list[int]] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    loss: Optional[float] = None
    images: Optional[int] = None
    folder: Optional[str] = None  # trained points: where vitprune.compress saved the model


@dataclass
class SweepResult:
    model: str
    method: str
    option: str
    values: list[Any]
    mode: str  # "runtime" | "off-the-shelf" | "trained"
    data: Optional[str]
    device: str
    device_name: str
    dtype: str
    batch_size: int
    input_size: list[int]
    dense: dict[str, Any]
    points: list[SweepPoint]
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    out: Optional[str] = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": f"images/s at batch {self.batch_size}",
                      "latency_ms": "ms per image at batch 1 (median)", "top1": "percent",
                      "speedup": "throughput / dense throughput, measured interleaved"}
        return d


def headline_option(method_cls: Any) -> str:
    """The option a sweep varies unless told: the method's headline option with a sweep flag (its options'
    metadata, see ``vitprune.methods.base.sweep_option``)."""
    from .methods.base import sweep_option

    return sweep_option(method_cls)


def _emit(progress: Optional[Callable[[dict[str, Any]], None]], **event: Any) -> None:
    if progress is not None:
        progress(event)


def _check_values(values: Sequence[Any], option: str) -> list[Any]:
    vals = list(values)
    if not vals:
        raise MethodOptionError("give at least one value to sweep (e.g. --keep-rates 0.5,0.7,0.9).")
    if len(set(map(repr, vals))) != len(vals):
        raise MethodOptionError(f"the {option} values repeat: {', '.join(map(str, vals))}.")
    return vals


def sweep(
    model: Any = "demo",
    method: Optional[str] = None,
    values: Sequence[Any] = (0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    option: Optional[str] = None,
    data: Optional[str] = None,
    epochs: Optional[float] = None,
    out: Optional[str] = "vitprune-sweep",
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    batch_size: Optional[int] = None,
    repeats: Optional[int] = None,
    speed: bool = True,
    latency: bool = True,
    plot: bool = True,
    pretrained: bool = True,
    val_split: Optional[float] = None,
    eval_batch_size: int = 64,
    workers: int = 0,
    compress_options: Optional[dict[str, Any]] = None,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    **method_options: Any,
) -> SweepResult:
    """Measure ``method`` on ``model`` at each of ``values`` of ``option`` (default: the method's headline option).

    ``data`` adds top-1 accuracy (the val split); ``epochs`` fine-tunes every point with ``vitprune.compress``.
    ``method_options`` fix the method's other options. Writes ``sweep.json`` and ``pareto.png`` into ``out``
    (``out=None``: nothing written).
    """
    from .api import versions as lib_versions
    from .hub import load_model
    from .methods import apply_method, dense_copy, get_method, get_method_class
    from .measure.flops import count_params

    if plot and out is not None:
        from .report.plots import require_matplotlib

        require_matplotlib()  # fail before any work
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
        raise MethodOptionError(f"--epochs must be > 0, got {epochs!r}.")
    name = model if isinstance(model, str) else type(model).__name__
    loaded = load_model(model, pretrained=pretrained) if isinstance(model, str) else model
    existing = get_method(loaded)
    notes: list[str] = []
    if not pretrained and data is not None:
        notes.append("random weights (--no-weights): the accuracies say nothing about the method")

    if existing is not None:
        if method is not None and get_method_class(method).name != existing.name:
            raise MethodOptionError(f"{name} is compressed with {existing.name}; sweep its own run-time options, or "
                                    f"give its dense base model to sweep {method}.")
        cls = type(existing)
        option = option or headline_option(cls)
        if epochs is not None:
            raise MethodOptionError(f"{name} is already compressed; --epochs fine-tunes from a dense model (give its "
                                    "dense base model).")
        if option not in cls.runtime_options:
            allowed = ", ".join(cls.runtime_options) or "none"
            raise MethodOptionError(
                f"{option} of {cls.name} cannot change without retraining (run-time options: {allowed}); sweep the "
                f"dense base model with --epochs N to train each point.")
        mode = "runtime"
        dense = dense_copy(loaded)
        notes.append(f"one trained {cls.name} checkpoint evaluated at each {option} (run-time option, no "
                     "retraining)")
    else:
        if method is None:
            raise MethodOptionError("sweep needs --method (see `vitprune methods`), or a compressed model folder.")
        cls = get_method_class(method)
        option = option or headline_option(cls)
        dense = loaded
        mode = "trained" if epochs is not None else "off-the-shelf"
        if mode == "trained" and data is None:
            raise MethodOptionError("--epochs fine-tunes each point with `vitprune compress`, which needs --data "
                                    "(e.g. --data demo).")
    if option in method_options:
        raise MethodOptionError(f"{option} is the swept option; give its values, not a fixed --opt {option}=....")
    vals = _check_values(values, option)
    base_options = existing.options_dict() if existing is not None else dict(method_options)
    for v in vals:  # every value checked before any work (one clear line for a bad one)
        cls.Options.from_dict(cls.name, {**base_options, **method_options, option: v})
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    splits = None
    if data is not None and mode != "trained":
        from .data import load_data

        splits = load_data(data, val_split=val_split)

    def evaluate_on(m: Any) -> Any:
        from .train.evaluate import evaluate

        return evaluate(m, splits, split="val", batch_size=eval_batch_size, device=device,
                        dtype=dtype, workers=workers)

    # 1. the models: one per value (evaluated as they are made), and the dense reference
    total = len(vals)
    models: list[Any] = []
    evals: list[Optional[dict[str, Any]]] = []
    folders: list[Optional[str]] = []
    dense_acc: Optional[dict[str, Any]] = None
    if mode == "trained":
        from .compression import compress

        for i, v in enumerate(vals):
            opts = {**method_options, option: v}
            folder = (out_dir or Path("vitprune-sweep")) / "points" / f"{option}-{v}"
            _emit(progress, event="point", index=i, total=total, value=v, message=f"training {cls.name} {option}={v}")
            res = compress(name if isinstance(model, str) else model, cls.name, data, str(folder), epochs=epochs,
                           device=device, val_split=val_split, speed=False, overwrite=True,
                           **(compress_options or {}), **opts)
            if not res.finished or not res.report or res.model is None:
                raise MethodOptionError(f"training {option}={v} stopped after {res.steps}/{res.total_steps} steps "
                                        f"(checkpoint in {folder}); a sweep needs finished runs.")
            c, d = res.report["compressed"], res.report["dense"]
            models.append(res.model.eval())
            evals.append({k: c.get(k) for k in ("top1", "top5", "loss", "images")})
            folders.append(str(folder))
            dense_acc = dense_acc or {k: d.get(k) for k in ("top1", "top5", "loss")}
        dense = dense_copy(models[0])  # the architecture the points were trained from (timing and GMACs)
        notes.append(f"each point fine-tuned for {epochs:g} epochs with `vitprune compress` (models in "
                     f"{(out_dir or Path('vitprune-sweep')) / 'points'}); dense top-1 is the teacher's")
    else:
        dense_params = count_params(dense)
        if data is not None:
            _emit(progress, event="dense", message=f"evaluating the dense model on {data}")
            ev = evaluate_on(dense)
            dense_acc = {"top1": ev.top1, "top5": ev.top5, "loss": ev.loss}
        for i, v in enumerate(vals):
            opts = {**method_options, option: v}
            _emit(progress, event="point", index=i, total=total, value=v,
                  message=f"{cls.name} {option}={v}" + (": evaluating" if data else ""))
            if mode == "runtime":
                m = copy.deepcopy(loaded)
                get_method(m).set_runtime(**opts)
            else:
                m = apply_method(copy.deepcopy(dense), cls.name, **opts)
                added = count_params(m) - dense_params
                if i == 0 and added > 0 and cls.needs_training:
                    if data is not None:
                        rt = ", ".join(cls.runtime_options) or "none"
                        raise MethodOptionError(
                            f"{cls.name} adds {added:,} parameters that must be trained: give --epochs N to "
                            f"fine-tune each point with `vitprune compress`, or sweep a trained {cls.name} model "
                            f"folder over its run-time options ({rt}).")
                    notes.append(f"{cls.name}'s new modules are untrained here: GMACs and speed only (no --data)")
                elif i == 0 and cls.needs_training and data is not None:
                    notes.append(f"{cls.name} is meant to be fine-tuned (`vitprune compress`); these accuracies are "
                                 "off the shelf, without fine-tuning")
            models.append(m.eval())
            ev = evaluate_on(m) if data is not None else None
            evals.append({"top1": ev.top1, "top5": ev.top5, "loss": ev.loss, "images": ev.images} if ev else None)
            folders.append(None)
        if mode == "off-the-shelf" and not notes:
            notes.append(f"{cls.name} applied off the shelf at each {option} (no training)")

    # 2. costs, and speed measured for all models together (interleaved in every repeat, like `vitprune profile`)
    _emit(progress, event="measure", message="counting GMACs" + (" and timing all settings, interleaved" if speed
                                                                  else ""))
    stats, timings, meta = _measure({"dense": dense, **{f"p{i}": m for i, m in enumerate(models)}}, device=device,
                                    dtype=dtype, batch_size=batch_size, repeats=repeats, speed=speed,
                                    latency=latency and speed)
    d = stats["dense"]
    dense_row = {"gmacs": d["gmacs"], "params": d["params"], "tokens": d["tokens"],
                 "throughput": timings["dense"].throughput if timings else None,
                 "latency_ms": timings["dense"].latency_ms if timings else None,
                 **(dense_acc or {"top1": None, "top5": None, "loss": None})}
    points: list[SweepPoint] = []
    for i, (v, m) in enumerate(zip(vals, models)):
        st, t = stats[f"p{i}"], timings.get(f"p{i}") if timings else None
        thr = t.throughput if t else None
        ev = evals[i] or {}
        points.append(SweepPoint(
            value=v, options=get_method(m).options_dict(), gmacs=st["gmacs"], params=st["params"],
            throughput=thr, latency_ms=t.latency_ms if t else None,
            speedup=thr / dense_row["throughput"] if thr and dense_row["throughput"] else None,
            gmacs_ratio=st["gmacs"] / d["gmacs"] if d["gmacs"] else None, tokens=st["tokens"],
            top1=ev.get("top1"), top5=ev.get("top5"), loss=ev.get("loss"), images=ev.get("images"),
            folder=folders[i]))
        _emit(progress, event="point_done", index=i, total=total, point=points[-1])
    dev, dev_name, dt, bs, input_size = meta["device"], meta["device_name"], meta["dtype"], meta["batch_size"], \
        meta["input_size"]
    ver = lib_versions()
    if timings:
        notes.append(f"speed: the dense model and all {total} settings timed in one run, interleaved in each of "
                     f"{meta['repeats']} repeats (median)")
    if len({round(p.gmacs, 9) for p in points}) == 1 and len(points) > 1:
        notes.append(f"every {option} gives the same GMACs: with these options {option} may not be in effect")

    result = SweepResult(
        model=name, method=cls.name, option=option, values=vals, mode=mode, data=data, device=dev,
        device_name=dev_name, dtype=dt, batch_size=bs, input_size=list(input_size), dense=dense_row, points=points,
        notes=notes, versions=ver, out=str(out_dir) if out_dir is not None else None)
    if out_dir is not None:
        result.files.append(str(out_dir / SWEEP_JSON))
        if plot:
            from .report.plots import pareto_plot

            pareto_plot(result, out_dir / PARETO_PNG)
            result.files.append(str(out_dir / PARETO_PNG))
        (out_dir / SWEEP_JSON).write_text(json.dumps(result.to_dict(), indent=2, default=str, allow_nan=False) + "\n")
    return result


def _measure(models: dict[str, Any], *, device: Optional[str], dtype: Optional[str], batch_size: Optional[int],
             repeats: Optional[int], speed: bool, latency: bool):
    """GMACs, parameters and token schedule of every model, and their speed timed together (one interleaved run)."""
    from .measure.flops import count_macs, count_params
    from .measure.speed import SpeedSettings, benchmark, device_name, resolve_device, resolve_dtype

    if batch_size is not None and batch_size < 1:
        raise MethodOptionError(f"batch size must be a positive number, got {batch_size}.")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    first = next(iter(models.values()))
    input_size = tuple(first.pretrained_cfg.get("input_size", (3, 224, 224)))
    stats = {}
    for key, m in models.items():
        mc = count_macs(m, input_size)
        method = getattr(m, "vitprune_method", None)
        tokens = method.token_schedule(m) if method is not None else \
            [m.patch_embed.num_patches + m.num_prefix_tokens] * len(m.blocks)
        stats[key] = {"gmacs": mc.gmacs, "params": count_params(m), "tokens": tokens}
    settings = SpeedSettings.default(dev, batch_size)
    if repeats is not None:
        settings.repeats = repeats
    timings = None
    if speed or latency:
        timings = benchmark({k: m.to(dev) for k, m in models.items()}, input_size, device=dev, dtype=dt,
                            settings=settings, latency=latency, throughput=speed)
    meta = {"device": dev.type, "device_name": device_name(dev), "dtype": dt, "batch_size": settings.batch_size,
            "input_size": list(input_size), "repeats": settings.repeats}
    return stats, timings, meta


__all__ = ["sweep", "SweepResult", "SweepPoint", "headline_option"]
