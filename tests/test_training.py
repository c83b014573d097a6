import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from pipeline_lib import (
    augment,
    config,
    data,
    inference,
    losses,
    metrics,
    models,
    runs,
    split,
    training,
)

REPO_PARAMS = REPO / "params.yaml"

AUG = config.load("augment", REPO_PARAMS)
BASE = config.load("train_teacher", REPO_PARAMS)


def _params(**kw) -> config.TrainParams:
    fields = dict(
        arch="dsnet_tiny",
        image_size=32,
        epochs=3,
        batch_size=16,
        lr=3.0e-3,
        patience=5,
        bf16=False,
        drop_rate=0.0,
    )
    return dataclasses.replace(BASE, **(fields | kw))


def _split(prepared, synthetic_root, seed=0):
    s = split.assign(prepared.table, seed)
    train = prepared.table.index[s != "test"].to_numpy()  # train on train+val: tiny data
    test = prepared.table.index[s == "test"].to_numpy()
    return train, test


def test_augment_is_deterministic_and_in_range():
    batch = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    a = augment.augment(batch, 32, AUG, torch.Generator().manual_seed(0))
    b = augment.augment(batch, 32, AUG, torch.Generator().manual_seed(0))
    c = augment.augment(batch, 32, AUG, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_identity_augment_keeps_image():
    still = dataclasses.replace(
        AUG,
        crop_scale_min=1.0,
        max_rotation_deg=0.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue_shift=0.0,
    )
    batch = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = augment.augment(batch, 16, still, torch.Generator().manual_seed(0))
    # Only flips remain: the image equals its original up to a flip of each axis.
    ref = batch.float() / 255
    flips = [ref, ref.flip(-1), ref.flip(-2), ref.flip(-1).flip(-2)]
    for i in range(2):
        assert min(float((out[i] - f[i]).abs().max()) for f in flips) < 1e-5


def test_acquisition_gains_match_a_hand_computed_reference_and_are_free_when_off():
    x = torch.rand(4, 3, 8, 8) * 0.5
    shifted = dataclasses.replace(AUG, exposure=0.4, channel_gain=0.25)
    out = augment.acquisition(x, shifted, torch.Generator().manual_seed(3))
    ref = torch.Generator().manual_seed(3)  # the same draws by hand
    exposure = torch.rand(4, generator=ref) * 0.8 + 0.6
    gains = (torch.rand(12, generator=ref) * 0.5 + 0.75).view(4, 3)
    torch.testing.assert_close(out, x * exposure.view(4, 1, 1, 1) * gains.view(4, 3, 1, 1))
    assert exposure.min() < 0.9 and gains.max() > 1.1  # the draw did shift the images
    assert augment.shifts_acquisition(shifted) and not augment.shifts_acquisition(AUG)
    # Off (the defaults), nothing changes and no random number is consumed.
    g_off, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment.acquisition(x, AUG, g_off), x)
    assert torch.equal(torch.rand(3, generator=g_off), torch.rand(3, generator=g_ref))


def test_the_teacher_sees_the_unshifted_images_the_student_the_shifted(prepared):
    """With the acquisition shift on, the soft target is the teacher's view of the clean batch."""
    torch.manual_seed(0)
    teacher = models.create("dsnet_tiny").eval()
    seen = []
    teacher.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].clone()))
    objective = training.Distillation(teacher, "binary", "binary", "bce", 2.0, 1.0, 1.0)
    student = models.create("dsnet_tiny")
    x = torch.rand(4, 3, 32, 32)
    shifted = x * 0.6
    batch = training.Batch(torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([5, 4, 5, 4]))
    parts = objective(student, shifted, dataclasses.replace(batch, clean=x))
    assert torch.equal(seen[-1], x)
    with torch.no_grad():
        target = teacher(x)
    expected = losses.bernoulli_kd(student(shifted), target, 2.0)
    torch.testing.assert_close(parts["soft"], expected.detach())
    objective(student, shifted, batch)  # without a clean view the teacher sees the same batch
    assert torch.equal(seen[-1], shifted)


def test_student_augment_section_merges_into_the_student_augmentation(tmp_path):
    params = yaml.safe_load(REPO_PARAMS.read_text())
    params["student_augment"] = {"exposure": 0.4, "channel_gain": 0.25}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    merged = config.student_augment(path)
    assert (merged.exposure, merged.channel_gain) == (0.4, 0.25)
    assert dataclasses.replace(merged, exposure=0.0, channel_gain=0.0) == config.load(
        "augment", path
    )
    params["augment"]["exposure"] = 0.4  # not a key of augment: the student's section has it
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(config.ParamsError, match="augment.exposure"):
        config.load("augment", path)


def test_warmup_cosine_schedule():
    assert training.warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert training.warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert training.warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert training.warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_oversampling_draws_melanoma_twice_as_often():
    labels = np.array([1] * 100 + [0] * 900)
    order = training.epoch_order(labels, 2.0, torch.Generator().manual_seed(0))
    share = labels[order.numpy()].mean()
    assert share == pytest.approx(200 / 1100, abs=0.03)
    assert sorted(
        training.epoch_order(labels, 1.0, torch.Generator().manual_seed(0)).tolist()
    ) == list(range(1000))


def test_binary_logit_of_dx_output():
    logits = torch.randn(5, 7)
    p = torch.softmax(logits, 1)[:, data.MELANOMA_INDEX]
    assert torch.allclose(torch.sigmoid(training.binary_logit(logits, "dx")), p, atol=1e-6)


def test_one_epoch_learns_the_synthetic_signal(prepared, synthetic_root):
    torch.manual_seed(0)
    train, test = _split(prepared, synthetic_root)
    table = prepared.table
    result = training.fit(
        models.create("dsnet_tiny"), training.Supervised("binary", "bce", 2.0),
        prepared.images[train], runs.targets(table.iloc[train]),
        prepared.images[test], table["label"].to_numpy()[test], _params(epochs=2), AUG, progress=False,
    )  # fmt: skip
    assert result.best_metrics["val_roc_auc"] > 0.75
    assert len(result.history) == 2 and {
        "train_loss",
        "train_hard",
        "train_soft",
        "lr",
        "val_ece",
    } <= set(result.history[0])
    probs = data.melanoma_probability(result.val_logits, "binary")
    assert result.best_metrics["val_roc_auc"] == pytest.approx(
        metrics.roc_auc(table["label"].to_numpy()[test], probs)
    )


def test_bf16_training_scores_epochs_in_bf16_and_reports_the_chosen_one_in_float32(prepared):
    """Each epoch's val pass runs under the training's bf16 autocast; the result is float32's."""
    torch.manual_seed(0)
    table, labels = prepared.table, prepared.table["label"].to_numpy()
    seen = []
    hook = lambda module, inputs, output: seen.append((module.training, output.dtype))  # noqa: E731
    model = models.create("dsnet_tiny")
    model.backbone.features[0][0].register_forward_hook(hook)
    result = training.fit(
        model, training.Supervised("binary", "bce", 2.0), prepared.images,
        runs.targets(table), prepared.images, labels, _params(epochs=2, bf16=True), AUG,
        progress=False,
    )  # fmt: skip
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen  # train, score
    assert seen[-1] == (False, torch.float32)  # the chosen epoch re-scored in float32
    reference = inference.predict_logits(result.model, prepared.images, 32)
    np.testing.assert_array_equal(result.val_logits, reference)  # float32 re-scoring
    probs = data.melanoma_probability(reference, "binary")
    assert result.best_metrics["val_roc_auc"] == metrics.roc_auc(labels, probs)
    assert result.best_metrics["val_ece"] == pytest.approx(metrics.ece(labels, probs, 15))


def test_supervised_rejects_loss_of_other_task():
    with pytest.raises(ValueError, match="'ce' is for the dx task"):
        training.Supervised("binary", "ce")


def test_distillation_parts_and_frozen_teacher(prepared, synthetic_root):
    torch.manual_seed(0)
    teacher = models.create("test_resnet", task="dx")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    train, test = _split(prepared, synthetic_root)
    table = prepared.table
    objective = training.Distillation(
        teacher, "dx", "binary", "bce", temperature=2.0, alpha=0.7, teacher_temperature=1.5
    )
    logged = []
    training.fit(
        models.create("dsnet_tiny"), objective, prepared.images[train], runs.targets(table.iloc[train]),
        prepared.images[test], table["label"].to_numpy()[test], _params(epochs=1), AUG,
        log=logged.append, progress=False,
    )  # fmt: skip
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats too: eval mode
    assert not teacher.training
    row = logged[0]
    assert row["train_soft"] > 0
    assert row["train_loss"] == pytest.approx(
        0.3 * row["train_hard"] + 0.7 * row["train_soft"], rel=1e-4
    )


def test_distillation_soft_term_uses_calibrated_teacher():
    x = torch.rand(4, 3, 1, 1)
    student = models.Classifier(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 1)), "binary"
    )
    batch = training.Batch(torch.tensor([0, 1, 0, 1]), torch.zeros(4, dtype=torch.long))
    obj = training.Distillation(
        _FlatTeacher(), "binary", "binary", "bce", 2.0, 1.0, teacher_temperature=3.0
    )
    parts = obj(student, x, batch)
    zs = student(x)
    zt = obj.teacher(x) / 3.0
    assert parts["soft"].item() == pytest.approx(losses.bernoulli_kd(zs, zt, 2.0).item(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(parts["soft"].item(), rel=1e-5)  # alpha = 1


class _FlatTeacher(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1) * 2.0


def test_binary_teacher_cannot_teach_dx_student():
    with pytest.raises(ValueError, match="binary teacher cannot distil into a dx student"):
        training.Distillation(_FlatTeacher(), "binary", "dx", "ce", 2.0, 0.5)


def test_create_model_follows_the_params_section():
    model = runs.create_model(_params(task="dx", color_constancy=6, drop_rate=0.3))
    assert model.task == "dx" and model.color_constancy == 6
    assert model.backbone.head[1].p == 0.3  # dsnet_tiny's dropout
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_backbone_lr_scale_gives_the_backbone_its_own_groups():
    model = models.create("dsnet_tiny")
    optimizer, is_backbone = training.create_optimizer(
        model, _params(lr=1.0e-3, backbone_lr_scale=0.1, weight_decay=0.05)
    )
    head = {id(p) for p in model.backbone.head.parameters()}
    for group, backbone in zip(optimizer.param_groups, is_backbone, strict=True):
        assert group["lr"] == pytest.approx(1.0e-4 if backbone else 1.0e-3)
        for p in group["params"]:
            assert (id(p) not in head) == backbone
            # timm's rule: no weight decay on biases and norm parameters (1-d tensors)
            assert group["weight_decay"] == (0.05 if p.ndim > 1 else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_frozen_warm_up_trains_only_the_head_first(prepared):
    torch.manual_seed(0)
    table = prepared.table
    model = models.create("dsnet_tiny")
    stem, head = model.backbone.features[0][0].weight, model.backbone.head[-1].weight
    snapshots = [(stem.detach().clone(), head.detach().clone())]
    training.fit(
        model, training.Supervised("binary", "bce"), prepared.images, runs.targets(table),
        prepared.images, table["label"].to_numpy(), _params(epochs=2, freeze_epochs=1.0), AUG,
        log=lambda row: snapshots.append((stem.detach().clone(), head.detach().clone())),
        progress=False,
    )  # fmt: skip
    (stem0, head0), (stem1, head1), (stem2, _) = snapshots
    torch.testing.assert_close(stem1, stem0, rtol=0, atol=0)  # frozen for the first epoch
    assert not torch.equal(head1, head0)  # while the head learned
    assert not torch.equal(stem2, stem1)  # and then the backbone trains too


@pytest.mark.parametrize("native", [False, True])
def test_bf16_auto_trains_in_bf16_only_where_the_hardware_is_native(prepared, monkeypatch, native):
    """``bf16: auto`` is ``bf16: true`` on a native-bf16 machine and ``false`` elsewhere."""
    monkeypatch.setattr(training.distributed, "native_bf16", lambda: native)
    table, labels = prepared.table, prepared.table["label"].to_numpy()
    results, dtypes = {}, {}
    for setting in ("auto", native):
        seen = []
        torch.manual_seed(0)
        model = models.create("dsnet_tiny")
        model.backbone.features[0][0].register_forward_hook(
            lambda module, inputs, output, seen=seen: seen.append(output.dtype)
        )
        results[setting] = training.fit(
            model, training.Supervised("binary", "bce", 2.0), prepared.images,
            runs.targets(table), prepared.images, labels, _params(epochs=1, bf16=setting), AUG,
            progress=False,
        )  # fmt: skip
        dtypes[setting] = seen[0]  # the first training forward
    assert dtypes["auto"] == dtypes[native] == (torch.bfloat16 if native else torch.float32)
    np.testing.assert_array_equal(results["auto"].val_logits, results[native].val_logits)


def test_use_bf16_settings_and_the_warning_for_emulated_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(training.distributed, "native_bf16", lambda: False)
    assert training.distributed.use_bf16("auto", cpu) is False
    assert training.distributed.use_bf16(False, cpu) is False
    with pytest.warns(UserWarning, match="bf16: true on a CPU without native bf16"):
        assert training.distributed.use_bf16(True, cpu) is True
    monkeypatch.setattr(training.distributed, "native_bf16", lambda: True)
    assert training.distributed.use_bf16("auto", cpu) is True
    assert training.distributed.use_bf16(False, torch.device("cuda")) is True  # every GPU run


def test_native_bf16_agrees_with_the_cpu_flags():
    """oneDNN has bf16 kernels on AVX-512 CPUs (avx512_bf16 among them), none on AVX2-only ones."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(
        next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
        .split(":", 1)[1]
        .split()
    )
    native = training.distributed.native_bf16()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert native
    if not any(flag.startswith("avx512") for flag in flags):
        assert not native
