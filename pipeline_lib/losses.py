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

from pipeline_lib.data import DX_CODES, MELANOMA_INDEX


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0, **_
) -> torch.Tensor:
    """Binary cross-entropy with melanoma examples weighted by ``pos_weight``."""
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)


def _binary_focal(logits, target, gamma, pos_weight):
    target = target.to(logits.dtype)
    log_pt = target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)
    weight = target * pos_weight + (1 - target)
    return -(weight * (1 - log_pt.exp()).pow(gamma) * log_pt).mean()


def class_weights(pos_weight: float, like: torch.Tensor) -> torch.Tensor:
    """Per-class weights of the dx losses: ``pos_weight`` for melanoma, 1 for the others."""
    weight = torch.ones(len(DX_CODES), dtype=like.dtype, device=like.device)
    weight[MELANOMA_INDEX] = pos_weight
    return weight


def focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, pos_weight: float = 1.0, **_
) -> torch.Tensor:
    """Focal loss ``-w (1 - p_t)^gamma log p_t`` (Lin et al., 2017), melanoma weighted by
    ``pos_weight``: binary (sigmoid) for ``(N,)`` logits, softmax over the dx classes for
    ``(N, 7)``. The dx form is a plain mean over the batch, like the binary one."""
    if logits.ndim == 1:
        return _binary_focal(logits, target, gamma, pos_weight)
    target = target.long()
    log_pt = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    weight = class_weights(pos_weight, logits)[target]
    return -(weight * (1 - log_pt.exp()).pow(gamma) * log_pt).mean()


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0, **_
) -> torch.Tensor:
    """Softmax cross-entropy over the 7 dx classes, melanoma weighted by ``pos_weight``
    (PyTorch's weighted mean: the weighted sum over the batch divided by the sum of weights)."""
    if pos_weight == 1.0:  # the unweighted call: bit-identical to the runs before weights
        return F.cross_entropy(logits, target.long())
    return F.cross_entropy(logits, target.long(), weight=class_weights(pos_weight, logits))


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bce": weighted_bce,
    "focal": focal,
    "ce": cross_entropy,
}
LOSS_TASKS = {"bce": ("binary",), "focal": ("binary", "dx"), "ce": ("dx",)}


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
