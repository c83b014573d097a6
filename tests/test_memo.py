"""The teacher's outputs memoized by content: a hit is what the teacher computes for that very
batch, and a distillation run gives the same model with a cold cache, a warm one and none."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, memo, models, runs, split, training
from pipeline_lib.inference import OnnxRuntimeModule

AUG = config.load("augment", REPO / "params.yaml")


class _Counting(torch.nn.Module):
    """The teacher, counting the batches it really computes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        with torch.no_grad():
            return self.model(x)


def _teacher(seed: int = 0) -> models.Classifier:
    torch.manual_seed(seed)
    return models.create("test_resnet", task="dx").eval()


def _x(seed: int, n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_a_hit_returns_the_teachers_output_without_computing_it(tmp_path):
    teacher = _teacher()
    runner = _Counting(teacher)
    key = memo.fingerprint(teacher, "torch")
    cached = memo.MemoizedTeacher(runner, key, tmp_path / "c.sqlite")
    x = _x(0)
    with torch.no_grad():
        expected = teacher(x)
    first, second = cached(x), cached(x.clone())
    assert runner.calls == 1 and (cached.hits, cached.misses) == (1, 1)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert second.dtype == torch.float32 and second.shape == (6, 7)
    # Another process (a later run) opens the same file: still a hit, bit for bit.
    later = memo.MemoizedTeacher(_Counting(teacher), key, tmp_path / "c.sqlite")
    assert torch.equal(later(x.contiguous(memory_format=torch.channels_last)), expected)
    assert later.runner.calls == 0


def test_another_input_teacher_or_precision_is_a_miss(tmp_path):
    path = tmp_path / "c.sqlite"
    teacher = _teacher()
    runner = _Counting(teacher)
    cached = memo.MemoizedTeacher(runner, memo.fingerprint(teacher, "torch"), path)
    x = _x(0)
    cached(x)
    y = x.clone()
    y[0, 0, 0, 0] += 1e-6  # one value one ulp-ish away
    cached(y)
    cached(x[:5])  # another batch shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached(x)  # the teacher under bf16 autocast computes something else
    assert runner.calls == 4
    other = _teacher(seed=1)
    assert memo.fingerprint(other, "torch") != memo.fingerprint(teacher, "torch")
    assert memo.fingerprint(teacher, "onnxruntime") != memo.fingerprint(teacher, "torch")
    changed = copy.deepcopy(teacher)
    with torch.no_grad():  # a single BN statistic differs: another teacher
        next(b for n, b in changed.named_buffers() if n.endswith("running_var"))[0] += 1e-3
    assert memo.fingerprint(changed, "torch") != memo.fingerprint(teacher, "torch")
    out = memo.MemoizedTeacher(_Counting(other), memo.fingerprint(other, "torch"), path)(x)
    with torch.no_grad():
        assert torch.equal(out, other(x))


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(memo.ENV, raising=False)
    assert memo.cache_path() == memo.DEFAULT
    monkeypatch.setenv(memo.ENV, "")
    assert memo.cache_path() is None
    monkeypatch.setenv(memo.ENV, str(tmp_path / "t.sqlite"))
    assert memo.cache_path() == tmp_path / "t.sqlite"


def test_an_open_cache_survives_a_copy(tmp_path):
    teacher = _teacher()
    cached = memo.MemoizedTeacher(
        teacher, memo.fingerprint(teacher, "torch"), tmp_path / "c.sqlite"
    )
    cached(_x(0))
    twin = copy.deepcopy(cached)  # the connection is not copied; the twin reconnects
    assert twin._db is None
    assert torch.equal(twin(_x(0)), cached(_x(0))) and (twin.hits, twin.misses) == (1, 1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_distillation_places_the_memo_in_front_of_its_runtime(tmp_path, runtime):
    teacher = _teacher()
    obj = training.Distillation(
        teacher, "dx", "dx", "ce", 2.0, 0.5, teacher_runtime=runtime, memo=tmp_path / "c.sqlite"
    ).to(torch.device("cpu"))
    assert isinstance(obj.teacher, memo.MemoizedTeacher)
    ort = runtime == "onnxruntime"
    assert isinstance(obj.teacher.runner, OnnxRuntimeModule) == ort
    x = _x(0)
    obj.teacher(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 student's loop
        under_bf16 = obj.teacher(x)
    # ONNX Runtime computes float32 under autocast too: a bf16 student reuses a float32 one's
    # entries; PyTorch computes in bf16 there, another entry.
    assert (obj.teacher.hits, obj.teacher.misses) == ((1, 1) if ort else (0, 2))
    with torch.no_grad():
        if ort:
            torch.testing.assert_close(under_bf16, teacher(x), rtol=1e-4, atol=1e-5)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(under_bf16, teacher(x).float())
    assert obj.to(torch.device("cpu")).teacher is obj.teacher  # placed once
    plain = training.Distillation(teacher, "dx", "dx", "ce", 2.0, 0.5, teacher_runtime=runtime)
    assert not isinstance(plain.to(torch.device("cpu")).teacher, memo.MemoizedTeacher)


def _fit(prepared, cache):
    s = split.assign(prepared.table, 0)
    train = prepared.table.index[s != "test"].to_numpy()
    val = prepared.table.index[s == "test"].to_numpy()
    objective = training.Distillation(
        _teacher(), "dx", "dx", "ce", 2.0, 0.7, teacher_runtime="onnxruntime", memo=cache
    )
    params = dataclasses.replace(
        config.load("distill", REPO / "params.yaml"), arch="dsnet_tiny", pretrained=False,
        image_size=32, epochs=2, batch_size=16, lr=3.0e-3, bf16=False, drop_rate=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    result = training.fit(
        runs.create_model(params), objective, prepared.images[train],
        runs.targets(prepared.table.iloc[train]), prepared.images[val],
        prepared.table["label"].to_numpy()[val], params, AUG, progress=False,
    )  # fmt: skip
    return result, objective.teacher


def test_a_run_with_a_warm_cache_trains_the_same_student(prepared, tmp_path):
    reference, _ = _fit(prepared, None)
    cold, cold_teacher = _fit(prepared, tmp_path / "c.sqlite")
    warm, warm_teacher = _fit(prepared, tmp_path / "c.sqlite")
    assert cold_teacher.hits == 0 and cold_teacher.misses > 0
    assert warm_teacher.misses == 0 and warm_teacher.hits == cold_teacher.misses
    for run in (cold, warm):
        assert [r["train_loss"] for r in run.history] == [
            r["train_loss"] for r in reference.history
        ]
        np.testing.assert_array_equal(run.val_logits, reference.val_logits)
        trained, expected = run.model.state_dict(), reference.model.state_dict()
        assert all(torch.equal(trained[k], expected[k]) for k in expected)
