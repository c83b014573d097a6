"""How much metadata adds to a trained model's score: late fusion, measured out of fold on val.

A logistic regression on ``[melanoma logit, age, sex, body site]`` is cross-validated on the
val split with lesion-grouped folds, and its out-of-fold ROC-AUC is compared with the same
regression on the logit alone. This bounds what a metadata branch in the student's head could
add before changing the phone model's input signature; the test split is never read.

    python -m pipeline_lib.fusion --logits data/distill/val_logits.npy
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from pipeline_lib import features, metrics, training


def late_fusion(
    table: pd.DataFrame, logit: np.ndarray, folds: int = 5, seed: int = 0, c: float = 0.1
) -> dict[str, float]:
    """Out-of-fold ROC-AUC of the logit alone and of the logit fused with metadata.

    Args:
        table: val rows with ``label``, ``lesion_id`` and :data:`features.METADATA_COLUMNS`.
        logit: the model's melanoma logit for those rows.
    """
    if len(logit) != len(table):
        raise ValueError(f"{len(logit)} logits for {len(table)} val rows")
    x = table.assign(logit=logit)
    y = table["label"].to_numpy()
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    out = {"roc_auc": metrics.roc_auc(y, logit)}
    for name, columns in (("logit_only", []), ("fused", list(features.METADATA_COLUMNS))):
        parts = [("logit", "passthrough", ["logit"])]
        if columns:
            parts.append(("metadata", features.metadata_transformer(), columns))
        clf = make_pipeline(ColumnTransformer(parts), LogisticRegression(C=c, max_iter=2000))
        p = cross_val_predict(clf, x, y, groups=table["lesion_id"], cv=cv, method="predict_proba")
        out[f"oof_{name}_roc_auc"] = metrics.roc_auc(y, p[:, 1])
    out["gain"] = out["oof_fused_roc_auc"] - out["oof_logit_only_roc_auc"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logits", required=True, help="val_logits.npy of a trained model")
    ap.add_argument("--val", default="data/split/val.csv")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    z = np.load(args.logits)
    logit = training.binary_logit(torch.from_numpy(z), "binary" if z.ndim == 1 else "dx")
    result = late_fusion(pd.read_csv(args.val), logit.double().numpy(), args.folds, args.seed)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
