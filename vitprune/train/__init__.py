"""Evaluation and distillation training.

* ``evaluate``: top-1/top-5/loss of a model on a dataset split;
* ``recipe``: trainer defaults, the method's paper recipe, the demo preset and the user's flags merged;
* ``losses``: label cross-entropy and soft distillation on logits (DeiT's convention);
* ``loop``: the ``Trainer`` (param groups, schedule, AMP, accumulation, several passes per step, DDP);
* ``checkpoints``: atomic checkpoints that resume bit for bit; ``ddp``: torchrun / DistributedDataParallel.

``vitprune.compress`` puts them together.
"""
from .evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
