"""Losses as pure functions of logits and targets.

Binary logits have shape ``(N,)``; dx logits ``(N, 7)``. Distillation terms take the student's
and the teacher's logits (teacher already divided by its calibration temperature, if any) and
the KD softening temperature ``T``; they are scaled by ``T**2`` so their gradients keep the
same magnitude across temperatures (Hinton et al., 2015).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0, **_
) -> torch.Tensor:
    """Binary cross-entropy with melanoma examples weighted by ``pos_weight``."""
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)


def focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, pos_weight: float = 1.0, **_
) -> torch.Tensor:
    """Binary focal loss ``-w (1 - p_t)^gamma log p_t`` (Lin et al., 2017), positives weighted."""
    target = target.to(logits.dtype)
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    log_pt = target * log_p + (1 - target) * log_not_p
    weight = target * pos_weight + (1 - target)
    return -(weight * (1 - log_pt.exp()).pow(gamma) * log_pt).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, **_) -> torch.Tensor:
    """Plain softmax cross-entropy over the 7 dx classes."""
    return F.cross_entropy(logits, target.long())


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bce": weighted_bce,
    "focal": focal,
    "ce": cross_entropy,
}
LOSS_TASK = {"bce": "binary", "focal": "binary", "ce": "dx"}


def bernoulli_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(Bern(sigmoid(z_t/T)) || Bern(sigmoid(z_s/T)))``, averaged over the batch."""
    zs, zt = student.float() / temperature, teacher.float() / temperature
    pt = torch.sigmoid(zt)
    kl = pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) * (
        F.logsigmoid(-zt) - F.logsigmoid(-zs)
    )
    return kl.mean() * temperature**2


def softmax_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, summed over classes, batch-averaged."""
    log_ps = F.log_softmax(student.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2
