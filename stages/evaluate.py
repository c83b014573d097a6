"""evaluate: every model on the test split at val-chosen thresholds, with lesion-bootstrap CIs,
error analysis, subgroups and shift robustness.

Every figure goes to the report (``--report``, JSON); the metrics file keeps the ones a
reviewer compares between runs (:func:`evaluation.summary`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from pipeline_lib import artifacts, config, data, evaluation, report


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
    parser.add_argument("--metrics", required=True, help="evaluate.json: the headline figures")
    parser.add_argument("--report", required=True, help="report.json: every figure")
    parser.add_argument("--plots", required=True, help="folder for PNGs, CSVs and report.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("evaluate", args.params)
    mp = config.load("metrics", args.params)
    start = time.perf_counter()

    val, test = (data.load_split(args.prepared, args.split, name) for name in ("val", "test"))
    exported = dict(item.split("=", 1) for item in args.exported)
    scores, predictors, temperatures = evaluation.score_models(
        val, test, pd.read_csv(args.baselines), args.teacher,
        artifacts.read_json(args.temperature)["temperature"], args.student, exported,
        threads=torch.get_num_threads(),  # as many as torch, not one per core
    )  # fmt: skip
    print(f"evaluate: scored {len(scores)} models in {time.perf_counter() - start:.0f}s")
    results, table = evaluation.evaluate_stage(
        scores, predictors, temperatures, val, test, list(exported), params, mp
    )
    print(f"evaluate: figures and shift robustness done at {time.perf_counter() - start:.0f}s")
    artifacts.write_json(args.report, results)
    artifacts.write_json(args.metrics, evaluation.summary(results, list(exported)))

    plots = Path(args.plots)
    report.shift_plot(table, plots / "shift.png")
    artifacts.write_csv(plots / "shift.csv", table)
    report.write_all(
        results, scores, test.images, test.table, list(exported), mp.ece_bins,
        mp.target_sensitivity, params.gallery_size, plots,
    )  # fmt: skip
    print(f"evaluate: done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
