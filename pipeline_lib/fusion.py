"""How much metadata adds to a trained model's score: late fusion, measured out of fold on val.

A logistic regression on ``[melanoma logit, age, sex, body site]`` is cross-validated on the
val split with lesion-grouped folds, and its out-of-fold ROC-AUC is compared with the same
regression on the logit alone. This bounds what a metadata branch in the student's head could
add before changing the phone model's input signature.

With ``--baseline NAME`` the logit is also stacked with a ``baselines`` model's val probability
(as a logit), e.g. gradient boosting on metadata + handcrafted lesion features: how much the
network misses that the ABCD features catch. The test split is read only with
``--confirm-on-test``, which fits that stacker on all of val and scores it once on test.

    python -m pipeline_lib.fusion --logits data/distill/val_logits.npy
    python -m pipeline_lib.fusion --logits data/distill/val_logits.npy \
        --baseline hist_gradient_boosting --confirm-on-test data/distill/model.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from pipeline_lib import evaluation, features, metrics, runs, training


def late_fusion(
    table: pd.DataFrame,
    logit: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    c: float = 0.1,
    baseline_prob: np.ndarray | None = None,
) -> dict[str, float]:
    """Out-of-fold ROC-AUC of the logit alone and of the logit fused with metadata.

    Args:
        table: val rows with ``label``, ``lesion_id`` and :data:`features.METADATA_COLUMNS`.
        logit: the model's melanoma logit for those rows.
        baseline_prob: another model's melanoma probability for those rows; adds
            ``oof_stacked_roc_auc`` (logit + that probability's logit) and ``baseline_roc_auc``.
    """
    for name, values in (("logits", logit), ("baseline probabilities", baseline_prob)):
        if values is not None and len(values) != len(table):
            raise ValueError(f"{len(values)} {name} for {len(table)} val rows")
    x = table.assign(logit=logit)
    y = table["label"].to_numpy()
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    out = {"roc_auc": metrics.roc_auc(y, logit)}
    metadata = ("metadata", features.metadata_transformer(), list(features.METADATA_COLUMNS))
    variants = {"logit_only": [], "fused": [metadata]}
    if baseline_prob is not None:
        x = x.assign(baseline=metrics.logit(baseline_prob))
        out["baseline_roc_auc"] = metrics.roc_auc(y, baseline_prob)
        variants["stacked"] = [("baseline", "passthrough", ["baseline"])]
    for name, extra in variants.items():
        parts = [("logit", "passthrough", ["logit"]), *extra]
        clf = make_pipeline(ColumnTransformer(parts), LogisticRegression(C=c, max_iter=2000))
        p = cross_val_predict(clf, x, y, groups=table["lesion_id"], cv=cv, method="predict_proba")
        out[f"oof_{name}_roc_auc"] = metrics.roc_auc(y, p[:, 1])
    out["gain"] = out["oof_fused_roc_auc"] - out["oof_logit_only_roc_auc"]
    if baseline_prob is not None:
        out["stacking_gain"] = out["oof_stacked_roc_auc"] - out["oof_logit_only_roc_auc"]
    return out


def confirm_on_test(
    val: pd.DataFrame,
    val_logit: np.ndarray,
    val_baseline: np.ndarray,
    test: pd.DataFrame,
    test_logit: np.ndarray,
    test_baseline: np.ndarray,
    c: float = 0.1,
) -> dict[str, float]:
    """The stacker fitted on all of val (its only choice), then scored once on test."""
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(np.c_[val_logit, metrics.logit(val_baseline)], val["label"].to_numpy())
    p = clf.predict_proba(np.c_[test_logit, metrics.logit(test_baseline)])[:, 1]
    y = test["label"].to_numpy()
    return {
        "test_roc_auc": metrics.roc_auc(y, test_logit),
        "test_baseline_roc_auc": metrics.roc_auc(y, test_baseline),
        "test_stacked_roc_auc": metrics.roc_auc(y, p),
        "test_stacked_ece": metrics.ece(y, p),
        "stacker_logit_weight": float(clf.coef_[0, 0]),
        "stacker_baseline_weight": float(clf.coef_[0, 1]),
    }


def baseline_prob(
    predictions_csv: str, name: str, table: pd.DataFrame, split: str = "val"
) -> np.ndarray:
    """One ``baselines`` model's probabilities on a split, in the order of the table's rows."""
    pred = pd.read_csv(predictions_csv)
    if name not in pred.columns:
        names = [c for c in pred.columns if c not in ("split", "image_id", "lesion_id", "label")]
        raise KeyError(f"{predictions_csv}: no baseline {name!r}; expected one of {names}")
    rows = pred[pred["split"] == split].set_index("image_id")
    missing = sorted(set(table["image_id"]) - set(rows.index))
    if missing:
        raise ValueError(
            f"{predictions_csv}: {len(missing)} {split} images missing, e.g. {missing[0]}"
        )
    return rows.loc[table["image_id"], name].to_numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logits", required=True, help="val_logits.npy of a trained model")
    ap.add_argument("--val", default="data/split/val.csv")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--baseline", help="a baselines model to stack with, e.g. hist_gradient_boosting"
    )
    ap.add_argument("--baseline-predictions", default="data/baselines/predictions.csv")
    ap.add_argument(
        "--confirm-on-test",
        metavar="CHECKPOINT",
        help="with --baseline: fit the stacker on all of val, then score the checkpoint's "
        "test images once (the last step, after every choice is made on val)",
    )
    ap.add_argument("--prepared", default="data/prepared")
    args = ap.parse_args(argv)
    if args.confirm_on_test and not args.baseline:
        ap.error("--confirm-on-test needs --baseline")
    val = pd.read_csv(args.val)
    logit = _melanoma_logit(np.load(args.logits))
    base = baseline_prob(args.baseline_predictions, args.baseline, val) if args.baseline else None
    result = late_fusion(val, logit, args.folds, args.seed, baseline_prob=base)
    if args.confirm_on_test:
        split_dir = Path(args.val).parent
        test = runs.load_split(args.prepared, split_dir, "test")
        _, test_raw, _ = evaluation.checkpoint_logits(  # checks --logits against the checkpoint
            args.confirm_on_test,
            args.logits,
            runs.load_split(args.prepared, split_dir, "val").images,
            test.images,
        )
        test_logit = _melanoma_logit(test_raw)
        test_base = baseline_prob(args.baseline_predictions, args.baseline, test.table, "test")
        result |= confirm_on_test(val, logit, base, test.table, test_logit, test_base)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=2))


def _melanoma_logit(z: np.ndarray) -> np.ndarray:
    return (
        training.binary_logit(torch.from_numpy(z), "binary" if z.ndim == 1 else "dx")
        .double()
        .numpy()
    )


if __name__ == "__main__":
    main()
