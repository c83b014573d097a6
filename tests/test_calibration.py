import numpy as np
import pytest
import torch

from pipeline_lib import calibration, metrics


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
