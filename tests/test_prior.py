"""The handcrafted-feature prior: out-of-fold train logits, the stacker, and the soft target."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from pipeline_lib import config, models, prior, runs, split, training


def _table(n: int, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": [f"img{i}" for i in range(n)], "lesion_id": np.arange(n) // 2, "label": y}
    )


def test_train_logits_are_out_of_fold():
    # Random labels and per-row random features: a model scoring rows it was fitted on would
    # memorise them (AUC near 1); out of fold it can only guess.
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8))
    in_sample = prior.boosting(0).fit(x, y).predict_proba(x)[:, 1]
    assert roc_auc_score(y, in_sample) > 0.95
    fitted = prior.fit(x, _table(n, y), x[:50], y[:50], rng.normal(size=50), seed=0)
    oof = fitted.train_logit.loc[[f"img{i}" for i in range(n)]].to_numpy()
    assert abs(roc_auc_score(y, oof) - 0.5) < 0.1


def test_stacker_weighs_the_informative_model():
    rng = np.random.default_rng(1)
    n_train, n_val = 600, 600
    y_train, y_val = rng.integers(0, 2, n_train), rng.integers(0, 2, n_val)
    # The feature carries the label; the teacher's val logit is noise.
    x_train = (y_train + rng.normal(0, 0.5, n_train))[:, None]
    x_val = (y_val + rng.normal(0, 0.5, n_val))[:, None]
    fitted = prior.fit(x_train, _table(n_train, y_train), x_val, y_val, rng.normal(size=n_val), 0)
    teacher_weight, prior_weight, _ = fitted.weights
    assert prior_weight > 0.5 and abs(teacher_weight) < 0.2
    assert fitted.val_roc_auc["prior"] > 0.8
    assert fitted.val_roc_auc["teacher"] == pytest.approx(0.5, abs=0.1)
    assert fitted.summary()["prior_stacked_val_roc_auc"] >= fitted.val_roc_auc["prior"] - 0.01


def _bernoulli_kd_by_hand(zs, zt, t):
    # T^2 * (cross-entropy - entropy) of the softened Bernoulli target
    pt = torch.sigmoid(zt / t)
    ce = F.binary_cross_entropy_with_logits(zs / t, pt, reduction="none")
    entropy = F.binary_cross_entropy(pt, pt, reduction="none")
    return ((ce - entropy).mean() * t**2).item()


class _FlatTeacher(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1) * 2.0


def _student():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 1))
    return models.Classifier(net, "binary")


def test_soft_target_stacks_teacher_and_prior():
    x = torch.rand(4, 3, 1, 1)
    student = _student()
    batch = training.Batch(
        torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long),
        prior=torch.tensor([-2.0, 1.5, 0.3, 3.0]),
    )  # fmt: skip
    a, b, c = 0.6, 0.8, -0.4
    obj = training.Distillation(
        _FlatTeacher(), "binary", "binary", "bce", 2.0, 1.0, teacher_temperature=3.0,
        prior_weights=(a, b, c),
    )  # fmt: skip
    soft = obj(student, x, batch)["soft"].item()
    target = a * (x.flatten(1).sum(1) * 2.0 / 3.0) + b * batch.prior + c
    assert soft == pytest.approx(_bernoulli_kd_by_hand(student(x), target, 2.0), rel=1e-5)
    # (0, 1, 0) ignores the teacher: the prior alone is the target
    only = training.Distillation(
        _FlatTeacher(), "binary", "binary", "bce", 2.0, 1.0, prior_weights=(0.0, 1.0, 0.0)
    )
    expected = _bernoulli_kd_by_hand(student(x), batch.prior, 2.0)
    assert only(student, x, batch)["soft"].item() == pytest.approx(expected, rel=1e-5)


def test_mixed_batches_mix_the_prior_like_the_images():
    own = training.Batch(
        torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long), prior=torch.tensor([1.0, -1.0])
    )
    mixed = training.Batch(
        own.label, own.dx, partner=own.take(torch.tensor([1, 0]), torch.device("cpu")),
        lam=0.25, prior=own.prior,
    )  # fmt: skip
    torch.testing.assert_close(mixed.mixed_prior(), torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match="no prior"):
        training.Batch(own.label, own.dx).mixed_prior()


def test_prior_needs_a_binary_student():
    with pytest.raises(ValueError, match="binary student.*'dx'"):
        training.Distillation(_FlatTeacher(), "dx", "dx", "ce", 2.0, 0.5, prior_weights=(1, 1, 0))


def test_targets_take_the_prior_by_image_id(prepared):
    table = prepared.table.iloc[:5]
    logits = pd.Series(np.arange(5.0), index=table["image_id"].to_numpy()[::-1])
    batch = runs.targets(table, logits)
    torch.testing.assert_close(batch.prior, torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    with pytest.raises(KeyError, match="no prior logit for 1 images"):
        runs.targets(table, logits.iloc[1:])


def test_negative_feature_prior_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "kd:\n  temperature: 2.0\n  alpha: 0.5\n  use_calibrated_teacher: true\n"
        "  teacher_runtime: auto\n  feature_prior: -1\n"
    )
    with pytest.raises(config.ParamsError, match="kd.feature_prior.*-1"):
        config.load("kd", path)


def test_for_distillation_on_synthetic_data(prepared, tmp_path):
    # The stage's path end to end on the synthetic set: features, teacher val logits, stack.
    assignment = split.assign(prepared.table, 0)
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    table = prepared.table.assign(row=range(len(prepared.table)))
    for name in ("train", "val"):
        table[assignment.to_numpy() == name].to_csv(split_dir / f"{name}.csv", index=False)
    prepared_dir = tmp_path / "prepared"
    prepared_dir.mkdir()
    np.save(prepared_dir / "images.npy", prepared.images)
    prepared.table.to_csv(prepared_dir / "table.csv", index=False)
    torch.manual_seed(0)
    teacher = models.create("test_resnet", task="dx").eval()
    fitted = prior.for_distillation(
        prepared_dir, split_dir, teacher, {"image_size": 32, "task": "dx"}, 1.5, 32, seed=0
    )
    train_ids = table.loc[assignment.to_numpy() == "train", "image_id"]
    assert sorted(fitted.train_logit.index) == sorted(train_ids)
    assert np.isfinite(fitted.train_logit).all()
    # the synthetic melanomas are darker and larger: the handcrafted prior sees it
    assert fitted.val_roc_auc["prior"] > 0.7
