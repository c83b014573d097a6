"""Exports, int8 quantization and the runner, on a tiny student at 32 px."""

import dataclasses
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import REPO
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pipeline_lib import (
    calibration,
    config,
    data,
    inference,
    metrics,
    models,
    quantization,
    runtime,
    training,
)

SIZE = 32
FILES = {
    "fp32_pte": "student_fp32.pte",
    "int8_pte": "student_int8.pte",
    "fp32_onnx": "student_fp32.onnx",
    "int8_onnx": "student_int8.onnx",
    "fp16_onnx": "student_fp16.onnx",
}
CONV_LINEAR = 7  # dsnet_tiny: six convolutions and one linear head
EPOCHS = 4
AUG = config.load("augment", REPO / "params.yaml")


def _recipe(**kw) -> config.TrainParams:
    fields = dict(
        arch="dsnet_tiny", task="binary", loss="bce", image_size=SIZE, batch_size=32,
        lr=3.0e-3, warmup_epochs=0.0, bf16=False, drop_rate=0.0, oversample_melanoma=1.0,
    )  # fmt: skip
    return dataclasses.replace(config.load("distill", REPO / "params.yaml"), **(fields | kw))


def _targets(table) -> training.Batch:
    return training.Batch(
        torch.tensor(table["label"].to_numpy()), torch.tensor(table["dx_index"].to_numpy())
    )


@pytest.fixture(scope="module")
def student(prepared) -> models.Classifier:
    """dsnet_tiny trained a few epochs on the synthetic lesions.

    Random weights give near-constant logits (spread ~0.003) against which int8 rounding looks
    huge; a trained model has the spread of a real one.
    """
    torch.manual_seed(0)
    model = models.create("dsnet_tiny", drop_rate=0.0)
    labels = prepared.table["label"].to_numpy()
    result = training.fit(
        model, training.Supervised("binary", "bce", 2.0), prepared.images,
        _targets(prepared.table), prepared.images, labels, _recipe(epochs=EPOCHS),
        AUG, progress=False,
    )  # fmt: skip
    return result.model.to(memory_format=torch.contiguous_format).eval()


@pytest.fixture(scope="module")
def exported(student, prepared, tmp_path_factory):
    """Every file the quantize stage writes, with the ops reports of the ExecuTorch ones."""
    out = tmp_path_factory.mktemp("quantized")
    paths = {k: out / v for k, v in FILES.items()}
    calibration = quantization.calibration_inputs(prepared.images, SIZE, 48, seed=0)
    int8 = quantization.ptq_int8(student, calibration)
    reports = {
        "fp32_pte": quantization.write_pte(quantization.export(student, SIZE), paths["fp32_pte"]),
        "int8_pte": quantization.write_pte(quantization.export(int8, SIZE), paths["int8_pte"]),
    }
    quantization.write_onnx(student, SIZE, paths["fp32_onnx"])
    reports["onnx_bias"] = quantization.write_onnx_int8(
        paths["fp32_onnx"], paths["int8_onnx"], calibration
    )
    quantization.write_onnx_fp16(paths["fp32_onnx"], paths["fp16_onnx"])
    return paths, reports


@pytest.fixture(scope="module")
def reference(student, prepared) -> np.ndarray:
    return inference.predict_logits(student, prepared.images, SIZE)


def test_calibration_inputs_are_seeded_float_images(prepared):
    a = quantization.calibration_inputs(prepared.images, SIZE, 10, seed=0)
    b = quantization.calibration_inputs(prepared.images, SIZE, 10, seed=0)
    c = quantization.calibration_inputs(prepared.images, SIZE, 10, seed=1)
    assert a.shape == (10, 3, SIZE, SIZE) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert len(quantization.calibration_inputs(prepared.images, SIZE, 10**6, seed=0)) == len(
        prepared.images
    )


def test_int8_pte_runs_every_conv_in_int8_inside_xnnpack(exported):
    report = exported[1]["int8_pte"]
    assert report["backends"] == ["XnnpackBackend"]
    assert report["conv_linear_int8_delegated"] == CONV_LINEAR
    assert report["conv_linear_float_delegated"] == 0
    assert report["conv_linear_not_delegated"] == 0
    assert report["quantize_ops_delegated"] > 0 and report["dequantize_ops_delegated"] > 0
    assert report["compute_ops_outside_delegates"] == {}


def test_fp32_pte_is_float_and_delegated(exported):
    report = exported[1]["fp32_pte"]
    assert report["conv_linear_float_delegated"] == CONV_LINEAR
    assert report["conv_linear_int8_delegated"] == 0
    assert report["quantize_ops_delegated"] == 0
    assert report["compute_ops_outside_delegates"] == {}


@pytest.mark.parametrize("name", ["fp32_pte", "fp32_onnx"])
def test_float_exports_match_pytorch(exported, prepared, reference, name):
    # batch_size 100 exceeds the programs' bound of 64: the runner must split it.
    logits = runtime.Predictor.load(exported[0][name]).logits(prepared.images, batch_size=100)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference, atol=1e-4)


@pytest.mark.parametrize("name", ["int8_pte", "int8_onnx", "fp16_onnx"])
def test_reduced_precision_outputs_stay_close_to_float(exported, prepared, reference, name):
    logits = runtime.Predictor.load(exported[0][name]).logits(prepared.images)
    diff = np.abs(logits - reference)
    spread = reference.max() - reference.min()
    assert np.corrcoef(logits, reference)[0, 1] > 0.99
    assert np.percentile(diff, 95) < 0.05 * spread
    assert diff.max() < 0.25 * spread  # an image beyond the calibrated ranges moves more
    if name != "fp16_onnx":
        assert diff.max() > 1e-4  # really quantized, not a float copy


def test_onnx_int8_runs_int8_kernels_in_onnx_runtime(exported):
    report = quantization.onnx_ops_report(exported[0]["int8_onnx"])
    assert report["file"]["conv_gemm_qdq_int8"] == CONV_LINEAR
    assert report["file"].get("conv_gemm_float", 0) == 0
    assert report["runtime"] == {"int8_conv_gemm": CONV_LINEAR, "float_conv_gemm": 0, "cast": 0}
    assert {"INT8", "UINT8"} <= set(report["file"]["initializer_dtypes"])


def test_onnx_int8_weights_have_7_bits_and_run_as_the_file_says_on_this_cpu(exported, prepared):
    """ORT's int8 kernels give what the QDQ graph means, on CPUs with and without VNNI.

    The reference is the same file run without graph optimisation: each DequantizeLinear then
    feeds a float convolution, so nothing saturates. With full 8-bit weights an AVX2 CPU's
    ``vpmaddubsw`` saturates and the optimised run drifts from it.
    """
    path = exported[0]["int8_onnx"]
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(path).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) > 1
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 64  # 7 bits
    x = quantization.calibration_inputs(prepared.images, SIZE, 64, seed=1)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = fused.get_inputs()[0].name
    want, got = (s.run(None, {name: x})[0] for s in (reference, fused))
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_onnx_int8_output_bias_correction_removes_the_mean_error(exported, prepared, tmp_path):
    paths, reports = exported
    calibration = quantization.calibration_inputs(prepared.images, SIZE, 48, seed=0)
    raw = tmp_path / "raw.onnx"
    # The same quantization without the correction, rebuilt by hand with ORT's own API.
    quant_pre_process(str(paths["fp32_onnx"]), str(tmp_path / "pre.onnx"))
    quantize_static(
        str(tmp_path / "pre.onnx"), str(raw), quantization._Calibration(calibration, "images", 32),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    run = {k: runtime.Predictor.load(p).run for k, p in
           [("float", paths["fp32_onnx"]), ("raw", raw), ("corrected", paths["int8_onnx"])]}  # fmt: skip
    out = {k: r(calibration) for k, r in run.items()}
    expected = float((out["float"] - out["raw"]).mean())
    assert reports["onnx_bias"] == pytest.approx([expected], abs=1e-5)
    np.testing.assert_allclose(out["corrected"], out["raw"] + expected, atol=1e-5)
    assert abs((out["corrected"] - out["float"]).mean()) < 1e-4
    assert quantization.onnx_ops_report(paths["int8_onnx"])["runtime"]["float_conv_gemm"] == 0


def test_platt_scaling_runs_inside_the_int8_files(student, exported, prepared, tmp_path):
    """The recalibrated int8 files give the plain int8 files' logits through the Platt map."""
    paths = exported[0]
    platt = calibration.MelanomaPlatt(1.3, 0.9, "binary")
    calibration_set = quantization.calibration_inputs(prepared.images, SIZE, 48, seed=0)
    graph = torch.nn.Sequential(quantization.ptq_int8(student, calibration_set), platt)
    report = quantization.write_pte(quantization.export(graph, SIZE), tmp_path / "platt.pte")
    assert report["conv_linear_int8_delegated"] == CONV_LINEAR  # the int8 part is untouched
    shutil.copy(paths["int8_onnx"], tmp_path / "platt.onnx")
    quantization.append_to_onnx_output(tmp_path / "platt.onnx", platt, "platt")
    assert [o.name for o in onnx.load(tmp_path / "platt.onnx").graph.output] == ["logits"]
    assert quantization.onnx_ops_report(tmp_path / "platt.onnx")["runtime"]["float_conv_gemm"] == 0
    for name in ("pte", "onnx"):
        plain = runtime.Predictor.load(paths[f"int8_{name}"]).logits(prepared.images)
        scaled = runtime.Predictor.load(tmp_path / f"platt.{name}").logits(prepared.images)
        np.testing.assert_allclose(scaled, 1.3 * plain + 0.9, atol=1e-4)


def test_platt_scaling_of_a_dx_model_in_onnx(tmp_path):
    model = models.create("dsnet_tiny", task="dx").eval()
    platt = calibration.MelanomaPlatt(1.5, -0.5, "dx")
    x = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    quantization.write_onnx(model, SIZE, tmp_path / "dx.onnx")
    quantization.append_to_onnx_output(tmp_path / "dx.onnx", platt, "platt")
    with torch.no_grad():
        expected = platt(model(x)).numpy()
    got = runtime.Predictor.load(tmp_path / "dx.onnx").run(x.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_platt_fit_of_an_export_and_its_refusal_of_a_reversed_one(exported, prepared):
    path = exported[0]["int8_onnx"]
    labels = prepared.table["label"].to_numpy()
    logits = runtime.Predictor.load(path).logits(prepared.images)
    fit = quantization.platt_fit(path, prepared, "binary", ece_bins=10, seed=0)
    assert fit["applied"]
    assert (fit["slope"], fit["intercept"]) == pytest.approx(
        calibration.fit_platt(logits, labels, "binary")
    )
    assert fit["val_ece_before"] == pytest.approx(
        metrics.ece(labels, 1 / (1 + np.exp(-logits)), 10)
    )
    assert fit["val_ece_in_sample"] <= fit["val_ece_before"]
    reversed_labels = prepared.table.assign(label=1 - labels)
    flipped = quantization.platt_fit(
        path, data.Prepared(prepared.images, reversed_labels), "binary", ece_bins=10, seed=0
    )
    assert flipped["slope"] < 0 and not flipped["applied"]


def test_onnx_float_and_fp16_reports(exported):
    fp32 = quantization.onnx_ops_report(exported[0]["fp32_onnx"])
    fp16 = quantization.onnx_ops_report(exported[0]["fp16_onnx"])
    assert fp32["runtime"]["float_conv_gemm"] == CONV_LINEAR
    assert fp32["runtime"]["int8_conv_gemm"] == 0
    assert set(fp16["file"]["initializer_dtypes"]) == {"FLOAT16"}


def test_int8_files_are_smaller(exported):
    paths = exported[0]
    size = {k: p.stat().st_size for k, p in paths.items()}
    assert size["int8_pte"] < size["fp32_pte"] and size["int8_onnx"] < size["fp32_onnx"]


def test_degradation_bounds_and_choice():
    params = dataclasses.replace(
        config.load("quantize", REPO / "params.yaml"), max_auc_drop=0.02, max_ece_change=0.03
    )
    ref = {"val_roc_auc": 0.85, "val_ece": 0.05}
    small = quantization.degradation(ref, {"val_roc_auc": 0.84, "val_ece": 0.07}, params)
    assert small["val_roc_auc_drop"] == pytest.approx(0.01) and small["within_bounds"]
    assert not quantization.degradation(ref, {"val_roc_auc": 0.82, "val_ece": 0.05}, params)[
        "within_bounds"
    ]
    assert not quantization.degradation(ref, {"val_roc_auc": 0.85, "val_ece": 0.01}, params)[
        "within_bounds"
    ]  # |ECE change| counts both ways
    ptq = {"within_bounds": False, "val_roc_auc": 0.84, "val_ece": 0.05}
    qat = {"within_bounds": True, "val_roc_auc": 0.83, "val_ece": 0.05}
    assert quantization.better(qat, ptq) and not quantization.better(ptq, qat)
    assert not quantization.better(ptq, ptq)  # a tie keeps the post-training model


@pytest.mark.slow  # ~30 s: torchao's QAT conv-BN folding exports 132 pattern graphs
def test_qat_fine_tunes_and_lowers_to_int8(student, prepared, tmp_path):
    params = dataclasses.replace(config.load("quantize", REPO / "params.yaml"), qat_epochs=1)
    images, table = prepared.images[:64], prepared.table.iloc[:64]
    converted, fit = quantization.qat_int8(
        student, images, _targets(table), prepared.images, prepared.table["label"].to_numpy(),
        _recipe(bf16=True), AUG, params, ece_bins=10,  # the default student trains under bf16
    )  # fmt: skip
    assert fit.best_epoch == 1 and len(fit.history) == 1
    report = quantization.write_pte(quantization.export(converted, SIZE), tmp_path / "qat.pte")
    assert report["conv_linear_int8_delegated"] == CONV_LINEAR
    assert report["compute_ops_outside_delegates"] == {}
    logits = runtime.Predictor.load(tmp_path / "qat.pte").logits(images[:8])
    assert logits.shape == (8,) and np.isfinite(logits).all()


def test_qat_recipe_keeps_the_students_augmentation_but_not_mixing_or_ema():
    student_recipe = _recipe(
        mixup_alpha=0.2, cutmix_alpha=1.0, ema_decay=0.998, warmup_epochs=1.0, loss="focal"
    )
    params = config.load("quantize", REPO / "params.yaml")
    qat = quantization.qat_recipe(student_recipe, "binary", params)
    assert (qat.mixup_alpha, qat.cutmix_alpha, qat.ema_decay) == (0.0, 0.0, 0.0)
    assert not quantization.qat_recipe(_recipe(bf16=True), "binary", params).bf16
    assert (qat.epochs, qat.lr, qat.warmup_epochs) == (params.qat_epochs, params.qat_lr, 0.0)
    assert (qat.loss, qat.batch_size, qat.image_size) == (
        "focal",
        student_recipe.batch_size,
        student_recipe.image_size,
    )


def test_colour_constant_student_exports_with_its_normalisation(student, prepared, tmp_path):
    """Shades of gray lives in the model, so every exported file applies it."""
    model = models.create("dsnet_tiny", drop_rate=0.0, color_constancy=6)
    model.load_state_dict(student.state_dict())
    model.eval()
    x = quantization.calibration_inputs(prepared.images, SIZE, 16, seed=0) * 0.7
    tinted = x * np.array([0.8, 1.1, 1.3], dtype=np.float32)[:, None, None]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    quantization.write_pte(quantization.export(model, SIZE), tmp_path / "cc.pte")
    quantization.write_onnx(model, SIZE, tmp_path / "cc.onnx")
    for name in ("cc.pte", "cc.onnx"):
        run = runtime.Predictor.load(tmp_path / name).run
        np.testing.assert_allclose(run(x), ref, atol=1e-4)
        np.testing.assert_allclose(run(tinted), ref, atol=1e-4)  # blind to the tint


class _ConvRelu6(torch.nn.Module):
    """A conv into ReLU6 whose pre-activations span about 100 while ReLU6 keeps [0, 6].

    Two channels sit far outside [0, 6] (biases -50 and +50); the others pass small
    activations through the clamp. The weights stay small, so rounding the input and the
    weights costs little and the output's grid is what differs.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(4.0)
            self.conv.bias.copy_(torch.tensor([-50.0, 50.0] + [3.0] * 6))
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        return self.act(self.conv(x))


class _SpatialMean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(1, 2, 3))


def _output_scales(graph: torch.fx.GraphModule) -> list[float]:
    """Scales of the activation quantize ops after the model's input one, in graph order."""
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    scales = [n.args[1] for n in graph.graph.nodes if n.target == quantize]
    return [float(s) for s in scales[1:]]


def test_fused_relu6_quantizes_the_clamped_range_and_lowers_to_int8(prepared, tmp_path):
    """Without the fusion the int8 grid spans the conv's pre-activation range, not ReLU6's."""
    model = _ConvRelu6().eval()
    calibration = quantization.calibration_inputs(prepared.images, SIZE, 48, seed=0)
    held_out = torch.from_numpy(quantization.calibration_inputs(prepared.images, SIZE, 64, seed=1))
    with torch.no_grad():
        pre = model.conv(torch.from_numpy(calibration))
        expected = model(held_out)
    pre_range, post_range = float(pre.max() - pre.min()), float(pre.clamp(0, 6).max())
    assert pre_range > 10 * post_range  # the premise: the clamp keeps a small part of the range

    fused = quantization.ptq_int8(model, calibration, fuse_relu6=True)
    plain = quantization.ptq_int8(model, calibration, fuse_relu6=False)
    assert max(_output_scales(fused)) <= post_range / 255 * 1.01
    assert min(_output_scales(plain)) > pre_range / 255 / 2  # a histogram may trim the tails
    active = (expected > 0) & (expected < 6)  # where the clamp passes values through
    errors = {}
    with torch.no_grad():
        for name, graph in (("fused", fused), ("plain", plain)):
            errors[name] = float((graph(held_out) - expected)[active].abs().mean())
    assert errors["fused"] < errors["plain"] / 3

    # Lowered to XNNPACK (with a float mean after it, so the file gives one logit per image):
    # the clamp fuses into the int8 convolution and the file computes what the graph says.
    graph = torch.nn.Sequential(fused, _SpatialMean())
    report = quantization.write_pte(quantization.export(graph, SIZE), tmp_path / "relu6.pte")
    assert report["conv_linear_int8_delegated"] == 1 and report["conv_linear_float_delegated"] == 0
    assert not any("hardtanh" in op for op in report["ops_outside_delegates"])  # aten_hardtanh_...
    with torch.no_grad():
        reference = graph(held_out).numpy()
    run = runtime.Predictor.load(tmp_path / "relu6.pte").run
    np.testing.assert_allclose(run(held_out.numpy()), reference, atol=max(_output_scales(fused)))
