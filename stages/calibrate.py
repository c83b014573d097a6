"""calibrate: fit one temperature on the teacher's val logits; report ECE and NLL before/after."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline_lib import artifacts, calibration, config, data, metrics, models, plotting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="folder with model.pt and val_logits.npy")
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="temperature.json")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("calibrate", args.params)
    bins = config.load("metrics", args.params).ece_bins

    _, meta = models.load_checkpoint(Path(args.teacher) / "model.pt")
    task = meta["task"]
    logits = np.load(Path(args.teacher) / "val_logits.npy")
    val = data.read_split(args.split, "val")
    targets = val["label"] if task == "binary" else val["dx_index"]
    temperature = calibration.fit_temperature(logits, targets, task, params.max_iter)

    labels = val["label"].to_numpy()
    before = data.melanoma_probability(logits, task)
    after = data.melanoma_probability(logits, task, temperature)
    artifacts.write_json(args.out, {"temperature": temperature, "task": task})
    report = {
        "temperature": temperature,
        "val_ece_before": metrics.ece(labels, before, bins),
        "val_ece_after": metrics.ece(labels, after, bins),
        "val_nll_before": calibration.nll(logits, targets, task),
        "val_nll_after": calibration.nll(logits, targets, task, temperature),
        "val_brier_before": metrics.brier(labels, before),
        "val_brier_after": metrics.brier(labels, after),
        "val_roc_auc": metrics.roc_auc(labels, after),
    }
    artifacts.write_json(args.metrics, report)
    plotting.reliability_diagram(
        labels, {"raw": before, f"T={temperature:.2f}": after}, bins,
        Path(args.plots) / "reliability.png", title="Teacher on val",
    )  # fmt: skip
    print(
        f"calibrate: T={temperature:.3f}, val ECE {report['val_ece_before']:.4f} -> {report['val_ece_after']:.4f}"
    )


if __name__ == "__main__":
    main()
