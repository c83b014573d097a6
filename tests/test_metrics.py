import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipeline_lib import data, metrics


@pytest.fixture()
def scores():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.15
    p = np.clip(rng.normal(0.3 + 0.35 * y, 0.2), 0, 1)
    return y.astype(int), p


def test_auc_pr_brier_match_sklearn(scores):
    y, p = scores
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert metrics.pr_auc(y, p) == pytest.approx(average_precision_score(y, p))
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p))


def test_auc_of_one_class_is_nan():
    assert np.isnan(metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_ece_hand_worked_example():
    # 2 bins: [0, .5) holds p=.2,.4 (labels 0,1): |0.5 - 0.3| = 0.2 weighted 2/5;
    # [.5, 1] holds p=.6,.8,1.0 (labels 1,1,0): |2/3 - 0.8| = 0.1333 weighted 3/5.
    y = [0, 1, 1, 1, 0]
    p = [0.2, 0.4, 0.6, 0.8, 1.0]
    assert metrics.ece(y, p, n_bins=2) == pytest.approx(0.4 * 0.2 + 0.6 * (0.8 - 2 / 3))


def test_ece_puts_probability_one_in_last_bin():
    assert metrics.ece([1, 1], [1.0, 1.0], n_bins=10) == pytest.approx(0.0)
    rel = metrics.reliability([1, 0], [1.0, 0.0], n_bins=10)
    assert rel["count"][-1] == 1 and rel["count"][0] == 1


def test_ece_of_calibrated_scores_is_small():
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = rng.random(p.size) < p
    assert metrics.ece(y, p, 15) < 0.01


def test_threshold_for_sensitivity_hand_case():
    # Positives score .9 .8 .7 .6 .5 .4 .3 .2 .1 .05 (10). 95% needs 10 of them: t = 0.05.
    pos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    y = [1] * 10 + [0] * 3
    p = pos + [0.01, 0.5, 0.95]
    assert metrics.threshold_for_sensitivity(y, p, 0.95) == pytest.approx(0.05)
    # 80% needs 8 of 10: t = 0.2.
    assert metrics.threshold_for_sensitivity(y, p, 0.8) == pytest.approx(0.2)
    op = metrics.operating_point(y, p, 0.2)
    assert op.sensitivity == pytest.approx(0.8)
    assert (op.tp, op.fn, op.fp, op.tn) == (8, 2, 2, 1)
    assert op.specificity == pytest.approx(1 / 3)
    assert op.precision == pytest.approx(0.8)


def test_operating_point_matches_sklearn(scores):
    y, p = scores
    t = metrics.threshold_for_sensitivity(y, p, 0.95)
    op = metrics.operating_point(y, p, t)
    pred = p >= t
    assert op.sensitivity >= 0.95
    assert op.sensitivity == pytest.approx(recall_score(y, pred))
    assert op.specificity == pytest.approx(recall_score(1 - y, ~pred))
    assert op.precision == pytest.approx(precision_score(y, pred))
    assert op.f1 == pytest.approx(f1_score(y, pred))


def test_specificity_of_a_decent_model_is_not_zero(scores):
    # The seed report's specificity at 95% sensitivity was always 0: a bug this guards.
    y, p = scores
    val, test = slice(0, 250), slice(250, None)
    t = metrics.threshold_for_sensitivity(y[val], p[val], 0.95)
    assert 0.1 < metrics.operating_point(y[test], p[test], t).specificity < 1


def test_threshold_for_f1_is_the_best_cut(scores):
    y, p = scores
    t = metrics.threshold_for_f1(y, p)
    best = max(f1_score(y, p >= c) for c in np.unique(p))
    assert f1_score(y, p >= t) == pytest.approx(best)


def test_summary_keys_and_prefix(scores):
    y, p = scores
    out = metrics.summary(y, p, 15, prefix="val_")
    assert {"val_roc_auc", "val_pr_auc", "val_ece", "val_specificity"} <= set(out)


def test_shape_mismatch_and_nan_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        metrics.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])


def test_logit_inverts_the_sigmoid_and_clips_certainty():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(metrics.logit(p), np.log(p / (1 - p)))
    np.testing.assert_allclose(1 / (1 + np.exp(-metrics.logit(p))), p)
    assert metrics.logit(np.array([0.0, 1.0])) == pytest.approx([-13.8155, 13.8155], abs=1e-3)


def test_dx_figures_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    rng = np.random.default_rng(0)
    codes = np.array(data.DX_CODES)[rng.integers(0, 6, 200)]  # no vasc: its AUC is undefined
    probs = rng.dirichlet(np.ones(7), 200)
    y = np.array([data.DX_CODES.index(c) for c in codes])
    probs[np.arange(100), y[:100]] += 1.0  # half the images lean to their true class
    probs /= probs.sum(1, keepdims=True)
    d = metrics.dx_figures(codes, probs)
    assert d["confusion"] == confusion_matrix(y, probs.argmax(1), labels=range(7)).tolist()
    assert d["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert d["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    for i, code in enumerate(data.DX_CODES[:6]):
        assert d["per_class"][code]["roc_auc"] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
    assert d["per_class"]["vasc"] == {
        "n": 0, "roc_auc": None, "precision": 0.0, "recall": 0.0, "f1": 0.0
    }  # fmt: skip


def test_dx_precision_recall_f1_by_hand():
    """Three images of akiec, one of bcc; predictions akiec, akiec, bcc, bcc."""
    codes = ["akiec", "akiec", "akiec", "bcc"]
    probs = np.zeros((4, 7))
    probs[[0, 1, 2, 3], [0, 0, 1, 1]] = 1.0
    per_class = metrics.dx_figures(codes, probs)["per_class"]
    assert per_class["akiec"]["precision"] == 1.0 and per_class["akiec"]["recall"] == 2 / 3
    assert per_class["akiec"]["f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert per_class["bcc"]["precision"] == 0.5 and per_class["bcc"]["recall"] == 1.0
    assert per_class["bcc"]["f1"] == pytest.approx(2 / 3)
