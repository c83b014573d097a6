"""Teacher ensembles: probability averaging, mixed-architecture checkpoints, the teacher stage."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, data, ensemble, inference, models, runs, split, training


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
        member_p = [data.melanoma_probability(m(x).numpy(), task) for m in members]
    # The reference: the plain mean of each member's melanoma probability.
    np.testing.assert_allclose(
        data.melanoma_probability(z, task), np.mean(member_p, 0), rtol=1e-5, atol=1e-6
    )
    if task == "dx":  # and every class's probability is the mean, not only melanoma's
        with torch.no_grad():
            mean = torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(torch.as_tensor(z), -1), mean)


def test_ensemble_members_must_share_a_task():
    with pytest.raises(ValueError, match="one task"):
        models.Ensemble([*_members("binary", 1), *_members("dx", 1)])


def test_mixed_architecture_ensemble_checkpoint_round_trip(tmp_path):
    """Members of different architectures and input normalisations rebuild from one file."""
    torch.manual_seed(0)
    lite = models.create("tf_efficientnet_lite0", "dx").eval()
    scratch = models.create("dsnet_tiny", "dx", global_pool="max", drop_rate=0.1).eval()
    assert lite.mean.flatten().tolist() == [0.5] * 3  # the Lite family's own normalisation
    assert scratch.mean.flatten().tolist() != [0.5] * 3
    paths = []
    for name, model, arch, pool in (("a", lite, "tf_efficientnet_lite0", "avg"),
                                    ("b", scratch, "dsnet_tiny", "max")):  # fmt: skip
        meta = {"arch": arch, "task": "dx", "global_pool": pool, "drop_rate": 0.1,
                "image_size": 32, "best_epoch": 1}  # fmt: skip
        models.save_checkpoint(tmp_path / f"{name}.pt", model, meta)
        paths.append(tmp_path / f"{name}.pt")
    teacher, meta = ensemble.combine(paths)
    assert meta["arch"] == "tf_efficientnet_lite0+dsnet_tiny"
    assert [m["arch"] for m in meta["members"]] == ["tf_efficientnet_lite0", "dsnet_tiny"]
    models.save_checkpoint(tmp_path / "teacher.pt", teacher, meta)
    loaded, loaded_meta = models.load_checkpoint(tmp_path / "teacher.pt")
    assert isinstance(loaded, models.Ensemble) and len(loaded.members) == 2
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), models.Ensemble([lite, scratch]).eval()(x))
        # The reference: each member's softmax, averaged by hand.
        mean = (torch.softmax(lite(x), -1) + torch.softmax(scratch(x), -1)) / 2
        torch.testing.assert_close(torch.softmax(loaded(x), -1), mean)


@pytest.mark.parametrize(("size_in", "size_out"), [(128, 96), (32, 24), (24, 32)])
def test_resize_is_the_antialiased_resize_of_inference(size_in, size_out):
    """The two matrix products resize exactly as inference (F.interpolate, antialiased)."""
    x = torch.rand(3, 3, size_in, size_in, generator=torch.Generator().manual_seed(0))
    resized = models.Resize(size_in, size_out)(x)
    torch.testing.assert_close(resized, inference.resize(x, size_out), atol=1e-5, rtol=0)
    # channels_last, as inference.resize gives it: the layout the CPU convolutions run fastest on
    assert resized.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=f"expected {size_in}x{size_in} images, got"):
        models.Resize(size_in, size_out)(torch.rand(1, 3, size_in + 1, size_in + 1))


def _sized_members(tmp_path, sizes=(32, 24)):
    """dsnet_tiny dx checkpoints of the given input sizes, and their paths."""
    paths = []
    for k, size in enumerate(sizes):
        meta = {"arch": "dsnet_tiny", "task": "dx", "global_pool": "avg", "drop_rate": 0.0,
                "image_size": size, "best_epoch": 1}  # fmt: skip
        models.save_checkpoint(tmp_path / f"m{k}.pt", _members("dx", k + 1)[k], meta)
        paths.append(tmp_path / f"m{k}.pt")
    return paths


def test_members_of_different_input_sizes_each_see_their_own(tmp_path):
    """A 24-px member beside a 32-px one: the teacher takes 32 px and resizes for the other."""
    paths = _sized_members(tmp_path)
    teacher, meta = ensemble.combine(paths)
    assert meta["image_size"] == 32
    assert "image_size" not in meta["members"][0] and meta["members"][1]["image_size"] == 24
    singles = [models.load_checkpoint(p)[0] for p in paths]
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # The reference: each member on the input as inference would size it, averaged.
        mean = (torch.softmax(singles[0](x), -1)
                + torch.softmax(singles[1](inference.resize(x, 24)), -1)) / 2  # fmt: skip
        torch.testing.assert_close(torch.softmax(teacher(x), -1), mean, atol=1e-5, rtol=1e-4)
        models.save_checkpoint(tmp_path / "teacher.pt", teacher, meta)
        loaded, loaded_meta = models.load_checkpoint(tmp_path / "teacher.pt")
        assert loaded_meta["members"] == meta["members"]
        torch.testing.assert_close(loaded(x), teacher(x))
    # The frozen teacher of distillation runs in ONNX Runtime: the resize exports with it.
    onnx_teacher = training.frozen_runner(loaded, "onnxruntime", torch.device("cpu"))
    torch.testing.assert_close(onnx_teacher(x), teacher(x), atol=1e-4, rtol=1e-4)


def test_one_member_teacher_is_that_member(tmp_path):
    path = _save(tmp_path / "a.pt")
    teacher, meta = ensemble.combine([path])
    assert isinstance(teacher, models.Classifier) and "members" not in meta


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


def _train_member(tmp_path, root, name, arch, seed=0, image_size=32):
    """What a train_teacher@<name> stage does for a one-epoch teacher; outputs under ``name``."""
    params = dataclasses.replace(
        config.load("train_teacher", REPO / "params.yaml"),
        arch=arch, task="binary", loss="bce", image_size=image_size, epochs=1, batch_size=16,
        drop_rate=0.0, warmup_epochs=0.0, seed=seed, device="cpu", bf16=False,
    )  # fmt: skip
    aug = config.load("augment", REPO / "params.yaml")
    torch.manual_seed(seed)
    model = models.create(arch, "binary", drop_rate=0.0)
    return runs.train_and_save(
        model, training.Supervised("binary", "bce"), params, aug, 15, root, tmp_path,
        tmp_path / name, tmp_path / f"{name}.json", tmp_path / f"live_{name}",
    )  # fmt: skip


def test_members_trained_apart_make_the_teacher_stage_output(tmp_path, prepared):
    """Two members of different architectures and input sizes, trained by their own runs,
    combined and scored."""
    root = _prepared_and_split(tmp_path, prepared)
    _train_member(tmp_path, root, "tiny", "dsnet_tiny")
    _train_member(tmp_path, root, "resnet", "test_resnet", seed=1, image_size=24)
    assert (tmp_path / "live_tiny" / "curves.png").stat().st_size > 0  # beside dvclive's TSVs
    val = runs.load_split(root, tmp_path, "val")
    members = {n: tmp_path / n / "model.pt" for n in ("tiny", "resnet")}
    summary = ensemble.write_teacher(members, val, tmp_path / "teacher", tmp_path / "t.json", 15)
    teacher, meta = models.load_checkpoint(tmp_path / "teacher" / "model.pt")
    assert isinstance(teacher, models.Ensemble) and meta["arch"] == "dsnet_tiny+test_resnet"
    singles = [models.load_checkpoint(p)[0] for p in members.values()]
    # The teacher's val logits are those of the two trained members averaged in probability.
    p = np.mean(
        [data.melanoma_probability(inference.predict_logits(m, val.images, size), "binary")
         for m, size in zip(singles, (32, 24), strict=True)], 0,
    )  # fmt: skip
    saved = np.load(tmp_path / "teacher" / "val_logits.npy")
    np.testing.assert_allclose(data.melanoma_probability(saved, "binary"), p, atol=1e-5)
    labels = val.table["label"].to_numpy()
    from sklearn.metrics import roc_auc_score

    assert summary["val_roc_auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-6)
    for name in members:  # each member's figure is its own run's
        single = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary[f"{name}_val_roc_auc"] == pytest.approx(single["val_roc_auc"], abs=1e-4)
    assert json.loads((tmp_path / "t.json").read_text())["members"] == 2
    # A member's figure comes from the val logits its run saved: a stale or cut file is refused.
    saved_member = tmp_path / "resnet" / "val_logits.npy"
    z = np.load(saved_member)
    for bad, message in ((z[:-1], "rows but the val split"), (z + 1.0, "does not match")):
        np.save(saved_member, bad)
        with pytest.raises(ValueError, match=message) as err:
            ensemble.write_teacher(members, val, tmp_path / "t2", tmp_path / "t2.json", 15)
        assert str(saved_member) in str(err.value)


def _save(path, task="binary", image_size=32, n=1):
    model = _members(task, n)[0] if n == 1 else models.Ensemble(_members(task, n))
    meta = {"arch": "dsnet_tiny", "task": task, "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(path, model, meta | {"image_size": image_size, "best_epoch": 1})
    return str(path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"task": "dx"}, "task='dx' but .*a.pt has task='binary'"),
        ({"n": 2}, "b.pt is already an ensemble"),
    ],
)
def test_combining_mismatched_teachers_is_refused(tmp_path, second, message):
    paths = [_save(tmp_path / "a.pt"), _save(tmp_path / "b.pt", **second)]
    with pytest.raises(models.CheckpointError, match=message):
        ensemble.combine(paths)


def test_combining_needs_a_member():
    with pytest.raises(models.CheckpointError, match="at least one member"):
        ensemble.combine([])
