"""Classical baselines: scikit-learn models on metadata and handcrafted image features.

Each model has a small hyperparameter grid. Every candidate is fitted on train and the one with
the best validation ROC-AUC is kept; test data only ever receive the chosen model's predictions
and the operating threshold chosen on validation.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from pipeline_lib import features, metrics

Inputs = Literal["metadata", "all"]
Folds = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its inputs, a builder and the grid its hyperparameters are chosen from.

    ``build(hyperparameters, seed, folds)`` returns an unfitted classifier; ``folds`` are
    lesion-grouped folds of the training rows, for models that calibrate themselves internally.
    """

    inputs: Inputs
    build: Callable[[dict, int, Folds], ClassifierMixin]
    grid: dict[str, list]


def _logreg(hp: dict, seed: int, folds: Folds) -> ClassifierMixin:
    return LogisticRegression(C=hp["C"], max_iter=2000, random_state=seed)


def _forest(hp: dict, seed: int, folds: Folds) -> ClassifierMixin:
    return RandomForestClassifier(
        n_estimators=200,
        max_features="sqrt",
        min_samples_leaf=hp["min_samples_leaf"],
        n_jobs=-1,
        random_state=seed,
    )


def _boosting(hp: dict, seed: int, folds: Folds) -> ClassifierMixin:
    # No early stopping: its internal split would not be grouped by lesion.
    return HistGradientBoostingClassifier(
        learning_rate=hp["learning_rate"],
        max_leaf_nodes=hp["max_leaf_nodes"],
        max_iter=200,
        l2_regularization=1.0,
        random_state=seed,
    )


def _svm(hp: dict, seed: int, folds: Folds) -> ClassifierMixin:
    # Platt scaling fitted on out-of-fold decision values of lesion-grouped folds (images of
    # one lesion never on both sides); ensemble=False keeps one SVC fitted on all of train, so
    # the probability is a monotone map of its decision function.
    svc = SVC(C=hp["C"], gamma="scale", random_state=seed)
    return CalibratedClassifierCV(svc, method="sigmoid", cv=folds, ensemble=False)


MODELS: dict[str, ModelSpec] = {
    "logreg_metadata": ModelSpec("metadata", _logreg, {"C": [0.01, 0.1, 1.0, 10.0]}),
    "logreg": ModelSpec("all", _logreg, {"C": [0.01, 0.1, 1.0]}),
    "random_forest": ModelSpec("all", _forest, {"min_samples_leaf": [1, 5]}),
    "hist_gradient_boosting": ModelSpec(
        "all", _boosting, {"learning_rate": [0.03, 0.1], "max_leaf_nodes": [15, 31]}
    ),
    "svm": ModelSpec("all", _svm, {"C": [0.3, 1.0, 3.0]}),
}


@dataclass(frozen=True)
class Result:
    """One model family after selection on validation."""

    hyperparameters: dict[str, Any]
    candidates: list[tuple[dict[str, Any], float]]  # every grid point and its val ROC-AUC
    val: dict[str, float]  # metrics.summary on val, keys prefixed ``val_``
    test: dict[str, float]  # test metrics at the threshold chosen on val, prefixed ``test_``
    val_prob: np.ndarray
    test_prob: np.ndarray


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a grid, in a fixed order (the first best one wins ties)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def lesion_folds(labels: np.ndarray, groups: np.ndarray, seed: int, n_splits: int = 3) -> Folds:
    """Melanoma-stratified folds of the training rows that never split a lesion."""
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(labels)), labels, groups))


def build_pipeline(spec: ModelSpec, hp: dict, seed: int, folds: Folds) -> Pipeline:
    """Encoding of the spec's inputs followed by its classifier."""
    encode = (
        features.metadata_transformer()
        if spec.inputs == "metadata"
        else features.full_transformer()
    )
    return Pipeline([("encode", encode), ("model", spec.build(hp, seed, folds))])


def select(
    spec: ModelSpec, train: pd.DataFrame, val: pd.DataFrame, seed: int
) -> tuple[Pipeline, dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """Fit every grid point on ``train``; keep the one with the best ROC-AUC on ``val``.

    Both frames hold the input columns plus ``label`` and ``lesion_id``.

    Returns:
        The fitted best pipeline, its hyperparameters, and every candidate with its val ROC-AUC.
    """
    y_train, y_val = train["label"].to_numpy(), val["label"].to_numpy()
    folds = lesion_folds(y_train, train["lesion_id"].to_numpy(), seed)
    best: tuple[float, Pipeline, dict] | None = None
    candidates = []
    for hp in grid_points(spec.grid):
        model = build_pipeline(spec, hp, seed, folds).fit(train, y_train)
        auc = metrics.roc_auc(y_val, model.predict_proba(val)[:, 1])
        candidates.append((hp, auc))
        if best is None or auc > best[0]:
            best = (auc, model, hp)
    if best is None:
        raise ValueError("empty hyperparameter grid")
    return best[1], best[2], candidates


def evaluate(
    model: Pipeline,
    val: pd.DataFrame,
    test: pd.DataFrame,
    ece_bins: int,
    target_sensitivity: float,
) -> tuple[dict[str, float], dict[str, float], np.ndarray, np.ndarray]:
    """Val summary, and test metrics at the threshold reaching ``target_sensitivity`` on val."""
    y_val, y_test = val["label"].to_numpy(), test["label"].to_numpy()
    val_prob = model.predict_proba(val)[:, 1]
    test_prob = model.predict_proba(test)[:, 1]
    threshold = metrics.threshold_for_sensitivity(y_val, val_prob, target_sensitivity)
    val_summary = metrics.summary(y_val, val_prob, ece_bins, threshold, prefix="val_")
    op = metrics.operating_point(y_test, test_prob, threshold)
    test_summary = {
        "test_roc_auc": metrics.roc_auc(y_test, test_prob),
        "test_pr_auc": metrics.pr_auc(y_test, test_prob),
        "test_ece": metrics.ece(y_test, test_prob, ece_bins),
        "test_brier": metrics.brier(y_test, test_prob),
        "test_threshold": op.threshold,
        "test_sensitivity": op.sensitivity,
        "test_specificity": op.specificity,
        "test_precision": op.precision,
        "test_f1": op.f1,
    }
    return val_summary, test_summary, val_prob, test_prob


def run(
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    seed: int,
    ece_bins: int,
    target_sensitivity: float,
    models: dict[str, ModelSpec] | None = None,
) -> dict[str, Result]:
    """Select and evaluate every model family (default :data:`MODELS`).

    Args:
        train, val, test: metadata columns, :data:`features.FEATURE_NAMES`, ``label`` and
            ``lesion_id``.
        seed: seeds every estimator and the calibration folds.
        ece_bins: bins of the ECE.
        target_sensitivity: the val sensitivity that fixes the operating threshold.
        models: the families to run.
    """
    results = {}
    for name, spec in (models or MODELS).items():
        model, hp, candidates = select(spec, train, val, seed)
        val_m, test_m, val_prob, test_prob = evaluate(
            model, val, test, ece_bins, target_sensitivity
        )
        results[name] = Result(hp, candidates, val_m, test_m, val_prob, test_prob)
    return results


def report(results: dict[str, Result]) -> dict[str, Any]:
    """JSON-ready metrics per model, plus ``best_by_val``: the model with the best val ROC-AUC."""
    out: dict[str, Any] = {
        name: {**r.val, **r.test, "hyperparameters": r.hyperparameters}
        for name, r in results.items()
    }
    out["best_by_val"] = max(results, key=lambda name: results[name].val["val_roc_auc"])
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures a reviewer compares across runs (``dvc metrics diff``): ``baselines.json``.

    Each model's val ROC-AUC (what chose it) and test ROC-AUC, and ``best_by_val``; the other
    figures and the hyperparameters stay in the stage's report (:func:`report`). Every figure
    keeps its key path and value, so the summary of a summary is itself.
    """
    out: dict[str, Any] = {
        name: {k: r[k] for k in ("val_roc_auc", "test_roc_auc")}
        for name, r in report.items()
        if isinstance(r, dict)
    }
    out["best_by_val"] = report["best_by_val"]
    return out


def predictions(val: pd.DataFrame, test: pd.DataFrame, results: dict[str, Result]) -> pd.DataFrame:
    """One row per val and test image: ids, label and each model's melanoma probability."""
    frames = []
    for split, frame, attr in (("val", val, "val_prob"), ("test", test, "test_prob")):
        part = frame[["image_id", "lesion_id", "label"]].reset_index(drop=True)
        part.insert(0, "split", split)
        for name, r in results.items():
            part[name] = getattr(r, attr)
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def candidates_table(results: dict[str, Result]) -> pd.DataFrame:
    """Every grid point of every model with its val ROC-AUC, for auditing the selection."""
    rows = [
        {
            "model": name,
            "hyperparameters": json.dumps(hp),
            "val_roc_auc": auc,
            "chosen": hp == r.hyperparameters,
        }
        for name, r in results.items()
        for hp, auc in r.candidates
    ]
    return pd.DataFrame(rows)


def roc_table(labels: np.ndarray, probs: dict[str, np.ndarray]) -> pd.DataFrame:
    """ROC curves in long format (``model``, ``fpr``, ``tpr``), as ``dvc plots`` reads them."""
    rows = []
    for name, p in probs.items():
        fpr, tpr, _ = roc_curve(labels, p)
        rows.append(pd.DataFrame({"model": name, "fpr": fpr, "tpr": tpr}))
    return pd.concat(rows, ignore_index=True)
