"""The trainer's own losses: label cross-entropy and soft distillation on logits (the method adds its own).

Soft distillation follows DeiT's soft distillation (``DistillationLoss`` with ``distillation_type='soft'`` in
facebookresearch/deit and timm): ``KL(p_teacher || p_student)`` between the softmaxes of the logits divided by the
temperature ``T``, multiplied by ``T**2`` so that its gradients keep their size when ``T`` changes (Hinton et al.).
One difference, on purpose: DeiT divides the summed KL by ``batch x classes``; vitprune takes the per-image mean
(``batchmean``, the mathematically correct KL, as the DynamicViT and EViT training code do), so ``kd_weight`` does
not silently depend on the number of classes.

The total is ``cls_weight * CE(logits, labels; label_smoothing) + kd_weight * KD + sum(method aux losses)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


class DistillationLoss:
    """Weighted label CE and logit distillation; returns the weighted terms by name."""

    def __init__(self, cls_weight: float = 1.0, label_smoothing: float = 0.0, kd_weight: float = 0.5,
                 kd_temperature: float = 1.0):
        self.cls_weight = float(cls_weight)
        self.label_smoothing = float(label_smoothing)
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)

    def __call__(self, logits: Tensor, targets: Tensor, teacher_logits: Optional[Tensor]) -> dict[str, Tensor]:
        if isinstance(logits, (tuple, list)):  # distilled heads in training mode: (class, distillation) logits
            logits = sum(logits) / len(logits)
        logits = logits.float()
        out: dict[str, Tensor] = {}
        if self.cls_weight > 0:
            out["cls"] = self.cls_weight * F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.kd_weight > 0 and teacher_logits is not None:
            out["kd"] = self.kd_weight * soft_distillation(logits, teacher_logits.detach(), self.kd_temperature)
        return out


def total(terms: dict[str, Tensor]) -> Tensor:
    vals = list(terms.values())
    return torch.stack([v.float() for v in vals]).sum() if vals else torch.zeros(())
