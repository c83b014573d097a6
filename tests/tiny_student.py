"""A tiny deployed student for the predict, web app and browser tests: a ``dsnet_tiny``
checkpoint at 32 px, its int8 ``.pte`` and int8 ONNX, and their operating points chosen on the
synthetic images, laid out as the pipeline writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from synthetic import draw_image

from pipeline_lib import data, inference, models, operating_point, prediction, quantization, runtime

SIZE = 32
META = {"arch": "dsnet_tiny", "task": "binary", "global_pool": "avg", "drop_rate": 0.0}


def build(
    root: Path, prepared: data.Prepared, exports: bool = True, task: str = "binary"
) -> prediction.ModelPaths:
    """Write the checkpoint, both int8 exports and ``operating_point.json`` under ``root``.

    The synthetic images stand in for the val split. The weights are random but seeded and the
    head scaled up, so that int8 rounding leaves distinct scores. ``exports=False`` skips the
    int8 files (slow to lower) for tests that run the float student only. ``task="dx"`` gives
    a 7-way student.
    """
    torch.manual_seed(0)
    meta = META | {"task": task}
    model = models.create("dsnet_tiny", task, drop_rate=0.0).eval()
    with torch.no_grad():  # untrained logits spread ~0.003; int8 would round them together
        model.backbone.head[-1].weight.mul_(300.0)
    paths = prediction.ModelPaths(
        root / "operating_point.json", root / "model.pt", root / "int8.pte", root / "int8.onnx"
    )
    models.save_checkpoint(paths.checkpoint, model, meta | {"image_size": SIZE})
    logits = {"float": inference.predict_logits(model, prepared.images, SIZE)}
    if exports:
        calibration = quantization.calibration_inputs(prepared.images, SIZE, 16, seed=0)
        int8 = quantization.ptq_int8(model, calibration)
        quantization.write_pte(quantization.export(int8, SIZE), paths.pte)
        quantization.write_onnx(model, SIZE, root / "fp32.onnx")
        quantization.write_onnx_int8(root / "fp32.onnx", paths.onnx, calibration)
        logits["int8"] = runtime.Predictor.load(paths.pte, threads=1).logits(prepared.images)
        logits["int8-onnx"] = runtime.Predictor.load(paths.onnx, threads=1).logits(prepared.images)
    labels, dx = prepared.table["label"].to_numpy(), prepared.table["dx_index"].to_numpy()
    cache = prepared.images.shape[-1]
    points = {
        name: operating_point.choose(
            z, labels, dx, paths.file(name), meta | {"image_size": SIZE}, cache, 0.95, 10
        )
        for name, z in logits.items()
    }
    operating_point.write(paths.operating_point, points)
    return paths


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` synthetic lesion JPEGs (every other one a melanoma) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        path = folder / f"lesion_{i:02d}.jpg"
        Image.fromarray(draw_image(rng, melanoma=i % 2 == 0)).save(path, quality=90)
        files.append(path)
    return files
