"""``vitprune.compress``: patch a pretrained ViT with a token method, fine-tune it with distillation from the dense
model on a dataset, evaluate and profile dense vs compressed, save the result as a Hub model folder.

>>> result = vitprune.compress()                       # demo teacher, demo digits, DynamicViT, a short schedule
>>> result = vitprune.compress("deit_small_patch16_224", "evit", data="imagenet/", keep_rate=0.7, epochs=30)
>>> result = CompressJob(CompressConfig(model="demo", method="evit", epochs=1)).run()     # the same, as a job

The output folder (default ``vitprune-out/<model>-<method>-<setting>``, e.g. ``demo-evit-keep0.7``) holds the model
(``model.safetensors``, ``config.json`` with the method, base model, the recipe used and the metrics in its
``vitprune`` section, ``README.md``), ``report.json`` (dense vs compressed: top-1/top-5/loss, GMACs, parameters,
throughput and latency with device, dtype and batch size), ``train_log.jsonl`` (one line per epoch) and, while a
run is unfinished, ``checkpoints/`` (``resume=True`` continues from there). One run holds the folder at a time (its
lock, ``vitprune.hub.lock``) from before training until its save and push end; a folder with a finished model is
only trained into again with ``overwrite=True``. What these files record travels with the model (``vitprune
push``), so they name the data, the output and the base model without this machine's paths
(``vitprune.report.redact``).

A run is a ``CompressJob`` over a ``CompressConfig`` (what ``compress``'s keyword arguments build), in stages, each
a method of the job that can run on its own: ``resolve`` (model, method, output folder) -> ``prepare_data`` ->
``plan_heads`` (which teacher, which head) -> ``make_recipes`` -> ``claim_output`` (run state, lock) ->
``teacher`` (fine-tune the dense model first when its head was replaced) -> ``train`` (distillation) ->
``calibrate`` -> ``evaluate`` -> ``measure`` -> ``save`` -> ``export`` (when asked) -> ``push`` (when asked).

Everything that can be checked is checked before the first training step: the push target (repo name, token),
the output folder (writable, not a file, not holding a finished model), the device, the method options (types
and values), the data (at least two classes), the head and the augmentation (timm builds it once). Under torchrun
process 0 decides what the output folder holds and every process learns it (``broadcast_object``).

The head and the data's classes (see ``vitprune.data.match_head``): labels are mapped onto the head by name or
index when they fit. When they do not, and no ``teacher`` is given, the head is replaced by a new one with one
output per class and the dense model is first fine-tuned on the data with labels only (``teacher_epochs``,
default: as many as the distillation); that model (saved in ``OUTPUT/teacher``) is the teacher and the starting
point of the student. ``new_head=True`` does the same when the classes do fit (matched by count only, with other
label names: a loud warning says so). With ``teacher`` given, its head must fit the data; the student's head is
replaced to match the teacher's outputs if they differ.

A model without a classifier (``vitprune.train.losses.feature_output``: no head, or an embedding head such as a
CLIP tower's projection) keeps its output: no head is added and no teacher is fine-tuned; the student learns the
dense teacher's embedding by the cosine distance (``kd_weight * (1 - cos)``), the labels are not used (one class
folder is enough), and validation reports the cosine agreement with the teacher (``val_cosine``) instead of top-1.
``new_head=True`` puts a classifier on such a model and takes the path above.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from huggingface_hub import constants, get_token

from .errors import (DataError, DeviceError, MethodOptionError, OutputFolderError, PushError, VitpruneError,
                     when_full)
from .hub.load import model_slug
from .train.losses import feature_output
from .data import Prepared, Unreadable, eval_transform, head_error, load_data, match_head, prepare, train_transform
from .files import remove, remove_empty_dir
from .hub import load_model, save
from .hub.lock import output_lock
from .hub.save import check_overwritable, remove_saved
from .methods import apply_method, create_method, dense_copy, get_method
from .methods.base import headline
from .report.redact import public_command, public_model, public_spec, scrub
from .train.checkpoints import check_resumable, remove_stale_temp
from .train.ddp import barrier, broadcast_object, broadcast_weights, setup, teardown
from .train.evaluate import evaluate
from .train.loggers import Loggers, check_loggers
from .train.loop import RunSettings, Trainer, describe_best, matching
from .train.recipe import TEACHER_RECIPE, build_recipe
from .settings import DEFAULT_BATCH_SIZE, CompressConfig, SpeedSettings, split_kwargs, takes_settings
from .api import profile
from .budget import check_no_conflict, check_ratio, solve_for_gmacs
from .exporter.core import FORMATS, export as export_model
from .exporter.graph import require_export_deps
from .exporter.quantize import MODES
from .hub.push import check_repo_id, push

log = logging.getLogger("vitprune")

#: the note of a compress run on a model without a classifier
FEATURES = ("the model has no classifier: the student learns the dense teacher's output embedding (cosine distance, "
            "kd_weight x (1 - cos)); the labels are not used")
#: the method `vitprune compress` uses when none is given
DEFAULT_METHOD = "dynamicvit"
CHECKPOINT_DIR = "checkpoints"
TEACHER_DIR = "teacher"
LOG_NAME = "train_log.jsonl"
#: experiment logs (``loggers``: TensorBoard event files, summary.csv, wandb's folder)
LOGS_DIR = "logs"
#: the weights of the epoch with the best val top-1 (``keep_best``), in the checkpoint folder
BEST_NAME = "best.pt"
#: the files a run writes into ``checkpoints/`` and deletes when it is done with them; nothing else there is touched
CHECKPOINT_NAMES = ("last.pt", "teacher.pt", BEST_NAME)
#: the folders a run writes inside its output folder: each must be a real folder there, never a symlink
OWN_DIRS = (CHECKPOINT_DIR, TEACHER_DIR, LOGS_DIR)
REPORT_NAME = "report.json"
#: training images the post-training calibration looks at (eval transform; the val split stays untouched)
CALIBRATION_IMAGES = 256

Progress = Optional[Callable[[dict[str, Any]], None]]


@dataclass
class CompressResult:
    output: Path
    finished: bool  # False when stopped early by ``max_steps`` (a checkpoint is kept; resume to finish)
    method: str
    report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    total_steps: int = 0
    checkpoint: Optional[Path] = None
    model: Optional[nn.Module] = field(default=None, repr=False)
    pushed: Any = None  # what vitprune.push returned when push_to was given

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "model"}
        out["output"] = str(self.output)
        out["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        return out


def default_output(model: str, method: str, options: Any) -> Path:
    """``vitprune-out/<model>-<method>-<headline setting>``: ``demo-evit-keep0.7``, ``demo-tome-r8``... so runs
    of other settings never share a folder."""
    short = headline(options)
    name = f"{model_slug(model)}-{method}" + (f"-{short}" if short else "")
    return Path("vitprune-out") / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


# ---------------------------------------------------------------------------------------------- early checks


def check_push_target(repo: str) -> str:
    """Before any training: the repo name is valid and a token is there (``push_to``); returns the repo id.
    The token itself is never read out or shown."""
    repo_id = check_repo_id(repo)
    if constants.HF_HUB_OFFLINE:
        raise PushError(f"`push_to` {repo_id} needs the network but HF_HUB_OFFLINE is set; unset it, or compress "
                        "now and `vitprune push` later.")
    if not get_token():
        raise PushError(f"`push_to` {repo_id} needs a Hugging Face token with write access: set HF_TOKEN or run "
                        "`hf auth login` before training starts.")
    return repo_id


def check_export(export: Optional[str], quantize: Optional[str] = None) -> None:
    """Before any training: the export format (and quantization mode) and the optional extra it needs."""
    if quantize is not None:
        if export is None:
            raise MethodOptionError("`quantize` quantizes the ONNX export: add `export` onnx.")
        if quantize not in MODES:
            raise MethodOptionError(f"`quantize` {quantize}: vitprune quantizes to {' or '.join(MODES)}.")
    if export is None:
        return

    if export not in FORMATS:
        raise MethodOptionError(f"`export` {export}: vitprune exports {', '.join(FORMATS)}.")
    require_export_deps()


def check_output(out: Path) -> None:
    """The output folder can be made here: not an existing file, no file in its way, and writable (checked by
    writing a temporary file in it, or in its nearest existing parent, which is removed at once)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"`output` {out} is a file; give a folder (created if needed).")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputFolderError(f"cannot create `output` {out}: {probe} is a file.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputFolderError(f"cannot write to {probe} ({e.strerror or type(e).__name__}); give a writable "
                                "`output`.") from None


def check_augment(model: nn.Module, augment: Optional[dict[str, Any]]) -> None:
    """Build the training transform once, so that an augmentation timm refuses (an unknown ``auto_augment``
    policy...) is one line now rather than a traceback when the first batch is read."""
    if augment is None:
        return

    try:
        train_transform(model, augment)
    except (AssertionError, ValueError, KeyError, TypeError, IndexError) as e:
        policy = augment.get("auto_augment")
        what = f"`auto_augment` {policy!r}" if policy else "the augmentation settings"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MethodOptionError(f"timm refuses {what} ({reason}); see timm's auto_augment (e.g. "
                                "rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, v0).") from None


def count_only_match(classes: list[str], model: nn.Module) -> Optional[str]:
    """A warning when the data's classes land on the head only because the counts agree while the head's label
    names are other names (class i becomes head output i, whatever it means there); None otherwise."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if isinstance(names, dict):
        names = [names.get(i, names.get(str(i))) for i in range(int(model.num_classes))]
    if not names or len(classes) != int(model.num_classes) or all(c in names for c in classes):
        return None
    other = [c for c in classes if c not in names]
    shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
    heads = ", ".join(str(n) for n in list(names)[:3]) + (", ..." if len(names) > 3 else "")
    return (f"the data's classes match the head by COUNT ONLY ({len(classes)} each): {len(other)} class folder(s) "
            f"({shown}) are not among the head's label names ({heads}), so class i is trained as head output i. "
            "If these are other classes, run again with --new-head (a new head, fine-tuned first as the teacher).")


def check_run_state(out: Path, info: Any, *, resume: bool, overwrite: bool) -> dict[Path, bool]:
    """What the output folder already holds against ``resume`` / ``overwrite``: a finished model is kept unless
    ``overwrite``; an unfinished run (checkpoints) is continued with ``resume`` or discarded with ``overwrite``.
    What counts is what process 0 sees (under torchrun on several nodes the others may have disks of their own).
    Returns, for the last checkpoint, the teacher checkpoint, the teacher folder's config and the model's config,
    whether process 0 found them."""
    ck_dir = out / CHECKPOINT_DIR
    places = (ck_dir / "last.pt", ck_dir / "teacher.pt", out / TEACHER_DIR / "config.json", out / "config.json")
    foreign = None
    if info.main:  # a config.json or README.md someone else wrote is never replaced

        try:
            check_overwritable(out)
            for name in OWN_DIRS:  # a planted link would send the run's files (or its deletions) elsewhere
                if (out / name).is_symlink():
                    raise OutputFolderError(f"{out / name} is a symlink; vitprune writes only into real folders "
                                            f"inside {out}: remove it, or use another output folder.")
        except OutputFolderError as e:
            foreign = str(e)
    found, foreign = broadcast_object(info, ([p.is_file() for p in places], foreign))
    if foreign is not None:
        raise OutputFolderError(foreign)
    last, teacher_ck, teacher_done, finished = found
    unfinished = last or teacher_ck
    if resume:
        if not (unfinished or teacher_done):
            held = " (it holds a finished model: add `overwrite` instead to train it again)" if finished else ""
            raise VitpruneError(f"`resume`: {out} has no checkpoint to continue from{held}; run without `resume`.")
    elif unfinished:
        if not overwrite:
            raise VitpruneError(f"{out} holds an unfinished run (checkpoints/); add `resume` to continue it or "
                                "`overwrite` to start over.")
    if finished and not overwrite and not resume:
        raise OutputFolderError(f"{out} already holds a finished model; add `overwrite` to replace it (it stays "
                                "loadable until the new one is saved), or give another `output`.")
    return dict(zip(places, found))


def remove_checkpoints(out: Path) -> None:
    """Delete the checkpoint files a run writes (``CHECKPOINT_NAMES`` and killed writes' temporary files) and
    ``checkpoints/`` itself when nothing else is in it: files someone else put there stay."""
    ck = out / CHECKPOINT_DIR
    for name in CHECKPOINT_NAMES:
        remove(ck / name, root=out)
    remove_stale_temp(ck)
    remove_empty_dir(ck, root=out)


def hold_output(out: Path, info: Any, held: ExitStack) -> None:
    """Take the output folder's lock for the rest of the run (rank 0 under torchrun; every rank learns whether
    it got it, so all stop together when another run holds the folder)."""
    refused: Optional[VitpruneError] = None
    if info.main:
        try:
            held.enter_context(output_lock(out, "compress"))
        except VitpruneError as e:
            refused = e
    message = broadcast_object(info, str(refused) if refused is not None else None)
    if refused is not None:
        raise refused
    if message is not None:
        raise OutputFolderError(message)


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    if precision in (None, "auto"):
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "bf16", "fp16"):
        raise MethodOptionError(f"`precision` must be auto, fp32, bf16 or fp16, not {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("fp16 training needs a GPU; on CPU use fp32 (or bf16) `precision`.")
    return precision


def _replace_head(model: nn.Module, classes: list[str]) -> None:
    model.__dict__.pop("vitprune_output", None)  # an embedding head (CLIP's projection) becomes a classifier
    model.reset_classifier(len(classes))
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": len(classes), "label_names": list(classes)}


def _copy_head(dst: nn.Module, src: nn.Module) -> None:
    dst.__dict__.pop("vitprune_output", None)
    if getattr(src, "vitprune_output", None) is not None:
        dst.vitprune_output = src.vitprune_output
    dst.reset_classifier(src.num_classes)
    dst.get_classifier().load_state_dict(src.get_classifier().state_dict())
    cfg = dict(dst.pretrained_cfg)
    cfg["num_classes"] = src.num_classes
    names = src.pretrained_cfg.get("label_names")
    if names:
        cfg["label_names"] = names
    else:
        cfg.pop("label_names", None)
    dst.pretrained_cfg = cfg


# ---------------------------------------------------------------------------------------------- stage products


@dataclass
class Target:
    """``resolve``: the model as loaded, the method (already on the model, or to apply) and the dense backbone."""

    loaded: nn.Module
    existing: Any  # the method of an already compressed model, else None
    method: str
    probe: Any  # a method object with the run's options (not attached to any model)
    dense: nn.Module


@dataclass
class Heads:
    """``plan_heads``: the teacher (or the dense model its head-replaced fine-tuning starts from), the student's
    starting point and how the data's labels map onto the head."""

    teacher: nn.Module
    student_base: Optional[nn.Module]  # None: the fine-tuned teacher
    target_map: Optional[list[int]]
    fine_tune_teacher: bool
    teacher_spec: str
    notes: list[str]
    count_only: Optional[str] = None


@dataclass
class Recipes:
    """``make_recipes``: the distillation recipe and, when the teacher is fine-tuned first, the teacher's."""

    student: Any  # train.recipe.Recipe
    sources: dict[str, str]
    teacher: Any = None
    teacher_sources: Optional[dict[str, str]] = None


@dataclass
class Trained:
    """``train``: the distilled student, its teacher, the trainer's summary and the recipe as recorded."""

    student: nn.Module
    teacher: nn.Module
    summary: Any
    recipe: dict[str, Any]
    best: Optional[dict[str, Any]] = None  # keep_best: the epoch whose weights the student holds, its val top-1


class _Stopped(Exception):
    """A training stage stopped early (``max_steps``) with a checkpoint: the run ends unfinished."""

    def __init__(self, summary: Any, checkpoint: Path, recipe: dict[str, Any]):
        super().__init__("stopped")
        self.summary, self.checkpoint, self.recipe = summary, checkpoint, recipe


# ---------------------------------------------------------------------------------------------- the job


class CompressJob:
    """One compress run in stages (see the module doc). ``run()`` runs them all; inside ``with job:`` (the
    process group, device and precision set up) each stage can also run on its own."""

    def __init__(self, config: CompressConfig, progress: Progress = None):
        self.cfg = config
        self.progress = progress
        self.t_start = time.perf_counter()
        self.held = ExitStack()  # the output folder's lock, from claim_output to the end of the run
        self.out: Optional[Path] = None
        self.found: dict[Path, bool] = {}
        self.streamed = False  # the data is a stream (its batches depend on the loader workers too)
        self.budget: Optional[dict[str, Any]] = None  # target_gmacs: the solved setting (BudgetSolution.record)

    def __enter__(self) -> "CompressJob":
        self.dist, self.dev = setup(self.cfg.device)
        try:
            self.prec = resolve_precision(self.cfg.precision, self.dev)
        except BaseException:
            teardown(self.dist)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.held.close()
        finally:
            teardown(self.dist)

    def emit(self, kind: str, **data: Any) -> None:
        if self.progress is not None:
            self.progress({"event": kind, **data})

    @property
    def ck_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    @property
    def ck_path(self) -> Path:
        return self.ck_dir / "last.pt"

    @property
    def teacher_ck(self) -> Path:
        return self.ck_dir / "teacher.pt"

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> CompressResult:
        """Every stage in order: the early checks, then training, measuring and saving (see the module doc)."""
        self.cfg.check()
        self.cfg.loggers = check_loggers(self.cfg.loggers)
        if self.cfg.push_to:
            check_push_target(self.cfg.push_to)
        check_export(self.cfg.export, self.cfg.quantize)
        full = when_full(lambda why: OutputFolderError(
            f"cannot write to {self.out}: {why}; the model it held is as it was, and a checkpoint written before is "
            "kept for `resume`."))
        with self, full:
            try:
                return self._stages()
            except _Stopped as s:
                return CompressResult(self.out, False, self.method, recipe=s.recipe, steps=s.summary.steps,
                                      total_steps=s.summary.total_steps, checkpoint=s.checkpoint,
                                      seconds=time.perf_counter() - self.t_start)

    def plan(self) -> dict[str, Any]:
        """What ``run()`` would train, without training: the model, the method and its options, the data, the output
        folder, the device and precision, and the recipe with each key's source (trainer, method, data, demo, user,
        config file), as ``resolve`` -> ``prepare_data`` -> ``plan_heads`` -> ``make_recipes`` find them."""
        self.cfg.check()
        self.cfg.loggers = check_loggers(self.cfg.loggers)
        check_export(self.cfg.export, self.cfg.quantize)
        with self:
            target = self.resolve()
            splits = self.prepare_data(feature_output(target.dense))
            recipes = self.make_recipes(target, splits, self.plan_heads(target, splits))
        return {"model": self.cfg.model, "method": self.method, "options": target.probe.options_dict(),
                "data": self.cfg.data, "output": str(self.out), "device": str(self.dev), "precision": self.prec,
                "recipe": recipes.student.to_dict(), "sources": recipes.sources}

    def _stages(self) -> CompressResult:
        target = self.resolve()
        splits = self.prepare_data(feature_output(target.dense))
        heads = self.plan_heads(target, splits)
        recipes = self.make_recipes(target, splits, heads)
        self.claim_output(recipes)
        self.announce(heads)
        teacher, teacher_record = self.teacher(heads, recipes, splits)
        trained = self.train(target, heads, recipes, splits, teacher)
        calibration = self.calibrate(trained.student, splits, heads.target_map)
        result = CompressResult(self.out, True, self.method, recipe=trained.recipe, steps=trained.summary.steps,
                                total_steps=trained.summary.total_steps, model=trained.student)
        if self.dist.main:
            evals = self.evaluate(trained, splits, heads.target_map)
            prof = self.measure(trained.student)
            result.report, result.metrics = self.build_report(target, splits, recipes, trained, evals, prof,
                                                              teacher_record, heads.teacher_spec, calibration)
            result.checkpoint = self.save(trained.student, result.report, result.metrics, trained.recipe)
            self.export(result.report)
            result.pushed = self.push()
        barrier(self.dist)
        result.seconds = time.perf_counter() - self.t_start
        return result

    # -- stages ----------------------------------------------------------------------------------------
    def resolve(self) -> Target:
        """Load MODEL, decide the method (an already compressed model keeps its own) and the output folder."""
        cfg = self.cfg
        if cfg.output:
            check_output(Path(cfg.output))
        loaded = load_model(cfg.model)
        existing = get_method(loaded)
        self._check_method(existing)
        self.method = existing.name if existing is not None else (cfg.method or DEFAULT_METHOD)
        if cfg.target_gmacs is not None:
            self._solve_budget(loaded, existing)
        probe = existing if existing is not None else create_method(self.method, **cfg.method_options)
        self.out = Path(cfg.output) if cfg.output else default_output(cfg.model, self.method, probe.options)
        if not cfg.output:
            check_output(self.out)
        return Target(loaded, existing, self.method, probe, dense_copy(loaded) if existing is not None else loaded)

    def _solve_budget(self, loaded: nn.Module, existing: Any) -> None:
        """``target_gmacs``: the method's headline option solved on the dense model (``vitprune.budget``); the
        other options are kept, and the choice is announced and recorded in report.json and config.json."""
        cfg = self.cfg
        check_ratio(cfg.target_gmacs)
        check_no_conflict(self.method, cfg.method_options)
        if existing is not None:
            raise MethodOptionError(f"{cfg.model} is already compressed; `target_gmacs` solves a method's option "
                                    "on its dense base model.")
        solution = solve_for_gmacs(loaded, self.method, cfg.target_gmacs, **cfg.method_options)
        cfg.method_options = solution.options
        self.budget = solution.record()
        self.emit("info", message=f"budget: {solution.describe()}")

    def _check_method(self, existing: Any) -> None:
        cfg = self.cfg
        if existing is not None and cfg.method is not None:
            raise MethodOptionError(f"{cfg.model} is already compressed with {existing.name}; give its dense base "
                                    "model to compress it with another method.")
        if existing is not None and cfg.method_options:
            raise MethodOptionError(f"{cfg.model} is already compressed with {existing.describe()}; its options are "
                                    "fixed (give its dense base model to compress with other options).")
        if existing is not None and cfg.new_head:
            raise MethodOptionError(f"{cfg.model} is already compressed; `new_head` replaces the head of a dense "
                                    "model (give its dense base model).")
        if cfg.new_head and cfg.teacher is not None:
            raise MethodOptionError("`new_head` fine-tunes the dense model with a new head as the teacher; it does "
                                    "not go with `teacher` (whose head must fit the data).")

    def prepare_data(self, features: bool = False) -> Any:
        """Read the dataset (``vitprune.data.Splits``): training images and at least two classes (one will do for
        a model without a classifier, ``features``: its labels are not used)."""
        splits = load_data(self.cfg.data, val_split=self.cfg.val_split, streaming=self.cfg.streaming)
        self.streamed = bool(splits.streamed)
        if splits.train is None or not splits.train[1]:
            raise DataError(f"{splits.name} has no training images.")
        if len(splits.classes) < 2 and not features:
            raise DataError(f"{splits.name} has one class ({splits.classes[0] if splits.classes else 'none'}); a "
                            "classifier learns nothing from it: give the data at least two class folders.")
        return splits

    def plan_heads(self, target: Target, splits: Any) -> Heads:
        """Which teacher, which head: the given teacher, the dense model when the head fits the data, else a new
        head and a teacher fine-tuned first."""
        if self.cfg.teacher is not None:
            heads = self._given_teacher(target, splits)
        elif feature_output(target.dense) and not self.cfg.new_head:
            base = target.dense if target.existing is None else target.loaded
            return Heads(copy.deepcopy(target.dense), base, None, False, self._dense_spec(), [*splits.notes, FEATURES])
        else:
            match = match_head(splits.classes, target.dense)
            if match.fits and not self.cfg.new_head:
                base = target.dense if target.existing is None else target.loaded
                heads = Heads(copy.deepcopy(target.dense), base, match.target_map, False, self._dense_spec(),
                              [*splits.notes, match.how])
            else:
                return self._new_head(target, splits, match.how)
        heads.count_only = count_only_match(splits.classes, heads.teacher)
        return heads

    def _dense_spec(self) -> str:
        return f"{public_model(self.cfg.model)} (dense)"

    def _given_teacher(self, target: Target, splits: Any) -> Heads:
        t_model = load_model(self.cfg.teacher)
        if get_method(t_model) is not None:
            t_model = dense_copy(t_model)
        if feature_output(target.dense) and not self.cfg.new_head:
            t_out = int(t_model.num_classes) or int(t_model.num_features)
            s_out = int(target.dense.num_classes) or int(target.dense.num_features)
            if not feature_output(t_model) or t_out != s_out:
                what = "features" if feature_output(t_model) else "class scores"
                raise MethodOptionError(f"{self.cfg.model} has no classifier (its output is a {s_out}-dimensional "
                                        "embedding), so its teacher must output an embedding of the same size; "
                                        f"{self.cfg.teacher} outputs {t_out} {what}.")
            base = target.dense if target.existing is None else target.loaded
            return Heads(t_model, base, None, False, public_model(self.cfg.teacher), [*splits.notes, FEATURES])
        t_match = match_head(splits.classes, t_model)
        if not t_match.fits:
            raise head_error(splits.classes, t_model, "the teacher")
        notes = list(splits.notes)
        base = target.dense if target.existing is None else target.loaded
        if base.num_classes != t_model.num_classes:
            base = copy.deepcopy(base)
            _copy_head(base, t_model)
            notes.append(f"student head replaced by the teacher's ({t_model.num_classes} outputs)")
        return Heads(t_model, base, t_match.target_map, False, public_model(self.cfg.teacher), notes)

    def _new_head(self, target: Target, splits: Any, how: str) -> Heads:
        """A head with one output per class on the dense model, which is fine-tuned first and becomes the
        teacher and the student's starting point."""
        if target.existing is not None:
            raise head_error(splits.classes, target.dense, "the compressed model")
        torch.manual_seed(self.cfg.seed)
        _replace_head(target.dense, splits.classes)
        why = "--new-head" if self.cfg.new_head else how
        notes = [*splits.notes, f"head replaced ({why}); the dense model is fine-tuned first and becomes the teacher"]
        spec = (f"{public_model(self.cfg.model)} with a new {len(splits.classes)}-class head, fine-tuned on the data "
                "first")
        return Heads(target.dense, None, None, True, spec, notes)

    def make_recipes(self, target: Target, splits: Any, heads: Heads) -> Recipes:
        """The distillation recipe (trainer < method < demo preset < user) and the teacher's, checked, and that
        the training split holds at least one optimizer step."""
        cfg, user = self.cfg, self.cfg.user_recipe()
        kw = dict(demo=splits.kind == "demo", batch_size=self.global_batch, augment_hints=splits.augment_hints,
                  augment_default=splits.augment_default)
        rec, sources = build_recipe(target.probe.default_recipe(), user, method=self.method, **kw)
        if rec.frozen and sources.get("frozen") != "user":
            # the method's list names its paper's model (DynamicViT: cls_token, pos_embed); a model without a class
            # token (SigLIP) freezes the ones it has. A name the user gives must exist (a typo is an error).
            rec.frozen = matching(target.dense, list(rec.frozen))
        sources.update({k: v for k, v in cfg.sources.items() if sources.get(k) == "user"})
        check_augment(target.dense, rec.augment)
        n_train = len(splits.train[1])
        if n_train // (cfg.batch_size * self.dist.world_size) // cfg.accum_steps < 1:
            raise DataError(
                f"the train split has {n_train} images, fewer than one optimizer step needs ({cfg.batch_size} x "
                f"{self.dist.world_size} process(es) x {cfg.accum_steps} accumulation step(s)); lower `batch_size`.")
        recipes = Recipes(rec, sources)
        if heads.fine_tune_teacher:
            t_user = {k: v for k, v in user.items() if k in ("augment",)}
            t_user["epochs"] = cfg.teacher_epochs if cfg.teacher_epochs is not None else rec.epochs
            recipes.teacher, recipes.teacher_sources = build_recipe(TEACHER_RECIPE, t_user, **kw)
        return recipes

    def claim_output(self, recipes: Recipes) -> None:
        """The output folder's state against ``resume``/``overwrite``, checked before and again after taking its
        lock (held to the end of the run); ``overwrite`` clears an old run's checkpoints and teacher; ``resume``
        refuses a checkpoint made with other settings before anything runs."""
        cfg, out = self.cfg, self.out
        check_run_state(out, self.dist, resume=cfg.resume, overwrite=cfg.overwrite)  # before the lock makes a folder
        hold_output(out, self.dist, self.held)
        self.found = check_run_state(out, self.dist, resume=cfg.resume, overwrite=cfg.overwrite)  # now it is ours
        if cfg.overwrite and not cfg.resume:
            if self.dist.main:
                remove_checkpoints(out)
                remove_saved(out / TEACHER_DIR)
            barrier(self.dist)
        if cfg.resume:
            for path, extra in ((self.ck_path, {"recipe": recipes.student.to_dict()}),
                                (self.teacher_ck, {"teacher_recipe": _as_dict(recipes.teacher)})):
                if self.found[path]:
                    check_resumable(path, self.fingerprint(extra), self.dist)

    def announce(self, heads: Heads) -> None:
        """The head plan's warning and notes, before training starts."""
        if heads.count_only:
            log.warning(heads.count_only)
            self.emit("warning", message=heads.count_only)
        for note in heads.notes:
            self.emit("info", message=note)

    def teacher(self, heads: Heads, recipes: Recipes, splits: Any) -> tuple[nn.Module, Optional[dict[str, Any]]]:
        """The teacher: as planned, or (new head) the dense model fine-tuned on the labels first and saved in
        ``OUT/teacher`` (on ``resume``, the one saved there: process 0's, sent to every process). Returns it and
        the fine-tuning's record for the report."""
        if not heads.fine_tune_teacher:
            return heads.teacher, None
        t_model, t_folder = heads.teacher, self.out / TEACHER_DIR
        if self.found[t_folder / "config.json"] and self.cfg.resume:
            if self.dist.main:
                t_model = load_model(str(t_folder))
            broadcast_weights(self.dist, t_model, self.dev)  # process 0's teacher (its disk may be the only copy)
            self.emit("info", message=f"using the fine-tuned teacher in {t_folder}")
            return t_model.eval(), None
        self.emit("stage", name="teacher",
                  message=f"fine-tuning the dense model with a new {len(splits.classes)}-class head")
        train_set, val_set = self.datasets(splits, t_model, recipes.teacher.augment, None)
        t_rec = recipes.teacher.to_dict()
        settings = self.run_settings("teacher", self.teacher_ck, {"teacher_recipe": t_rec}, log=False)
        trainer = Trainer(t_model, None, train_set, recipes.teacher, settings, self.dist, val_set=val_set,
                          new_prefixes=(t_model.default_cfg.get("classifier", "head"),), progress=self.progress)
        summary = trainer.run()
        if not summary.finished:
            raise _Stopped(summary, self.teacher_ck, recipes.student.to_dict())
        if self.dist.main:
            save(t_model.eval(), t_folder, base_model=public_model(self.cfg.model), recipe=t_rec,
                 metrics={"history": summary.history[-1:]})
        barrier(self.dist)
        return t_model.eval(), {"recipe": t_rec, "sources": recipes.teacher_sources, "history": summary.history}

    def train(self, target: Target, heads: Heads, recipes: Recipes, splits: Any, teacher: nn.Module) -> Trained:
        """Patch a copy of the student's starting point with the method (or continue a compressed model) and
        distil it from a frozen copy of the teacher."""
        cfg = self.cfg
        student = self.make_student(target, heads, teacher)
        teacher_net = copy.deepcopy(teacher).eval()
        shown = self.out / TEACHER_DIR if heads.fine_tune_teacher else (cfg.teacher or heads.teacher_spec)
        self.emit("info", message=f"teacher: {shown}")
        record = {**recipes.student.to_dict(), "batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps,
                  "world_size": self.dist.world_size, "global_batch": self.global_batch, "seed": cfg.seed,
                  "precision": self.prec}
        train_set, val_set = self.datasets(splits, student, recipes.student.augment, heads.target_map)
        self.emit("stage", name="distill", message=f"distilling {student.vitprune_method.describe()} from the dense "
                                                   "teacher")
        settings = self.run_settings("distill", self.ck_path, {"recipe": recipes.student.to_dict()}, log=True)
        if cfg.loggers:
            settings.loggers = Loggers(cfg.loggers, self.out / LOGS_DIR, run_name=self.out.name, config={
                **record, "model": public_spec(cfg.model), "method": self.method,
                "options": student.vitprune_method.options_dict(), "data": public_spec(cfg.data)})
        trainer = Trainer(student, teacher_net, train_set, recipes.student, settings, self.dist, val_set=val_set,
                          progress=self.progress)
        record["peak_lr"] = trainer.lr
        summary = trainer.run()
        record["param_groups"] = trainer.group_info
        if not summary.finished:
            raise _Stopped(summary, self.ck_path, record)
        best = trainer.load_best()
        if best is not None:
            self.emit("info", message=f"keeping the best epoch {best['epoch']} ({describe_best(best)})")
        return Trained(student, teacher_net, summary, record, best)

    def make_student(self, target: Target, heads: Heads, teacher: nn.Module) -> nn.Module:
        """The model to distil, its method's new modules initialised from ``seed``."""
        torch.manual_seed(self.cfg.seed)
        base = heads.student_base if heads.student_base is not None else teacher
        if target.existing is not None and base is target.loaded:
            return copy.deepcopy(target.loaded)
        return apply_method(copy.deepcopy(dense_copy(base)), self.method, **self.cfg.method_options)

    def calibrate(self, student: nn.Module, splits: Any, target_map: Optional[list[int]]) -> Optional[dict[str, Any]]:
        """Let the method choose its data-dependent run-time defaults on up to ``CALIBRATION_IMAGES`` training
        images (SaiT: the adaptive threshold), unless the caller set one of its run-time options."""
        m_obj = student.vitprune_method
        if not self.cfg.calibrate or not self.dist.main or set(self.cfg.method_options) & set(m_obj.runtime_options):
            return None
        found = _calibrate(student, m_obj, splits, eval_transform(student), target_map, self.dev,
                           self.cfg.batch_size)
        if found is not None:
            self.emit("info", message=f"calibrated on training images: {_describe(found)}")
        return found

    def evaluate(self, trained: Trained, splits: Any, target_map: Optional[list[int]]) -> tuple[Any, Any]:
        """Top-1/top-5/loss of the dense teacher and the compressed student on the val split (a model without a
        classifier: the student's cosine agreement with the teacher; the teacher's own is 1)."""
        self.emit("stage", name="evaluating", message="evaluating dense and compressed on the val split")
        val_set = self.val_set(splits, trained.student, target_map)
        kw = dict(batch_size=self.cfg.batch_size, device=str(self.dev), dtype=self.prec, workers=self.cfg.workers)
        return evaluate(trained.teacher, val_set, **kw), evaluate(trained.student, val_set, reference=trained.teacher,
                                                                 **kw)

    def measure(self, student: nn.Module) -> Any:
        """GMACs, parameters, throughput and latency of dense vs compressed (``vitprune.profile``)."""
        self.emit("stage", name="profiling", message="counting GMACs and timing dense vs compressed")
        cfg = self.cfg
        return profile(student, timing=SpeedSettings(device=str(self.dev), batch_size=cfg.profile_batch_size,
                                                     speed=cfg.speed, latency=cfg.speed))

    def build_report(self, target: Target, splits: Any, recipes: Recipes, trained: Trained, evals: tuple[Any, Any],
                     prof: Any, teacher_record: Optional[dict[str, Any]], teacher_spec: str,
                     calibration: Optional[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """report.json (paths redacted, the command as it would make the model again) and config.json's
        metrics."""
        cfg, (d_eval, c_eval) = self.cfg, evals
        report = _report(public_spec(cfg.model), teacher_spec, self.method, trained.student.vitprune_method, splits,
                         trained.recipe, recipes.sources, trained.summary, d_eval, c_eval, prof,
                         self.dist.world_size, str(self.dev), teacher_record)
        report["base_model"] = public_model(cfg.model)
        report["seconds_total"] = round(time.perf_counter() - self.t_start, 2)
        if calibration is not None:
            report["calibration"] = calibration
        if trained.best is not None:
            report["best_epoch"] = trained.best["epoch"]
            for key in ("val_top1", "val_cosine"):
                if key in trained.best:
                    report[f"best_{key}"] = trained.best[key]
        if self.budget is not None:
            report["budget"] = self.budget
        if cfg.command:
            report["command"] = public_command(cfg.command)
        report = scrub(report, (cfg.data, str(self.out), cfg.model, cfg.teacher))
        metrics = _metrics(public_spec(cfg.data), d_eval, c_eval, prof)
        if self.budget is not None:
            metrics["budget"] = self.budget
        return report, metrics

    def save(self, student: nn.Module, report: dict[str, Any], metrics: dict[str, Any],
             recipe: dict[str, Any]) -> Optional[Path]:
        """The model folder (weights, config.json, report.json, card); checkpoints go unless kept. Returns the
        checkpoint kept, if any."""
        self.emit("stage", name="saving", message=f"saving {self.out}")
        text = json.dumps(report, indent=2, default=str, allow_nan=False) + "\n"
        save(student.eval(), self.out, base_model=public_model(self.cfg.model), recipe=recipe, metrics=metrics,
             extra_files={REPORT_NAME: text})
        if self.cfg.keep_checkpoints:
            return self.ck_path
        remove_checkpoints(self.out)
        return None

    def export(self, report: dict[str, Any]) -> None:
        """``OUT/model.onnx`` when asked (``vitprune.export``: checked against PyTorch, timed unless not
        ``speed``), recorded in ``report``."""
        if self.cfg.export is None:
            return

        onnx = self.out / "model.onnx"
        self.emit("stage", name="exporting", message=f"exporting {onnx}")
        quantized = {}
        if self.cfg.quantize:  # the int8 file's top-1 next to the fp32 file's on the val split training read
            quantized = {"quantize": self.cfg.quantize, "eval_split": "val",
                         "eval_data": None if self.cfg.streaming else self.cfg.data}
        report["onnx"] = export_model(str(self.out), onnx, format=self.cfg.export, measure=self.cfg.speed,
                                      measure_batch_size=self.cfg.profile_batch_size, **quantized).record()

    def push(self) -> Any:
        """Upload the saved folder when asked; a failed upload says where the model is and how to push later."""
        cfg = self.cfg
        if not cfg.push_to:
            return None

        self.emit("stage", name="pushing", message=f"pushing {self.out} to {cfg.push_to}")
        try:
            return push(self.out, cfg.push_to, private=cfg.private)
        except VitpruneError as e:
            raise type(e)(f"{e} The model is saved in {self.out}; push it later with `vitprune push {self.out} "
                          f"--repo {cfg.push_to}`.") from None

    # -- shared by the stages --------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.dist.world_size * self.cfg.accum_steps

    def fingerprint(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The settings that decide a training stage's result, as JSON: a checkpoint resumes only under the same."""
        cfg = self.cfg
        base = {"model": cfg.model, "method": self.method, "options": cfg.method_options, "data": cfg.data,
                "val_split": cfg.val_split, "teacher": cfg.teacher, "batch_size": cfg.batch_size,
                "accum_steps": cfg.accum_steps, "world_size": self.dist.world_size, "seed": cfg.seed,
                "precision": self.prec, **({"new_head": True} if cfg.new_head else {}),
                **({"keep_best": True} if cfg.keep_best else {}),  # its best.pt must cover every epoch
                **({"streamed": True, "workers": cfg.workers} if self.streamed else {})}
        return json.loads(json.dumps({**base, **extra}, default=str))

    def run_settings(self, stage: str, path: Path, fp_extra: dict[str, Any], log: bool) -> Any:
        cfg = self.cfg
        return RunSettings(
            device=self.dev, batch_size=cfg.batch_size, accum_steps=cfg.accum_steps, workers=cfg.workers,
            seed=cfg.seed, precision=self.prec, checkpoint=path, save_every=cfg.save_every,
            max_steps=cfg.max_steps, resume=cfg.resume and self.found[path], eval_every=cfg.eval_every,
            stage=stage, log_file=(self.out / LOG_NAME) if log else None, fingerprint=self.fingerprint(fp_extra),
            best_checkpoint=self.ck_dir / BEST_NAME if log and cfg.keep_best else None)

    def datasets(self, splits: Any, model: nn.Module, augment: Optional[dict[str, Any]],
                 target_map: Optional[list[int]]) -> tuple[Any, Any]:
        """The train split through ``model``'s training transform with ``augment`` (seeded per image), and the val
        split (``val_set``)."""
        train = prepare(splits.train, train_transform(model, augment), seed=self.cfg.seed,
                        random_transform=augment is not None, target_map=target_map)
        return train, self.val_set(splits, model, target_map)

    @staticmethod
    def val_set(splits: Any, model: nn.Module, target_map: Optional[list[int]]) -> Any:
        """The val split through ``model``'s evaluation transform, labels mapped onto the head."""
        return prepare(splits.val, eval_transform(model), target_map=target_map)


def _as_dict(recipe: Any) -> Optional[dict[str, Any]]:
    return recipe.to_dict() if recipe is not None else None


@takes_settings(CompressConfig, skip=("method_options",))
def compress(model: str = "demo", method: Optional[str] = None, data: str = "demo", output: Optional[str] = None, *,
             progress: Progress = None, dry_run: bool = False, **settings: Any) -> Union[CompressResult, dict[str, Any]]:
    """Compress ``model`` with ``method`` by distillation fine-tuning on ``data`` and save it in ``output``.

    Builds a ``CompressConfig`` (``vitprune.settings``) from the keyword arguments and runs a ``CompressJob`` (see
    the module doc): each of its settings below, by name; any other keyword is an option of the method
    (``keep_rate=0.7``, ``r=8``...). ``progress`` receives event dicts (stage, epoch_start, step, epoch_end,
    checkpoint, warning, info...); ``dry_run`` returns the plan (model, method, options, resolved recipe, output)
    without running. ``batch_size`` is per process (under torchrun the global batch is ``batch_size x processes x
    accum_steps``); ``max_steps`` stops with a checkpoint (``finished=False``); ``push_to`` is checked before any
    training and a failed upload raises after the folder is saved; ``export="onnx"`` writes ``OUT/model.onnx`` (and
    with ``quantize`` ``OUT/model-int8.onnx``) as :func:`vitprune.export` does. Settings:

    """
    given, method_options = split_kwargs(CompressConfig, settings)
    if given.get("batch_size") is None:
        given["batch_size"] = DEFAULT_BATCH_SIZE
    for key in ("recipe", "sources", "method_options"):
        given[key] = dict(given.get(key) or {})
    config = CompressConfig(model=model, method=method, data=data, output=output, **given)
    config.method_options = {**config.method_options, **method_options}
    job = CompressJob(config, progress)
    return job.plan() if dry_run else job.run()




# ---------------------------------------------------------------------------------------------- report


def _side(ev: Any, st: Any) -> dict[str, Any]:
    cosine = {"cosine": ev.cosine} if ev.cosine is not None else {}  # a model without a classifier
    return {"top1": ev.top1, "top5": ev.top5, "loss": ev.loss, **cosine, "images": ev.images, "params": st.params,
            "gmacs": st.gmacs, "throughput": st.throughput, "latency_ms": st.latency_ms, "tokens": st.tokens,
            "method": st.method, "options": st.options, "macs_source": st.macs_source, "cpu_ms": st.cpu_ms,
            "cpu_latency_ms": st.cpu_latency_ms}


def _report(model: str, teacher: str, method: str, m_obj: Any, splits: Any, recipe: dict[str, Any],
            sources: dict[str, str], summary: Any, d_eval: Any, c_eval: Any, prof: Any, world: int, device: str,
            teacher_record: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model, "teacher": teacher, "method": method, "options": m_obj.options_dict(),
        "data": {**splits.describe(), "notes": splits.notes, "classes_names": splits.classes[:50]},
        "dense": _side(d_eval, prof.dense), "compressed": _side(c_eval, prof.compressed),
        "delta_top1": _delta(c_eval.top1, d_eval.top1), "speedup": prof.speedup, "latency_ratio": prof.latency_ratio,
        "gmacs_ratio": prof.gmacs_ratio,
        "measure": {"device": prof.device, "device_name": prof.device_name, "dtype": prof.dtype,
                    "batch_size": prof.batch_size, "latency_batch_size": 1, "input_size": list(prof.input_size),
                    "speed": prof.speed},
        "train": {"epochs": summary.epochs, "steps": summary.steps, "global_batch": summary.global_batch,
                  "processes": world, "device": device, "seconds": round(summary.seconds, 2),
                  "images": summary.images, "peak_lr": summary.lr, "skipped_images": len(summary.skipped),
                  "skipped_files": summary.skipped[:100], "history": summary.history},
        "recipe": recipe, "recipe_sources": sources, "teacher_stage": teacher_record, "versions": prof.versions,
        "units": {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": "images/s at measure.batch_size",
                  "latency_ms": "ms per image at batch 1 (median)", "top1": "percent"},
    }


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _round(v: Optional[float], digits: int) -> Optional[float]:
    return None if v is None else round(v, digits)


def _metrics(dataset: str, d_eval: Any, c_eval: Any, prof: Any) -> dict[str, Any]:
    """config.json's ``metrics``: the compressed model's accuracy and cost beside the dense model's."""
    return {
        "dataset": dataset, "split": "val", "images": c_eval.images, "top1": _round(c_eval.top1, 4),
        "top5": _round(c_eval.top5, 4), "loss": _round(c_eval.loss, 6), "dense_top1": _round(d_eval.top1, 4),
        "dense_top5": _round(d_eval.top5, 4), "delta_top1": _round(_delta(c_eval.top1, d_eval.top1), 4),
        **({"cosine": round(c_eval.cosine, 6)} if c_eval.cosine is not None else {}),
        "gmacs": prof.compressed.gmacs, "dense_gmacs": prof.dense.gmacs, "params": prof.compressed.params,
        "throughput": prof.compressed.throughput, "dense_throughput": prof.dense.throughput,
        "speedup": prof.speedup,
    }


def _calibrate(model: nn.Module, m_obj: Any, splits: Any, transform: Any, target_map: Any, dev: torch.device,
               batch_size: int) -> Optional[dict[str, Any]]:
    src, idx = splits.train
    g = torch.Generator().manual_seed(0)
    pick = [idx[int(i)] for i in torch.randperm(len(idx), generator=g)[:CALIBRATION_IMAGES]]
    if getattr(src, "sequential", False):  # a stream without seeking (a streamed Hub dataset): its first images
        pick = list(idx[:CALIBRATION_IMAGES])
    ds = Prepared(src, pick, transform, target_map=target_map)
    images = [item[0] for item in (ds[i] for i in range(len(ds))) if not isinstance(item, Unreadable)]
    if not images:
        return None
    was_training = model.training
    model.eval()
    try:
        batches = [torch.stack(images[i:i + batch_size]).to(dev) for i in range(0, len(images), batch_size)]
        return m_obj.calibrate(model, batches)
    finally:
        model.train(was_training)


def _describe(found: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in found.items())
