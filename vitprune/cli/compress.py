"""`vitprune compress`: parse the flags, call ``vitprune.compress``, render progress and the final table."""
from __future__ import annotations

import sys
import time
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ._options import method_options
from .catalog import recipe_help
from .common import AllowLargeOpt, MethodOpt, Steps, TargetGmacsOpt, as_flags, err, is_main_process, out, print_json

_HELP = recipe_help()


def _recipe(key: str, more: str = "") -> str:
    """A recipe flag's help: the ``Recipe`` field's own help text (declared once, there)."""
    return _HELP[key] + more + "."
_TRAIN = "Training"
_RECIPE = "Recipe (defaults: the method's paper recipe; see config.json after a run)"
_AUG = "Augmentation"
_RUN = "Run control"


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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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
        from .recipe_file import config_defaults

        ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx.command, value)}
    return value


#: the command's settings that --print-config shows besides the plan (the rest only steer this invocation)
_SHOWN = ("teacher", "teacher_epochs", "new_head", "val_split", "streaming", "batch_size", "accum_steps", "workers",
          "seed", "save_every", "max_steps", "eval_every", "keep_checkpoints", "keep_best", "logger", "no_speed",
          "profile_batch_size", "push_to", "private", "export", "quantize")
#: the command's augmentation flags: recorded as the recipe key ``augment``
_AUG_FLAGS = ("no_augment", "hflip", "scale", "ratio", "color_jitter", "auto_augment", "re_prob")


@method_options()
def compress(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(
        help="timm model name, hf-hub:org/repo, a local folder, or 'demo' (the bundled teacher).")] = "demo",
    method: MethodOpt = None,
    data: Annotated[str, typer.Option(
        "--data", "-d", help="'demo', an ImageFolder-style folder (train/ and val/, or one folder with "
        "--val-split), a folder saved with datasets' save_to_disk, a folder with train/ and val/ webdataset .tar "
        "shards, or hf:org/name (a Hub dataset). Trains on train, evaluates on val; a test split is never read.")] \
        = "demo",
    streaming: Annotated[bool, typer.Option(
        "--streaming/--no-streaming", help="read an hf:org/name dataset as a stream.")] = False,
    val_split: Annotated[Optional[float], typer.Option(
        help="hold out this fraction of each class as val (one folder / one split; seed 0). Default 0.1 there.")]
        = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="output folder (default vitprune-out/<model>-<method>-<setting>, e.g. "
        "demo-evit-keep0.7).")] = None,
    teacher: Annotated[Optional[str], typer.Option(
        help="teacher model (default: the dense MODEL). Its head must fit the data's classes.")] = None,
    teacher_epochs: Annotated[Optional[float], typer.Option(
        help="epochs of fine-tuning the dense model first when its head had to be replaced (default: --epochs).")]
        = None,
    new_head: Annotated[bool, typer.Option(
        "--new-head/--no-new-head", help="replace the head even when the data's classes fit it (e.g. matched by count only) and "
        "fine-tune the dense model first as the teacher.")] = False,
    epochs: Annotated[Optional[float], typer.Option(
        help="training epochs (default: the method's recipe; 10 on the demo data).", rich_help_panel=_TRAIN)] = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="images per step per process.", rich_help_panel=_TRAIN)] = 64,
    accum_steps: Annotated[int, typer.Option(
        min=1, help="gradient accumulation: micro-batches per optimizer step.", rich_help_panel=_TRAIN)] = 1,
    workers: Annotated[int, typer.Option(min=0, help="data-loading worker processes.", rich_help_panel=_TRAIN)] = 0,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same result).", rich_help_panel=_TRAIN)] = 0,
    device: Annotated[Optional[str], typer.Option(
        help="cuda or cpu (default: cuda when available).", rich_help_panel=_TRAIN)] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="auto (bf16 on GPUs that support it, else fp16 with a grad scaler; fp32 on CPU), fp32, bf16, fp16.",
        rich_help_panel=_TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help=_recipe("lr"), rich_help_panel=_RECIPE)]
        = None,
    lr_batch_ref: Annotated[Optional[int], typer.Option(help=_recipe("lr_batch_ref"), rich_help_panel=_RECIPE)]
        = None,
    backbone_lr_scale: Annotated[Optional[float], typer.Option(
        help=_recipe("backbone_lr_scale"), rich_help_panel=_RECIPE)] = None,
    freeze_backbone_epochs: Annotated[Optional[float], typer.Option(
        help=_recipe("freeze_backbone_epochs"), rich_help_panel=_RECIPE)] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(
        help=_recipe("warmup_epochs"), rich_help_panel=_RECIPE)] = None,
    warmup_lr: Annotated[Optional[float], typer.Option(help=_recipe("warmup_lr"), rich_help_panel=_RECIPE)]
        = None,
    min_lr: Annotated[Optional[float], typer.Option(help=_recipe("min_lr"), rich_help_panel=_RECIPE)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help=_recipe("weight_decay"), rich_help_panel=_RECIPE)] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        help=_recipe("optimizer", "; default adamw"), rich_help_panel=_RECIPE)] = None,
    layer_decay: Annotated[Optional[float], typer.Option(
        help=_recipe("layer_decay"), rich_help_panel=_RECIPE)] = None,
    kd_weight: Annotated[Optional[float], typer.Option(
        help=_recipe("kd_weight"), rich_help_panel=_RECIPE)] = None,
    kd_temperature: Annotated[Optional[float], typer.Option(
        help=_recipe("kd_temperature"), rich_help_panel=_RECIPE)] = None,
    cls_weight: Annotated[Optional[float], typer.Option(
        help=_recipe("cls_weight"), rich_help_panel=_RECIPE)] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(
        help=_recipe("label_smoothing"), rich_help_panel=_RECIPE)] = None,
    frozen: Annotated[Optional[str], typer.Option(
        help=_recipe("frozen", ", as a comma list (e.g. cls_token,pos_embed); 'none' for none"),
        rich_help_panel=_RECIPE)] = None,
    train_mode_eval: Annotated[Optional[bool], typer.Option(
        "--train-mode-eval/--no-train-mode-eval", help=_recipe("train_mode_eval"),
        rich_help_panel=_RECIPE)] = None,
    drop_path: Annotated[Optional[float], typer.Option(
        help=_recipe("drop_path"), rich_help_panel=_RECIPE)] = None,
    clip_grad: Annotated[Optional[float], typer.Option(
        help=_recipe("clip_grad"), rich_help_panel=_RECIPE)] = None,
    no_augment: Annotated[bool, typer.Option(
        "--no-augment/--augment", help="train on the evaluation transform (no random crops/flips).", rich_help_panel=_AUG)]
        = False,
    hflip: Annotated[Optional[float], typer.Option(
        help="horizontal flip probability (default 0.5; 0 on the digits).", rich_help_panel=_AUG)] = None,
    scale: Annotated[Optional[str], typer.Option(
        help="random-resized-crop area range MIN,MAX (default 0.08,1).", rich_help_panel=_AUG)] = None,
    ratio: Annotated[Optional[str], typer.Option(
        help="random-resized-crop aspect range MIN,MAX.", rich_help_panel=_AUG)] = None,
    color_jitter: Annotated[Optional[float], typer.Option(rich_help_panel=_AUG)] = None,
    auto_augment: Annotated[Optional[str], typer.Option(
        help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1.", rich_help_panel=_AUG)] = None,
    re_prob: Annotated[Optional[float], typer.Option(help="random erasing probability.", rich_help_panel=_AUG)]
        = None,
    resume: Annotated[bool, typer.Option(
        help="continue the run in --output from its last checkpoint.", rich_help_panel=_RUN)] = False,
    overwrite: Annotated[bool, typer.Option(
        help="replace the finished model in --output, or discard an unfinished run's checkpoints, and start over.",
        rich_help_panel=_RUN)] = False,
    save_every: Annotated[Optional[int], typer.Option(
        min=1, help="also checkpoint every N optimizer steps (always at each epoch end).", rich_help_panel=_RUN)]
        = None,
    max_steps: Annotated[Optional[int], typer.Option(
        min=1, help="stop after N optimizer steps with a checkpoint (--resume finishes).", rich_help_panel=_RUN)]
        = None,
    eval_every: Annotated[int, typer.Option(
        min=0, help="validate every N epochs during training (0: only at the end).", rich_help_panel=_RUN)] = 1,
    keep_checkpoints: Annotated[bool, typer.Option(
        help="keep checkpoints/ after a finished run.", rich_help_panel=_RUN)] = False,
    keep_best: Annotated[bool, typer.Option(
        "--keep-best/--no-keep-best", help="save the epoch with the best val top-1 (kept in checkpoints/best.pt while training), not "
        "the last; report.json records best_epoch.", rich_help_panel=_RUN)] = False,
    logger: Annotated[Optional[list[str]], typer.Option(
        "--logger", help="also log each epoch under OUT/logs: tensorboard (extra: vitprune\\[logs]), csv "
        "(summary.csv), wandb (if installed); repeatable or a comma list.", rich_help_panel=_RUN)] = None,
    no_speed: Annotated[bool, typer.Option(
        "--no-speed/--speed", help="skip the throughput/latency timing in the report.", rich_help_panel=_RUN)] = False,
    profile_batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="throughput batch size (default 256 on GPU, 32 on CPU).", rich_help_panel=_RUN)] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet/--no-quiet", "-q", help="plain log lines instead of progress bars.", rich_help_panel=_RUN)] = False,
    json_out: Annotated[bool, typer.Option(
        "--json/--no-json", help="print report.json at the end instead of the table.", rich_help_panel=_RUN)] = False,
    push_to: Annotated[Optional[str], typer.Option(
        help="after saving, upload the folder to this Hub repo (user/name) as `vitprune push` does.",
        rich_help_panel=_RUN)] = None,
    private: Annotated[bool, typer.Option(
        help="with --push-to: create the repo private.", rich_help_panel=_RUN)] = False,
    export: Annotated[Optional[str], typer.Option(
        "--export", help="after saving, also write OUT/model.onnx (onnx; as `vitprune export OUT --measure`).",
        rich_help_panel=_RUN)] = None,
    quantize: Annotated[Optional[str], typer.Option(
        "--quantize", metavar="MODE", help="with --export onnx: also write OUT/model-int8.onnx (int8: dynamic; "
        "int8-static: calibrated on the training data), checked as `vitprune export OUT --quantize MODE`.",
        rich_help_panel=_RUN)] = None,
    config: Annotated[Optional[str], typer.Option(
        "--config", "-c", is_eager=True, callback=_load_config, rich_help_panel=_RUN,
        help="read settings from a YAML recipe file (keys: these long option names with underscores, e.g. "
        "keep_rate: 0.7); flags given here win over it.")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="print the settings that would run (recipe resolved) as YAML and exit.",
        rich_help_panel=_RUN)] = False,
    target_gmacs: TargetGmacsOpt = None,
    allow_large: AllowLargeOpt = False,
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

    import logging

    logging.getLogger("vitprune").addHandler(logging.NullHandler())  # warnings reach the user as events
    reporter = Reporter(plain=quiet or json_out, silent=not is_main_process())
    t0 = time.perf_counter()
    try:
        from ..compression import compress as run_compress  # deferred: CLI startup

        recipe: dict[str, Any] = {k: v for k, v in {
            "lr": lr, "lr_batch_ref": lr_batch_ref, "backbone_lr_scale": backbone_lr_scale,
            "freeze_backbone_epochs": freeze_backbone_epochs, "warmup_epochs": warmup_epochs,
            "warmup_lr": warmup_lr, "min_lr": min_lr, "weight_decay": weight_decay, "optimizer": optimizer,
            "layer_decay": layer_decay, "kd_weight": kd_weight,
            "kd_temperature": kd_temperature, "cls_weight": cls_weight, "label_smoothing": label_smoothing,
            "train_mode_eval": train_mode_eval, "drop_path": drop_path, "clip_grad": clip_grad,
        }.items() if v is not None}
        if frozen is not None:
            recipe["frozen"] = [] if frozen.strip().lower() in ("", "none") else [
                f.strip() for f in frozen.split(",") if f.strip()]
        aug = {k: v for k, v in {
            "hflip": hflip, "scale": _floats(scale, "scale"), "ratio": _floats(ratio, "ratio"),
            "color_jitter": color_jitter, "auto_augment": auto_augment, "re_prob": re_prob}.items()
            if v is not None}
        if aug and not no_augment:
            recipe["augment"] = aug
        sources = {}
        if config is not None:
            from .recipe_file import from_file

            filed = from_file(ctx)
            sources = {("augment" if k in _AUG_FLAGS else k): "config file" for k in filed}
        settings = dict(
            teacher=teacher, epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, workers=workers, seed=seed,
            device=device, precision=precision, val_split=val_split, recipe=recipe, augment=not no_augment,
            teacher_epochs=teacher_epochs, resume=resume, overwrite=overwrite, save_every=save_every,
            max_steps=max_steps, eval_every=eval_every, keep_checkpoints=keep_checkpoints, speed=not no_speed,
            profile_batch_size=profile_batch_size, command=_command_line(), push_to=push_to, private=private,
            new_head=new_head, export=export, quantize=quantize, streaming=streaming, target_gmacs=target_gmacs,
            keep_best=keep_best,
            loggers=logger or (),
            sources=sources, **method_options)
        if print_config:
            from .recipe_file import settings_yaml

            plan = run_compress(model, method, data, output, dry_run=True, **settings)
            shown = {k: v for k, v in locals().items() if k in _SHOWN}
            shown["logger"] = list(logger or [])
            sys.stdout.write(settings_yaml(plan, shown))
            return
        result = run_compress(model, method, data, output, progress=reporter, **settings)
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
    from ..report.tables import compress_table  # deferred: CLI startup

    out.print(compress_table(result.report))
    m = result.metrics
    quality = f"top-1 {m['top1']:.2f} % vs dense {m['dense_top1']:.2f} % ({m['delta_top1']:+.2f} pt)" \
        if m.get("top1") is not None else f"cosine {m['cosine']:.4f} to the dense model's embeddings"
    out.print(f"Saved {result.output} (model, config.json with recipe and metrics, report.json, train_log.jsonl) "
              f"in {_hms(time.perf_counter() - t0)}: {quality}, {m['gmacs'] / m['dense_gmacs']:.2f}× the GMACs.",
              markup=False, highlight=False)
    if result.pushed is not None:
        out.print(f"Pushed: {result.pushed.url} · load it with vitprune.load(\"hf-hub:{result.pushed.repo_id}\")",
                  markup=False, highlight=False)


def _command_line() -> str:
    """The command as typed (`vitprune compress ...`), for report.json and the model card; empty when the
    process was not started as `vitprune compress` (e.g. under a test runner), and the card then rebuilds it."""
    import shlex
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "compress":
        return ""
    return shlex.join(["vitprune", *args])
