"""Knowledge distillation losses (Hinton et al. 2015): the student matches the teacher's softened
distribution and the true labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T^2 so its gradients keep their size as T grows."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean") * (t * t)


def kd_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                 alpha: float, temperature: float) -> torch.Tensor:
    """alpha * soft-label KD + (1 - alpha) * cross-entropy on the true labels."""
    kd = soft_logit_kd(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(student_logits, targets)
    return alpha * kd + (1.0 - alpha) * ce
