"""`vitprune compress`: parse the flags, call ``vitprune.compress``, render progress and the final table."""
from __future__ import annotations

import logging
import shlex
import sys
import time
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ..settings import AUGMENT, RUN, CompressConfig, flags, help_of
from ._options import method_options, recipe_flags, run_settings
from .common import AllowLargeOpt, MethodOpt, Steps, as_flags, err, is_main_process, out, print_json
from .recipe_file import config_defaults, from_file, settings_yaml


def shown_settings(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The settings ``--print-config`` prints besides the plan, by recipe-file key (``no_speed``, ``logger``)."""
    return {f.param: f.as_given(values[f.field]) for f in flags(cls) if f.shown}


def _floats(text: Optional[str], name: str) -> Optional[list[float]]:
    if text is None:
        return None
    from ..errors import UsageError  # deferred: CLI startup

    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 2:
        raise UsageError(f"`{name}` takes two numbers MIN,MAX, got {text!r}.")
    return vals


class Reporter:
    """Renders ``compress`` progress events: rich progress bars on a terminal, plain lines otherwise (--quiet, or
    stderr not a terminal): then each stage and each epoch has a line when it starts and one when it ends."""

    def __init__(self, plain: bool, silent: bool = False):
        self.plain = plain or not err.is_terminal
        self.silent = silent
        self.bar = None
        self.task = None
        self.stages = Steps(err, live=False, after=0)  # each stage's start and end line, when plain

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            err.print(text, highlight=False)

    def __call__(self, e: dict[str, Any]) -> None:
        if self.silent:
            return
        kind = e["event"]
        stage = e.get("stage")
        label = "teacher " if stage == "teacher" else ""
        if kind == "stage" and self.plain:
            self.stages.start(e["message"])
        elif kind in ("stage", "info"):
            if kind == "stage" and e.get("name") in ("evaluating", "profiling", "saving"):
                self.close()
            self._line(("· " if kind == "info" else "") + escape(e["message"]))
        elif kind == "warning":
            self._line(f"[yellow]warning:[/] {escape(e['message'])}")
        elif kind == "resumed":
            self._line(f"resumed at step {e['step']}/{e['total_steps']}")
        elif kind == "epoch_start":
            epochs = e["epochs"]
            desc = f"{label}epoch {e['epoch'] + 1}/{epochs:g}"
            if not self.plain:
                self._ensure_bar()
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(desc, total=e["steps"], completed=e["step"], loss="", speed="", eta="")
            else:
                self._line(f"{desc}: {e['steps'] - e['step']} steps …")
        elif kind == "step" and not self.plain and self.bar is not None and self.task is not None:
            eta = e.get("eta_s")
            self.bar.update(self.task, completed=e["step"], loss=f"loss {e['loss']:.4f}",
                            speed=f"{e['img_s']:.0f} img/s" if e.get("img_s") else "",
                            eta=f"ETA {_hms(eta)}" if eta is not None else "")
        elif kind == "epoch_end":
            parts = [f"{label}epoch {e['epoch']}", f"loss {e.get('loss', float('nan')):.4f}"]
            for k in ("cls", "kd", "feat"):
                if k in e:
                    parts.append(f"{k} {e[k]:.4f}")
            aux = [k for k in e if k not in _EPOCH_KEYS]
            parts += [f"{k} {e[k]:.4f}" for k in aux if isinstance(e[k], float)]
            if "val_top1" in e:
                parts.append(f"val top-1 {e['val_top1']:.2f} %")
            if "val_cosine" in e:
                parts.append(f"val cosine {e['val_cosine']:.4f}")
            if e.get("img_per_s"):
                parts.append(f"{e['img_per_s']:.0f} img/s")
            parts.append(f"{e['seconds']:.1f} s")
            self._line("  ".join(parts))
        elif kind == "best":
            what = f"val top-1 {e['val_top1']:.2f} %" if "val_top1" in e else f"val cosine {e['val_cosine']:.4f}"
            self._line(f"· best so far: epoch {e['epoch']} ({what})")
        elif kind == "stopped":
            self.close()

    def _ensure_bar(self) -> None:
        if self.bar is not None:
            return
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
            TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[eta]}"), console=err, transient=True)
        self.bar.start()

    def finish(self) -> None:
        """The run ended: the last stage's end line."""
        if not self.silent:
            self.stages.end()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None


_EPOCH_KEYS = {"event", "stage", "epoch", "steps", "loss", "cls", "kd", "lr", "images", "seconds", "img_per_s",
               "skipped_images", "val_top1", "val_top5", "val_loss", "val_cosine", "feat"}


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------------------------------ compress


def _load_config(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
    """``--config`` (eager: before the other flags): the file's values become the command's defaults."""
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx.command, value)}
    return value


#: the command's augmentation flags: recorded as the recipe key ``augment``
_AUG_FLAGS = ("no_augment", "hflip", "scale", "ratio", "color_jitter", "auto_augment", "re_prob")


@method_options()
@recipe_flags()
@run_settings(CompressConfig)
def compress(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help=help_of(CompressConfig, "model"))] = "demo",
    method: MethodOpt = None,
    hflip: Annotated[Optional[float], typer.Option(
        help="horizontal flip probability (default 0.5; 0 on the digits).", rich_help_panel=AUGMENT)] = None,
    scale: Annotated[Optional[str], typer.Option(
        help="random-resized-crop area range MIN,MAX (default 0.08,1).", rich_help_panel=AUGMENT)] = None,
    ratio: Annotated[Optional[str], typer.Option(
        help="random-resized-crop aspect range MIN,MAX.", rich_help_panel=AUGMENT)] = None,
    color_jitter: Annotated[Optional[float], typer.Option(
        help="color jitter strength.", rich_help_panel=AUGMENT)] = None,
    auto_augment: Annotated[Optional[str], typer.Option(
        help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1.", rich_help_panel=AUGMENT)] = None,
    re_prob: Annotated[Optional[float], typer.Option(help="random erasing probability.", rich_help_panel=AUGMENT)]
        = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet/--no-quiet", "-q", help="plain log lines instead of progress bars.", rich_help_panel=RUN)] = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json", help="print report.json at the end instead of the table.", rich_help_panel=RUN)] = False,
    config: Annotated[Optional[str], typer.Option(
        "--config", "-c", is_eager=True, callback=_load_config, rich_help_panel=RUN,
        help="read settings from a YAML recipe file (keys: these long option names with underscores, e.g. "
        "keep_rate: 0.7); flags given here win over it.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="print the settings that would run (recipe resolved) as YAML and exit.",
        rich_help_panel=RUN)] = False,
    allow_large: AllowLargeOpt = False,
    settings: dict[str, Any] = {},  # noqa: B006 - replaced by the run settings' flags (vitprune.settings)
    recipe: dict[str, Any] = {},  # noqa: B006 - replaced by the recipe keys' flags
    method_options: dict[str, Any] = {},  # noqa: B006 - replaced by the method flags (see _options)
) -> None:
    """Patch MODEL with a method, fine-tune it with distillation on your data, measure it and save it.

    With no arguments: the bundled demo teacher and digits, DynamicViT at keep rate 0.7, a short CPU schedule.
    Under `torchrun --nproc_per_node N -m vitprune compress ...` it trains with DistributedDataParallel (give
    ToMe's r as --tome-r there: torchrun takes --r for its own --rdzv-* flags).
    A model without a classifier (a CLIP or SigLIP vision tower, num_classes 0) keeps its output: the student
    learns the dense teacher's embedding by cosine distance (--kd-weight x (1 - cos)), labels unused, and
    validation reports the cosine agreement instead of top-1 (--new-head puts a classifier on it instead).
    """
    from ..train.loop import TrainingInterrupted  # deferred: CLI startup

    logging.getLogger("vitprune").addHandler(logging.NullHandler())  # warnings reach the user as events
    reporter = Reporter(plain=quiet or json_out, silent=not is_main_process())
    t0 = time.perf_counter()
    try:
        from ..compression import compress as run_compress  # deferred: CLI startup

        aug = {k: v for k, v in {
            "hflip": hflip, "scale": _floats(scale, "scale"), "ratio": _floats(ratio, "ratio"),
            "color_jitter": color_jitter, "auto_augment": auto_augment, "re_prob": re_prob}.items()
            if v is not None}
        if aug and settings["augment"]:
            recipe = {**recipe, "augment": aug}
        sources = {}
        if config is not None:
            sources = {("augment" if k in _AUG_FLAGS else k): "config file" for k in from_file(ctx)}
        run = dict(settings, recipe=recipe, command=_command_line(), sources=sources, **method_options)
        if print_config:
            plan = run_compress(model, method, dry_run=True, **run)
            sys.stdout.write(settings_yaml(plan, shown_settings(CompressConfig, settings)))
            return
        result = run_compress(model, method, progress=reporter, **run)
        reporter.finish()
    except TrainingInterrupted as e:
        reporter.close()
        if is_main_process():
            err.print(f"Interrupted: {as_flags(e.message)}", markup=False, highlight=False)
        raise typer.Exit(128 + e.signum) from None  # 130 for Ctrl-C, 143 for SIGTERM
    finally:
        reporter.close()
    if not is_main_process():
        return
    if not result.finished:
        err.print(f"Stopped after {result.steps}/{result.total_steps} steps (--max-steps); checkpoint "
                  f"{result.checkpoint}; run the same command with --resume to finish.", markup=False, highlight=False)
        return
    if json_out:
        print_json(result.report)
        return
    _summary(result, time.perf_counter() - t0)


def _summary(result: Any, seconds: float) -> None:
    """The report table and the one line that says what was saved (and pushed)."""
    from ..report.tables import compress_table  # deferred: CLI startup

    out.print(compress_table(result.report))
    m = result.metrics
    quality = f"top-1 {m['top1']:.2f} % vs dense {m['dense_top1']:.2f} % ({m['delta_top1']:+.2f} pt)" \
        if m.get("top1") is not None else f"cosine {m['cosine']:.4f} to the dense model's embeddings"
    out.print(f"Saved {result.output} (model, config.json with recipe and metrics, report.json, train_log.jsonl) "
              f"in {_hms(seconds)}: {quality}, {m['gmacs'] / m['dense_gmacs']:.2f}× the GMACs.",
              markup=False, highlight=False)
    if result.pushed is not None:
        out.print(f"Pushed: {result.pushed.url} · load it with vitprune.load(\"hf-hub:{result.pushed.repo_id}\")",
                  markup=False, highlight=False)


def _command_line() -> str:
    """The command as typed (`vitprune compress ...`), for report.json and the model card; empty when the
    process was not started as `vitprune compress` (e.g. under a test runner), and the card then rebuilds it."""
    args = sys.argv[1:]
    if not args or args[0] != "compress":
        return ""
    return shlex.join(["vitprune", *args])
