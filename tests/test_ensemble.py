"""Teacher ensembles: probability averaging, checkpoint round trip, and the stage's training path."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, inference, models, runs, split, training


def _members(task, n=3):
    out = []
    for k in range(n):
        torch.manual_seed(k)
        out.append(models.create("dsnet_tiny", task, drop_rate=0.0).eval())
    return out


@pytest.mark.parametrize("task", ["binary", "dx"])
def test_ensemble_averages_member_probabilities(task):
    members = _members(task)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        z = models.Ensemble(members)(x).numpy()
        member_p = [models.melanoma_probability(m(x).numpy(), task) for m in members]
    # The reference: the plain mean of each member's melanoma probability.
    np.testing.assert_allclose(
        models.melanoma_probability(z, task), np.mean(member_p, 0), rtol=1e-5, atol=1e-6
    )
    if task == "dx":  # and every class's probability is the mean, not only melanoma's
        with torch.no_grad():
            mean = torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(torch.as_tensor(z), -1), mean)


def test_ensemble_members_must_share_a_task():
    with pytest.raises(ValueError, match="one task"):
        models.Ensemble([*_members("binary", 1), *_members("dx", 1)])


def test_ensemble_checkpoint_round_trip(tmp_path):
    ensemble = models.Ensemble(_members("dx", 2))
    meta = {"arch": "dsnet_tiny", "task": "dx", "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(tmp_path / "model.pt", ensemble, meta | {"image_size": 32})
    loaded, loaded_meta = models.load_checkpoint(tmp_path / "model.pt")
    assert isinstance(loaded, models.Ensemble) and loaded_meta["members"] == 2
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ensemble.eval()(x))


def test_ensemble_must_be_positive():
    base = config.load("train_teacher", REPO / "params.yaml")
    with pytest.raises(config.ParamsError, match="train_teacher.ensemble"):
        dataclasses.replace(base, ensemble=0)


def test_two_member_teacher_is_saved_and_scored_as_an_ensemble(tmp_path, prepared):
    """train_and_save with two members: one Ensemble checkpoint whose val logits it wrote."""
    root = tmp_path / "prepared"
    root.mkdir()
    np.save(root / "images.npy", prepared.images)
    prepared.table.to_csv(root / "table.csv", index=False)
    assignment = split.assign(prepared.table, 0)
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(assignment == name)
        pd.DataFrame({"row": rows}).to_csv(tmp_path / f"{name}.csv", index=False)
    params = dataclasses.replace(
        config.load("train_teacher", REPO / "params.yaml"),
        arch="dsnet_tiny", task="binary", loss="bce", image_size=32, epochs=1, batch_size=16,
        drop_rate=0.0, warmup_epochs=0.0, ensemble=2, device="cpu",
    )  # fmt: skip
    aug = config.load("augment", REPO / "params.yaml")
    members = _members("binary", 2)
    result = runs.train_and_save(
        members, training.Supervised("binary", "bce"), params, aug, 15, root, tmp_path,
        tmp_path / "out", tmp_path / "metrics.json", tmp_path / "live",
    )  # fmt: skip
    model, meta = models.load_checkpoint(tmp_path / "out" / "model.pt")
    assert isinstance(model, models.Ensemble) and meta["members"] == 2
    val = runs.load_split(root, tmp_path, "val")
    saved = np.load(tmp_path / "out" / "val_logits.npy")
    np.testing.assert_allclose(inference.predict_logits(model, val.images, 32), saved, atol=1e-5)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["members"] == 2 and len(summary["member_val_roc_auc"]) == 2
    assert summary["val_roc_auc"] == pytest.approx(result.best_metrics["val_roc_auc"])
    # Each member logged its own dvclive curve.
    assert (tmp_path / "live" / "member1" / "plots" / "metrics" / "val" / "roc_auc.tsv").is_file()
