import dataclasses

import numpy as np
import pytest
import torch
from conftest import REPO

from pipeline_lib import config, models, profiling

IMAGES = np.random.default_rng(0).integers(0, 256, (20, 3, 40, 40), dtype=np.uint8)


def _settings(stage: str):
    """The stage's params at 32 px and batch 8, and the augmentation params."""
    params = dataclasses.replace(
        config.load(stage, REPO / "params.yaml"), image_size=32, batch_size=8
    )
    return params, config.load("augment", REPO / "params.yaml")


def _moved(before: list[torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("runtime", [None, "torch", "onnxruntime"])  # None: no teacher
def test_profile_splits_a_step_into_its_phases(runtime):
    with_teacher = runtime is not None
    params, aug = _settings("distill")
    model = models.create("dsnet_tiny")
    before = [p.detach().clone() for p in model.parameters()]
    teacher = models.create("dsnet_tiny", "dx") if with_teacher else None
    out = profiling.profile_steps(
        model, IMAGES, params, aug, steps=2, warmup=1, teacher=teacher, runtime=runtime or "torch"
    )
    assert set(profiling.PHASES) <= set(out)
    assert out["step"] == pytest.approx(sum(out[p] for p in profiling.PHASES))
    assert out["images_per_second"] == pytest.approx(8 / out["step"])
    assert (out["teacher_forward"] > 0) == with_teacher
    assert all(out[p] > 0 for p in ("augment", "forward", "backward", "optimizer"))
    assert "compile_seconds" not in out
    assert _moved(before, model)  # the profiled steps are real training steps


@pytest.mark.slow  # inductor compiles the forward and backward graphs in C++ (tens of seconds)
def test_a_compiled_step_trains_the_model_and_reports_its_compile_time():
    params, aug = _settings("train_teacher")
    model = models.create("dsnet_tiny")
    before = [p.detach().clone() for p in model.parameters()]
    out = profiling.profile_steps(model, IMAGES, params, aug, steps=2, warmup=1, compile=True)
    assert out["compile_seconds"] > out["step"] > 0  # the warm-up step paid the compilation
    assert _moved(before, model)
