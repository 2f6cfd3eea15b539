"""Multi-process training: the same command under ``torchrun --nproc_per_node N`` trains with
DistributedDataParallel (NCCL on GPUs, Gloo on CPU); a plain run is one process and needs none of this.

Each process reads its share of every global batch (the global order is the same in all processes), so N
processes with ``--batch-size B`` train like one process with ``--batch-size N*B``. Only rank 0 prints, evaluates
and writes files; the others wait for it at the points where it works alone.

A process group that already exists when vitprune starts (made by the program that calls ``vitprune.compress``:
Ray Train, Accelerate, a script) is used as it is and left alone afterwards; vitprune destroys only a group it
created itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import DeviceError
from ..measure.speed import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owns_group: bool = False  # True: vitprune created the process group and destroys it at the end

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: Optional[str]) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (or use the caller's group when one already exists);
    returns the process's facts and its device."""
    hosted = dist.is_available() and dist.is_initialized()
    if not hosted and not launched_by_torchrun():
        return DistInfo(), resolve_device(device)
    rank = dist.get_rank() if hosted else int(os.environ["RANK"])
    world = dist.get_world_size() if hosted else int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and hosted and "LOCAL_RANK" not in os.environ:
        local = torch.cuda.current_device()  # the device the host program chose for this process
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DeviceError(f"process {rank} wants GPU {local} but {torch.cuda.device_count()} are visible; start "
                              "torchrun with --nproc_per_node <= the number of GPUs.")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if hosted:
        return DistInfo(rank, world, local, str(dist.get_backend()), owns_group=False), dev
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return DistInfo(rank, world, local, backend, owns_group=True), dev


def teardown(info: DistInfo) -> None:
    """Destroy the process group if vitprune created it (a caller's group stays usable)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_max(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_weights(info: DistInfo, model: torch.nn.Module, device: torch.device) -> None:
    """Give every process process 0's weights and buffers (plain tensor broadcasts, in ``state_dict`` order)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            buf = t.detach().to(device)
            dist.broadcast(buf, src=0)
            t.copy_(buf)
