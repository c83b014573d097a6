"""Mixup/CutMix and weight EMA in the training loop, against hand-computed references."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_training import _params, _split

from pipeline_lib import augment, config, losses, models, runs, training
from pipeline_lib.inference import predict_logits

AUG = config.load("augment", REPO / "params.yaml")


def _constant_images(n: int = 8, size: int = 16) -> torch.Tensor:
    """Image ``i`` is the constant ``i + 1``, so every output pixel names its source image."""
    return (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 3, size, size)


def test_mixup_blends_each_image_with_its_partner():
    x = torch.rand(8, 3, 16, 16)
    out, perm, lam = augment.mix(x, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    again = augment.mix(x, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert again[2] == lam and torch.equal(again[1], perm)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lam_is_the_area_each_image_keeps(seed):
    x = _constant_images()
    out, perm, lam = augment.mix(x, 0.0, 1.0, torch.Generator().manual_seed(seed))
    for i in range(8):
        own = (out[i] == x[i, 0, 0, 0]).float().mean().item()
        if perm[i] != i:
            assert own == pytest.approx(lam)  # the box is clipped at the border, lam follows
            assert ((out[i] == x[i]) | (out[i] == x[perm[i]])).all()


def test_both_alphas_pick_mixup_or_cutmix_per_batch():
    x, g = _constant_images(), torch.Generator().manual_seed(0)
    kinds = set()
    for _ in range(20):
        out, perm, lam = augment.mix(x, 0.4, 1.0, g)
        blended = torch.allclose(out, lam * x + (1 - lam) * x[perm])
        kinds.add("mixup" if blended and 0 < lam < 1 else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_mix_without_alpha_is_an_error():
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        augment.mix(torch.rand(2, 3, 4, 4), 0.0, 0.0, torch.Generator())


@pytest.mark.parametrize("key", ["mixup_alpha", "cutmix_alpha", "ema_decay"])
def test_regularizer_params_are_range_checked(key):
    with pytest.raises(config.ParamsError, match=key):
        _params(**{key: -0.1})
    if key == "ema_decay":
        with pytest.raises(config.ParamsError, match="ema_decay"):
            _params(ema_decay=1.0)


def test_mixed_targets_weigh_both_losses():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1])
    own, other = torch.tensor([1, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    dx = torch.zeros(4, dtype=torch.long)
    batch = training.Batch(own, dx, training.Batch(other, dx), lam=0.3)
    weight = torch.tensor(2.0)

    def bce(y):
        return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=weight)

    hard = training.Supervised("binary", "bce", pos_weight=2.0).hard(logits, batch)
    assert hard.item() == pytest.approx((0.3 * bce(own) + 0.7 * bce(other)).item(), rel=1e-6)
    rows = batch.take(torch.tensor([2, 0]), torch.device("cpu"))
    assert rows.partner.label.tolist() == [1, 0] and rows.lam == 0.3


class _Spy(torch.nn.Module):
    """Wraps a model and keeps every input it is called with."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def test_teacher_sees_the_students_mixed_batch(prepared, synthetic_root):
    torch.manual_seed(0)
    train, test = _split(prepared, synthetic_root)
    table = prepared.table
    teacher = _Spy(models.create("dsnet_tiny", task="dx"))
    student = _Spy(models.create("dsnet_tiny"))
    objective = training.Distillation(teacher, "dx", "binary", "bce", 2.0, 0.5)
    params = _params(epochs=1, mixup_alpha=0.4, cutmix_alpha=1.0)
    training.fit(
        student, objective, prepared.images[train], runs.targets(table.iloc[train]),
        prepared.images[test], table["label"].to_numpy()[test], params, AUG, progress=False,
    )  # fmt: skip
    steps = len(teacher.seen)
    assert steps == -(-len(train) // params.batch_size)
    for t, s in zip(teacher.seen, student.seen[:steps], strict=True):
        assert torch.equal(t, s)
    # The first batch is the loop's draw: epoch order, augmentation, then the mix.
    g = torch.Generator().manual_seed(params.seed)
    idx = training.epoch_order(table["label"].to_numpy()[train], 1.0, g)[: params.batch_size]
    x = augment.augment(torch.from_numpy(prepared.images[train][idx]), params.image_size, AUG, g)
    mixed, _, lam = augment.mix(x, params.mixup_alpha, params.cutmix_alpha, g)
    assert 0 < lam < 1 and not torch.equal(mixed, x)
    torch.testing.assert_close(teacher.seen[0], mixed)


class _Recorder(training.Supervised):
    """A supervised objective that keeps the weights it is called with (before each step)."""

    def __init__(self):
        super().__init__("binary", "bce")
        self.states = []

    def __call__(self, model, x, batch):
        self.states.append(copy.deepcopy(model.state_dict()))
        return super().__call__(model, x, batch)


def test_ema_model_is_the_warmed_up_average_of_the_trajectory(prepared, synthetic_root):
    train, test = _split(prepared, synthetic_root)
    table = prepared.table
    decay = 0.6

    def run(params, objective):
        torch.manual_seed(0)
        return training.fit(
            models.create("dsnet_tiny"), objective, prepared.images[train],
            runs.targets(table.iloc[train]), prepared.images[test],
            table["label"].to_numpy()[test], params, AUG, progress=False,
        )  # fmt: skip

    recorder = _Recorder()
    with_ema = run(_params(epochs=1, ema_decay=decay), recorder)
    raw = run(_params(epochs=1), training.Supervised("binary", "bce"))
    # Weights after steps 1..k: the recorder saw W_0..W_{k-1}; W_k is the raw run's result.
    trajectory = recorder.states[1:] + [raw.model.state_dict()]
    expected = {}
    for step, state in enumerate(trajectory, start=1):
        d = 0.0 if step == 1 else min(decay, 1 - step ** (-2 / 3))  # timm's warm-up, gamma 1
        for k, v in state.items():
            v = v.detach().float()
            expected[k] = v.clone() if step == 1 or k.endswith("num_batches_tracked") else (
                d * expected[k] + (1 - d) * v
            )  # fmt: skip
    got = with_ema.model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k].float(), v, rtol=1e-4, atol=1e-5, msg=k)
    assert not all(torch.equal(got[k], raw.model.state_dict()[k]) for k in got)
    # What fit scored is the average it returns, not the raw weights.
    np.testing.assert_allclose(
        with_ema.val_logits,
        predict_logits(with_ema.model, prepared.images[test], 32),
        rtol=1e-5,
        atol=1e-6,
    )


def test_teacher_sees_a_smaller_students_batch_at_its_own_size():
    x = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    teacher = _Spy(models.create("dsnet_tiny", task="dx")).eval()
    student = models.create("dsnet_tiny")
    batch = training.Batch(torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long))
    objective = training.Distillation(
        teacher, "dx", "binary", "bce", 2.0, 1.0, teacher_image_size=32
    )
    parts = objective(student, x, batch)
    (seen,) = teacher.seen
    reference = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(seen, reference)
    with torch.no_grad():
        zt = training.binary_logit(teacher.inner(reference), "dx")
        expected = losses.bernoulli_kd(student(x), zt, 2.0)
    assert parts["soft"].item() == pytest.approx(expected.item(), rel=1e-5)
    same = training.Distillation(teacher, "dx", "binary", "bce", 2.0, 1.0, teacher_image_size=16)
    assert same.teacher_view(x) is x
