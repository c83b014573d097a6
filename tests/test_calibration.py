import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold

from pipeline_lib import calibration, data, metrics


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_recovers_known_temperature_binary(true_t):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    y = rng.random(z.size) < 1 / (1 + np.exp(-z))
    fitted = calibration.fit_temperature(z * true_t, y.astype(int), "binary")
    assert fitted == pytest.approx(true_t, rel=0.05)
    p_before = 1 / (1 + np.exp(-z * true_t))
    p_after = 1 / (1 + np.exp(-z * true_t / fitted))
    assert metrics.ece(y, p_after) < metrics.ece(y, p_before)


def test_recovers_known_temperature_dx():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (20_000, 7))
    probs = torch.softmax(torch.as_tensor(z), 1).numpy()
    y = np.array([rng.choice(7, p=p) for p in probs])
    fitted = calibration.fit_temperature(z * 3.0, y, "dx")
    assert fitted == pytest.approx(3.0, rel=0.05)
    assert calibration.nll(z * 3.0, y, "dx", fitted) < calibration.nll(z * 3.0, y, "dx")


def test_calibrated_module_divides_logits():
    model = torch.nn.Identity()
    x = torch.tensor([2.0, -4.0])
    assert torch.allclose(calibration.Calibrated(model, 2.0)(x), torch.tensor([1.0, -2.0]))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _dx_logits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2.0, (n, len(data.DX_CODES)))


def test_melanoma_log_odds_is_the_logit_of_p_mel():
    z = _dx_logits(200, 0)
    p = data.melanoma_probability(z, "dx")
    np.testing.assert_allclose(calibration.melanoma_log_odds(z, "dx"), np.log(p / (1 - p)))
    np.testing.assert_array_equal(calibration.melanoma_log_odds(z[:, 0], "binary"), z[:, 0])


def test_platt_fit_is_the_maximum_likelihood_slope_and_intercept():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(z.size) < _sigmoid(1.5 * z - 1.0)).astype(int)

    def nll(ab):  # the reference: binary NLL minimised by scipy, not by scikit-learn
        p = np.clip(_sigmoid(ab[0] * z + ab[1]), 1e-12, 1 - 1e-12)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    reference = minimize(nll, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6}).x
    slope, intercept = calibration.fit_platt(z, y, "binary")
    assert (slope, intercept) == pytest.approx(tuple(reference), abs=2e-3)
    assert (slope, intercept) == pytest.approx((1.5, -1.0), abs=0.1)
    # dx logits are fitted on their melanoma log-odds
    dx = _dx_logits(2_000, 3)
    labels = (np.random.default_rng(4).random(2_000) < 0.3).astype(int)
    log_odds = calibration.melanoma_log_odds(dx, "dx")
    assert calibration.fit_platt(dx, labels, "dx") == pytest.approx(
        calibration.fit_platt(log_odds, labels, "binary")
    )


def test_cross_fitted_platt_scores_each_fold_with_a_fit_on_the_others():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 600)
    y = (rng.random(z.size) < _sigmoid(0.7 * z + 0.5)).astype(int)
    got = calibration.cross_fitted_platt(z, y, "binary", folds=3, seed=7)
    expected = np.empty_like(z)
    for train, held_out in StratifiedKFold(3, shuffle=True, random_state=7).split(z, y):
        slope, intercept = calibration.fit_platt(z[train], y[train], "binary")
        expected[held_out] = _sigmoid(slope * z[held_out] + intercept)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(("slope", "intercept"), [(1.33, 0.96), (0.5, -2.0)])
def test_platt_module_moves_p_mel_and_keeps_the_other_diagnoses_ratios(slope, intercept):
    z = _dx_logits(64, 6)
    out = calibration.MelanomaPlatt(slope, intercept, "dx")(torch.from_numpy(z)).numpy()
    log_odds = np.log(data.melanoma_probability(z, "dx")) - np.log1p(
        -data.melanoma_probability(z, "dx")
    )
    np.testing.assert_allclose(
        data.melanoma_probability(out, "dx"), _sigmoid(slope * log_odds + intercept), atol=1e-12
    )
    others = [i for i in range(len(data.DX_CODES)) if data.DX_CODES[i] != data.MELANOMA]
    before, after = data.dx_probabilities(z)[:, others], data.dx_probabilities(out)[:, others]
    np.testing.assert_allclose(
        after / after.sum(1, keepdims=True), before / before.sum(1, keepdims=True), atol=1e-12
    )
    binary = calibration.MelanomaPlatt(slope, intercept, "binary")(torch.from_numpy(z[:, 0]))
    np.testing.assert_allclose(binary.numpy(), slope * z[:, 0] + intercept)
