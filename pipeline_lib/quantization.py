"""Deployable students: ExecuTorch and ONNX files, int8 quantization and the quantize stage.

The float student becomes an ExecuTorch program lowered to XNNPACK (``.pte``) and an ONNX
model (``.onnx``); int8 copies come from post-training static quantization (PT2E with
``XNNPACKQuantizer`` for ExecuTorch, QDQ ``quantize_static`` for ONNX), with a QAT fine-tune
when post-training int8 costs too much on val (:func:`quantize_student`). The ops reports say
what really runs int8, so an "int8" model that is mostly float shows up in the metrics.
:mod:`pipeline_lib.runtime` runs the files this module writes.

This is the only module that imports torchao, the ExecuTorch exporter and
``onnxruntime.quantization``: their APIs move fast, and churn stays here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
    _is_annotated,  # the helpers the quantizer's own conv + ReLU annotator uses
    _mark_nodes_as_annotated,
)
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_backend_modules
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from torch import nn
from torchao.quantization.pt2e import allow_exported_model_train_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationConfig,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from pipeline_lib import artifacts, calibration, data, inference, metrics, models, runtime, training
from pipeline_lib.config import AugmentParams, QuantizeParams, TrainParams

# Largest batch an exported program accepts. ExecuTorch plans its input buffer for this bound
# (64 x 3 x 128 x 128 float32 = 12.6 MB), so a larger bound costs phone RAM for nothing.
MAX_BATCH = 64
NUM_DX_OUTPUTS = len(data.DX_CODES)
_TRAIN_MAX_BATCH = 1024  # QAT graphs are trained and scored in Python, never lowered as is
FILES = {  # stable names: evaluate, benchmark and dvc.yaml's artifacts refer to them
    "fp32_pte": "student_fp32.pte",
    "int8_pte": "student_int8.pte",
    "fp32_onnx": "student_fp32.onnx",
    "int8_onnx": "student_int8.onnx",
    "fp16_onnx": "student_fp16.onnx",
}


def calibration_inputs(images: np.ndarray, image_size: int, count: int, seed: int) -> np.ndarray:
    """``count`` images drawn with a seeded generator, as float32 ``[0, 1]`` NCHW."""
    rows = np.arange(len(images))
    if count < len(images):
        rows = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    return inference.to_input(images[rows], image_size).contiguous().numpy()


def _example(image_size: int, batch: int = MAX_BATCH) -> torch.Tensor:
    return torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export(model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic batch dimension of 1 to :data:`MAX_BATCH`.

    The example batch is the upper bound itself: lowered to XNNPACK from an example of 2
    images, ExecuTorch 1.5.1 planned the input for 15 images and refused more (measured).
    """
    if not any(isinstance(m, torch.fx.GraphModule) for m in model.modules()):
        model = model.eval()  # exported modules (int8 graphs) refuse .eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (_example(image_size),), dynamic_shapes=({0: batch},))


_CONVS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
_CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)  # ReLU6


def annotate_conv_relu6(
    graph: torch.fx.GraphModule,
    config: QuantizationConfig,
    keep: Callable[[torch.fx.Node], bool] | None = None,
) -> None:
    """Annotate every conv -> ReLU6 pair so that the output is quantized after the clamp.

    ``XNNPACKQuantizer`` fuses a conv with a following ReLU but not with ReLU6 (``hardtanh``,
    the activation of EfficientNet-Lite and MobileNetV2): it quantizes the conv's output before
    the clamp and lets the clamp share that range. The int8 grid then spans the pre-activation
    range and the clamped [0, 6] gets a fraction of its 256 steps: on the Lite0 student the stem's
    output had a step of 0.54, 11 steps for [0, 6] (docs/quantization.md). Annotated here the
    way the ReLU pattern is (inputs and weights on the conv, the output on the clamp), the
    clamp's own range is observed; XNNPACK fuses the clamp into the int8 convolution.
    Convs after batch norm (QAT graphs, before folding) are not matched and keep the default.
    """
    for clamp in graph.graph.nodes:
        if clamp.op != "call_function" or clamp.target not in _CLAMPS:
            continue
        conv = clamp.args[0]
        if not isinstance(conv, torch.fx.Node) or conv.target not in _CONVS or len(conv.users) > 1:
            continue
        bias = (
            conv.args[2] if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node) else None
        )
        partition = [clamp, conv, conv.args[1]] + ([bias] if bias is not None else [])
        if _is_annotated(partition) or (keep and not all(keep(n) for n in partition)):
            continue
        inputs = {conv.args[0]: get_input_act_qspec(config), conv.args[1]: get_weight_qspec(config)}
        if bias is not None:
            inputs[bias] = get_bias_qspec(config)
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(config)
        )
        _mark_nodes_as_annotated(partition)


class _Relu6Quantizer(XNNPACKQuantizer):
    """``XNNPACKQuantizer`` that also fuses conv with ReLU6 (:func:`annotate_conv_relu6`)."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        annotate_conv_relu6(model, self.global_config, self.filter_fn)
        return super().annotate(model)


def _quantizer(qat: bool = False, fuse_relu6: bool = False) -> XNNPACKQuantizer:
    """Per-channel symmetric int8 for every conv and linear.

    ``fuse_relu6`` also annotates conv -> ReLU6 pairs (:func:`annotate_conv_relu6`).
    """
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    return (_Relu6Quantizer() if fuse_relu6 else XNNPACKQuantizer()).set_global(config)


@torch.no_grad()
def ptq_int8(
    model: nn.Module,
    calibration: np.ndarray,
    batch_size: int = 32,
    fuse_relu6: bool = False,
) -> nn.Module:
    """PT2E post-training static int8 (per-channel symmetric weights) calibrated on ``calibration``.

    ``fuse_relu6`` quantizes each conv's output after its ReLU6 (:func:`annotate_conv_relu6`).
    Returns the converted graph (quantize/dequantize around every conv and linear), ready for
    :func:`export` and :func:`write_pte`.
    """
    quantizer = _quantizer(fuse_relu6=fuse_relu6)
    prepared = prepare_pt2e(export(model, calibration.shape[-1]).module(), quantizer)
    for i in range(0, len(calibration), batch_size):
        prepared(torch.from_numpy(calibration[i : i + batch_size]))
    return convert_pt2e(prepared)


def write_pte(program: torch.export.ExportedProgram, path: str | Path) -> dict:
    """Lower ``program`` with the XNNPACK partitioner, write the ``.pte``, return its ops report."""
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    report = pte_ops_report(lowered.exported_program().graph_module)
    buffer = lowered.to_executorch().buffer
    with artifacts.atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
    return report


# Nodes that only move or view data; anything else left outside a delegate is real compute.
_DATA_MOVEMENT = ("getitem", "sym_size", "view_copy", "select_copy", "dim_order", "alloc", "clone")


def _op(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _int8_operand(node: object) -> bool:
    """Whether ``node`` dequantizes an int8 tensor (the operand is stored as int8)."""
    if not isinstance(node, torch.fx.Node) or "dequantize" not in _op(node):
        return False
    source = node.args[0]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    return value is not None and value.dtype == torch.int8


def pte_ops_report(graph_module: torch.fx.GraphModule) -> dict:
    """What a lowered ExecuTorch program runs where: delegates, int8 convs, ops left outside.

    A conv or linear counts as int8 when both its input and its weight are dequantized from
    int8 inside an XNNPACK delegate: XNNPACK then runs its quantized kernel.
    """
    frame = get_delegation_info(graph_module).get_operator_delegation_dataframe()
    frame = frame[frame["op_type"] != "Total"]
    outside = {
        r.op_type: int(r.occurrences_in_non_delegated_graphs)
        for r in frame.itertuples()
        if r.occurrences_in_non_delegated_graphs > 0
    }
    lowered = get_lowered_backend_modules(graph_module)
    inside: Counter[str] = Counter()
    for module in lowered:
        for node in module.original_module.graph.nodes:
            if node.op != "call_function":
                continue
            op = _op(node)
            if op.startswith(("aten.convolution", "aten.linear")):
                int8 = _int8_operand(node.args[0]) and _int8_operand(node.args[1])
                inside["conv_linear_int8" if int8 else "conv_linear_float"] += 1
            elif "dequantize" in op:
                inside["dequantize"] += 1
            elif "quantize" in op:
                inside["quantize"] += 1
    not_delegated = sum(
        1
        for n in graph_module.graph.nodes
        if n.op == "call_function" and _op(n).startswith(("aten.convolution", "aten.linear"))
    )
    return {
        "delegates": len(lowered),
        "backends": sorted({m.backend_id for m in lowered}),
        "delegated_ops": int(frame["occurrences_in_delegated_graphs"].sum()),
        "conv_linear_int8_delegated": inside["conv_linear_int8"],
        "conv_linear_float_delegated": inside["conv_linear_float"],
        "conv_linear_not_delegated": not_delegated,
        "quantize_ops_delegated": inside["quantize"],
        "dequantize_ops_delegated": inside["dequantize"],
        "ops_outside_delegates": outside,
        "compute_ops_outside_delegates": {
            k: v for k, v in outside.items() if not any(s in k for s in _DATA_MOVEMENT)
        },
    }


def write_onnx(model: nn.Module, image_size: int, path: str | Path) -> None:
    """The float model as ONNX with a dynamic batch dimension (:func:`inference.write_onnx`)."""
    inference.write_onnx(model, _example(image_size, 1), path)


class _Calibration(CalibrationDataReader):
    """Feeds the calibration images to ``quantize_static`` in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int):
        self._batches = iter(
            [{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def write_onnx_int8(
    float_path: str | Path,
    path: str | Path,
    calibration: np.ndarray,
    batch_size: int = 32,
    reduce_range: bool = True,
) -> list[float]:
    """Static int8 QDQ ONNX: per-channel int8 weights, uint8 activations, output bias corrected.

    ``reduce_range`` keeps the weights in 7 bits (|w| <= 64). On x86 CPUs without VNNI (AVX2,
    early AVX-512) ONNX Runtime multiplies uint8 by int8 with ``vpmaddubsw``, whose 16-bit sums
    saturate with full 8-bit weights: the file then computes something else on those CPUs than on
    VNNI and ARM ones (a small student's int8 logits correlated 0.54 with its float logits on an
    AVX2 CPU, above 0.95 with 7-bit weights). 7-bit weights run the same everywhere.

    uint8 activations (ORT's U8S8): with int8 activations ONNX Runtime's CPU provider fused
    only 28 of MobileNetV3-S's 53 QDQ convs into QLinearConv, leaving the depthwise ones
    float; with uint8 all 53 were fused (measured).

    Rounding errors of int8 layers do not average out to zero: on the real student the int8
    logits sat about +1.0 above the float ones on every image (val ECE 0.02 -> 0.12, ROC-AUC
    barely moved). :func:`correct_output_bias` removes that mean error, measured on the same
    calibration images (Nagel et al. 2019's empirical bias correction, applied to the output).

    Returns:
        the correction added to each logit (one value per output).
    """
    name = onnx.load(str(float_path)).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp, artifacts.atomic_path(path) as out:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(float_path), str(pre))  # shape inference + folding, as ORT advises
        quantize_static(
            str(pre), str(out), _Calibration(calibration, name, batch_size),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
        )  # fmt: skip
        return correct_output_bias(float_path, out, calibration, batch_size)


def _run_onnx(path: str | Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    run = runtime.Predictor.load(path, suffix=".onnx").run  # also the unsuffixed temporary file
    return np.concatenate(
        [run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def correct_output_bias(
    float_path: str | Path, int8_path: str | Path, calibration: np.ndarray, batch_size: int = 32
) -> list[float]:
    """Add ``mean(float logits - int8 logits)`` over ``calibration`` to the int8 model's output.

    The correction is a float ``Add`` after the last dequantization, so the logits are not
    re-quantized (a shifted output range would clip) and every int8 kernel stays fused.
    Rewrites ``int8_path`` in place and returns the per-output correction.
    """
    error = _run_onnx(float_path, calibration, batch_size) - _run_onnx(
        int8_path, calibration, batch_size
    )
    shift = error.reshape(len(error), -1).mean(axis=0).astype(np.float32)
    model = onnx.load(str(int8_path))
    graph = model.graph
    graph_output = graph.output[0]
    uncorrected = f"{graph_output.name}_before_bias_correction"
    for node in graph.node:
        node.output[:] = [uncorrected if o == graph_output.name else o for o in node.output]
    graph.initializer.append(
        onnx.numpy_helper.from_array(shift.reshape(error.shape[1:]), "output_bias_correction")
    )
    graph.node.append(
        onnx.helper.make_node(
            "Add",
            [uncorrected, "output_bias_correction"],
            [graph_output.name],
            name="output_bias_correction",
        )  # fmt: skip
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(int8_path))
    return [float(v) for v in shift]


def write_onnx_fp16(float_path: str | Path, path: str | Path) -> None:
    """An fp16 copy of the float ONNX model; inputs and outputs stay float32."""
    model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
    with artifacts.atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def append_to_onnx_output(path: str | Path, tail: nn.Module, tag: str) -> None:
    """Run ``tail`` (logits in, logits out) on the output of the ONNX model at ``path``.

    ``tail`` is exported to ONNX on its own and joined after the model's last node
    (``onnx.compose.merge_models``), in float: the int8 part is untouched. The output keeps its
    name; the nodes of ``tail`` are prefixed with ``tag``. Rewrites ``path`` in place.
    """
    base = onnx.load(str(path))
    output = base.graph.output[0].name
    rank = len(base.graph.output[0].type.tensor_type.shape.dim)
    before = f"{output}_before_{tag}"
    for node in base.graph.node:
        node.output[:] = [before if o == output else o for o in node.output]
    base.graph.output[0].name = before
    example = torch.zeros((2, NUM_DX_OUTPUTS) if rank == 2 else (2,))
    with tempfile.TemporaryDirectory() as tmp:
        tail_path = Path(tmp) / "tail.onnx"
        torch.onnx.export(
            tail.eval(), (example,), str(tail_path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
        tail_model = onnx.load(str(tail_path))
    tail_model.ir_version = base.ir_version
    tail_model = onnx.compose.add_prefix(tail_model, f"{tag}/")
    merged = onnx.compose.merge_models(base, tail_model, io_map=[(before, f"{tag}/x")])
    for node in merged.graph.node:
        node.output[:] = [output if o == f"{tag}/y" else o for o in node.output]
    merged.graph.output[0].name = output
    onnx.checker.check_model(merged)
    with artifacts.atomic_path(path) as tmp:
        onnx.save(merged, str(tmp))


_INT8_ONNX_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
_FLOAT_ONNX_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


def onnx_ops_report(path: str | Path) -> dict:
    """Convs and matmuls of an ONNX file, and what ONNX Runtime's CPU provider really runs.

    ``file``: QDQ-wrapped (int8) versus float Conv/Gemm/MatMul as stored. ``runtime``: the
    same counts in the graph ORT builds after its optimisations, where a QDQ conv is either
    fused into an int8 kernel (QLinearConv) or left as a float Conv between DQ and Q.
    """
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    file = Counter()
    for node in graph.node:
        if node.op_type in {"Conv", "Gemm", "MatMul"}:
            qdq = all(producer.get(i) == "DequantizeLinear" for i in node.input[:2])
            file["conv_gemm_qdq_int8" if qdq else "conv_gemm_float"] += 1
        elif node.op_type in {"QuantizeLinear", "DequantizeLinear", "Cast"}:
            file[node.op_type] += 1
    dtypes = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        # EXTENDED holds the QDQ fusions but not the hardware-specific NCHWc layout rewrite.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = Counter(
            n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
        )
    return {
        "file": dict(file) | {"initializer_dtypes": dict(dtypes)},
        "runtime": {
            "int8_conv_gemm": sum(optimized[k] for k in _INT8_ONNX_OPS),
            "float_conv_gemm": sum(optimized[k] for k in _FLOAT_ONNX_OPS),
            # ORT's CPU provider lacks fp16 kernels for most ops and wraps them in Casts.
            "cast": optimized["Cast"],
        },
    }


def val_metrics(logits: np.ndarray, labels: np.ndarray, task: str, ece_bins: int) -> dict:
    """Raw (temperature 1) val ROC-AUC and ECE of the melanoma probability."""
    prob = data.melanoma_probability(logits, task)
    return {
        "val_roc_auc": metrics.roc_auc(labels, prob),
        "val_ece": metrics.ece(labels, prob, ece_bins),
    }


def degradation(float_metrics: dict, int8_metrics: dict, params: QuantizeParams) -> dict:
    """ROC-AUC drop and ECE change of a quantized model, and whether they stay in bounds."""
    drop = float_metrics["val_roc_auc"] - int8_metrics["val_roc_auc"]
    change = int8_metrics["val_ece"] - float_metrics["val_ece"]
    ok = drop <= params.max_auc_drop and abs(change) <= params.max_ece_change
    return {"val_roc_auc_drop": drop, "val_ece_change": change, "within_bounds": ok}


def better(candidate: dict, incumbent: dict) -> bool:
    """Whether ``candidate`` beats ``incumbent`` (each :func:`degradation` + :func:`val_metrics`).

    Staying within bounds wins first; then the higher val ROC-AUC, then the lower val ECE.
    """

    def key(m: dict) -> tuple:
        return (m["within_bounds"], round(m["val_roc_auc"], 4), -m["val_ece"])

    return key(candidate) > key(incumbent)


def qat_recipe(recipe: TrainParams, task: str, params: QuantizeParams) -> TrainParams:
    """The student's recipe for QAT: ``qat_epochs`` at ``qat_lr``, no warm-up, no early stop.

    Mixup/CutMix and weight EMA are switched off whatever the student used: QAT is a short
    fine-tune of fake-quantized weights from an already trained model. It runs in float32
    even for a student trained under bf16 autocast: torchao's fused fake-quantize op has no
    bf16 kernel.
    """
    return dataclasses.replace(
        recipe, task=task, epochs=params.qat_epochs, lr=params.qat_lr,
        warmup_epochs=0.0, patience=params.qat_epochs, seed=params.seed,
        ema_decay=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, bf16=False,
    )  # fmt: skip


def qat_int8(
    model: models.Classifier,
    train_images: np.ndarray,
    train_targets: training.Batch,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    recipe: TrainParams,
    aug: AugmentParams,
    params: QuantizeParams,
    ece_bins: int,
    progress: bool = False,
) -> tuple[nn.Module, training.FitResult]:
    """Quantization-aware fine-tuning from the float student, then conversion to int8.

    The shared loop :func:`training.fit` trains the prepared graph with the student's own
    recipe (augmentation, loss, batch size; hard labels only; :func:`qat_recipe`), for
    ``qat_epochs`` at ``qat_lr`` without warm-up, keeping the epoch with the best fake-quantized val ROC-AUC.
    Pass the result to :func:`export` and :func:`write_pte`.
    """
    recipe = qat_recipe(recipe, model.task, params)
    # Exported in train mode (QAT simulates the conv-BN folding with live statistics), with a
    # batch bound large enough for fit()'s val scoring; export() re-bounds it to MAX_BATCH.
    batch = torch.export.Dim("batch", min=1, max=_TRAIN_MAX_BATCH)
    graph = torch.export.export(
        copy.deepcopy(model).train(), (_example(recipe.image_size),), dynamic_shapes=({0: batch},)
    ).module()
    prepared = prepare_qat_pt2e(graph, _quantizer(qat=True, fuse_relu6=params.fuse_relu6))
    allow_exported_model_train_eval(prepared)  # fit() switches train/eval on it
    objective = training.Supervised(recipe.task, recipe.loss, recipe.pos_weight, recipe.focal_gamma)
    result = training.fit(
        prepared, objective, train_images, train_targets, val_images, val_labels,
        recipe, aug, ece_bins, progress=progress,
    )  # fmt: skip
    # fit() trains channels_last; XNNPACK's layout pass rejects a constant it sees in both
    # layouts, so the weights go back to contiguous before conversion (measured).
    trained = result.model.to(memory_format=torch.contiguous_format).eval()
    return convert_pt2e(trained), result


def score_export(
    path: Path,
    val: data.Prepared,
    ref_logits: np.ndarray,
    task: str,
    params: QuantizeParams,
    ece_bins: int,
) -> dict:
    """Val metrics of one exported file, run in its own runtime, against the float model's.

    Args:
        ref_logits: the float student's val logits (PyTorch).
    """
    labels = val.table["label"].to_numpy()
    logits = runtime.Predictor.load(path).logits(val.images)
    reference = val_metrics(ref_logits, labels, task, ece_bins)
    scored = val_metrics(logits, labels, task, ece_bins)
    return {
        "file": path.name,
        "size_mb": runtime.size_mb(path),
        **scored,
        **degradation(reference, scored, params),
        "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
    }


def platt_fit(path: Path, val: data.Prepared, task: str, ece_bins: int, seed: int) -> dict:
    """Platt scaling of an export's melanoma log-odds, fitted on its val logits.

    Returns the slope and intercept, the val ECE before, in sample after, and cross-fitted
    (:func:`calibration.cross_fitted_platt`: the estimate for unseen images), and ``applied``:
    ``False`` when the slope is not positive (the scaling would reverse the ranking), in which
    case the file is left as it is.
    """
    labels = val.table["label"].to_numpy()
    logits = runtime.Predictor.load(path).logits(val.images)
    slope, intercept = calibration.fit_platt(logits, labels, task)
    after = calibration.MelanomaPlatt(slope, intercept, task)(torch.from_numpy(logits)).numpy()
    cross = calibration.cross_fitted_platt(logits, labels, task, seed=seed)
    return {
        "applied": slope > 0,
        "slope": slope,
        "intercept": intercept,
        "val_ece_before": metrics.ece(labels, data.melanoma_probability(logits, task), ece_bins),
        "val_ece_in_sample": metrics.ece(labels, data.melanoma_probability(after, task), ece_bins),
        "val_ece_cross_fitted": metrics.ece(labels, cross, ece_bins),
    }


# What ``metrics/quantize.json`` keeps of the stage's report (:func:`summary`).
SUMMARY_FILES = ("int8_pte", "int8_onnx")
SUMMARY_FIGURES = (
    "size_mb", "val_roc_auc", "val_ece", "val_roc_auc_drop", "val_ece_change", "within_bounds",
)  # fmt: skip


RECALIBRATION_FIGURES = ("applied", "val_ece_before", "val_ece_cross_fitted")


def summary(report: dict) -> dict:
    """The figures a reviewer compares across runs (``dvc metrics diff``): ``quantize.json``.

    The float student's val ROC-AUC, ECE and size; each int8 file's size, val ROC-AUC and ECE,
    their change from the float student and whether that is within the bounds (after Platt
    scaling where it ran, with the val ECE before it and its cross-fitted estimate); and whether
    QAT was triggered and used (``qat.used``: the int8 ``.pte`` is the QAT one, else
    post-training). Every figure keeps its key path and value from ``report``
    (:func:`quantize_student`'s: every file, ops reports, QAT detail, export times), so the
    summary of a summary is itself.
    """
    out: dict = {"float_pytorch": dict(report["float_pytorch"])}
    for name in SUMMARY_FILES:
        if name in report:
            out[name] = {k: report[name][k] for k in SUMMARY_FIGURES}
            if "recalibration" in report[name]:
                fit = report[name]["recalibration"]
                out[name]["recalibration"] = {k: fit[k] for k in RECALIBRATION_FIGURES}
    out["qat"] = {k: report["qat"][k] for k in ("triggered", "used")}
    return out


def quantize_student(
    checkpoint: str | Path,
    train: data.Prepared,
    val: data.Prepared,
    out: str | Path,
    params: QuantizeParams,
    recipe: TrainParams,
    aug: AugmentParams,
    ece_bins: int,
    progress: bool = True,
) -> dict:
    """The quantize stage: every export of the float student, scored on val, QAT if needed.

    Writes :data:`FILES` under ``out``: float and post-training int8 ExecuTorch programs, float,
    int8 and fp16 ONNX. When the int8 program leaves the bounds of ``params`` on val
    (:func:`degradation`) and ``qat_epochs > 0``, a QAT fine-tune (:func:`qat_int8`) replaces it
    if it does better (:func:`better`). Then, with ``params.recalibrate``, each int8 file gets
    Platt scaling of its melanoma log-odds, fitted on its own val logits (:func:`platt_fit`)
    and run in float after its last int8 layer; its val figures are scored again.

    Args:
        checkpoint: the float student's ``model.pt``.
        train: the train split (calibration images; QAT's training data).
        recipe: the student's training section (QAT reuses it at the checkpoint's image size).

    Returns:
        the stage's report: each file's val figures and ops report, the float reference, the
        QAT decision and the export times.
    """
    torch.manual_seed(params.seed)  # before the model is built: QAT's dropout draws from it
    model, meta = models.load_checkpoint(checkpoint)
    task, size = meta["task"], meta["image_size"]
    labels = val.table["label"].to_numpy()
    calibration_set = calibration_inputs(train.images, size, params.calibration_images, params.seed)
    ref_logits = inference.predict_logits(model, val.images, size)
    reference = val_metrics(ref_logits, labels, task, ece_bins)
    paths = {k: Path(out) / v for k, v in FILES.items()}

    seconds, ops = {}, {}
    began = time.perf_counter()
    ops["fp32_pte"] = write_pte(export(model, size), paths["fp32_pte"])
    seconds["fp32_pte"] = time.perf_counter() - began
    began = time.perf_counter()
    int8_graph = ptq_int8(model, calibration_set, fuse_relu6=params.fuse_relu6)
    ops["int8_pte"] = write_pte(export(int8_graph, size), paths["int8_pte"])
    seconds["int8_pte"] = time.perf_counter() - began
    began = time.perf_counter()
    write_onnx(model, size, paths["fp32_onnx"])
    onnx_bias = write_onnx_int8(
        paths["fp32_onnx"], paths["int8_onnx"], calibration_set,
        reduce_range=params.onnx_reduce_range,
    )  # fmt: skip
    write_onnx_fp16(paths["fp32_onnx"], paths["fp16_onnx"])
    seconds["onnx"] = time.perf_counter() - began
    for name in ("fp32_onnx", "int8_onnx", "fp16_onnx"):
        ops[name] = onnx_ops_report(paths[name])
    results = {
        name: score_export(path, val, ref_logits, task, params, ece_bins)
        for name, path in paths.items()
    }

    qat = {"triggered": not results["int8_pte"]["within_bounds"] and params.qat_epochs > 0}
    qat["used"] = False
    if qat["triggered"]:
        began = time.perf_counter()
        targets = training.Batch(
            torch.tensor(train.table["label"].to_numpy()),
            torch.tensor(train.table["dx_index"].to_numpy()),
        )
        # QAT fine-tunes with the student's own recipe, at the size it was trained at.
        converted, fit = qat_int8(
            model, train.images, targets, val.images, labels,
            dataclasses.replace(recipe, image_size=size), aug, params, ece_bins, progress,
        )  # fmt: skip
        candidate = Path(out) / ".student_int8_qat.pte"
        qat_ops = write_pte(export(converted, size), candidate)
        qat_result = score_export(candidate, val, ref_logits, task, params, ece_bins)
        qat |= {"ptq": results["int8_pte"], "qat": qat_result, "best_epoch": fit.best_epoch}
        qat["used"] = better(qat_result, results["int8_pte"])
        if qat["used"]:
            int8_graph = converted
            os.replace(candidate, paths["int8_pte"])
            results["int8_pte"] = qat_result | {"file": FILES["int8_pte"]}
            ops["int8_pte"] = qat_ops
        else:
            candidate.unlink()
        qat["seconds"] = time.perf_counter() - began

    if params.recalibrate:
        began = time.perf_counter()
        for name in SUMMARY_FILES:
            fit = platt_fit(paths[name], val, task, ece_bins, params.seed)
            if fit["applied"]:
                platt = calibration.MelanomaPlatt(fit["slope"], fit["intercept"], task)
                if name == "int8_pte":
                    graph = nn.Sequential(int8_graph, platt)
                    ops[name] = write_pte(export(graph, size), paths[name])
                else:
                    append_to_onnx_output(paths[name], platt, "platt")
                    ops[name] = onnx_ops_report(paths[name])
                results[name] = score_export(paths[name], val, ref_logits, task, params, ece_bins)
            results[name]["recalibration"] = fit
        seconds["recalibration"] = time.perf_counter() - began

    for name in results:
        results[name]["ops"] = ops[name]
    results["int8_onnx"]["output_bias_correction"] = onnx_bias
    return {
        "task": task,
        "image_size": size,
        "calibration_images": len(calibration_set),
        "float_pytorch": reference | {"size_mb": runtime.size_mb(checkpoint)},
        **results,
        "qat": qat,
        "export_seconds": seconds,
    }
