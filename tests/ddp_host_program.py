"""A program that owns its process group, as Ray Train or Accelerate do, for tests/test_train_ddp.py (not a test).

Run under torchrun: every process joins a Gloo group itself, calls ``vitprune.compress`` with the keyword arguments
given as JSON in argv[1] and an output folder of its own (``BASE/node<rank>``: two nodes' local disks), then uses
the group again. What happened goes to ``BASE/status-<rank>.json``; the exit code is the CLI's (143 after SIGTERM).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import vitprune
from vitprune.errors import VitpruneError
from vitprune.train.loop import TrainingInterrupted


def main() -> int:
    kwargs = json.loads(sys.argv[1])
    base = Path(kwargs.pop("base"))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    status: dict = {"rank": rank}
    code = 0
    try:
        result = vitprune.compress(output=str(base / f"node{rank}"), **kwargs)
        status.update(finished=result.finished, steps=result.steps)
    except TrainingInterrupted as e:
        status.update(interrupted_at=e.step, signum=e.signum)
        code = 128 + e.signum
    except VitpruneError as e:
        status.update(error=str(e))
        code = 1
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the group is still this program's to use
    status["group_sum"] = total.item()
    dist.destroy_process_group()
    (base / f"status-{rank}.json").write_text(json.dumps(status))
    return code


if __name__ == "__main__":
    sys.exit(main())
