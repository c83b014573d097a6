import dataclasses

import numpy as np
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, models, profiling


@pytest.mark.parametrize("runtime", [None, "torch", "onnxruntime"])  # None: no teacher
def test_profile_splits_a_step_into_its_phases(runtime):
    with_teacher = runtime is not None
    params = dataclasses.replace(
        config.load("distill", REPO / "params.yaml"), image_size=32, batch_size=8
    )
    aug = config.load("augment", REPO / "params.yaml")
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 40, 40), dtype=np.uint8)
    model = models.create("dsnet_tiny")
    before = [p.detach().clone() for p in model.parameters()]
    teacher = models.create("dsnet_tiny", "dx") if with_teacher else None
    out = profiling.profile_steps(
        model, images, params, aug, steps=2, warmup=1, teacher=teacher, runtime=runtime or "torch"
    )
    assert set(profiling.PHASES) <= set(out)
    assert out["step"] == pytest.approx(sum(out[p] for p in profiling.PHASES))
    assert out["images_per_second"] == pytest.approx(8 / out["step"])
    assert (out["teacher_forward"] > 0) == with_teacher
    assert all(out[p] > 0 for p in ("augment", "forward", "backward", "optimizer"))
    # The profiled steps are real training steps: the optimizer moved the weights.
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow  # inductor compiles the forward and backward graphs in C++ (tens of seconds)
def test_a_compiled_step_trains_the_model_and_reports_its_compile_time():
    params = dataclasses.replace(
        config.load("train_teacher", REPO / "params.yaml"), image_size=32, batch_size=8
    )
    aug = config.load("augment", REPO / "params.yaml")
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 40, 40), dtype=np.uint8)
    model = models.create("dsnet_tiny")
    before = [p.detach().clone() for p in model.parameters()]
    out = profiling.profile_steps(model, images, params, aug, steps=2, warmup=1, compile=True)
    assert out["compile_seconds"] > out["step"] > 0  # the first step paid the compilation
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    plain = profiling.profile_steps(models.create("dsnet_tiny"), images, params, aug, steps=1)
    assert "compile_seconds" not in plain
