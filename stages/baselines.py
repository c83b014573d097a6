"""baselines: scikit-learn models on metadata and handcrafted image features.

Every figure goes to the report (``--report``, JSON); the metrics file keeps each model's val
and test ROC-AUC (:func:`baselines.summary`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipeline_lib import artifacts, baselines, config, data, features, plotting


def load_frames(prepared_dir: str, split_dir: str, size: int) -> dict[str, pd.DataFrame]:
    """Each split's table rows joined with the image features of their cached images."""
    prepared = data.load_prepared(prepared_dir)
    feats = pd.DataFrame(
        features.image_features(prepared.images, size), columns=list(features.FEATURE_NAMES)
    )
    frames = {}
    for name in ("train", "val", "test"):
        rows = pd.read_csv(Path(split_dir) / f"{name}.csv")["row"].to_numpy()
        table = prepared.table.iloc[rows].reset_index(drop=True)
        frames[name] = pd.concat([table, feats.iloc[rows].reset_index(drop=True)], axis=1)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True, help="folder with train/val/test.csv")
    parser.add_argument("--metrics", required=True, help="metrics/baselines.json: ROC-AUCs")
    parser.add_argument("--report", required=True, help="report.json: every figure")
    parser.add_argument("--plots", required=True, help="folder for roc.png and roc.csv")
    parser.add_argument("--out", required=True, help="folder for predictions.csv")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("baselines", args.params)
    metric_params = config.load("metrics", args.params)

    start = time.perf_counter()
    frames = load_frames(args.prepared, args.split, params.feature_size)
    print(
        f"baselines: {len(features.FEATURE_NAMES)} image features in {time.perf_counter() - start:.1f}s"
    )
    results = baselines.run(
        frames["train"],
        frames["val"],
        frames["test"],
        params.seed,
        metric_params.ece_bins,
        metric_params.target_sensitivity,
    )

    report = baselines.report(results)
    artifacts.write_json(args.report, report)
    artifacts.write_json(args.metrics, baselines.summary(report))
    out, plots = Path(args.out), Path(args.plots)
    artifacts.write_csv(
        out / "predictions.csv", baselines.predictions(frames["val"], frames["test"], results)
    )
    artifacts.write_csv(out / "candidates.csv", baselines.candidates_table(results))
    curves = baselines.roc_table(
        frames["test"]["label"].to_numpy(), {name: r.test_prob for name, r in results.items()}
    )
    artifacts.write_csv(plots / "roc.csv", curves)
    aucs = {name: r.test["test_roc_auc"] for name, r in results.items()}
    plotting.roc_curves(curves, aucs, plots / "roc.png", title="Baselines: test ROC")
    for name, r in results.items():
        print(
            f"  {name:24s} val ROC-AUC {r.val['val_roc_auc']:.3f}  test ROC-AUC "
            f"{r.test['test_roc_auc']:.3f}  {r.hyperparameters}"
        )
    print(f"baselines: done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
