"""The distillation training loop, written against the method contract only (``methods/base.py``).

One optimizer step = ``accum_steps`` micro-batches; for each micro-batch the trainer makes a fresh
``StepContext``, the teacher runs once (``method.teacher_forward`` under ``no_grad`` in eval mode) and the student
runs once per entry of ``method.training_passes(step)``, each pass under ``method.overrides(**pass_settings)``,
with loss ``cls_weight * CE + kd_weight * KD + sum(method.aux_losses(model, state, teacher_out, targets=labels,
step=step))``, divided by ``accum_steps``, back-propagated right away (gradients are synchronised across processes
on the last backward of the step only). ``method.on_train_progress(model, epoch_float, total_epochs)`` runs before
every step; what it sets is the method's ``state_dict()``, saved in every checkpoint.

Order and randomness: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``, read through one
loader for the whole run whose worker processes persist across epochs (``run_loader``); augmentation is
seeded per sample (``data.base.Prepared``); forward-pass randomness (Gumbel noise, drop-path) comes from the torch
generator seeded with ``seed + rank``, saved in every checkpoint. Together with the optimizer, scheduler and
scaler states this makes a resumed run continue bit for bit (on CPU) where the interrupted one stopped, even in
the middle of an epoch.

Stopping: SIGINT (Ctrl-C) and SIGTERM (what SLURM, Kubernetes and torchrun send before they kill a job) finish the
current optimizer step, save a checkpoint and raise ``TrainingInterrupted``; a second signal acts as it would
without vitprune. Under torchrun the stop flag is reduced across processes at every step boundary, so a signal
to any process stops all of them after the same step.

Divergence: before every optimizer step one host transfer reads the step's loss terms and (without an fp16 grad
scaler, which skips steps with inf/NaN gradients by design) the gradient norm; before every checkpoint and at the
end the weights are checked. Anything non-finite raises ``TrainingDiverged`` before it is applied or saved, so the
last checkpoint is the last good state.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

import random
import numpy as np
from timm.layers import Attention, DropPath
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import Prepared
from ..data.base import RunLoader, data_loader
from ..errors import DataError, DeviceError, TrainingDiverged, VitpruneError
from ..measure.speed import autocast
from ..methods import StepContext, TeacherOutput
from . import checkpoints as ck
from .ddp import DistInfo, all_reduce_max, barrier, gather_objects
from .losses import DistillationLoss, feature_output, total
from .recipe import Recipe, scaled_lr
from ..files import write_atomic
from .evaluate import evaluate

log = logging.getLogger("vitprune")

Progress = Callable[[dict[str, Any]], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training: a checkpoint of the finished step ``step`` was saved;
    ``--resume`` continues from it. ``signum`` is the signal (the CLI exits with 128 + signum: 130, 143)."""

    def __init__(self, message: str, checkpoint: Optional[Path], signum: int = signal.SIGINT,
                 step: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.checkpoint = checkpoint
        self.signum = int(signum)
        self.step = step


#: the signals that stop a run at the next step boundary with a checkpoint
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class RunSettings:
    device: torch.device
    batch_size: int = 64  # per process
    accum_steps: int = 1
    workers: int = 0
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    checkpoint: Optional[Path] = None
    save_every: Optional[int] = None  # optimizer steps between checkpoints (besides every epoch)
    max_steps: Optional[int] = None  # stop with a checkpoint after this many optimizer steps in total
    resume: bool = False
    eval_every: int = 1  # epochs between validation passes (0: none during training)
    log_file: Optional[Path] = None  # JSONL, one line per epoch (rewritten whole, atomically)
    best_checkpoint: Optional[Path] = None  # keep the weights of the best val top-1 here (``keep_best``)
    loggers: Any = None  # experiment loggers (``train.loggers.Loggers``), process 0 only
    stage: str = "distill"
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSummary:
    steps: int
    total_steps: int
    epochs: float
    seconds: float
    images: int
    finished: bool
    history: list[dict[str, Any]]
    skipped: list[str]
    lr: float
    global_batch: int


# ------------------------------------------------------------------------------------------ parameters


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def matching(model: nn.Module, patterns: list[str]) -> list[str]:
    """The names or patterns of ``patterns`` (a recipe's ``frozen``) that match a parameter of ``model``."""
    names = [n for n, _ in model.named_parameters()]
    return [p for p in patterns if any(_matches(n, [p]) for n in names)]


def layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Each parameter's layer-wise lr scale, as timm's ``param_groups_layer_decay`` (BEiT) gives it: the model's
    ``group_matcher(coarse=False)`` numbers its layers 0..L (patch embedding and tokens 0, block i at i + 1, the
    final norm and head L), and layer ``l`` trains at ``layer_decay ** (L - l)``; parameters the matcher does not
    name (a method's new modules) count as the top layer (scale 1)."""
    if not hasattr(model, "group_matcher"):
        raise VitpruneError(f"`layer_decay` needs a model with timm's group_matcher(); {type(model).__name__} has "
                            "none.")
    layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_map.values())
    return {name: float(layer_decay) ** (top - layer_map.get(name, top)) for name, _ in model.named_parameters()}


def param_groups(model: nn.Module, recipe: Recipe, new_prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Optimizer groups: (new module | backbone) x (decay | no decay) [x layer with ``layer_decay``]; ``frozen``
    names get ``requires_grad=False``.

    New modules (``new_prefixes``) train at lr x 1, the backbone at lr x ``backbone_lr_scale`` (times its layer's
    scale with ``layer_decay``: ``layer_scales``); biases, norm weights, other 1-D parameters and the model's
    ``no_weight_decay()`` names get no weight decay.
    """
    frozen = list(recipe.frozen or [])
    unknown = [p for p in frozen if p not in matching(model, frozen)]
    if unknown:
        raise VitpruneError(f"frozen name {unknown[0]!r} matches no parameter of the model (e.g. cls_token, "
                            "pos_embed, patch_embed, blocks.0).")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    layer = layer_scales(model, recipe.layer_decay) if recipe.layer_decay is not None else {}
    groups: dict[tuple[bool, bool, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if _matches(name, frozen):
            p.requires_grad_(False)
            continue
        if not p.requires_grad:
            continue
        new = _matches(name, list(new_prefixes))
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip or _matches(name, list(skip))
        depth = 1.0 if new else layer.get(name, 1.0)
        g = groups.setdefault((new, no_decay, -depth), {
            "params": [], "names": [], "backbone": not new,
            "lr_scale": (1.0 if new else float(recipe.backbone_lr_scale)) * depth,
            "weight_decay": 0.0 if no_decay else float(recipe.weight_decay),
        })
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise VitpruneError("nothing to train: every parameter is frozen.")
    return [groups[k] for k in sorted(groups)]


def make_optimizer(groups: list[dict[str, Any]], recipe: Recipe, lr: float, device: torch.device
                   ) -> torch.optim.Optimizer:
    """The recipe's optimizer from timm's factory (``timm.optim.create_optimizer_v2``) over ``groups``, each of
    which carries its own lr and weight decay."""
    foreach = {"foreach": True} if device.type == "cuda" else {}
    try:
        return create_optimizer_v2(groups, opt=str(recipe.optimizer), lr=lr, **foreach)
    except (ValueError, TypeError, ImportError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise VitpruneError(f"timm cannot build `optimizer` {recipe.optimizer!r} ({why}).") from None


def lr_lambda(group: dict[str, Any], recipe: Recipe, base_lr: float, steps_per_epoch: int,
              total_steps: int) -> Callable[[int], float]:
    """Multiplier of the group's lr at optimizer step ``s``: frozen phase (backbone: 0), linear warm-up from
    ``warmup_lr``, cosine to ``min_lr`` (both scaled like the group)."""
    scale = group["lr_scale"]
    warm = round(float(recipe.warmup_epochs) * steps_per_epoch)
    freeze = round(float(recipe.freeze_backbone_epochs) * steps_per_epoch) if group["backbone"] else 0
    lo = min(float(recipe.min_lr), base_lr)
    w0 = min(float(recipe.warmup_lr), base_lr)

    def f(step: int) -> float:
        if base_lr <= 0 or scale <= 0 or step < freeze:
            return 0.0
        if step < warm:
            lr = w0 + (base_lr - w0) * step / warm
        else:
            t = (step - warm) / max(1, total_steps - warm)
            lr = lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        return lr / base_lr

    return f


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth ``rate`` at the last block, linear from 0 at the first (timm's convention)."""
    blocks = list(getattr(model, "blocks", []))
    for i, blk in enumerate(blocks):
        r = rate * i / max(1, len(blocks) - 1)
        for attr in ("drop_path1", "drop_path2"):
            if hasattr(blk, attr):
                setattr(blk, attr, DropPath(r) if r > 0 else nn.Identity())


def set_train_mode(model: nn.Module, train_mode_eval: bool) -> None:
    """``model.train()``; with ``train_mode_eval`` dropout, drop-path and attention dropout stay off."""
    model.train()
    if train_mode_eval:
        for m in model.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, DropPath, Attention)):
                m.eval()


def best_epoch(history: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The first epoch of ``history`` with the highest val top-1 (a model without a classifier: the highest val
    cosine agreement, ``val_cosine``), as ``{"epoch", "val_top1"}`` or ``{"epoch", "val_cosine"}`` (None: none
    validated)."""
    best = None
    for line in history:
        key = "val_top1" if "val_top1" in line else "val_cosine" if "val_cosine" in line else None
        if key is not None and (best is None or line[key] > best[key]):
            best = {"epoch": int(line["epoch"]), key: float(line[key])}
    return best


def describe_best(best: dict[str, Any]) -> str:
    """``val top-1 71.20 %`` or ``val cosine 0.9812`` for a ``best_epoch`` record."""
    return f"val top-1 {best['val_top1']:.2f} %" if "val_top1" in best else f"val cosine {best['val_cosine']:.4f}"


# ------------------------------------------------------------------------------------------ data order


class EpochBatches(torch.utils.data.Sampler):
    """This process's micro-batches of one epoch: keys ``(epoch, index)``, starting at micro-batch ``start``.

    The epoch's permutation is seeded by ``(seed, epoch)``; global micro-batch ``j`` is ``perm[j*G:(j+1)*G]``
    (``G`` = batch x processes), of which process ``r`` reads the ``r``-th chunk of ``batch`` indices. Only whole
    global micro-batches are used (the rest of the permutation waits for another epoch).
    """

    def __init__(self, n: int, batch: int, dist_info: DistInfo, seed: int, epoch: int, micro_batches: int,
                 start: int = 0):
        self.n, self.batch, self.d = n, batch, dist_info
        self.seed, self.epoch, self.micro, self.start = seed, epoch, micro_batches, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        G = self.batch * self.d.world_size
        for j in range(self.start, self.micro):
            lo = j * G + self.d.rank * self.batch
            yield [(self.epoch, i) for i in perm[lo:lo + self.batch]]

    def __len__(self) -> int:
        return self.micro - self.start

    def seek(self, epoch: int, start: int = 0) -> None:
        """Give epoch ``epoch`` from micro-batch ``start`` on the next iteration (a loader kept for the run)."""
        self.epoch, self.start = epoch, start


def run_loader(data: Prepared | Any, batch_size: int, dist_info: DistInfo, seed: int, micro_batches: int,
               workers: int = 0, pin_memory: bool = False) -> RunLoader:
    """The trainer's loader for a whole run (workers persist across epochs): ``.epoch(e, start)`` iterates this
    process's micro-batches ``start..`` of epoch ``e``. Streams split their epochs themselves
    (``StreamSet.run_loader``); map-style data is ordered by ``EpochBatches``."""
    if hasattr(data, "run_loader"):
        return data.run_loader(batch_size, rank=dist_info.rank, world_size=dist_info.world_size,
                               micro_batches=micro_batches, workers=workers, pin_memory=pin_memory)
    sampler = EpochBatches(len(data), batch_size, dist_info, seed, 0, micro_batches)
    return RunLoader(data_loader(data, batch_sampler=sampler, workers=workers, pin_memory=pin_memory,
                                 persistent=True, generator=torch.Generator()), sampler.seek)


# ------------------------------------------------------------------------------------------ the trainer


class Trainer:
    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module],
        train_set: Prepared,
        recipe: Recipe,
        settings: RunSettings,
        dist_info: Optional[DistInfo] = None,
        *,
        new_prefixes: tuple[str, ...] = (),
        val_set: Optional[Prepared] = None,
        progress: Optional[Progress] = None,
    ):
        self.model = student
        self.teacher = teacher
        self.method = getattr(student, "vitprune_method", None)
        self.data = train_set
        self.val = val_set
        self.recipe = recipe
        self.s = settings
        self.d = dist_info or DistInfo()
        self.progress = progress if self.d.main else None
        self.new_prefixes = tuple(self.method.new_module_prefixes if self.method else ()) + tuple(new_prefixes)
        self._stop_signal: Optional[int] = None  # set by a SIGINT/SIGTERM handler
        self._saved_step: Optional[int] = None  # the step of the last checkpoint written or resumed from
        self.best: Optional[dict[str, Any]] = None  # the epoch with the best val top-1 so far (process 0)

        b, w, a = settings.batch_size, self.d.world_size, settings.accum_steps
        self.global_batch = b * w * a
        self.micro_per_epoch = len(train_set) // (b * w)
        self.steps_per_epoch = self.micro_per_epoch // a
        if self.steps_per_epoch < 1:
            raise DataError(
                f"the train split has {len(train_set)} images, fewer than one optimizer step needs ({b} x {w} "
                f"process(es) x {a} accumulation step(s)); lower `batch_size` or `accum_steps`.")
        self.epochs = float(recipe.epochs)
        self.total_steps = int(round(self.epochs * self.steps_per_epoch))
        self.lr = scaled_lr(recipe, self.global_batch)

    # -- setup ---------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        dev = self.s.device
        if self.recipe.drop_path is not None:
            set_drop_path(self.model, float(self.recipe.drop_path))
        self.model.to(dev)
        if self.teacher is not None:
            self.teacher.to(dev).eval().requires_grad_(False)
        groups = param_groups(self.model, self.recipe, self.new_prefixes)
        for g in groups:
            g["lr"] = self.lr * g["lr_scale"]
        self.group_info = [{"names": len(g.pop("names")), "lr_scale": g["lr_scale"], "backbone": g["backbone"],
                            "weight_decay": g["weight_decay"]} for g in groups]
        self.optimizer = make_optimizer(groups, self.recipe, self.lr, dev)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            lr_lambda(g, self.recipe, self.lr * g["lr_scale"], self.steps_per_epoch, self.total_steps)
            for g in self.optimizer.param_groups])
        self.scaler = torch.amp.GradScaler(dev.type) if self.s.precision == "fp16" else None
        r = self.recipe
        self.criterion = DistillationLoss(r.cls_weight, r.label_smoothing,
                                          r.kd_weight if self.teacher is not None else 0.0, r.kd_temperature,
                                          features=feature_output(self.model))
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.ddp = None
        if self.d.enabled:
            unused = self._probe_unused()
            self.ddp = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None,
                           find_unused_parameters=unused, broadcast_buffers=False)

    def _autocast(self):
        return autocast(self.s.device, self.s.precision)

    def _overrides(self, settings: dict[str, Any]):
        return self.method.overrides(**settings) if self.method is not None and settings else contextlib.nullcontext()

    def _passes(self, step: StepContext) -> list[dict[str, Any]]:
        return self.method.training_passes(step) if self.method is not None else [{}]

    def _teacher_out(self, images: torch.Tensor) -> Optional[TeacherOutput]:
        if self.teacher is None:
            return None
        with torch.no_grad(), self._autocast():
            if self.method is not None:
                return self.method.teacher_forward(self.teacher, images)
            return TeacherOutput(logits=self.teacher(images))

    def _losses(self, images: torch.Tensor, targets: torch.Tensor, t_out: Optional[TeacherOutput],
                forward: nn.Module, step: StepContext) -> dict[str, torch.Tensor]:
        with self._autocast():
            logits = forward(images)
            terms = self.criterion(logits, targets, t_out.logits if t_out is not None else None)
            state = self.model.__dict__.pop("vitprune_state", None)  # this forward's; the graph keeps what it needs
            if self.method is not None and state is not None:
                for k, v in self.method.aux_losses(self.model, state, t_out, targets=targets, step=step).items():
                    terms[k] = v.float()
        return terms

    def _probe_unused(self) -> bool:
        """Do some trainable parameters get no gradient in a training step? (DDP must then look for them.)"""
        c, h, w = self.model.pretrained_cfg.get("input_size", (3, 224, 224))
        dev = self.s.device
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            set_train_mode(self.model, bool(self.recipe.train_mode_eval))
            if self.method is not None:
                self.method.on_train_progress(self.model, 0.0, self.epochs)
            x = torch.randn(2, c, h, w, device=dev)
            y = torch.zeros(2, dtype=torch.long, device=dev)
            t_out = self._teacher_out(x)
            step = StepContext(0.0, self.epochs)
            for settings in self._passes(step):
                with self._overrides(settings):
                    total(self._losses(x, y, t_out, self.model, step)).backward()
            unused = any(p.grad is None for p in self.trainable)
            self.optimizer.zero_grad(set_to_none=True)
        return unused

    # -- checkpoints ---------------------------------------------------------------------------------
    def _payload(self, step: int, acc: dict[str, float], history: list[dict[str, Any]], skipped: list[str],
                 elapsed: float) -> dict[str, Any]:
        return {
            "stage": self.s.stage, "fingerprint": self.s.fingerprint, "step": step, "total_steps": self.total_steps,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "acc": dict(acc), "history": list(history), "skipped": list(skipped), "elapsed": elapsed,
            "method_state": self.method.state_dict() if self.method is not None else {},
        }

    def _save(self, step: int, acc: dict[str, float], history: list[dict[str, Any]], skipped: list[str],
              elapsed: float) -> None:
        if self.s.checkpoint is None:
            return
        self._check_weights(step)
        rngs = gather_objects(self.d, ck.rng_state())
        if self.d.main:
            payload = self._payload(step, acc, history, skipped, elapsed)
            payload["rng"] = rngs
            payload["world_size"] = self.d.world_size
            ck.save_checkpoint(self.s.checkpoint, payload)
            self._event("checkpoint", step=step, path=str(self.s.checkpoint))
        self._saved_step = step
        barrier(self.d)

    def _restore(self) -> tuple[int, dict[str, float], list[dict[str, Any]], list[str], float]:
        path = self.s.checkpoint
        if path is None:
            raise VitpruneError("`resume`: this run has no checkpoint path; run without `resume` to start.")
        c = ck.load_resumable(path, self.s.fingerprint, self.d)
        try:  # the contents are data from a file: a malformed part is the file's fault, said in one line
            self.model.load_state_dict(c["model"])
            self.optimizer.load_state_dict(c["optimizer"])
            self.scheduler.load_state_dict(c["scheduler"])
            if self.scaler is not None and c.get("scaler"):
                self.scaler.load_state_dict(c["scaler"])
            if self.method is not None:
                self.method.load_state_dict(dict(c.get("method_state") or {}))
            ck.set_rng_state(c["rng"][self.d.rank])
            state = int(c["step"]), dict(c["acc"]), list(c["history"]), list(c["skipped"]), float(c["elapsed"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            why = (str(e).splitlines() or [""])[0][:200]
            raise VitpruneError(f"{path} cannot be resumed ({type(e).__name__}: {why}); delete it to start "
                                "over.") from None
        self._saved_step = state[0]
        return state

    def _keep_best(self, history: list[dict[str, Any]], step: int) -> None:
        """Process 0, after an epoch's validation: when its val top-1 beats every earlier epoch's (strictly, as
        timm's CheckpointSaver), write the weights to ``best_checkpoint`` (atomically) and remember the epoch."""
        if self.s.best_checkpoint is None or not self.d.main or best_epoch(history) == self.best:
            return
        self.best = best_epoch(history)
        ck.save_best(self.s.best_checkpoint, {
            **self.best, "step": step, "model": self.model.state_dict(),
            "method_state": self.method.state_dict() if self.method is not None else {}})
        self._event("best", **self.best, path=str(self.s.best_checkpoint))

    def load_best(self) -> Optional[dict[str, Any]]:
        """Process 0, after training with ``best_checkpoint``: put the best epoch's weights (and method state) back
        into the model; returns that epoch and its val top-1 (None when no epoch was validated)."""
        if self.s.best_checkpoint is None or not self.d.main or self.best is None:
            return None
        saved = ck.load_best(self.s.best_checkpoint, self.best)
        self.model.load_state_dict(saved["model"])
        if self.method is not None:
            self.method.load_state_dict(dict(saved.get("method_state") or {}))
        return dict(self.best)

    def _write_log(self, history: list[dict[str, Any]]) -> None:
        if self.s.log_file is None or not self.d.main:
            return

        try:
            text = "".join(json.dumps(h, allow_nan=False) + "\n" for h in history)
        except ValueError:  # a non-finite metric (the validation loss of a model gone bad)
            raise self._diverged(f"a metric of epoch {len(history)} is not finite ({history[-1]})") from None
        write_atomic(self.s.log_file, text)

    def _event(self, kind: str, **data: Any) -> None:
        if self.progress is not None:
            self.progress({"event": kind, "stage": self.s.stage, **data})

    # -- interruption and divergence ----------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """While the run lasts (and only in the main thread, where Python delivers signals), the first SIGINT or
        SIGTERM asks for a stop at the next step boundary and puts the previous handlers back, so a second signal
        acts as it would without vitprune. Signals the process was told to ignore stay ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        caught = [s for s, h in previous.items() if h is not signal.SIG_IGN]

        def restore() -> None:
            for s in caught:
                signal.signal(s, previous[s] if previous[s] is not None else signal.SIG_DFL)

        def handler(signum, frame):
            if self._stop_signal is None:
                self._stop_signal = signum
            restore()

        for s in caught:
            signal.signal(s, handler)
        try:
            yield
        finally:
            restore()

    def _diverged(self, what: str, step: Optional[int] = None) -> TrainingDiverged:
        where = f" at step {step}/{self.total_steps}" if step is not None else ""
        kept = (f"; the last checkpoint (step {self._saved_step}) is kept" if self._saved_step is not None
                and self.s.checkpoint is not None else "; nothing was saved")
        return TrainingDiverged(f"training diverged{where}: {what}; lower `lr` (now {float(self.recipe.lr):g}) or "
                                f"clip the gradients with `clip_grad` 1.0{kept}.")

    def _check_weights(self, step: int) -> None:
        """Every process: stop if a weight is not finite (one reduction and one host transfer)."""
        bad = not math.isfinite(float(torch.nn.utils.get_total_norm(self.trainable, math.inf)))
        if all_reduce_max(self.d, [1.0 if bad else 0.0], self.s.device)[0] > 0:
            raise self._diverged("a weight is not finite" if bad else "a weight of another process is not finite",
                                 step)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainSummary:
        self._prepare()
        torch.manual_seed(self.s.seed + self.d.rank)

        random.seed(self.s.seed + self.d.rank)
        np.random.seed((self.s.seed + self.d.rank) % 2**32)
        step, acc, history, skipped, elapsed = 0, {}, [], [], 0.0
        if self.s.checkpoint is not None and self.d.main:
            ck.remove_stale_temp(self.s.checkpoint.parent)
        if self.s.resume:
            step, acc, history, skipped, elapsed = self._restore()
            self.best = best_epoch(history)
            self._event("resumed", step=step, total_steps=self.total_steps)
        loggers = self.s.loggers if self.d.main else None
        try:
            if loggers is not None:
                loggers.open(done_epochs=len(history))
            with self._catch_stop_signals():
                step, elapsed = self._epochs(step, acc, history, skipped, elapsed)
            self._check_weights(step)
        except torch.OutOfMemoryError:
            raise DeviceError(
                f"out of GPU memory at `batch_size` {self.s.batch_size}; try `batch_size` "
                f"{max(1, self.s.batch_size // 2)} with `accum_steps` {self.s.accum_steps * 2} (same effective batch)"
                + (f"; the last checkpoint {self.s.checkpoint} is kept" if self.s.checkpoint else "") + ".") from None
        finally:
            if loggers is not None:
                loggers.close()
        skipped_all = sorted(set(sum(gather_objects(self.d, skipped), [])))
        return TrainSummary(
            steps=step, total_steps=self.total_steps, epochs=self.epochs, seconds=elapsed,
            images=step * self.global_batch, finished=step >= self.total_steps, history=history,
            skipped=skipped_all, lr=self.lr, global_batch=self.global_batch)

    def _epochs(self, step: int, acc: dict[str, float], history: list[dict[str, Any]], skipped: list[str],
                elapsed: float) -> tuple[int, float]:
        spe, a = self.steps_per_epoch, self.s.accum_steps
        with run_loader(self.data, self.s.batch_size, self.d, self.s.seed, spe * a, self.s.workers,
                        self.s.device.type == "cuda") as loader:
            return self._run_epochs(loader, step, acc, history, skipped, elapsed)

    def _run_epochs(self, loader: RunLoader, step: int, acc: dict[str, float], history: list[dict[str, Any]],
                    skipped: list[str], elapsed: float) -> tuple[int, float]:
        spe, a = self.steps_per_epoch, self.s.accum_steps
        seen = set(skipped)
        forward = self.ddp if self.ddp is not None else self.model
        t_last = time.perf_counter()
        while step < self.total_steps:
            epoch = step // spe
            batches = loader.epoch(epoch, (step % spe) * a)
            self._event("epoch_start", epoch=epoch, epochs=self.epochs, steps=spe, step=step % spe)
            set_train_mode(self.model, bool(self.recipe.train_mode_eval))
            while step < self.total_steps and step // spe == epoch:
                progress = step / spe
                if self.method is not None:
                    self.method.on_train_progress(self.model, progress, self.epochs)
                terms_sum: dict[str, torch.Tensor] = {}
                n_img = 0
                for micro in range(a):
                    images, targets, bad = next(batches)
                    for b in bad:
                        if b.where not in seen:
                            seen.add(b.where)
                            skipped.append(b.where)
                            log.warning("skipped unreadable image %s (%s)", b.where, b.reason)
                            self._event("warning", message=f"skipped unreadable image {b.where} ({b.reason})")
                    images = images.to(self.s.device, non_blocking=True)
                    targets = targets.to(self.s.device, non_blocking=True)
                    n_img += targets.numel()
                    terms_sum = self._micro_step(images, targets, micro == a - 1, forward, terms_sum, progress)
                terms, stop = self._check_step(terms_sum, step + 1)
                self._optimizer_step()
                step += 1
                now = time.perf_counter()
                dt, t_last = now - t_last, now
                elapsed += dt
                loss = sum(terms.values())
                acc["steps"] = acc.get("steps", 0) + 1
                acc["images"] = acc.get("images", 0) + n_img
                acc["seconds"] = acc.get("seconds", 0.0) + dt
                for k, v in {"loss": loss, **terms}.items():
                    acc[k] = acc.get(k, 0.0) + v
                lr = self.optimizer.param_groups[0]["lr"]
                self._event("step", epoch=epoch, epochs=self.epochs, step=step - epoch * spe, steps=spe,
                            global_step=step, total_steps=self.total_steps, loss=loss, lr=lr,
                            img_s=n_img * self.d.world_size / dt if dt > 0 else None,
                            eta_s=elapsed / step * (self.total_steps - step) if step else None)
                end_of_epoch = step % spe == 0 or step == self.total_steps
                if end_of_epoch:
                    history.append(self._end_epoch(epoch, acc, len(skipped)))
                    acc.clear()
                    self._write_log(history)
                    if self.s.loggers is not None and self.d.main:
                        self.s.loggers.log(history)
                    self._keep_best(history, step)
                if stop or end_of_epoch or (self.s.save_every and step % self.s.save_every == 0) or (
                        self.s.max_steps is not None and step >= self.s.max_steps):
                    self._save(step, acc, history, skipped, elapsed)
                if stop:
                    what = "stopped by SIGTERM" if stop == signal.SIGTERM else "interrupted"
                    raise TrainingInterrupted(
                        f"{what} at step {step}/{self.total_steps}; checkpoint saved to {self.s.checkpoint}; "
                        "run the same command with `resume` to continue.", self.s.checkpoint, stop, step)
                if self.s.max_steps is not None and step >= self.s.max_steps and step < self.total_steps:
                    self._event("stopped", step=step, total_steps=self.total_steps)
                    return step, elapsed
        return step, elapsed

    def _micro_step(self, images: torch.Tensor, targets: torch.Tensor, last_micro: bool, forward: nn.Module,
                    terms_sum: dict[str, float], epoch: float) -> dict[str, float]:
        a = self.s.accum_steps
        step = StepContext(epoch, self.epochs)  # what this micro-batch's passes share, gone after it
        passes = self._passes(step)
        if targets.numel() == 0:  # every image of this micro-batch was unreadable: contribute zero gradients
            ctx = self.ddp.no_sync() if (self.ddp is not None and not last_micro) else contextlib.nullcontext()
            with ctx:
                zero = sum((p * 0).sum() for p in self.trainable)
                zero.backward()
            return terms_sum
        t_out = self._teacher_out(images)
        for i, settings in enumerate(passes):
            sync = last_micro and i == len(passes) - 1
            ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with ctx, self._overrides(settings):
                terms = self._losses(images, targets, t_out, forward, step)
                loss = total(terms) / a
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            prefix = f"pass{i}/" if len(passes) > 1 else ""
            for k, v in terms.items():  # kept on the device: read once per step in _check_step
                v = v.detach().float() / a
                terms_sum[prefix + k] = terms_sum[prefix + k] + v if prefix + k in terms_sum else v
        return terms_sum

    def _check_step(self, terms_sum: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], int]:
        """Before optimizer step ``step``: the loss terms as floats, and the signal that asks every process to stop
        after this step (0: none).

        One host transfer reads the loss terms with the gradient norm (unscaled and clipped as the recipe says);
        under torchrun one all-reduce shares the stop request and the divergence verdict. A non-finite loss, or a
        non-finite gradient without an fp16 scaler, raises ``TrainingDiverged`` before anything is applied (with
        a scaler, inf/NaN gradients are the scaler's business: it skips the step and lowers its scale)."""
        clip = self.recipe.clip_grad
        norm = None
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable, float(clip))
        elif clip:
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, float(clip))
        else:  # the 2-norm clipping would use: one fused pass over the gradients (the inf-norm is ~6x slower on
            # CPU); it is also inf when finite gradients are beyond ~1e19, which is divergence all the same
            grads = [p.grad for p in self.trainable if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        parts = list(terms_sum.values()) + ([norm] if norm is not None else [])
        values = torch.stack([t.float().reshape(()) for t in parts]).tolist() if parts else []
        terms = dict(zip(terms_sum, values))
        loss = sum(terms.values())
        problem = None
        if not math.isfinite(loss):
            problem = f"the loss is {loss}"
        elif norm is not None and not math.isfinite(values[-1]):
            problem = f"the gradient norm is {values[-1]}"
        stop, bad = all_reduce_max(self.d, [float(self._stop_signal or 0), float(problem is not None)],
                                   self.s.device)
        if bad > 0:
            raise self._diverged(problem or "another process's loss or gradients are not finite", step)
        return terms, int(stop)

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # fp16: the scaler skips steps with inf gradients; the schedule goes on
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()

    def _end_epoch(self, epoch: int, acc: dict[str, float], skipped: int) -> dict[str, Any]:
        n = max(1, acc.get("steps", 0))
        line: dict[str, Any] = {"stage": self.s.stage, "epoch": epoch + 1, "steps": int(acc.get("steps", 0))}
        for k, v in acc.items():
            if k not in ("steps", "images", "seconds"):
                line[k] = v / n
        imgs = acc.get("images", 0) * self.d.world_size
        secs = acc.get("seconds", 0.0)
        line.update({"lr": self.optimizer.param_groups[0]["lr"], "images": int(imgs), "seconds": round(secs, 3),
                     "img_per_s": imgs / secs if secs > 0 else None, "skipped_images": skipped})
        last = (epoch + 1) * self.steps_per_epoch >= self.total_steps
        if self.val is not None and self.s.eval_every and ((epoch + 1) % self.s.eval_every == 0 or last):
            if self.d.main:
                line.update(self._validate())
            barrier(self.d)
        self._event("epoch_end", **line)
        return line

    def _validate(self) -> dict[str, Any]:
        dev = self.s.device
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            r = evaluate(self.model, self.val, batch_size=self.s.batch_size, device=str(dev),
                         dtype="fp32" if self.s.precision == "fp32" else self.s.precision, workers=self.s.workers,
                         reference=self.teacher)
        set_train_mode(self.model, bool(self.recipe.train_mode_eval))
        if r.cosine is not None:  # a model without a classifier: its agreement with the teacher
            return {"val_cosine": r.cosine}
        return {"val_top1": r.top1, "val_top5": r.top5, "val_loss": r.loss}
