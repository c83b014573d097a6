"""Teacher ensembles: probability averaging, checkpoint round trip, and the stage's training path."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, ensemble, inference, models, runs, split, training


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


def _prepared_and_split(tmp_path, prepared):
    """The prepared cache under ``tmp_path/prepared`` and its split CSVs in ``tmp_path``."""
    root = tmp_path / "prepared"
    root.mkdir()
    np.save(root / "images.npy", prepared.images)
    prepared.table.to_csv(root / "table.csv", index=False)
    assignment = split.assign(prepared.table, 0)
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(assignment == name)
        pd.DataFrame({"row": rows}).to_csv(tmp_path / f"{name}.csv", index=False)
    return root


def _train_teacher(tmp_path, root, name, seed=0, ensemble=1):
    """What the train_teacher stage does for a one-epoch dsnet_tiny teacher; outputs under ``name``."""
    params = dataclasses.replace(
        config.load("train_teacher", REPO / "params.yaml"),
        arch="dsnet_tiny", task="binary", loss="bce", image_size=32, epochs=1, batch_size=16,
        drop_rate=0.0, warmup_epochs=0.0, ensemble=ensemble, seed=seed, device="cpu",
    )  # fmt: skip
    aug = config.load("augment", REPO / "params.yaml")
    members = []
    for k in range(ensemble):  # as stages/train_teacher.py seeds them
        torch.manual_seed(seed + k)
        members.append(models.create("dsnet_tiny", "binary", drop_rate=0.0))
    return runs.train_and_save(
        members, training.Supervised("binary", "bce"), params, aug, 15, root, tmp_path,
        tmp_path / name, tmp_path / f"{name}.json", tmp_path / f"live_{name}",
    )  # fmt: skip


def test_two_member_teacher_is_saved_and_scored_as_an_ensemble(tmp_path, prepared):
    """train_and_save with two members: one Ensemble checkpoint whose val logits it wrote."""
    root = _prepared_and_split(tmp_path, prepared)
    result = _train_teacher(tmp_path, root, "out", ensemble=2)
    model, meta = models.load_checkpoint(tmp_path / "out" / "model.pt")
    assert isinstance(model, models.Ensemble) and meta["members"] == 2
    val = runs.load_split(root, tmp_path, "val")
    saved = np.load(tmp_path / "out" / "val_logits.npy")
    np.testing.assert_allclose(inference.predict_logits(model, val.images, 32), saved, atol=1e-5)
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["members"] == 2 and len(summary["member_val_roc_auc"]) == 2
    assert summary["val_roc_auc"] == pytest.approx(result.best_metrics["val_roc_auc"])
    # Each member logged its own dvclive curve.
    assert (
        tmp_path / "live_out" / "member1" / "plots" / "metrics" / "val" / "roc_auc.tsv"
    ).is_file()


def test_teachers_trained_apart_combine_into_the_stage_ensemble(tmp_path, prepared):
    """Seeds 0 and 1 trained as two runs, then combined == ``ensemble: 2`` trained in one run."""
    root = _prepared_and_split(tmp_path, prepared)
    _train_teacher(tmp_path, root, "together", ensemble=2)
    for seed in (0, 1):
        _train_teacher(tmp_path, root, f"seed{seed}", seed=seed)
    ensemble.main([
        "--members", str(tmp_path / "seed0" / "model.pt"), str(tmp_path / "seed1" / "model.pt"),
        "--out", str(tmp_path / "combined"), "--metrics", str(tmp_path / "combined.json"),
        "--prepared", str(root), "--split", str(tmp_path), "--params", str(REPO / "params.yaml"),
    ])  # fmt: skip
    together, _ = models.load_checkpoint(tmp_path / "together" / "model.pt")
    combined, meta = models.load_checkpoint(tmp_path / "combined" / "model.pt")
    assert meta["members"] == 2 and meta["image_size"] == 32
    torch.testing.assert_close(combined.state_dict(), together.state_dict())
    np.testing.assert_allclose(
        np.load(tmp_path / "combined" / "val_logits.npy"),
        np.load(tmp_path / "together" / "val_logits.npy"),
        atol=1e-6,
    )
    got = json.loads((tmp_path / "combined.json").read_text())
    want = json.loads((tmp_path / "together.json").read_text())
    for key in ("val_roc_auc", "val_ece", "member_val_roc_auc", "member_best_epoch", "members"):
        assert got[key] == pytest.approx(want[key]), key
    # Each member's val ROC-AUC is its own run's, recomputed from its weights.
    for seed in (0, 1):
        single = json.loads((tmp_path / f"seed{seed}.json").read_text())
        assert got["member_val_roc_auc"][seed] == pytest.approx(single["val_roc_auc"], abs=1e-4)


def _save(path, task="binary", image_size=32, n=1):
    model = _members(task, n)[0] if n == 1 else models.Ensemble(_members(task, n))
    meta = {"arch": "dsnet_tiny", "task": task, "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(path, model, meta | {"image_size": image_size, "best_epoch": 1})
    return str(path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"image_size": 64}, "image_size=64 but .*a.pt has image_size=32"),
        ({"task": "dx"}, "task='dx' but .*a.pt has task='binary'"),
        ({"n": 2}, "b.pt is already an ensemble of 2"),
    ],
)
def test_combining_mismatched_teachers_is_refused(tmp_path, second, message):
    paths = [_save(tmp_path / "a.pt"), _save(tmp_path / "b.pt", **second)]
    with pytest.raises(models.CheckpointError, match=message):
        ensemble.combine(paths)


def test_combining_needs_two_teachers(tmp_path):
    with pytest.raises(models.CheckpointError, match="two or more checkpoints, got 1"):
        ensemble.combine([_save(tmp_path / "a.pt")])
