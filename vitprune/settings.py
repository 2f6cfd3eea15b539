"""Run settings, each declared once.

A run setting is a dataclass field made with :func:`setting`: the field gives its name, type and default, and its
metadata its help, its command-line flag (and short form), its help panel and its range. Everything that names run
settings derives from that one declaration:

* the command line's flags (``vitprune.cli.common.settings_parameters``), grouped by panel in ``--help``;
* a recipe file's keys (``--config``): the flags' long names with underscores (``batch_size``, ``no_speed``);
* ``--print-config``: the settings marked ``shown`` (the plan prints the others resolved);
* the Python API's keyword arguments (``vitprune.compress(**settings)``, its signature and doc built from here);
* the model card's Reproduce line (a setting's flag, and whether its value is the default);
* the range checks (``check_ranges``), the same bounds the command line enforces.

:class:`CompressConfig` is everything a ``compress`` run is told; :class:`SpeedSettings` is how models are timed
(``profile``, ``sweep`` and the report of ``compress``), one object wherever timing settings travel.
:class:`ExportSettings` and :class:`PushSettings` are what ``export`` and ``push`` are told.

This module imports no torch: the command line reads it to build its flags before the library is imported.
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from .errors import ExportError, MethodOptionError, UsageError

#: help panels of ``vitprune compress --help``
TRAIN = "Training"
RECIPE = "Recipe (defaults: the method's paper recipe; see config.json after a run)"
AUGMENT = "Augmentation"
RUN = "Run control"

#: the batch size of a ``compress`` run when none is given (per process)
DEFAULT_BATCH_SIZE = 64


def setting(default: Any = None, help: str = "", *, flag: Optional[str] = None, short: Optional[str] = None,
            panel: Optional[str] = None, cli: bool = True, negated: bool = False, min: Optional[int] = None,
            metavar: Optional[str] = None, shown: bool = True, factory: Any = None, off: bool = True) -> Any:
    """A run setting: a dataclass field with its help and how the command line spells it.

    ``flag``: the long flag (default ``--name-with-dashes``); ``short``: a one-letter alias; ``negated``: a boolean
    the command line spells as its off switch (``speed`` is ``--no-speed/--speed``, and the recipe-file key
    ``no_speed``); ``cli=False``: set from Python only (or by the command itself); ``min``: the smallest integer
    allowed; ``shown``: ``--print-config`` prints it (the plan prints model, method, output... resolved);
    ``factory``: a default factory instead of ``default`` (``default=dataclasses.MISSING``: a required field);
    ``off=False``: a boolean flag without the other form (``--force`` alone, no ``--no-force``: a command that reads
    no recipe file has nothing for it to switch off). A ``Literal`` type is a fixed set of choices (the command line
    lists them; ``check_ranges`` refuses others)."""
    meta = {"help": help, "flag": flag, "short": short, "panel": panel, "cli": cli, "negated": negated, "min": min,
            "metavar": metavar, "shown": shown, "off": off}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Flag:
    """One run setting as the command line spells it."""

    field: str              # the dataclass field (the API's keyword argument)
    param: str              # the command's parameter and recipe-file key: ``batch_size``, ``no_speed``, ``logger``
    decls: tuple[str, ...]  # click's declarations: ("--output", "-o"), ("--no-speed/--speed",)
    type: Any               # bool, int, float, str, list[str] (repeatable) or a Literal of choices
    default: Any            # as the command line sees it (negated booleans inverted)
    help: str
    panel: Optional[str]
    min: Optional[int]
    metavar: Optional[str]
    shown: bool
    negated: bool

    @property
    def long(self) -> str:
        """The long flag that turns it on or sets it: ``--batch-size``, ``--no-speed``."""
        return self.decls[0].split("/")[0]

    @property
    def choices(self) -> Optional[tuple[Any, ...]]:
        """The values a ``Literal`` setting allows (None: any value of its type)."""
        return choices_of(self.type)

    def value(self, given: Any) -> Any:
        """The field's value from the command line's (a negated switch inverted, a repeatable flag as a tuple)."""
        return self._convert(given, tuple)

    def as_given(self, value: Any) -> Any:
        """The inverse of :meth:`value`: the field's value as the command line (and a recipe file) gives it."""
        return self._convert(value, list)

    def _convert(self, x: Any, sequence: type) -> Any:
        """Both directions are the same steps: a negated switch inverted, a repeatable flag's values as ``sequence``."""
        if self.negated:
            return not x
        if self.type == list[str]:
            return sequence(x or ())
        return x


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _base_type(hint: Any) -> Any:
    """``Optional[int]`` -> int; a tuple of text -> list[str] (a repeatable flag)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) in (tuple, list):
        return list[str]
    return hint


def choices_of(hint: Any) -> Optional[tuple[Any, ...]]:
    """The values of a ``Literal`` (``Optional`` of one too); None for any other type."""
    hint = _base_type(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def flags(cls: type) -> list[Flag]:
    """The command-line flags of a settings dataclass, in field order (fields with ``cli=False`` have none)."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta or not meta.get("cli"):
            continue
        dashed = f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        off = meta.get("off", True)
        if meta["negated"]:
            long = meta["flag"] or f"--no-{dashed}"
            decl = f"{long}/--{long[5:]}" if off else long
        else:
            long = meta["flag"] or f"--{dashed}"
            decl = f"{long}/--no-{long[2:]}" if kind is bool and off else long
        decls = (decl, meta["short"]) if meta["short"] else (decl,)
        default = default_of(f)
        default = (not default) if meta["negated"] else default
        out.append(Flag(field=f.name, param=long[2:].replace("-", "_"), decls=decls, type=kind,
                        default=None if kind == list[str] else default, help=meta["help"], panel=meta["panel"],
                        min=meta["min"], metavar=meta["metavar"], shown=meta["shown"], negated=meta["negated"]))
    return out


def flag(cls: type, name: str) -> Flag:
    """The flag of field ``name`` of ``cls``."""
    return next(f for f in flags(cls) if f.field == name)


def help_of(cls: type, name: str) -> str:
    """The help of field ``name`` of ``cls`` (for a command's argument: ``MODEL``)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def same_as(cls: type, name: str) -> Any:
    """A field with the declaration of field ``name`` of ``cls`` (default, help, flag, range): a setting that two
    jobs take (``target_gmacs``) is still declared once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def split_kwargs(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` as (the fields of ``cls``, the rest)."""
    names = set(field_names(cls))
    return ({k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names})


def check_ranges(obj: Any, error: type[Exception] = MethodOptionError) -> None:
    """Each integer setting with a ``min`` is an integer at least that, and each ``Literal`` setting one of its
    choices (``None`` allowed where the default is ``None``); ``error`` (``MethodOptionError``) in one line naming
    the setting."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        lo = f.metadata.get("min") if f.metadata else None
        choices = choices_of(hints[f.name])
        if lo is None and choices is None:
            continue
        v = getattr(obj, f.name)
        if v is None and f.default is None:
            continue
        if choices is not None and v not in choices:
            raise error(f"`{f.name}` must be {' or '.join(map(str, choices))}, got {v!r}.")
        if lo is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise error(f"`{f.name}` must be an integer >= {lo}, got {v!r}.")


def takes_settings(cls: type, skip: tuple[str, ...] = (), rest: Optional[str] = "method_options") -> Any:
    """Decorator for a job that takes the fields of ``cls`` as keywords through ``**kwargs`` (the rest being the
    method's options): its ``__signature__`` lists them (``help(vitprune.compress)``, IDEs) and its docstring gets
    one line per field, both read from the declarations (``skip``: fields the job names itself; ``rest=None``: a
    job that takes no other keywords, ``vitprune.push``)."""

    def decorate(fn: Any) -> Any:
        hints = _hints(cls)
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
        fields = [f for f in dataclasses.fields(cls) if f.name not in skip and f.name not in {p.name for p in own}]
        fn.__signature__ = inspect.Signature([
            *own, *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default_of(f),
                                      annotation=hints[f.name]) for f in fields),
            *([inspect.Parameter(rest, inspect.Parameter.VAR_KEYWORD, annotation=Any)] if rest else [])])
        cli = {f.field: f for f in flags(cls)}
        lines = []
        for f in fields:
            flag_ = cli.get(f.name)
            where = "" if flag_ is None else f" (``False``: {flag_.long})" if flag_.negated else f" ({flag_.long})"
            lines.append(f"    ``{f.name}``{where}: {f.metadata['help']}")
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n" + "\n".join(lines) + "\n"
        return fn

    return decorate


# ------------------------------------------------------------------------------------------------ compress


@dataclass
class CompressConfig:
    """Everything a ``compress`` run is told: ``vitprune.compress``'s keyword arguments, ``vitprune compress``'s
    flags and a recipe file's keys (the method's options travel in ``method_options``; recipe keys in ``recipe``)."""

    model: str = setting("demo", "timm model name, hf-hub:org/repo, a local folder, or 'demo' (the bundled "
                         "teacher).", cli=False, shown=False)
    method: Optional[str] = setting(None, "token method to apply (see `vitprune methods`); default dynamicvit.",
                                    cli=False, shown=False)
    data: str = setting(
        "demo", "'demo', an ImageFolder-style folder (train/ and val/, or one folder with --val-split), a folder "
        "saved with datasets' save_to_disk, a folder with train/ and val/ webdataset .tar shards, or hf:org/name (a "
        "Hub dataset). Trains on train, evaluates on val; a test split is never read.", short="-d", shown=False)
    streaming: bool = setting(False, "read an hf:org/name dataset as a stream.")
    val_split: Optional[float] = setting(None, "hold out this fraction of each class as val (one folder / one "
                                         "split; seed 0). Default 0.1 there.")
    output: Optional[str] = setting(None, "output folder (default vitprune-out/<model>-<method>-<setting>, e.g. "
                                    "demo-evit-keep0.7).", short="-o", shown=False)
    teacher: Optional[str] = setting(None, "teacher model (default: the dense MODEL). Its head must fit the data's "
                                     "classes.")
    teacher_epochs: Optional[float] = setting(None, "epochs of fine-tuning the dense model first when its head had "
                                              "to be replaced (default: --epochs).")
    new_head: bool = setting(False, "replace the head even when the data's classes fit it (e.g. matched by count "
                             "only) and fine-tune the dense model first as the teacher.")
    epochs: Optional[float] = setting(None, "training epochs (default: the method's recipe; 10 on the demo data).",
                                      panel=TRAIN, shown=False)
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "images per step per process.", panel=TRAIN, min=1)
    accum_steps: int = setting(1, "gradient accumulation: micro-batches per optimizer step.", panel=TRAIN, min=1)
    workers: int = setting(0, "data-loading worker processes.", panel=TRAIN, min=0)
    seed: int = setting(0, "random seed (same seed, same result).", panel=TRAIN)
    device: Optional[str] = setting(None, "cuda or cpu (default: cuda when available).", panel=TRAIN, shown=False)
    precision: Optional[str] = setting(None, "auto (bf16 on GPUs that support it, else fp16 with a grad scaler; "
                                       "fp32 on CPU), fp32, bf16, fp16.", panel=TRAIN, shown=False)
    augment: bool = setting(True, "train on the evaluation transform (no random crops/flips).", panel=AUGMENT,
                            negated=True, shown=False)
    resume: bool = setting(False, "continue the run in --output from its last checkpoint.", panel=RUN, shown=False)
    overwrite: bool = setting(False, "replace the finished model in --output, or discard an unfinished run's "
                              "checkpoints, and start over.", panel=RUN, shown=False)
    save_every: Optional[int] = setting(None, "also checkpoint every N optimizer steps (always at each epoch end).",
                                        panel=RUN, min=1)
    max_steps: Optional[int] = setting(None, "stop after N optimizer steps with a checkpoint (--resume finishes).",
                                       panel=RUN, min=1)
    eval_every: int = setting(1, "validate every N epochs during training (0: only at the end).", panel=RUN, min=0)
    keep_checkpoints: bool = setting(False, "keep checkpoints/ after a finished run.", panel=RUN)
    keep_best: bool = setting(False, "save the epoch with the best val top-1 (kept in checkpoints/best.pt while "
                              "training), not the last; report.json records best_epoch.", panel=RUN)
    loggers: tuple[str, ...] = setting(
        (), "also log each epoch under OUT/logs: tensorboard (extra: vitprune[logs]), csv (summary.csv), wandb (if "
        "installed); repeatable or a comma list.", flag="--logger", panel=RUN)
    speed: bool = setting(True, "skip the throughput/latency timing in the report.", panel=RUN, negated=True)
    profile_batch_size: Optional[int] = setting(None, "throughput batch size (default 256 on GPU, 32 on CPU).",
                                                panel=RUN, min=1)
    push_to: Optional[str] = setting(None, "after saving, upload the folder to this Hub repo (user/name) as "
                                     "`vitprune push` does.", panel=RUN)
    private: bool = setting(False, "with --push-to: create the repo private.", panel=RUN)
    export: Optional[str] = setting(None, "after saving, also write OUT/model.onnx (onnx; as `vitprune export OUT "
                                    "--measure`).", panel=RUN)
    quantize: Optional[str] = setting(
        None, "with --export onnx: also write OUT/model-int8.onnx (int8: dynamic; int8-static: calibrated on the "
        "training data), checked as `vitprune export OUT --quantize MODE`.", panel=RUN, metavar="MODE")
    target_gmacs: Optional[float] = setting(
        None, "with --method on a dense model: solve the method's headline option (keep rate, r, budget) so the "
        "model counts RATIO x the dense GMACs (within 1 %, else the closest), e.g. 0.65.", metavar="RATIO",
        shown=False)
    # set from Python, or by the command from other flags
    recipe: dict[str, Any] = setting(help="recipe keys over the method's recipe (vitprune.train.recipe.Recipe: lr, "
                                     "warmup_epochs, kd_weight, frozen, augment...; an unknown key is an error).",
                                     cli=False, factory=dict)
    calibrate: bool = setting(True, "after training, let the method choose its data-dependent run-time defaults on "
                              "training images (SaiT's adaptive threshold); skipped when one of them was given.",
                              cli=False)
    command: Optional[str] = setting(None, "the command that made the model, recorded in report.json and the card "
                                     "(redacted).", cli=False)
    #: where the recipe keys the caller set came from when not from the caller itself ({key: "config file"});
    #: recorded in the recipe's sources instead of "user"
    sources: dict[str, str] = setting(help="where recipe keys came from when not from the caller ({key: 'config "
                                      "file'}).", cli=False, factory=dict)
    method_options: dict[str, Any] = setting(help="the method's options by name (keep_rate, r...).", cli=False,
                                             factory=dict)

    def check(self) -> None:
        """The types and ranges of the run's own settings (``MethodOptionError`` in one line)."""
        check_ranges(self)
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float))
                                        or self.epochs < 0):
            raise MethodOptionError(f"`epochs` must be >= 0, got {self.epochs!r}.")
        if self.keep_best and not self.eval_every:
            raise MethodOptionError("`keep_best` picks the epoch with the best val top-1: it needs validation during "
                                    "training (`eval_every` 1 or more).")

    def user_recipe(self) -> dict[str, Any]:
        """The recipe keys the caller set (``recipe``, plus ``epochs`` and ``augment=False``)."""
        user = dict(self.recipe or {})
        if self.epochs is not None:
            user["epochs"] = self.epochs
        if not self.augment:
            user["augment"] = None
        return user


# ------------------------------------------------------------------------------------------------ speed


@dataclass(frozen=True)
class SpeedSettings:
    """How models are timed, side by side (``vitprune.profile``, ``vitprune.sweep``, ``compress``'s report)."""

    device: Optional[str] = setting(None, "cuda, cuda:N or cpu (default: cuda when available).")
    dtype: Optional[str] = setting(None, "fp16, bf16 or fp32 (default: fp16 autocast on GPU, fp32 on CPU).")
    batch_size: Optional[int] = setting(None, "throughput batch size (default 256 on GPU, 32 on CPU).", min=1)
    repeats: Optional[int] = setting(None, "timed rounds, every model interleaved in each (default 10 on GPU, 6 on "
                                     "CPU; the median is reported).", min=1)
    speed: bool = setting(True, "no timing: parameters and GMACs (and accuracy where measured) only.", negated=True,
                          off=False)
    latency: bool = setting(True, "skip the batch-1 latency timing.", negated=True, off=False)
    compile: Optional[str] = setting(None, "time the models through vitprune.optimize in this mode: auto (CUDA "
                                     "graphs + compile on GPU, compile on CPU), compile, cudagraphs, max-autotune, "
                                     "none.", flag="--compile-mode", metavar="MODE")
    runtime: str = setting("torch", "torch, or onnxruntime: export the models to ONNX (pruning inside, token counts "
                           "checked) and time the files in ONNX Runtime with torch's thread count. Needs "
                           "vitprune[export].")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> tuple["SpeedSettings", dict[str, Any]]:
        """The speed settings among ``kwargs`` (the rest returned)."""
        mine, rest = split_kwargs(cls, kwargs)
        return cls(**mine), rest


# ------------------------------------------------------------------------------------------------ sweep


@dataclass
class SweepConfig:
    """What ``vitprune.sweep`` is asked: its keyword arguments, and ``vitprune sweep``'s flags (the values to sweep
    and the timing settings have flags of their own)."""

    model: Any = setting("demo", "dense model (timm name, hf-hub:, folder, 'demo') with a method, or a compressed "
                         "folder to sweep its run-time options.", cli=False)
    method: Optional[str] = setting(None, "the method to sweep.", cli=False)
    values: Sequence[Any] = setting((0.5, 0.6, 0.7, 0.8, 0.9), "the values of ``option``.", cli=False)
    option: Optional[str] = setting(None, "the method option the values set (default: its headline option).",
                                    cli=False)
    data: Optional[str] = setting(None, "add top-1 accuracy on this data's val split ('demo', a folder...).",
                                  short="-d")
    epochs: Optional[float] = setting(None, "fine-tune every point for this many epochs with `vitprune compress` "
                                      "(needs --data).")
    out: Optional[str] = setting("vitprune-sweep", "folder for sweep.json and pareto.png (None: nothing written).",
                                 short="-o")
    timing: SpeedSettings = setting(help="how the points are timed, and where they run (``SpeedSettings``).",
                                    cli=False, factory=SpeedSettings)
    plot: bool = setting(True, "write sweep.json and print the table only (no matplotlib needed).", negated=True)
    pretrained: bool = setting(True, "random weights (speed and GMACs only; download nothing).", flag="--no-weights",
                               negated=True)
    val_split: Optional[float] = setting(None, "held-out fraction for one-folder data.")
    eval_batch_size: int = setting(64, "images per batch when measuring accuracy.", cli=False)
    workers: int = setting(0, "data-loading worker processes.", cli=False)
    compress_options: Optional[dict[str, Any]] = setting(None, "more ``vitprune.compress`` keywords for the points "
                                                         "fine-tuned with ``epochs``.", cli=False)
    method_options: dict[str, Any] = setting(help="the method's other options, fixed.", cli=False, factory=dict)
    target_gmacs: Optional[Sequence[float]] = setting(None, "fractions of the dense GMACs: the values are solved for "
                                                      "these (replaces ``values``).", cli=False)

    @property
    def name(self) -> str:
        return self.model if isinstance(self.model, str) else type(self.model).__name__

    @property
    def out_dir(self) -> Optional[Path]:
        return Path(self.out) if self.out is not None else None


# ------------------------------------------------------------------------------------------------ export


@dataclass
class ExportSettings:
    """What ``vitprune.export`` is told besides the model and the method: its keyword arguments and ``vitprune
    export``'s flags."""

    format: Literal["onnx"] = setting("onnx", "file format.", short="-f")
    output: Optional[str] = setting(None, "file to write (default: DIR/model.onnx for a folder DIR, else "
                                    "vitprune-out/<model>[-<method>].onnx).", short="-o")
    batch_size: Optional[int] = setting(None, "fix the batch axis to N (default: dynamic).", min=1)
    dynamic_batch: bool = setting(False, "a dynamic batch axis, one file for any batch size (the default).",
                                  off=False)
    opset: Optional[int] = setting(None, "ONNX opset (default: the exporter's).", min=1)
    images: Optional[tuple[str, ...]] = setting(
        None, "an image file or demo:N to check the export on (repeatable; default: 8 demo digits through the "
        "model's own preprocessing).")
    check: bool = setting(True, "run ONNX Runtime against PyTorch on the images before the file is written.",
                          cli=False)
    measure: bool = setting(False, "also time the dense and the compressed ONNX files in ONNX Runtime, side by side "
                            "(recorded in report.json and the model card of a folder).", off=False)
    repeats: Optional[int] = setting(None, "--measure: timed repeats (median).", min=1)
    measure_batch_size: Optional[int] = setting(None, "``measure``: the throughput batch size (default: as "
                                                "``vitprune.profile``).", cli=False, min=1)
    quantize: Optional[Literal["int8", "int8-static"]] = setting(
        None, "also write the int8 file beside the fp32 one (model-int8.onnx): int8 (dynamic, no data) or "
        "int8-static (QDQ, calibrated on --calibrate-data). Its token schedule and accuracy are checked first.")
    calibrate_data: Optional[str] = setting(
        None, "int8-static: the images to calibrate on (any --data form; default: a saved folder's training data), "
        "through the model's preprocessing.")
    calibrate_images: Optional[int] = setting(None, "int8-static: how many train images to calibrate on (default "
                                              "64).", min=1)
    eval_data: Optional[str] = setting(None, "--quantize: top-1 of the fp32 and int8 files on this data's test "
                                       "split, side by side ('demo', a folder, hf:org/name...).")
    eval_split: str = setting("test", "``eval_data``'s split the top-1s are measured on.", cli=False)
    max_drop: Optional[float] = setting(
        None, "--quantize: refuse an int8 file that loses more top-1 points than this (default 1.0; without "
        "--eval-data: its argmax disagreement with PyTorch on the check images).")
    force: bool = setting(False, "--quantize: write the int8 file even above --max-drop (the card says so).",
                          off=False)
    pretrained: bool = setting(True, "build the architecture with random weights; download nothing.",
                               flag="--no-weights", negated=True, off=False)
    target_gmacs: Optional[float] = same_as(CompressConfig, "target_gmacs")

    def validate(self) -> None:
        """Choices, ranges and the settings that go together, before anything is loaded (one line). (Not
        ``check``, as ``CompressConfig``'s: that is a setting here.)"""
        if self.batch_size is not None and self.dynamic_batch:
            raise UsageError("give `batch_size` N or `dynamic_batch`, not both.")
        check_ranges(self, ExportError)
        if self.quantize is None and (self.calibrate_data is not None or self.eval_data is not None or self.force):
            raise ExportError("--calibrate-data, --eval-data and --force go with --quantize int8 or int8-static.")
        if self.quantize == "int8" and self.calibrate_data is not None:
            raise ExportError("--calibrate-data calibrates static quantization: use --quantize int8-static.")


# ------------------------------------------------------------------------------------------------ push


@dataclass
class PushSettings:
    """What ``vitprune.push`` is told: its keyword arguments and ``vitprune push``'s flags (the token is a keyword of
    its own, never a setting that could be printed)."""

    folder: str = setting(dataclasses.MISSING, "a folder saved by vitprune (e.g. the output of `vitprune "
                          "compress`).", cli=False)
    repo: str = setting(dataclasses.MISSING, "Hub repo to upload to, as user/name (created if needed).", cli=False)
    private: bool = setting(False, "create the repo as private.", off=False)
    revision: Optional[str] = setting(None, "branch to push to (created from main if missing; default main).")
    dry_run: bool = setting(False, "list the files and print the model card that would go; send nothing.",
                            off=False)
    commit_message: Optional[str] = setting(None, "commit message.", flag="--message", short="-m")
    include: tuple[str, ...] = setting(
        (), "also send files matching this glob, relative to the folder (repeatable), e.g. teacher, "
        "'samples/*.png'; still only files inside the folder.")
    include_onnx: bool = setting(False, "upload model.onnx too, exported into the folder first when missing "
                                 "(`vitprune export`; needs vitprune[export]).", off=False)


# ------------------------------------------------------------------------------------------------ reserved names

#: the keyword arguments of the jobs that take a method's options as keywords (``vitprune.compress``, ``profile``,
#: ``sweep``, ``export``, ``visualize``) besides the fields of the settings above (a test keeps this list whole)
JOB_KEYWORDS = ("progress", "dry_run", "pretrained", "timing", "on_step", "onnx_files", "calibration", "values",
                "option", "out", "plot", "eval_batch_size", "compress_options", "blocks", "dpi")


def reserved_names() -> frozenset[str]:
    """Names a method option cannot have: a job would take the keyword as its own setting
    (``vitprune.compress(seed=1)`` is the run's seed), so the registry refuses such an option."""
    return (frozenset(field_names(CompressConfig)) | frozenset(field_names(SpeedSettings))
            | frozenset(field_names(SweepConfig)) | frozenset(field_names(ExportSettings)) | frozenset(JOB_KEYWORDS))
