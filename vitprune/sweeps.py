"""``vitprune.sweep`` (this module is ``vitprune.sweeps``): one method at several settings of its headline option
(keep rate, ToMe's r, DGE's budget, SaiT's threshold...): GMACs, parameters, throughput and latency measured as
``vitprune profile`` measures them (``measure.models.measure_models``: the dense model and every setting in one run,
interleaved in each repeat, so the ratios are fair even when the machine's load changes), and, with data, top-1
as ``vitprune eval`` computes it; written as ``sweep.json`` and ``pareto.png`` (accuracy vs throughput with the
dense model as the reference point; without data, GMACs vs throughput).

How each point is made depends on MODEL and the method, never on the method's name:

* **run-time** - MODEL is a model compressed (and trained) with the method and the swept option is one of the
  method's ``runtime_options`` (EViT's and DynamicViT's keep rate, SaiT's keep rate / threshold / mode): the one
  checkpoint is evaluated at every value (``set_runtime``, through ``api.resolve_models``), no training;
* **off the shelf** - MODEL is dense and no ``epochs`` are given: the method is applied at every value. Fine for
  methods without learned modules (ToMe, EViT; accuracy is then the off-the-shelf accuracy, which the notes say
  for methods meant to be fine-tuned). A method whose new modules must be trained (predictors, routers) is
  refused when accuracy is asked for; without data its GMACs and speed are still measured;
* **trained** - MODEL is dense and ``epochs`` is given: every point is fine-tuned with ``vitprune.compress`` into
  ``OUT/points/<option>-<value>`` and its report is used.

The stages, each a function of this module: ``plan`` (what is swept, how) -> ``make_points`` (the models, with
their accuracy) -> ``measure_points`` (one measurement of all of them) -> ``write`` (sweep.json, pareto.png).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from torch import nn

from .errors import MethodOptionError, UsageError
from .settings import SpeedSettings, SweepConfig, split_kwargs, takes_settings
from .data import load_data
from .files import write_atomic
from .hub import load_model
from .measure.flops import count_params
from .measure.models import measure_models
from .measure.speed import BUSY_TEXT, paired_median
from .methods import apply_method, dense_copy, get_method, get_method_class
from .methods.base import sweep_option
from .report.plots import pareto_plot, require_matplotlib
from .train.evaluate import evaluate
from .api import resolve_models
from .budget import check_no_conflict, solve_for_gmacs
from .compression import compress

SWEEP_JSON = "sweep.json"
PARETO_PNG = "pareto.png"

Progress = Optional[Callable[[dict[str, Any]], None]]


@dataclass
class SweepPoint:
    value: Any
    options: dict[str, Any]
    gmacs: float
    params: int
    throughput: Optional[float] = None
    latency_ms: Optional[float] = None
    speedup: Optional[float] = None  # throughput / dense throughput: the median of the paired per-round ratios
    latency_ratio: Optional[float] = None  # dense / this batch-1 latency (> 1: faster), paired as speedup
    speed: Optional[dict[str, Any]] = None  # the paired comparison with its spread and verdict (as profile's)
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
    budgets: list[dict[str, Any]] = field(default_factory=list)  # target_gmacs: what each point was solved for

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["units"] = {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": f"images/s at batch {self.batch_size}",
                      "latency_ms": "ms per image at batch 1 (median)", "top1": "percent",
                      "speedup": "throughput / dense throughput, measured interleaved"}
        return d


@dataclass
class SweepPlan:
    """What is swept and how: the model, the method class, the option and its checked values, the mode."""

    loaded: nn.Module
    dense: nn.Module
    cls: Any
    option: str
    values: list[Any]
    mode: str
    notes: list[str] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)  # target_gmacs: each solved setting


@dataclass
class Points:
    """The models of a sweep (one per value), their accuracy, where trained ones were saved, and the dense model."""

    dense: nn.Module
    models: list[nn.Module]
    evals: list[Optional[dict[str, Any]]]
    folders: list[Optional[str]]
    dense_acc: Optional[dict[str, Any]] = None


def headline_option(method_cls: Any) -> str:
    """The option a sweep varies unless told: the method's headline option with a sweep flag (its options'
    metadata, see ``vitprune.methods.base.sweep_option``)."""
    return sweep_option(method_cls)


def _emit(progress: Progress, **event: Any) -> None:
    if progress is not None:
        progress(event)


@takes_settings(SpeedSettings)
def sweep(
    model: Any = "demo",
    method: Optional[str] = None,
    values: Sequence[Any] = (0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    option: Optional[str] = None,
    data: Optional[str] = None,
    epochs: Optional[float] = None,
    out: Optional[str] = "vitprune-sweep",
    timing: Optional[SpeedSettings] = None,
    plot: bool = True,
    pretrained: bool = True,
    val_split: Optional[float] = None,
    eval_batch_size: int = 64,
    workers: int = 0,
    compress_options: Optional[dict[str, Any]] = None,
    progress: Progress = None,
    target_gmacs: Optional[Sequence[float]] = None,
    **options: Any,
) -> SweepResult:
    """Measure ``method`` on ``model`` at each of ``values`` of ``option`` (default: the method's headline option).

    ``data`` adds top-1 accuracy (the val split); ``epochs`` fine-tunes every point with ``vitprune.compress``.
    ``method_options`` fix the method's other options. Writes ``sweep.json`` and ``pareto.png`` into ``out``
    (``out=None``: nothing written). ``target_gmacs`` (e.g. ``[0.5, 0.6, 0.7]``, fractions of the dense GMACs)
    replaces ``values``: each point's headline option is solved for that cost (:mod:`vitprune.budget`), so methods
    are compared at equal GMACs. How the points are timed is one ``SpeedSettings`` (``timing``), or its fields as
    keywords over it (``device``, ``batch_size``, ``repeats``, ``speed``, ``latency``...); any other keyword is an
    option of the method.
    """
    given, method_options = split_kwargs(SpeedSettings, options)
    cfg = SweepConfig(model, method, values, option, data, epochs, out,
                      dataclasses.replace(timing or SpeedSettings(), **given), plot, pretrained, val_split,
                      eval_batch_size, workers, compress_options, method_options, target_gmacs)
    return run_sweep(cfg, progress)



def run_sweep(cfg: SweepConfig, progress: Progress = None) -> SweepResult:
    """The stages of a sweep (see the module doc), in order."""
    check_config(cfg)
    plan = plan_sweep(cfg)
    if cfg.out_dir is not None:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
    points = make_points(cfg, plan, progress)
    result = measure_points(cfg, plan, points, progress)
    if cfg.out_dir is not None:
        write(result, cfg.out_dir, plot=cfg.plot)
    return result


def check_config(cfg: SweepConfig) -> None:
    """Before any work: matplotlib for the plot, a positive number of epochs."""
    if cfg.plot and cfg.out is not None:
        require_matplotlib()
    e = cfg.epochs
    if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0):
        raise MethodOptionError(f"`epochs` must be > 0, got {e!r}.")


# ---------------------------------------------------------------------------------------------- plan


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Load MODEL and decide the method, the swept option and the mode; every value is checked before any work
    (one clear line for a bad one)."""
    loaded = load_model(cfg.model, pretrained=cfg.pretrained) if isinstance(cfg.model, str) else cfg.model
    existing = get_method(loaded)
    plan = _runtime_plan(cfg, loaded, existing) if existing is not None else _dense_plan(cfg, loaded)
    if not cfg.pretrained and cfg.data is not None:
        plan.notes.insert(0, "random weights (--no-weights): the accuracies say nothing about the method")
    if cfg.target_gmacs is not None:
        _solve_values(cfg, plan)
    if plan.option in cfg.method_options:
        raise MethodOptionError(f"{plan.option} is the swept option; give its values, not a fixed value of it.")
    plan.values = _check_values(cfg.values, plan.option)
    base = existing.options_dict() if existing is not None else {}
    for v in plan.values:
        plan.cls.Options.from_dict(plan.cls.name, {**base, **cfg.method_options, plan.option: v})
    return plan


def _solve_values(cfg: SweepConfig, plan: SweepPlan) -> None:
    """``target_gmacs``: the values of the method's headline option solved for each fraction of the dense GMACs
    (what each option needs to apply, e.g. SaiT's fixed mode, joins the fixed options)."""
    if plan.mode == "runtime":
        raise MethodOptionError("`target_gmacs` solves a method's option on a dense model; give the dense base model "
                                "and `method`.")
    if cfg.option is not None:
        raise UsageError("`target_gmacs` sets the values of the method's headline option; it does not go with "
                         "`option`.")
    check_no_conflict(plan.cls.name, cfg.method_options)
    ratios = _check_values(cfg.target_gmacs, "target_gmacs")
    found = [solve_for_gmacs(plan.dense, plan.cls.name, r, **cfg.method_options) for r in ratios]
    plan.option = found[0].option
    fixed = found[0].solved_with if plan.mode == "trained" else {**found[0].solved_with, **found[0].counted_with}
    cfg.method_options = {**cfg.method_options, **fixed}  # trained points train to DGE's budget from its own init
    cfg.values = [s.options[s.option] for s in found]
    plan.budgets = [s.record() for s in found]
    plan.notes.extend(s.describe() for s in found)


def _runtime_plan(cfg: SweepConfig, loaded: nn.Module, existing: Any) -> SweepPlan:
    name, cls = cfg.name, type(existing)
    if cfg.method is not None and get_method_class(cfg.method).name != existing.name:
        raise MethodOptionError(f"{name} is compressed with {existing.name}; sweep its own run-time options, or give "
                                f"its dense base model to sweep {cfg.method}.")
    option = cfg.option or headline_option(cls)
    if cfg.epochs is not None:
        raise MethodOptionError(f"{name} is already compressed; `epochs` fine-tunes from a dense model (give its "
                                "dense base model).")
    if option not in cls.runtime_options:
        allowed = ", ".join(cls.runtime_options) or "none"
        raise MethodOptionError(
            f"{option} of {cls.name} cannot change without retraining (run-time options: {allowed}); sweep the dense "
            "base model with `epochs` N to train each point.")
    note = f"one trained {cls.name} checkpoint evaluated at each {option} (run-time option, no retraining)"
    return SweepPlan(loaded, dense_copy(loaded), cls, option, [], "runtime", [note])


def _dense_plan(cfg: SweepConfig, loaded: nn.Module) -> SweepPlan:
    if cfg.method is None:
        raise MethodOptionError("sweep needs `method` (see `vitprune methods`), or a compressed model folder.")
    cls = get_method_class(cfg.method)
    mode = "trained" if cfg.epochs is not None else "off-the-shelf"
    if mode == "trained" and cfg.data is None:
        raise MethodOptionError("`epochs` fine-tunes each point with `vitprune compress`, which needs `data` "
                                "(e.g. demo).")
    return SweepPlan(loaded, loaded, cls, cfg.option or headline_option(cls), [], mode)


def _check_values(values: Sequence[Any], option: str) -> list[Any]:
    vals = list(values)
    if not vals:
        raise MethodOptionError(f"give at least one value of {option} to sweep (e.g. 0.5,0.7,0.9).")
    if len(set(map(repr, vals))) != len(vals):
        raise MethodOptionError(f"the {option} values repeat: {', '.join(map(str, vals))}.")
    return vals


# ---------------------------------------------------------------------------------------------- points


def make_points(cfg: SweepConfig, plan: SweepPlan, progress: Progress = None) -> Points:
    """One model per value (trained with ``compress``, or the method applied / its run-time option set), each
    evaluated on the data's val split when there is data."""
    if plan.mode == "trained":
        return _trained_points(cfg, plan, progress)
    splits = None
    if cfg.data is not None:
        splits = load_data(cfg.data, val_split=cfg.val_split)
    points = Points(plan.dense, [], [], [])
    if splits is not None:
        _emit(progress, event="dense", message=f"evaluating the dense model on {cfg.data}")
        points.dense_acc = _accuracy(cfg, plan.dense, splits)
    for i, v in enumerate(plan.values):
        _emit(progress, event="point", index=i, total=len(plan.values), value=v,
              message=f"{plan.cls.name} {plan.option}={v}" + (": evaluating" if cfg.data else ""))
        m = _point_model(cfg, plan, v, first=i == 0)
        points.models.append(m.eval())
        points.evals.append(_accuracy(cfg, m, splits) if splits is not None else None)
        points.folders.append(None)
    if plan.mode == "off-the-shelf" and not plan.notes:
        plan.notes.append(f"{plan.cls.name} applied off the shelf at each {plan.option} (no training)")
    return points


def _accuracy(cfg: SweepConfig, model: nn.Module, splits: Any) -> dict[str, Any]:
    ev = evaluate(model, splits, split="val", batch_size=cfg.eval_batch_size, device=cfg.timing.device, dtype=cfg.timing.dtype,
                  workers=cfg.workers)
    return {"top1": ev.top1, "top5": ev.top5, "loss": ev.loss, "images": ev.images}


def _point_model(cfg: SweepConfig, plan: SweepPlan, value: Any, first: bool) -> nn.Module:
    """The model at one value: the checkpoint with its run-time option set, or the method applied to a copy."""
    opts = {**cfg.method_options, plan.option: value}
    if plan.mode == "runtime":
        return resolve_models(plan.loaded, None, opts)[2]
    m = apply_method(copy.deepcopy(plan.dense), plan.cls.name, **opts)
    if first and plan.cls.needs_training:
        _untrained_note(cfg, plan, count_params(m) - count_params(plan.dense))
    return m


def _untrained_note(cfg: SweepConfig, plan: SweepPlan, added: int) -> None:
    """A method meant to be fine-tuned, applied off the shelf: refused with data when it adds untrained modules,
    else said in the notes."""
    cls = plan.cls
    if added > 0 and cfg.data is not None:
        rt = ", ".join(cls.runtime_options) or "none"
        raise MethodOptionError(
            f"{cls.name} adds {added:,} parameters that must be trained: give `epochs` N to fine-tune each point "
            f"with `vitprune compress`, or sweep a trained {cls.name} model folder over its run-time options ({rt}).")
    if added > 0:
        plan.notes.append(f"{cls.name}'s new modules are untrained here: GMACs and speed only (no --data)")
    elif cfg.data is not None:
        plan.notes.append(f"{cls.name} is meant to be fine-tuned (`vitprune compress`); these accuracies are off the "
                          "shelf, without fine-tuning")


def _trained_points(cfg: SweepConfig, plan: SweepPlan, progress: Progress) -> Points:
    """Every point fine-tuned with ``vitprune.compress`` into ``OUT/points/<option>-<value>``."""
    root = (cfg.out_dir or Path("vitprune-sweep")) / "points"
    points = Points(plan.dense, [], [], [])
    for i, v in enumerate(plan.values):
        folder = root / f"{plan.option}-{v}"
        _emit(progress, event="point", index=i, total=len(plan.values), value=v,
              message=f"training {plan.cls.name} {plan.option}={v}")
        res = compress(cfg.model, plan.cls.name, cfg.data, str(folder), epochs=cfg.epochs, device=cfg.timing.device,
                       val_split=cfg.val_split, speed=False, overwrite=True, **(cfg.compress_options or {}),
                       **{**cfg.method_options, plan.option: v})
        if not res.finished or not res.report or res.model is None:
            raise MethodOptionError(f"training {plan.option}={v} stopped after {res.steps}/{res.total_steps} steps "
                                    f"(checkpoint in {folder}); a sweep needs finished runs.")
        c, d = res.report["compressed"], res.report["dense"]
        points.models.append(res.model.eval())
        points.evals.append({k: c.get(k) for k in ("top1", "top5", "loss", "images")})
        points.folders.append(str(folder))
        points.dense_acc = points.dense_acc or {k: d.get(k) for k in ("top1", "top5", "loss")}
    points.dense = dense_copy(points.models[0])  # the architecture the points were trained from
    plan.notes.append(f"each point fine-tuned for {cfg.epochs:g} epochs with `vitprune compress` (models in {root}); "
                      "dense top-1 is the teacher's")
    return points


# ---------------------------------------------------------------------------------------------- measure


def measure_points(cfg: SweepConfig, plan: SweepPlan, points: Points, progress: Progress = None) -> SweepResult:
    """Count every model and time them all together (interleaved in every repeat, as ``vitprune profile``)."""
    _emit(progress, event="measure",
          message="counting GMACs" + (" and timing all settings, interleaved" if cfg.timing.speed else ""))
    models = {"dense": points.dense, **{f"p{i}": m for i, m in enumerate(points.models)}}
    m = measure_models(models, dataclasses.replace(cfg.timing, latency=cfg.timing.latency and cfg.timing.speed))
    d = m.stats["dense"]
    dense_row = {"gmacs": d.gmacs, "params": d.params, "tokens": d.tokens, "throughput": d.throughput,
                 "latency_ms": d.latency_ms, **(points.dense_acc or {"top1": None, "top5": None, "loss": None})}
    result = SweepResult(
        model=cfg.name, method=plan.cls.name, option=plan.option, values=plan.values, mode=plan.mode, data=cfg.data,
        device=m.device, device_name=m.device_name, dtype=m.dtype, batch_size=m.batch_size,
        input_size=list(m.input_size), dense=dense_row, points=[], notes=plan.notes, versions=m.versions,
        out=str(cfg.out_dir) if cfg.out_dir is not None else None, budgets=plan.budgets)
    for i, (v, model) in enumerate(zip(plan.values, points.models)):
        result.points.append(_point(v, model, m.stats[f"p{i}"], d, points.evals[i] or {}, points.folders[i]))
        _emit(progress, event="point_done", index=i, total=len(plan.values), point=result.points[-1],
              option=plan.option)
    if d.throughput is not None:
        result.notes.append(f"speed: the dense model and all {len(plan.values)} settings timed in one run, "
                            f"interleaved in each of {m.repeats} repeats (median)")
    busy = sorted({why for p in result.points for why in (p.speed or {}).get("busy") or ()})
    if busy:  # the paired rounds say the machine was busy: the speed columns are not a verdict
        result.notes.append(f"{BUSY_TEXT}: " + "; ".join(busy))
    if len({round(p.gmacs, 9) for p in result.points}) == 1 and len(result.points) > 1:
        result.notes.append(f"every {plan.option} gives the same GMACs: with these options {plan.option} may not be "
                            "in effect")
    return result


def _point(value: Any, model: nn.Module, st: Any, dense: Any, ev: dict[str, Any], folder: Optional[str]) -> SweepPoint:
    thr = st.throughput
    return SweepPoint(
        value=value, options=model.vitprune_method.options_dict(), gmacs=st.gmacs, params=st.params,
        throughput=thr, latency_ms=st.latency_ms,
        speedup=paired_median(st.speed, "throughput_ratio") or (
            thr / dense.throughput if thr and dense.throughput else None),
        latency_ratio=paired_median(st.speed, "latency_ratio"), speed=st.speed,
        gmacs_ratio=st.gmacs / dense.gmacs if dense.gmacs else None, tokens=st.tokens,
        top1=ev.get("top1"), top5=ev.get("top5"), loss=ev.get("loss"), images=ev.get("images"), folder=folder)


# ---------------------------------------------------------------------------------------------- write


def write(result: SweepResult, out_dir: Path, *, plot: bool = True) -> None:
    """``sweep.json`` (atomically) and, with ``plot``, ``pareto.png`` into ``out_dir``; their paths go into
    ``result.files``."""
    result.files.append(str(out_dir / SWEEP_JSON))
    if plot:
        pareto_plot(result, out_dir / PARETO_PNG)
        result.files.append(str(out_dir / PARETO_PNG))
    write_atomic(out_dir / SWEEP_JSON, json.dumps(result.to_dict(), indent=2, default=str, allow_nan=False) + "\n")


__all__ = ["sweep", "run_sweep", "SweepConfig", "SweepResult", "SweepPoint", "headline_option"]
