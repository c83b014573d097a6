"""The frozen teacher run by ONNX Runtime: the logits and losses of PyTorch float32, to float
rounding (kd.teacher_runtime)."""

import numpy as np
import pytest
import torch

from pipeline_lib import data, losses, models, training
from pipeline_lib.inference import OnnxRuntimeModule


def _teacher(task: str = "dx") -> models.Classifier:
    torch.manual_seed(0)
    teacher = models.create("test_resnet", task=task).eval()
    for module in teacher.modules():  # non-trivial BN statistics, which ORT folds into the convs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return teacher


@pytest.mark.parametrize("task", ["dx", "binary"])
def test_onnxruntime_module_matches_pytorch_at_any_batch_size(task):
    teacher = _teacher(task)
    runtime = OnnxRuntimeModule(teacher)
    for n in (5, 16, 1):  # exported on the first call; the batch dimension stays dynamic
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = teacher(x)
        got = runtime(x.contiguous(memory_format=torch.channels_last))
        assert got.shape == expected.shape and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_onnxruntime_module_runs_an_ensemble():
    members = [_teacher(), models.create("test_resnet", task="dx").eval()]
    ensemble = models.Ensemble(members).eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ensemble(x)
    np.testing.assert_allclose(
        OnnxRuntimeModule(ensemble)(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("runtime", "wrapper", "rel"),
    [
        ("auto", OnnxRuntimeModule, 1e-5),
        ("onnxruntime", OnnxRuntimeModule, 1e-5),
        ("torch", None, 1e-5),
    ],
)
def test_distillation_loss_is_the_same_in_every_runtime(runtime, wrapper, rel):
    teacher = _teacher()
    student = models.create("dsnet_tiny").train()
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    batch = training.Batch(torch.tensor([0, 1] * 4), torch.zeros(8, dtype=torch.long))
    obj = training.Distillation(
        teacher, "dx", "binary", "bce", 2.0, 0.7, teacher_temperature=1.5, teacher_runtime=runtime
    ).to(torch.device("cpu"))
    assert isinstance(obj.teacher, wrapper or models.Classifier)
    torch.manual_seed(3)  # the student's dropout draws the same in both
    parts = obj(student, x, batch)
    # Reference: PyTorch teacher, hand-assembled loss (teacher's p(mel) as a Bernoulli target).
    torch.manual_seed(3)
    zs = student(x)
    with torch.no_grad():
        p_mel = torch.softmax(teacher(x) / 1.5, -1)[:, data.MELANOMA_INDEX]
        zt = torch.log(p_mel) - torch.log1p(-p_mel)
    hard = torch.nn.functional.binary_cross_entropy_with_logits(zs, batch.label.float())
    soft = losses.bernoulli_kd(zs, zt, 2.0)
    assert parts["soft"].item() == pytest.approx(soft.item(), rel=rel)
    assert parts["loss"].item() == pytest.approx((0.3 * hard + 0.7 * soft).item(), rel=rel)
    parts["loss"].backward()  # the student still gets gradients through its own forward
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_distillation_moves_to_cpu_once_and_rejects_unknown_runtime():
    obj = training.Distillation(_teacher(), "dx", "binary", "bce", 2.0, 0.5, teacher_runtime="auto")
    first = obj.to(torch.device("cpu")).teacher
    assert obj.to(torch.device("cpu")).teacher is first  # a second .to() does not re-wrap
    with pytest.raises(ValueError, match="kd.teacher_runtime.*'tensorrt'"):
        training.Distillation(
            _teacher(), "dx", "binary", "bce", 2.0, 0.5, teacher_runtime="tensorrt"
        )


def test_onnxruntime_teacher_first_called_under_bf16_autocast_stays_float32():
    """A bf16 student's loop calls the teacher inside autocast; the export must stay float32."""
    teacher = _teacher()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = teacher(x)
    runner = OnnxRuntimeModule(teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = runner(x)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
