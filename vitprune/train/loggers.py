"""Experiment logs: each finished epoch's metrics also go to TensorBoard, a CSV summary or Weights & Biases.

``Loggers(names, folder, config)`` opens the asked ones under ``folder`` (the run's ``OUT/logs``) on process 0
only; ``log(history)`` is called after every epoch with the whole history (``train_log.jsonl``'s lines) and writes
its last line; ``close()`` flushes. What is logged per epoch (step = epoch number): the training loss and its parts
(``cls``, ``kd``, the method's auxiliary losses), the lr, the images per second and, on validated epochs, val
top-1, top-5 and loss.

- ``tensorboard``: event files from ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package:
  the ``logs`` extra), renamed when closed without the host name and process id TensorBoard puts in their names. A resumed run writes a new event file in the same folder and purges what an interrupted run
  logged after its last checkpoint (``purge_step``), so the curves continue without repeats.
- ``csv``: ``summary.csv``, one row per epoch as timm's ``train.py`` writes it, rewritten whole (atomically) from
  the history, so a resumed run's file holds every epoch once.
- ``wandb``: ``wandb.init`` (project ``$WANDB_PROJECT`` or ``vitprune``, run folder ``$WANDB_DIR`` or ``folder``;
  ``WANDB_MODE=offline`` and the other ``WANDB_*`` settings are wandb's own and win over vitprune's), the run's id
  kept in ``folder/wandb-id`` so that a resumed run continues the same wandb run. Unless a ``WANDB_*`` variable
  says otherwise, wandb records no run metadata (command line, paths, git), no system metrics and no console output,
  and prints nothing (``WANDB_PRIVATE``). Not installed with vitprune: ``pip install wandb``.

A logger whose package is missing is refused before training starts (``check_loggers``), in one line.
"""
from __future__ import annotations

import csv
import io
import os
import re
import secrets
import socket
from importlib import import_module
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ..errors import MethodOptionError, VitpruneError
from ..files import read_text, write_atomic

#: logger name -> (module it needs, how to install it)
LOGGERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install 'vitprune[logs]'"),
    "csv": ("csv", ""),
    "wandb": ("wandb", "pip install wandb"),
}
CSV_NAME = "summary.csv"
#: wandb settings vitprune sets unless the user's own ``WANDB_*`` variable gives them: no run metadata (command
#: line, program and folder paths, host and user names, git remote), no system metrics (their collector also asks
#: cloud metadata addresses on the network), no code or git capture, no console capture (the output names local
#: paths) and no wandb messages (they print the run folder's absolute path). ``host`` "": wandb fills an unset
#: host with ``socket.gethostname()`` and writes it in the run record whatever the metadata settings say; an empty
#: one is left out of the record
WANDB_PRIVATE: dict[str, Any] = {
    "host": "", "x_disable_meta": True, "x_disable_stats": True, "x_disable_machine_info": True, "disable_git": True,
    "disable_code": True, "save_code": False, "console": "off", "silent": True,
}
#: history keys that are not metrics
_NOT_METRICS = {"stage", "epoch", "steps", "images", "seconds", "skipped_images"}


def check_loggers(names: Union[str, Iterable[str], None]) -> tuple[str, ...]:
    """The logger names as a tuple (a comma list or a list of them, each possibly a comma list), each known and
    importable; ``MethodOptionError`` in one line otherwise."""
    if names is None:
        return ()
    items = [names] if isinstance(names, str) else list(names)
    found: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name and name not in found:
                found.append(name)
    for name in found:
        if name not in LOGGERS:
            raise MethodOptionError(f"`logger` {name!r}: vitprune logs to {', '.join(LOGGERS)}.")
        module, install = LOGGERS[name]
        try:
            import_module(module)
        except ImportError:
            raise MethodOptionError(f"`logger` {name} needs the {module} package, which is not installed: "
                                    f"{install}.") from None
    return tuple(found)


def _wandb_env_sets(setting: str) -> bool:
    """Whether the environment gives wandb ``setting`` (``WANDB_SILENT``; ``WANDB_X_...`` or ``WANDB__...`` for
    its ``x_`` settings)."""
    names = {f"WANDB_{setting.upper()}"}
    if setting.startswith("x_"):
        names.add("WANDB__" + setting[2:].upper())
    return any(n in os.environ for n in names)


def epoch_row(line: dict[str, Any]) -> dict[str, Any]:
    """One epoch's metrics in timm's summary.csv names: ``epoch``, ``train_loss`` and ``train_<part>``, ``lr``,
    ``val_top1``/``val_top5``/``val_loss`` when validated, ``img_per_s``."""
    row: dict[str, Any] = {"epoch": line["epoch"]}
    for k, v in line.items():
        if k in _NOT_METRICS or k.startswith("val_") or k in ("lr", "img_per_s") or v is None:
            continue
        row["train_loss" if k == "loss" else f"train_{k}"] = v
    row["lr"] = line.get("lr")
    row.update({k: v for k, v in line.items() if k.startswith("val_")})
    row["img_per_s"] = line.get("img_per_s")
    return row


def _unname_event_files(folder: Path) -> None:
    """TensorBoard names its event files ``events.out.tfevents.<time>.<host>.<pid>.<n>`` (and reopens a file by
    name at each flush, so it cannot be renamed while written): once closed, each of this host's is renamed to
    ``events.out.tfevents.<time>.vitprune.<k>`` (TensorBoard reads any name with ``tfevents`` in it; ``k`` keeps a
    resumed run's file apart)."""
    own = re.compile(rf"^events\.out\.tfevents\.(\d+)\.{re.escape(socket.gethostname())}\.\d+\.\d+(.*)$")
    for f in sorted(folder.iterdir()):
        m = own.match(f.name)
        if m is None:
            continue
        k = 0
        while (folder / f"events.out.tfevents.{m.group(1)}.vitprune.{k}{m.group(2)}").exists():
            k += 1
        try:
            os.rename(f, folder / f"events.out.tfevents.{m.group(1)}.vitprune.{k}{m.group(2)}")
        except OSError:  # not renamed (a read-only folder): the name stays TensorBoard's
            pass


def _scalar_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_top1`` -> ``val/top1``, ``lr`` -> ``train/lr``."""
    head, _, rest = key.partition("_")
    return f"{head}/{rest}" if head in ("train", "val") and rest else f"train/{key}"


class Loggers:
    """The asked loggers of one run (see the module doc); the trainer opens, feeds and closes them on process 0."""

    def __init__(self, names: Iterable[str], folder: Path, *, config: Optional[dict[str, Any]] = None,
                 run_name: Optional[str] = None):
        self.names = check_loggers(list(names))
        self.folder = Path(folder)
        self.config, self.run_name = config or {}, run_name
        self.tb = None
        self.wandb = None

    def open(self, done_epochs: int = 0) -> None:
        """Open the writers (process 0, when training starts); ``done_epochs``: the epochs a resumed run already
        logged (TensorBoard drops what an interrupted run wrote after them)."""
        if not self.names:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.names and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter  # optional extra

            _unname_event_files(self.folder)  # those an interrupted run left under TensorBoard's names
            self.tb = SummaryWriter(log_dir=str(self.folder), purge_step=done_epochs + 1 if done_epochs else None)
        if "wandb" in self.names and self.wandb is None:
            self.wandb = self._wandb(self.config, self.run_name)

    def _wandb(self, config: dict[str, Any], run_name: Optional[str]) -> Any:
        import wandb  # optional extra

        id_file = self.folder / "wandb-id"

        run_id = read_text(id_file, limit=256).strip() if id_file.is_file() else secrets.token_hex(8)
        if not id_file.is_file():
            write_atomic(id_file, run_id + "\n")
        known = getattr(wandb.Settings, "model_fields", WANDB_PRIVATE)  # an older wandb may lack some
        settings = {k: v for k, v in WANDB_PRIVATE.items() if k in known and not _wandb_env_sets(k)}
        try:
            return wandb.init(project=os.environ.get("WANDB_PROJECT", "vitprune"), id=run_id, resume="allow",
                              name=run_name, dir=os.environ.get("WANDB_DIR") or str(self.folder), config=config,
                              settings=wandb.Settings(**settings))
        except Exception as e:  # noqa: BLE001 - wandb's own errors (not logged in, bad settings) are one line
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VitpruneError(f"wandb could not start a run ({why}); WANDB_MODE=offline keeps the run on this "
                              "machine without an account.") from None

    def log(self, history: list[dict[str, Any]]) -> None:
        """Write the last epoch of ``history`` (the CSV: all of it)."""
        if not self.names or not history:
            return
        row = epoch_row(history[-1])
        epoch = int(row["epoch"])
        scalars = {_scalar_tag(k): float(v) for k, v in row.items() if k != "epoch" and v is not None}
        if self.tb is not None:
            for tag, v in scalars.items():
                self.tb.add_scalar(tag, v, epoch)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**scalars, "epoch": epoch}, step=epoch)
        if "csv" in self.names:
            self._write_csv(history)

    def _write_csv(self, history: list[dict[str, Any]]) -> None:
        rows = [epoch_row(h) for h in history]
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.folder / CSV_NAME, buf.getvalue())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
            _unname_event_files(self.folder)
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
