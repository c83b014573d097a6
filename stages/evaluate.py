"""evaluate: every model on the test split at val-chosen thresholds, with lesion-bootstrap CIs,
error analysis, subgroups and shift robustness."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_lib import (
    artifacts,
    calibration,
    config,
    data,
    evaluation,
    models,
    quantization,
    report,
    shift,
)
from pipeline_lib.evaluation import Predictor, Scores


def score_models(
    args: argparse.Namespace, val: data.Prepared, test: data.Prepared
) -> tuple[dict[str, Scores], dict[str, Predictor], dict[str, float]]:
    """Val and test probabilities of every model, predictors for the students, temperatures."""
    prob = models.melanoma_probability
    ids = val.table["image_id"], test.table["image_id"]
    baselines = evaluation.baseline_scores(pd.read_csv(args.baselines), *ids)
    scores = {f"baseline_{name}": s for name, s in baselines.items()}
    temperatures, predictors = {}, {}
    for role, folder in (("teacher", Path(args.teacher)), ("student", Path(args.student))):
        z_val, z_test, meta = evaluation.checkpoint_logits(
            folder / "model.pt", folder / "val_logits.npy", val.images, test.images
        )
        task = meta["task"]
        if role == "teacher":
            t = artifacts.read_json(args.temperature)["temperature"]
        else:  # the student is trained raw with KD; its own temperature is fitted on val only
            t = calibration.fit_temperature(
                z_val, val.table["label" if task == "binary" else "dx_index"], task
            )
        scores[role] = Scores(prob(z_val, task), prob(z_test, task))
        scores[f"{role}_calibrated"] = Scores(prob(z_val, task, t), prob(z_test, task, t))
        temperatures[f"{role}_calibrated"] = t
    model, meta = models.load_checkpoint(Path(args.student) / "model.pt")
    task, size = meta["task"], meta["image_size"]
    predictors["student"] = evaluation.torch_predictor(model, task, size)
    for item in args.exported:
        name, path = item.split("=", 1)

        def predict(images: np.ndarray, path: str = path) -> np.ndarray:
            # The export's runtime gets as many threads as torch, not one per core.
            logits = quantization.predict(path, images, size, threads=torch.get_num_threads())
            return prob(logits, task)

        predictors[name] = predict
        scores[name] = Scores(predict(val.images), predict(test.images))
    return scores, predictors, temperatures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True, help="folder with val.csv and test.csv")
    parser.add_argument("--baselines", required=True, help="baselines' predictions.csv")
    parser.add_argument("--teacher", required=True, help="folder with model.pt, val_logits.npy")
    parser.add_argument("--temperature", required=True, help="calibrate's temperature.json")
    parser.add_argument("--student", required=True, help="folder with model.pt, val_logits.npy")
    parser.add_argument(
        "--exported", action="append", default=[], metavar="NAME=PATH",
        help="an exported student (.pte or .onnx); the first is the deployed one",
    )  # fmt: skip
    parser.add_argument("--metrics", required=True, help="evaluate.json")
    parser.add_argument("--plots", required=True, help="folder for PNGs, CSVs and report.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("evaluate", args.params)
    mp = config.load("metrics", args.params)
    start = time.perf_counter()

    prepared = data.load_prepared(args.prepared)
    val, test = (
        data.select(prepared, pd.read_csv(Path(args.split) / f"{name}.csv"))
        for name in ("val", "test")
    )
    scores, predictors, temperatures = score_models(args, val, test)
    print(f"evaluate: scored {len(scores)} models in {time.perf_counter() - start:.0f}s")
    exported = [item.split("=", 1)[0] for item in args.exported]
    results = evaluation.evaluate_all(
        scores, val.table, test.table, "teacher", ["student", *exported],
        ["teacher", "student", *exported[:1]], params.bootstrap, params.seed,
        mp.target_sensitivity, mp.ece_bins, params.min_subgroup,
    )  # fmt: skip
    for name, t in temperatures.items():
        results[name]["temperature"] = t
    baselines = [n for n in scores if n.startswith("baseline_")]
    results["best_baseline_by_val"] = max(baselines, key=lambda n: results[n]["val_roc_auc"])

    # The float student and the deployed export only: the teacher would take minutes more.
    shifted = ["student", *exported[:1]]
    table = shift.robustness(
        {n: predictors[n] for n in shifted},
        {n: results[n]["at_target_sensitivity"]["threshold"] for n in shifted},
        test.images, test.table["label"].to_numpy(), params.seed,
    )  # fmt: skip
    results["shift"] = shift.as_metrics(table)
    print(f"evaluate: shift robustness done at {time.perf_counter() - start:.0f}s")
    artifacts.write_json(args.metrics, results)

    plots = Path(args.plots)
    report.shift_plot(table, plots / "shift.png")
    artifacts.write_csv(plots / "shift.csv", table)
    report.write_all(
        results, scores, test.images, test.table, exported, mp.ece_bins,
        mp.target_sensitivity, params.gallery_size, plots,
    )  # fmt: skip
    print(f"evaluate: done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
