"""The trainer's own losses: label cross-entropy and soft distillation on logits (the method adds its own).

Soft distillation follows DeiT's soft distillation (``DistillationLoss`` with ``distillation_type='soft'`` in
facebookresearch/deit and timm): ``KL(p_teacher || p_student)`` between the softmaxes of the logits divided by the
temperature ``T``, multiplied by ``T**2`` so that its gradients keep their size when ``T`` changes (Hinton et al.).
One difference, on purpose: DeiT divides the summed KL by ``batch x classes``; vitprune takes the per-image mean
(``batchmean``, the mathematically correct KL, as the DynamicViT and EViT training code do), so ``kd_weight`` does
not silently depend on the number of classes.

The total is ``cls_weight * CE(logits, labels; label_smoothing) + kd_weight * KD + sum(method aux losses)``.

Models without a classifier (``feature_output``: no head, ``num_classes=0``, or an embedding head such as CLIP's
projection) output a feature vector, not class scores: there are no labels to learn and softmaxes of features mean
nothing. Their distillation matches the teacher's pooled embedding instead: the label term is dropped and the
distillation term is ``kd_weight * (1 - cos(student, teacher))``, the cosine distance averaged over the batch
(cosine, not MSE: image-text towers are used through normalised embeddings, so the direction is what their users
compare; the embedding's norm is left free).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


#: ``model.vitprune_output`` of a model whose output is an embedding although it has a head (CLIP's projection)
EMBEDDING = "embedding"


def feature_output(model: nn.Module) -> bool:
    """Whether ``model`` outputs features rather than class scores: no head (``num_classes`` 0) or an embedding
    head (``vitprune_output == "embedding"``)."""
    return int(getattr(model, "num_classes", 1) or 0) == 0 or getattr(model, "vitprune_output", None) == EMBEDDING


def cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """``1 - cos(student, teacher)`` per image (over the last dimension), averaged over the batch."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def soft_distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


class DistillationLoss:
    """Weighted label CE and logit distillation; returns the weighted terms by name."""

    def __init__(self, cls_weight: float = 1.0, label_smoothing: float = 0.0, kd_weight: float = 0.5,
                 kd_temperature: float = 1.0, features: bool = False):
        self.features = bool(features)  # feature distillation (cosine distance), no label term
        self.cls_weight = float(cls_weight)
        self.label_smoothing = float(label_smoothing)
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)

    def __call__(self, logits: Tensor, targets: Tensor, teacher_logits: Optional[Tensor]) -> dict[str, Tensor]:
        if isinstance(logits, (tuple, list)):  # distilled heads in training mode: (class, distillation) logits
            logits = sum(logits) / len(logits)
        logits = logits.float()
        out: dict[str, Tensor] = {}
        if self.features:
            if self.kd_weight > 0 and teacher_logits is not None:
                out["feat"] = self.kd_weight * cosine_distance(logits, teacher_logits.detach())
            return out
        if self.cls_weight > 0:
            out["cls"] = self.cls_weight * F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.kd_weight > 0 and teacher_logits is not None:
            out["kd"] = self.kd_weight * soft_distillation(logits, teacher_logits.detach(), self.kd_temperature)
        return out


def total(terms: dict[str, Tensor]) -> Tensor:
    vals = list(terms.values())
    return torch.stack([v.float() for v in vals]).sum() if vals else torch.zeros(())
