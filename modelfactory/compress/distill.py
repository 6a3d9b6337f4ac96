"""Knowledge distillation as composable parts (MMRazor's shape): the task's forward records hidden states and
attentions, *connectors* adapt the student's width to the teacher's, and *losses* compare them through a layer
map. Soft-logit KD (Hinton et al. 2015), hidden-state MSE (TinyBERT, Jiao et al. 2020) and attention-distribution
KL (MiniLM, Wang et al. 2020) are each one small function; a config picks weights and the mapping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks.base import Outputs


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


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i learns from teacher layer (i+1)*k - 1, k = teacher/student (TinyBERT's uniform mapping)."""
    k = teacher_layers / student_layers
    return [min(teacher_layers - 1, int(round((i + 1) * k)) - 1) for i in range(student_layers)]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    while m.ndim < x.ndim:
        m = m.unsqueeze(-1)
    return (x * m).sum() / (m.expand_as(x).sum().clamp(min=1.0))


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layer_map: Sequence[int],
                      connectors: nn.ModuleList, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE between each student layer's output (through its connector) and its mapped teacher layer.

    hidden_states[0] is the embedding output in Hugging Face models, so layer i's output is index i + 1.
    """
    losses = [_masked_mean((conn(student[i + 1]) - teacher[j + 1]) ** 2, mask)
              for i, (j, conn) in enumerate(zip(layer_map, connectors))]
    return torch.stack(losses).mean()


def attention_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layer_map: Sequence[int],
                   mask: torch.Tensor | None) -> torch.Tensor:
    """KL between head-averaged self-attention distributions of mapped layers (MiniLM's attention transfer,
    averaged over heads so student and teacher may have different head counts)."""
    losses = []
    for i, j in enumerate(layer_map):
        s = student[i].mean(dim=1).clamp(min=1e-9)  # [batch, query, key]
        t = teacher[j].mean(dim=1).clamp(min=1e-9)
        kl = (t * (t.log() - s.log())).sum(-1)  # per query position
        losses.append(_masked_mean(kl, mask))
    return torch.stack(losses).mean()


@dataclass
class DistillConfig:
    alpha: float = 0.7
    temperature: float = 2.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0

    @property
    def needs_live_teacher(self) -> bool:
        """Intermediate losses need the teacher's internals each step; logits alone can be precomputed."""
        return self.hidden_weight > 0 or self.attention_weight > 0


def make_connectors(widths: Sequence[tuple[int, int]]) -> nn.ModuleList:
    """One linear map per (student width, teacher width) pair of mapped layers (TinyBERT's W_h); an identity
    where the widths already match."""
    return nn.ModuleList(nn.Identity() if s == t else nn.Linear(s, t, bias=False) for s, t in widths)


def distill_loss(cfg: DistillConfig, s: Outputs, t_logits: torch.Tensor, targets: torch.Tensor, *,
                 t: Outputs | None = None, layer_map: Sequence[int] = (), connectors: nn.ModuleList | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    loss = kd_objective(s.logits, t_logits, targets, alpha=cfg.alpha, temperature=cfg.temperature)
    if cfg.hidden_weight and t is not None:
        loss = loss + cfg.hidden_weight * hidden_state_loss(s.hidden_states, t.hidden_states, layer_map,
                                                            connectors, mask)
    if cfg.attention_weight and t is not None:
        loss = loss + cfg.attention_weight * attention_loss(s.attentions, t.attentions, layer_map, mask)
    return loss
