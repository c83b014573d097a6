"""model_card: choose each deployable student's operating point on val, and write the model card.

The float student's temperature and threshold come from its saved val logits; each export is
scored on the val images in its own runtime and gets its own. The choices are checked against
the evaluate stage's, then written for ``melanoma-kd predict`` together with the card.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_lib import artifacts, config, data, model_card, models, operating_point, quantization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True, help="folder with val.csv")
    parser.add_argument("--student", required=True, help="folder with model.pt, val_logits.npy")
    parser.add_argument(
        "--exported", action="append", default=[], metavar="NAME=PATH",
        help="an exported student (.pte or .onnx) under its `melanoma-kd --model` name",
    )  # fmt: skip
    parser.add_argument(
        "--report", action="append", default=[], metavar="STAGE=PATH",
        help="a stage's JSON report (metrics/<stage>.json, split=split_metadata.json)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="operating_point.json")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--card", required=True, help="model_card.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    mp = config.load("metrics", args.params)

    prepared = data.load_prepared(args.prepared)
    val = data.select(prepared, pd.read_csv(Path(args.split) / "val.csv"))
    labels, dx_index = val.table["label"].to_numpy(), val.table["dx_index"].to_numpy()
    checkpoint = Path(args.student) / "model.pt"
    _, meta = models.load_checkpoint(checkpoint)
    size = meta["image_size"]
    logits = {checkpoint: np.load(Path(args.student) / "val_logits.npy")}
    names = {checkpoint: "float"}
    for item in args.exported:
        name, path = item.split("=", 1)
        # As many runtime threads as torch, as the evaluate stage scores them.
        logits[Path(path)] = quantization.predict(
            path, val.images, size, threads=torch.get_num_threads()
        )
        names[Path(path)] = name
    points = {
        names[path]: operating_point.choose(
            z,
            labels,
            dx_index,
            path,
            meta,
            prepared.images.shape[-1],
            mp.target_sensitivity,
            mp.ece_bins,
        )  # fmt: skip
        for path, z in logits.items()
    }
    deployed = [n for n in names.values() if n != "float"][:1]
    points = {n: points[n] for n in [*deployed, *points] if n in points}  # the deployed one first

    reports = {k: artifacts.read_json(v) for k, v in (r.split("=", 1) for r in args.report)}
    model_card.check_against_evaluate(points, reports["evaluate"])
    operating_point.write(args.out, points)
    keep = ("temperature", "threshold", "val_sensitivity", "val_specificity", "val_ece")
    artifacts.write_json(
        args.metrics,
        {n: {k: v for k, v in asdict(p).items() if k in keep} for n, p in points.items()},
    )
    with artifacts.atomic_path(args.card) as tmp:
        tmp.write_text(model_card.markdown(points, reports))
    for name, p in points.items():
        print(
            f"model_card: {name}: T={p.temperature:.3f}, p >= {p.threshold:.4f}, val sensitivity "
            f"{p.val_sensitivity:.3f}, specificity {p.val_specificity:.3f}"
        )


if __name__ == "__main__":
    main()
