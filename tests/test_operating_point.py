"""Operating points: the same choices as the evaluate stage, written, read and tied to a file."""

import dataclasses

import numpy as np
import pytest

from pipeline_lib import calibration, data, evaluation, operating_point

META = {"arch": "dsnet_tiny", "task": "binary", "image_size": 32}


def _val(task: str, n: int = 600, seed: int = 0):
    """Over-confident val logits: labels drawn from calibrated scores, logits those times 3."""
    rng = np.random.default_rng(seed)
    if task == "binary":
        z = rng.normal(-1.5, 1.5, n)
        labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
        return (3.0 * z).astype(np.float32), labels, np.where(labels == 1, 4, 5)
    z = rng.normal(0, 1.5, (n, 7))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    dx = np.array([rng.choice(7, p=row) for row in p])
    return (3.0 * z).astype(np.float32), (dx == data.MELANOMA_INDEX).astype(int), dx


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights")
    return path


@pytest.mark.parametrize("task", ["binary", "dx"])
def test_choices_are_the_evaluate_stages(task, model_file):
    """Temperature as evaluate fits it for the student, thresholds as evaluate chooses them."""
    logits, labels, dx = _val(task)
    op = operating_point.choose(logits, labels, dx, model_file, META | {"task": task}, 32, 0.95, 15)
    t = calibration.fit_temperature(logits, labels if task == "binary" else dx, task)
    assert op.temperature == pytest.approx(t, rel=1e-9)
    calibrated = data.melanoma_probability(logits, task, t)
    raw = data.melanoma_probability(logits, task)
    assert op.threshold == evaluation.choose_thresholds(labels, calibrated, 0.95).sensitivity
    assert op.threshold_raw == evaluation.choose_thresholds(labels, raw, 0.95).sensitivity
    assert op.val_sensitivity >= 0.95
    positive = calibrated >= op.threshold
    assert op.val_specificity == pytest.approx(np.mean(~positive[labels == 0]))
    if task == "binary":  # a sigmoid's temperature keeps the order: the same decisions
        np.testing.assert_array_equal(positive, raw >= op.threshold_raw)
    assert (op.n_val, op.n_val_melanoma) == (len(labels), labels.sum())


def test_over_confident_logits_get_a_temperature_above_one(model_file):
    logits, labels, dx = _val("binary")
    op = operating_point.choose(logits, labels, dx, model_file, META, 32, 0.95, 15)
    assert op.temperature > 1 and op.val_ece < op.val_ece_raw


def test_a_file_calibrated_on_val_keeps_its_output(model_file):
    """An int8 file with Platt scaling built in gets temperature 1: its output is shown as is."""
    logits, labels, dx = _val("dx")
    op = operating_point.choose(
        logits, labels, dx, model_file, META | {"task": "dx"}, 32, 0.95, 15, temperature=1.0
    )
    assert op.temperature == 1.0
    assert (op.threshold, op.val_ece) == (op.threshold_raw, op.val_ece_raw)
    raw = data.melanoma_probability(logits, "dx")
    assert op.threshold == evaluation.choose_thresholds(labels, raw, 0.95).sensitivity


def test_write_read_and_check_file(tmp_path, model_file):
    logits, labels, dx = _val("binary")
    op = operating_point.choose(logits, labels, dx, model_file, META, 32, 0.95, 15)
    path = tmp_path / "op.json"
    operating_point.write(path, {"int8": op, "float": dataclasses.replace(op, threshold=0.5)})
    assert operating_point.read(path, "int8") == op
    assert operating_point.read(path, "float").threshold == 0.5
    operating_point.check_file(op, model_file)
    other = tmp_path / "other.bin"
    other.write_bytes(b"other weights")
    with pytest.raises(operating_point.OperatingPointError, match="other.bin is not the model"):
        operating_point.check_file(op, other)
    with pytest.raises(operating_point.OperatingPointError, match="no operating point for model"):
        operating_point.read(path, "int8-onnx")
    with pytest.raises(operating_point.OperatingPointError, match="dvc repro model_card"):
        operating_point.read(tmp_path / "absent.json", "int8")
