import math

import pytest
import torch

from pipeline_lib import losses
from pipeline_lib.data import MELANOMA_INDEX


def test_weighted_bce_hand_value():
    logits = torch.zeros(2)
    target = torch.tensor([1.0, 0.0])
    # -4 log(0.5) for the positive, -log(0.5) for the negative, averaged.
    assert losses.weighted_bce(logits, target, pos_weight=4.0).item() == pytest.approx(
        2.5 * math.log(2)
    )


def test_focal_reduces_to_bce_at_gamma_zero_and_hand_value():
    logits = torch.tensor([0.3, -1.2, 2.0])
    target = torch.tensor([1.0, 0.0, 0.0])
    bce = losses.weighted_bce(logits, target, pos_weight=1.0)
    assert losses.focal(logits, target, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-6)
    # logit 0, label 1: p_t = 0.5, (1 - 0.5)^2 * log 2.
    assert losses.focal(torch.zeros(1), torch.ones(1), gamma=2.0).item() == pytest.approx(
        0.25 * math.log(2)
    )


def test_cross_entropy_hand_value():
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))
    assert losses.cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.5))


def _bernoulli_kl(pt: float, ps: float) -> float:
    return pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_bernoulli_kd_hand_value(temperature):
    zt, zs = math.log(3.0), -0.5
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = _bernoulli_kl(sig(zt / temperature), sig(zs / temperature)) * temperature**2
    got = losses.bernoulli_kd(torch.tensor([zs]), torch.tensor([zt]), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_bernoulli_kd_t1_worked_example():
    # p_t = 0.75, p_s = 0.5: 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812
    got = losses.bernoulli_kd(torch.zeros(1), torch.tensor([math.log(3.0)]), 1.0)
    assert got.item() == pytest.approx(0.130812, abs=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    z = torch.tensor([-2.0, 0.1, 3.0])
    assert losses.bernoulli_kd(z, z, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    zz = torch.randn(4, 7)
    assert losses.softmax_kd(zz, zz, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_softmax_kd_hand_value():
    teacher = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))  # p_t = (.25, .5, .25)
    student = torch.zeros(1, 3)  # p_s uniform
    expected = 0.25 * math.log(0.75) + 0.5 * math.log(1.5) + 0.25 * math.log(0.75)
    assert losses.softmax_kd(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # At T=2 the logits halve and the loss is scaled by 4.
    pt = torch.softmax(teacher[0] / 2, 0)
    expected_t2 = 4 * float((pt * torch.log(pt * 3)).sum())
    assert losses.softmax_kd(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_kd_gradient_flows_to_student_only():
    student = torch.tensor([0.2], requires_grad=True)
    teacher = torch.tensor([1.5], requires_grad=True)
    losses.bernoulli_kd(student, teacher.detach(), 2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_weighted_cross_entropy_against_hand_computation():
    """Melanoma weighted 8: PyTorch's weighted mean, sum(w_i * l_i) / sum(w_i), by hand."""
    logits = torch.tensor(
        [[0.2, -1.0, 0.5, 0.0, 1.5, 2.0, -0.3], [1.0, 0.0, 0.0, 0.0, -1.0, 0.5, 0.0]]
    )
    target = torch.tensor([MELANOMA_INDEX, 5])
    nll = [-torch.log_softmax(logits[i], 0)[target[i]].item() for i in range(2)]
    expected = (8.0 * nll[0] + 1.0 * nll[1]) / 9.0
    assert losses.cross_entropy(logits, target, pos_weight=8.0).item() == pytest.approx(expected)
    unweighted = losses.cross_entropy(logits, target).item()
    assert unweighted == pytest.approx(sum(nll) / 2)


def test_dx_focal_against_hand_computation():
    logits = torch.tensor(
        [[0.2, -1.0, 0.5, 0.0, 1.5, 2.0, -0.3], [1.0, 0.0, 0.0, 0.0, -1.0, 0.5, 0.0]]
    )
    target = torch.tensor([MELANOMA_INDEX, 0])
    expected = 0.0
    for i, w in ((0, 4.0), (1, 1.0)):
        p = torch.softmax(logits[i], 0)[target[i]].item()
        expected += -w * (1 - p) ** 2 * math.log(p)
    got = losses.focal(logits, target, gamma=2.0, pos_weight=4.0).item()
    assert got == pytest.approx(expected / 2)
    # gamma = 0 and no weight: plain cross-entropy
    assert losses.focal(logits, target, gamma=0.0).item() == pytest.approx(
        losses.cross_entropy(logits, target).item()
    )


def test_loss_task_pairs():
    """focal serves both tasks; bce only binary, ce only dx."""
    from pipeline_lib.training import Supervised

    Supervised("dx", "focal")
    Supervised("binary", "focal")
    with pytest.raises(ValueError, match="'bce' is for the binary task, not 'dx'"):
        Supervised("dx", "bce")
