"""quantize: export the student to ExecuTorch and ONNX, float and int8, each scored on val in its runtime."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_lib import artifacts, config, data, inference, models, quantization, training

FILES = {  # stable names: evaluate, benchmark and dvc.yaml's artifacts refer to them
    "fp32_pte": "student_fp32.pte",
    "int8_pte": "student_int8.pte",
    "fp32_onnx": "student_fp32.onnx",
    "int8_onnx": "student_int8.onnx",
    "fp16_onnx": "student_fp16.onnx",
}


def size_mb(path: str | Path) -> float:
    return os.path.getsize(path) / 1e6


def score(
    path: Path, val: data.Prepared, ref_logits: np.ndarray, meta: dict,
    params: config.QuantizeParams, bins: int,
) -> dict:  # fmt: skip
    """Val metrics of one exported file, run in its own runtime, against the float model's."""
    labels = val.table["label"].to_numpy()
    logits = quantization.predict(path, val.images, meta["image_size"])
    reference = quantization.val_metrics(ref_logits, labels, meta["task"], bins)
    m = quantization.val_metrics(logits, labels, meta["task"], bins)
    return {
        "file": path.name,
        "size_mb": size_mb(path),
        **m,
        **quantization.degradation(reference, m, params),
        "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="the float student's model.pt")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="folder for the .pte and .onnx files")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("quantize", args.params)
    bins = config.load("metrics", args.params).ece_bins
    torch.manual_seed(params.seed)

    model, meta = models.load_checkpoint(args.checkpoint)
    task, size = meta["task"], meta["image_size"]
    prepared = data.load_prepared(args.prepared)
    train, val = (
        data.select(prepared, pd.read_csv(Path(args.split) / f"{name}.csv"))
        for name in ("train", "val")
    )
    labels = val.table["label"].to_numpy()
    calibration = quantization.calibration_inputs(
        train.images, size, params.calibration_images, params.seed
    )
    ref_logits = inference.predict_logits(model, val.images, size)
    reference = quantization.val_metrics(ref_logits, labels, task, bins)
    out = Path(args.out)
    paths = {k: out / v for k, v in FILES.items()}

    seconds, ops = {}, {}
    start = time.perf_counter()
    ops["fp32_pte"] = quantization.write_pte(quantization.export(model, size), paths["fp32_pte"])
    seconds["fp32_pte"] = time.perf_counter() - start
    start = time.perf_counter()
    int8 = quantization.ptq_int8(model, calibration)
    ops["int8_pte"] = quantization.write_pte(quantization.export(int8, size), paths["int8_pte"])
    seconds["int8_pte"] = time.perf_counter() - start
    start = time.perf_counter()
    quantization.write_onnx(model, size, paths["fp32_onnx"])
    onnx_bias = quantization.write_onnx_int8(paths["fp32_onnx"], paths["int8_onnx"], calibration)
    quantization.write_onnx_fp16(paths["fp32_onnx"], paths["fp16_onnx"])
    seconds["onnx"] = time.perf_counter() - start
    for name in ("fp32_onnx", "int8_onnx", "fp16_onnx"):
        ops[name] = quantization.onnx_ops_report(paths[name])
    results = {
        name: score(path, val, ref_logits, meta, params, bins) for name, path in paths.items()
    }

    qat = {"triggered": not results["int8_pte"]["within_bounds"] and params.qat_epochs > 0}
    qat["used"] = False
    if qat["triggered"]:
        start = time.perf_counter()
        # QAT fine-tunes with the student's own recipe, at the size it was trained at.
        recipe = dataclasses.replace(config.load("distill", args.params), image_size=size)
        targets = training.Batch(
            torch.tensor(train.table["label"].to_numpy()),
            torch.tensor(train.table["dx_index"].to_numpy()),
        )
        converted, fit = quantization.qat_int8(
            model, train.images, targets, val.images, labels, recipe,
            config.load("augment", args.params), params, bins, progress=True,
        )  # fmt: skip
        candidate = out / ".student_int8_qat.pte"
        qat_ops = quantization.write_pte(quantization.export(converted, size), candidate)
        qat_result = score(candidate, val, ref_logits, meta, params, bins)
        qat |= {"ptq": results["int8_pte"], "qat": qat_result, "best_epoch": fit.best_epoch}
        qat["used"] = quantization.better(qat_result, results["int8_pte"])
        if qat["used"]:
            os.replace(candidate, paths["int8_pte"])
            results["int8_pte"] = qat_result | {"file": FILES["int8_pte"]}
            ops["int8_pte"] = qat_ops
        else:
            candidate.unlink()
        qat["seconds"] = time.perf_counter() - start

    for name in results:
        results[name]["ops"] = ops[name]
    results["int8_onnx"]["output_bias_correction"] = onnx_bias
    report = {
        "task": task,
        "image_size": size,
        "calibration_images": len(calibration),
        "float_pytorch": reference | {"size_mb": size_mb(args.checkpoint)},
        **results,
        "qat": qat,
        "export_seconds": seconds,
    }
    artifacts.write_json(args.metrics, report)
    for r in results.values():
        print(
            f"quantize: {r['file']:<18} {r['size_mb']:6.2f} MB  val ROC-AUC {r['val_roc_auc']:.4f} "
            f"(drop {r['val_roc_auc_drop']:+.4f})  ECE {r['val_ece']:.4f}"
        )
    print(f"quantize: QAT triggered={qat['triggered']} used={qat['used']}")


if __name__ == "__main__":
    main()
