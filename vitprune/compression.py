"""``vitprune.compress``: patch a pretrained ViT with a token method, fine-tune it with distillation from the dense
model on a dataset, evaluate and profile dense vs compressed, save the result as a Hub model folder.

>>> result = vitprune.compress()                       # demo teacher, demo digits, DynamicViT, a short schedule
>>> result = vitprune.compress("deit_small_patch16_224", "evit", data="imagenet/", keep_rate=0.7, epochs=30)

The output folder (default ``vitprune-out/<model>-<method>-<setting>``, e.g. ``demo-evit-keep0.7``) holds the model
(``model.safetensors``, ``config.json`` with the method, base model, the recipe used and the metrics in its
``vitprune`` section, ``README.md``), ``report.json`` (dense vs compressed: top-1/top-5/loss, GMACs, parameters,
throughput and latency with device, dtype and batch size), ``train_log.jsonl`` (one line per epoch) and, while a
run is unfinished, ``checkpoints/`` (``resume=True`` continues from there). One run holds the folder at a time (its
lock, ``vitprune.hub.lock``); a folder with a finished model is only trained into again with ``overwrite=True``.
What these files record travels with the model (``vitprune push``), so they name the data, the output and the base
model without this machine's paths (``vitprune.report.redact``).

Everything that can be checked is checked before the first training step: the push target (repo name, token),
the output folder (writable, not a file, not holding a finished model), the device, the method options (types
and values), the data (at least two classes), the head and the augmentation (timm builds it once).

The head and the data's classes (see ``vitprune.data.match_head``): labels are mapped onto the head by name or
index when they fit. When they do not, and no ``teacher`` is given, the head is replaced by a new one with one
output per class and the dense model is first fine-tuned on the data with labels only (``teacher_epochs``,
default: as many as the distillation); that model (saved in ``OUTPUT/teacher``) is the teacher and the starting
point of the student. ``new_head=True`` does the same when the classes do fit (matched by count only, with other
label names: a loud warning says so). With ``teacher`` given, its head must fit the data; the student's head is
replaced to match the teacher's outputs if they differ.
"""
from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .errors import DataError, DeviceError, MethodOptionError, OutputFolderError, PushError, VitpruneError

log = logging.getLogger("vitprune")

#: the method `vitprune compress` uses when none is given (the first registered one if it is missing)
DEFAULT_METHOD = "dynamicvit"
DEFAULT_BATCH_SIZE = 64
CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"
REPORT_NAME = "report.json"


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


def default_method() -> str:
    from .methods import method_names

    names = method_names()
    if DEFAULT_METHOD in names:
        return DEFAULT_METHOD
    if not names:  # pragma: no cover - the registry always has EViT
        raise MethodOptionError("no token method is installed.")
    return names[0]


def model_slug(spec: str) -> str:
    name = spec.split(":", 1)[1] if spec.startswith(("hf-hub:", "local-dir:")) else spec
    name = Path(name.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def default_output(model: str, method: str, options: Any) -> Path:
    """``vitprune-out/<model>-<method>-<headline setting>``: ``demo-evit-keep0.7``, ``demo-tome-r8``... so runs
    of other settings never share a folder."""
    from .methods.base import headline

    short = headline(options)
    name = f"{model_slug(model)}-{method}" + (f"-{short}" if short else "")
    return Path("vitprune-out") / re.sub(r"[^A-Za-z0-9._-]+", "-", name)


# ---------------------------------------------------------------------------------------------- early checks


def check_push_target(repo: str) -> str:
    """Before any training: the repo name is valid and a token is there (``push_to``); returns the repo id.
    The token itself is never read out or shown."""
    from huggingface_hub import constants, get_token

    from .hub.push import check_repo_id

    repo_id = check_repo_id(repo)
    if constants.HF_HUB_OFFLINE:
        raise PushError(f"--push-to {repo_id} needs the network but HF_HUB_OFFLINE is set; unset it, or compress "
                        "now and `vitprune push` later.")
    if not get_token():
        raise PushError(f"--push-to {repo_id} needs a Hugging Face token with write access: set HF_TOKEN or run "
                        "`hf auth login` before training starts.")
    return repo_id


def check_output(out: Path) -> None:
    """The output folder can be made here: not an existing file, no file in its way, and writable (checked by
    writing a temporary file in it, or in its nearest existing parent, which is removed at once)."""
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--output {out} is a file; give a folder (created if needed).")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputFolderError(f"cannot create --output {out}: {probe} is a file.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputFolderError(f"cannot write to {probe} ({e.strerror or type(e).__name__}); give a writable "
                                "--output.") from None


def check_augment(model: nn.Module, augment: Optional[dict[str, Any]]) -> None:
    """Build the training transform once, so that an augmentation timm refuses (an unknown ``--auto-augment``
    policy...) is one line now rather than a traceback when the first batch is read."""
    if augment is None:
        return
    from .data import train_transform

    try:
        train_transform(model, augment)
    except (AssertionError, ValueError, KeyError, TypeError, IndexError) as e:
        policy = augment.get("auto_augment")
        what = f"--auto-augment {policy!r}" if policy else "the augmentation settings"
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
    """What the output folder already holds against --resume / --overwrite: a finished model is kept unless
    --overwrite; an unfinished run (checkpoints) is continued with --resume or discarded with --overwrite. What
    counts is what process 0 sees (under torchrun on several nodes the others may have disks of their own).
    Returns, for the last checkpoint, the teacher checkpoint, the teacher folder's config and the model's config,
    whether process 0 found them."""
    from .train.ddp import broadcast_object

    ck_dir = out / CHECKPOINT_DIR
    places = (ck_dir / "last.pt", ck_dir / "teacher.pt", out / "teacher" / "config.json", out / "config.json")
    foreign = None
    if info.main:  # a config.json or README.md someone else wrote is never replaced
        from .hub.save import check_overwritable

        try:
            check_overwritable(out)
        except OutputFolderError as e:
            foreign = str(e)
    found, foreign = broadcast_object(info, ([p.is_file() for p in places], foreign))
    if foreign is not None:
        raise OutputFolderError(foreign)
    last, teacher_ck, teacher_done, finished = found
    unfinished = last or teacher_ck
    if resume:
        if not (unfinished or teacher_done):
            held = " (it holds a finished model: add --overwrite instead to train it again)" if finished else ""
            raise VitpruneError(f"--resume: {out} has no checkpoint to continue from{held}; run without --resume.")
    elif unfinished:
        if not overwrite:
            raise VitpruneError(f"{out} holds an unfinished run (checkpoints/); add --resume to continue it or "
                                "--overwrite to start over.")
    if finished and not overwrite and not resume:
        raise OutputFolderError(f"{out} already holds a finished model; add --overwrite to replace it (it stays "
                                "loadable until the new one is saved), or give another --output.")
    return dict(zip(places, found))


def hold_output(out: Path, info: Any, held: ExitStack) -> None:
    """Take the output folder's lock for the rest of the run (rank 0 under torchrun; every rank learns whether
    it got it, so all stop together when another run holds the folder)."""
    from .hub.lock import output_lock
    from .train.ddp import broadcast_object

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
        raise MethodOptionError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("fp16 training needs a GPU; on CPU use --precision fp32 (or bf16).")
    return precision


def _replace_head(model: nn.Module, classes: list[str]) -> None:
    model.reset_classifier(len(classes))
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": len(classes), "label_names": list(classes)}


def _copy_head(dst: nn.Module, src: nn.Module) -> None:
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


def _emit(progress: Optional[Callable], kind: str, **data: Any) -> None:
    if progress is not None:
        progress({"event": kind, **data})


def compress(
    model: str = "demo",
    method: Optional[str] = None,
    data: str = "demo",
    output: Optional[str] = None,
    *,
    teacher: Optional[str] = None,
    epochs: Optional[float] = None,
    batch_size: Optional[int] = None,
    accum_steps: int = 1,
    workers: int = 0,
    seed: int = 0,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    val_split: Optional[float] = None,
    recipe: Optional[dict[str, Any]] = None,
    augment: bool = True,
    teacher_epochs: Optional[float] = None,
    resume: bool = False,
    overwrite: bool = False,
    save_every: Optional[int] = None,
    max_steps: Optional[int] = None,
    eval_every: int = 1,
    keep_checkpoints: bool = False,
    speed: bool = True,
    profile_batch_size: Optional[int] = None,
    progress: Optional[Callable[[dict[str, Any]], None]] = None,
    calibrate: bool = True,
    command: Optional[str] = None,
    push_to: Optional[str] = None,
    private: bool = False,
    new_head: bool = False,
    export: Optional[str] = None,
    streaming: bool = False,
    **method_options: Any,
) -> CompressResult:
    """Compress ``model`` with ``method`` by distillation fine-tuning on ``data`` and save it in ``output``.

    ``recipe`` overrides recipe keys (``vitprune.train.recipe``: lr, warmup_epochs, kd_weight, frozen, augment...);
    ``epochs`` is a shortcut for ``recipe={"epochs": ...}``; ``augment=False`` trains on the evaluation transform.
    ``batch_size`` is per process (under torchrun the global batch is ``batch_size x processes x accum_steps``).
    ``max_steps`` stops after that many optimizer steps with a checkpoint (``finished=False``).
    ``progress`` receives event dicts (stage, epoch_start, step, epoch_end, checkpoint, warning, info...).
    ``calibrate``: after training, let the method choose its data-dependent run-time defaults on up to
    ``CALIBRATION_IMAGES`` training images (SaiT: the adaptive threshold for 40 % fewer GMACs); skipped when the
    caller set one of the method's run-time options. ``command`` is recorded in report.json and the model card as
    the way to make the model again (redacted: local paths as public names, no ``--resume``/``--overwrite``).
    ``push_to`` uploads the saved folder with :func:`vitprune.push` (its name and a token are checked before any
    training; a failed upload raises after the folder is saved, so nothing is lost). ``overwrite`` replaces a
    finished model in ``output`` or discards an unfinished run's checkpoints; ``new_head`` replaces the head and
    fine-tunes a teacher stage even when the classes fit. ``export="onnx"`` writes ``OUT/model.onnx``
    after saving (:func:`vitprune.export`: checked against PyTorch, timed in ONNX Runtime unless ``speed=False``).
    ``streaming`` reads a Hub dataset (``data="hf:org/name"``) as a stream.
    """
    from .data import eval_transform, head_error, load_data, match_head, prepare, train_transform
    from .hub import load_model, save
    from .methods import apply_method, create_method, dense_copy, get_method
    from .report.redact import public_command, public_model, public_spec, scrub
    from .train.ddp import barrier, broadcast_weights, setup, teardown
    from .train.loop import RunSettings, Trainer
    from .train.recipe import TEACHER_RECIPE, TRAINER_DEFAULTS, build_recipe

    t_start = time.perf_counter()
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    for name, v, lo in (("batch-size", batch_size, 1), ("accum-steps", accum_steps, 1), ("workers", workers, 0),
                        ("eval-every", eval_every, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise MethodOptionError(f"--{name} must be an integer >= {lo}, got {v!r}.")
    for name, v in (("save-every", save_every), ("max-steps", max_steps)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise MethodOptionError(f"--{name} must be an integer >= 1, got {v!r}.")
    if epochs is not None and (not isinstance(epochs, (int, float)) or epochs < 0):
        raise MethodOptionError(f"--epochs must be >= 0, got {epochs!r}.")

    if push_to:
        check_push_target(push_to)
    if export is not None:  # before any training: a missing extra or format is known now
        from .exporter.core import FORMATS
        from .exporter.graph import require_export_deps

        if export not in FORMATS:
            raise MethodOptionError(f"--export {export}: vitprune exports {', '.join(FORMATS)}.")
        require_export_deps()

    dist_info, dev = setup(device)
    held = ExitStack()
    try:
        prec = resolve_precision(precision, dev)
        if output:
            check_output(Path(output))
        loaded = load_model(model)
        existing = get_method(loaded)
        if existing is not None and method is not None:
            raise MethodOptionError(f"{model} is already compressed with {existing.name}; give its dense base model "
                                    "to compress it with another method.")
        method_name = existing.name if existing is not None else (method or default_method())
        if existing is not None and method_options:
            raise MethodOptionError(f"{model} is already compressed with {existing.describe()}; its options are "
                                    "fixed (give its dense base model to compress with other options).")
        if existing is not None and new_head:
            raise MethodOptionError(f"{model} is already compressed; --new-head replaces the head of a dense model "
                                    "(give its dense base model).")
        if new_head and teacher is not None:
            raise MethodOptionError("--new-head fine-tunes the dense model with a new head as the teacher; it does not "
                                    "go with --teacher (whose head must fit the data).")
        m_probe = existing if existing is not None else create_method(method_name, **method_options)
        dense = dense_copy(loaded) if existing is not None else loaded

        out = Path(output) if output else default_output(model, method_name, m_probe.options)
        if not output:
            check_output(out)
        ck_dir = out / CHECKPOINT_DIR
        ck_path = ck_dir / "last.pt"
        teacher_ck = ck_dir / "teacher.pt"

        splits = load_data(data, val_split=val_split, streaming=streaming)
        if splits.train is None or not splits.train[1]:
            raise DataError(f"{splits.name} has no training images.")
        if len(splits.classes) < 2:
            raise DataError(f"{splits.name} has one class ({splits.classes[0] if splits.classes else 'none'}); a "
                            "classifier learns nothing from it: give the data at least two class folders.")

        # ---------------------------------------------------------------------- heads, teacher, student
        notes = list(splits.notes)
        stage_teacher = False
        match = match_head(splits.classes, dense)
        public_base = public_model(model)
        teacher_spec = public_model(teacher) if teacher is not None else f"{public_base} (dense)"
        head_owner = dense
        if teacher is not None:
            t_model = load_model(teacher)
            if get_method(t_model) is not None:
                t_model = dense_copy(t_model)
            t_match = match_head(splits.classes, t_model)
            if not t_match.fits:
                raise head_error(splits.classes, t_model, "the teacher")
            target_map = t_match.target_map
            head_owner = t_model
            student_base = dense if existing is None else loaded
            if student_base.num_classes != t_model.num_classes:
                student_base = copy.deepcopy(student_base)
                _copy_head(student_base, t_model)
                notes.append(f"student head replaced by the teacher's ({t_model.num_classes} outputs)")
        elif match.fits and not new_head:
            target_map = match.target_map
            t_model = copy.deepcopy(dense)
            student_base = dense if existing is None else loaded
            notes.append(match.how)
        else:
            if existing is not None:
                raise head_error(splits.classes, dense, "the compressed model")
            torch.manual_seed(seed)
            why = "--new-head" if new_head else match.how
            _replace_head(dense, splits.classes)
            target_map = None
            stage_teacher = True
            t_model = dense
            student_base = None
            head_owner = None
            notes.append(f"head replaced ({why}); the dense model is fine-tuned first and becomes the teacher")
            teacher_spec = (f"{public_base} with a new {len(splits.classes)}-class head, fine-tuned on the data "
                            "first")
        count_only = count_only_match(splits.classes, head_owner) if head_owner is not None else None

        user: dict[str, Any] = dict(recipe or {})
        if epochs is not None:
            user["epochs"] = epochs
        if not augment:
            user["augment"] = None
        is_demo = splits.kind == "demo"
        global_batch = batch_size * dist_info.world_size * accum_steps
        rec, sources = build_recipe(m_probe.default_recipe(), user, demo=is_demo, batch_size=global_batch,
                                    augment_hints=splits.augment_hints, augment_default=splits.augment_default)
        if rec["kd_weight"] > 0 and rec["kd_temperature"] <= 0:
            raise MethodOptionError("kd-temperature must be > 0.")
        check_augment(dense, rec["augment"])

        base_fp = {
            "model": model, "method": method_name, "options": method_options, "data": data, "val_split": val_split,
            "teacher": teacher, "batch_size": batch_size, "accum_steps": accum_steps,
            "world_size": dist_info.world_size, "seed": seed, "precision": prec,
            **({"new_head": True} if new_head else {}),
            **({"streamed": True, "workers": workers} if splits.streamed else {}),  # a stream's batches depend on both
        }

        def fingerprint(extra: dict[str, Any]) -> dict[str, Any]:
            return json.loads(json.dumps({**base_fp, **extra}, default=str))

        def settings(stage: str, path: Path, fp_extra: dict[str, Any], log: bool) -> RunSettings:
            return RunSettings(
                device=dev, batch_size=batch_size, accum_steps=accum_steps, workers=workers, seed=seed,
                precision=prec, checkpoint=path, save_every=save_every, max_steps=max_steps,
                resume=resume and found[path], eval_every=eval_every, stage=stage,
                log_file=(out / LOG_NAME) if log else None, fingerprint=fingerprint(fp_extra))

        n_train = len(splits.train[1])
        if n_train // (batch_size * dist_info.world_size) // accum_steps < 1:
            raise DataError(
                f"the train split has {n_train} images, fewer than one optimizer step needs ({batch_size} x "
                f"{dist_info.world_size} process(es) x {accum_steps} accumulation step(s)); lower --batch-size.")
        t_rec = t_src = None
        if stage_teacher:
            t_user = {k: v for k, v in user.items() if k in ("augment",)}
            t_user["epochs"] = teacher_epochs if teacher_epochs is not None else rec["epochs"]
            t_rec, t_src = build_recipe(TEACHER_RECIPE, t_user, demo=is_demo, batch_size=global_batch,
                                        augment_hints=splits.augment_hints,
                                        augment_default=splits.augment_default, base=TRAINER_DEFAULTS)

        # ---------------------------------------------------------------------- the output folder, held
        check_run_state(out, dist_info, resume=resume, overwrite=overwrite)  # before the lock creates anything
        hold_output(out, dist_info, held)
        found = check_run_state(out, dist_info, resume=resume, overwrite=overwrite)  # now no other run can change it
        t_config = out / "teacher" / "config.json"
        if overwrite and not resume:
            if dist_info.main:
                shutil.rmtree(ck_dir, ignore_errors=True)
                shutil.rmtree(out / "teacher", ignore_errors=True)
            barrier(dist_info)
        if count_only:
            log.warning(count_only)
            _emit(progress, "warning", message=count_only)
        if resume:  # refuse a checkpoint from other settings before anything runs
            from .train.checkpoints import check_resumable

            for path, extra in ((ck_path, {"recipe": rec}), (teacher_ck, {"teacher_recipe": t_rec})):
                if found[path]:
                    check_resumable(path, fingerprint(extra), dist_info)
        for n in notes:
            _emit(progress, "info", message=n)

        def datasets(m: nn.Module, aug: Optional[dict[str, Any]], tmap) -> tuple[Any, Any]:
            tr = prepare(splits.train, train_transform(m, aug), seed=seed, random_transform=aug is not None,
                         target_map=tmap)
            va = prepare(splits.val, eval_transform(m), target_map=tmap)
            return tr, va

        # ---------------------------------------------------------------------- stage 1: teacher (new head)
        teacher_record = None
        if stage_teacher:
            t_folder = out / "teacher"
            if found[t_config] and resume:
                if dist_info.main:
                    t_model = load_model(str(t_folder))
                broadcast_weights(dist_info, t_model, dev)  # process 0's teacher (its disk may be the only copy)
                _emit(progress, "info", message=f"using the fine-tuned teacher in {t_folder}")
            else:
                _emit(progress, "stage", name="teacher",
                      message=f"fine-tuning the dense model with a new {len(splits.classes)}-class head")
                tr, va = datasets(t_model, t_rec["augment"], None)
                trainer = Trainer(t_model, None, tr, t_rec,
                                  settings("teacher", teacher_ck, {"teacher_recipe": t_rec}, log=False),
                                  dist_info, new_prefixes=(t_model.default_cfg.get("classifier", "head"),),
                                  val_set=va, progress=progress)
                summary = trainer.run()
                if not summary.finished:
                    return CompressResult(out, False, method_name, recipe=rec, steps=summary.steps,
                                          total_steps=summary.total_steps, checkpoint=teacher_ck,
                                          seconds=time.perf_counter() - t_start)
                if dist_info.main:
                    save(t_model.eval(), t_folder, base_model=public_base, recipe=t_rec,
                         metrics={"history": summary.history[-1:]})
                barrier(dist_info)
                teacher_record = {"recipe": t_rec, "sources": t_src, "history": summary.history}
            t_model = t_model.eval()
            student_base = t_model

        # ---------------------------------------------------------------------- stage 2: distillation
        torch.manual_seed(seed)
        if existing is not None and student_base is loaded:
            student = copy.deepcopy(loaded)
        else:
            student = apply_method(copy.deepcopy(dense_copy(student_base)), method_name, **method_options)
        teacher_net = copy.deepcopy(t_model).eval()
        m_obj = get_method(student)
        shown = t_folder if stage_teacher else (teacher or teacher_spec)
        _emit(progress, "info", message=f"teacher: {shown}")
        rec_record = {**rec, "batch_size": batch_size, "accum_steps": accum_steps,
                      "world_size": dist_info.world_size, "global_batch": global_batch, "seed": seed,
                      "precision": prec}
        tr, va = datasets(student, rec["augment"], target_map)
        _emit(progress, "stage", name="distill", message=f"distilling {m_obj.describe()} from the dense teacher")
        trainer = Trainer(student, teacher_net, tr, rec, settings("distill", ck_path, {"recipe": rec}, log=True),
                          dist_info, val_set=va, progress=progress)
        rec_record["peak_lr"] = trainer.lr
        summary = trainer.run()
        rec_record["param_groups"] = trainer.group_info
        if not summary.finished:
            return CompressResult(out, False, method_name, recipe=rec_record, steps=summary.steps,
                                  total_steps=summary.total_steps, checkpoint=ck_path,
                                  seconds=time.perf_counter() - t_start)

        calibration = None
        if calibrate and dist_info.main and not set(method_options) & set(m_obj.runtime_options):
            calibration = _calibrate(student, m_obj, splits, eval_transform(student), target_map, dev, batch_size)
            if calibration is not None:
                _emit(progress, "info", message=f"calibrated on training images: {_describe(calibration)}")

        # ---------------------------------------------------------------------- evaluate, profile, save
        result = CompressResult(out, True, method_name, recipe=rec_record, steps=summary.steps,
                                total_steps=summary.total_steps, model=student)
        if dist_info.main:
            from .api import profile
            from .train.evaluate import evaluate

            _emit(progress, "stage", name="evaluating", message="evaluating dense and compressed on the val split")
            eval_dtype = "fp32" if prec == "fp32" else prec
            d_eval = evaluate(teacher_net, va, batch_size=batch_size, device=str(dev), dtype=eval_dtype,
                              workers=workers)
            c_eval = evaluate(student, va, batch_size=batch_size, device=str(dev), dtype=eval_dtype,
                              workers=workers)
            _emit(progress, "stage", name="profiling", message="counting GMACs and timing dense vs compressed")
            prof = profile(student, device=str(dev), batch_size=profile_batch_size,
                           speed=speed, latency=speed)
            report = _report(public_spec(model), teacher_spec, method_name, m_obj, splits, rec_record, sources,
                             summary, d_eval, c_eval, prof, dist_info.world_size, str(dev), teacher_record)
            report["base_model"] = public_base
            report["seconds_total"] = round(time.perf_counter() - t_start, 2)
            if calibration is not None:
                report["calibration"] = calibration
            if command:
                report["command"] = public_command(command)
            report = scrub(report, (data, str(out), model, teacher))
            metrics = {
                "dataset": public_spec(data), "split": "val", "images": c_eval.images, "top1": round(c_eval.top1, 4),
                "top5": round(c_eval.top5, 4), "loss": round(c_eval.loss, 6), "dense_top1": round(d_eval.top1, 4),
                "dense_top5": round(d_eval.top5, 4), "delta_top1": round(c_eval.top1 - d_eval.top1, 4),
                "gmacs": prof.compressed.gmacs, "dense_gmacs": prof.dense.gmacs, "params": prof.compressed.params,
                "throughput": prof.compressed.throughput, "dense_throughput": prof.dense.throughput,
                "speedup": prof.speedup,
            }
            _emit(progress, "stage", name="saving", message=f"saving {out}")
            save(student.eval(), out, base_model=public_base, recipe=rec_record, metrics=metrics,
                 extra_files={REPORT_NAME: json.dumps(report, indent=2, default=str, allow_nan=False) + "\n"})
            if not keep_checkpoints:
                shutil.rmtree(ck_dir, ignore_errors=True)
            result.report, result.metrics = report, metrics
            result.checkpoint = ck_path if keep_checkpoints else None
            if export is not None:
                from .exporter import export as export_model

                _emit(progress, "stage", name="exporting", message=f"exporting {out / 'model.onnx'}")
                report["onnx"] = export_model(str(out), out / "model.onnx", format=export, measure=speed,
                                              measure_batch_size=profile_batch_size).record()
            if push_to:
                from .hub.push import push

                _emit(progress, "stage", name="pushing", message=f"pushing {out} to {push_to}")
                try:
                    result.pushed = push(out, push_to, private=private)
                except VitpruneError as e:
                    raise type(e)(f"{e} The model is saved in {out}; push it later with `vitprune push {out} "
                                  f"--repo {push_to}`.") from None
        barrier(dist_info)
        result.seconds = time.perf_counter() - t_start
        return result
    finally:
        held.close()
        teardown(dist_info)


def _side(ev: Any, st: Any) -> dict[str, Any]:
    return {"top1": ev.top1, "top5": ev.top5, "loss": ev.loss, "images": ev.images, "params": st.params,
            "gmacs": st.gmacs, "throughput": st.throughput, "latency_ms": st.latency_ms, "tokens": st.tokens,
            "method": st.method, "options": st.options, "macs_source": st.macs_source}


def _report(model: str, teacher: str, method: str, m_obj: Any, splits: Any, recipe: dict[str, Any],
            sources: dict[str, str], summary: Any, d_eval: Any, c_eval: Any, prof: Any, world: int, device: str,
            teacher_record: Optional[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model, "teacher": teacher, "method": method, "options": m_obj.options_dict(),
        "data": {**splits.describe(), "notes": splits.notes, "classes_names": splits.classes[:50]},
        "dense": _side(d_eval, prof.dense), "compressed": _side(c_eval, prof.compressed),
        "delta_top1": c_eval.top1 - d_eval.top1, "speedup": prof.speedup, "latency_ratio": prof.latency_ratio,
        "gmacs_ratio": prof.gmacs_ratio,
        "measure": {"device": prof.device, "device_name": prof.device_name, "dtype": prof.dtype,
                    "batch_size": prof.batch_size, "latency_batch_size": 1, "input_size": list(prof.input_size)},
        "train": {"epochs": summary.epochs, "steps": summary.steps, "global_batch": summary.global_batch,
                  "processes": world, "device": device, "seconds": round(summary.seconds, 2),
                  "images": summary.images, "peak_lr": summary.lr, "skipped_images": len(summary.skipped),
                  "skipped_files": summary.skipped[:100], "history": summary.history},
        "recipe": recipe, "recipe_sources": sources, "teacher_stage": teacher_record, "versions": prof.versions,
        "units": {"gmacs": "GMACs per image (papers' GFLOPs)", "throughput": "images/s at measure.batch_size",
                  "latency_ms": "ms per image at batch 1 (median)", "top1": "percent"},
    }


#: training images the post-training calibration looks at (eval transform; the val split stays untouched)
CALIBRATION_IMAGES = 256


def _calibrate(model: nn.Module, m_obj: Any, splits: Any, transform: Any, target_map: Any, dev: torch.device,
               batch_size: int) -> Optional[dict[str, Any]]:
    from .data import Prepared, Unreadable

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
