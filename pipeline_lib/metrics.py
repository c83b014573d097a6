"""Every metric of the pipeline, computed in one place from labels and melanoma probabilities.

Scores are probabilities of melanoma in [0, 1]; labels are 0/1 (1 = melanoma). ROC-AUC and
PR-AUC use the continuous scores, never hard labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def _as_arrays(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in shape")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or inf")
    return y, p


def roc_auc(y_true, y_prob) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    y, p = _as_arrays(y_true, y_prob)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def pr_auc(y_true, y_prob) -> float:
    """Average precision, the step-wise area under the precision-recall curve."""
    y, p = _as_arrays(y_true, y_prob)
    return float(average_precision_score(y, p)) if y.any() else float("nan")


def ece(y_true, y_prob, n_bins: int = 15) -> float:
    """Expected calibration error of the melanoma probability over equal-width bins.

    Bins are ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]``: the last bin includes 1.0. Each bin
    contributes ``|mean(y) - mean(p)|`` weighted by its share of samples.
    """
    y, p = _as_arrays(y_true, y_prob)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(idx):
        mask = idx == b
        total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def reliability(y_true, y_prob, n_bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, observed frequency and count, with the same bins as :func:`ece`."""
    y, p = _as_arrays(y_true, y_prob)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out: dict[str, list[float]] = {"bin_center": [], "mean_prob": [], "frac_pos": [], "count": []}
    for b in range(n_bins):
        mask = idx == b
        out["bin_center"].append((b + 0.5) / n_bins)
        out["count"].append(int(mask.sum()))
        out["mean_prob"].append(float(p[mask].mean()) if mask.any() else float("nan"))
        out["frac_pos"].append(float(y[mask].mean()) if mask.any() else float("nan"))
    return out


def brier(y_true, y_prob) -> float:
    """Mean squared error between probability and label."""
    y, p = _as_arrays(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def threshold_for_sensitivity(y_true, y_prob, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity (``p >= t`` is positive) reaches ``target``.

    Choose it on validation data; apply it unchanged to test data.
    """
    y, p = _as_arrays(y_true, y_prob)
    pos = np.sort(p[y == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no positives: cannot choose a threshold for a target sensitivity")
    k = int(np.ceil(target * len(pos)))  # positives that must score >= t
    return float(pos[max(k, 1) - 1])


def threshold_for_f1(y_true, y_prob) -> float:
    """The threshold maximising F1 (``p >= t`` is positive); choose it on validation data."""
    y, p = _as_arrays(y_true, y_prob)
    candidates = np.unique(p)
    order = np.argsort(-p)
    ys, ps = y[order], p[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    # Only the last index of each tied score is a valid cut.
    last = np.r_[ps[1:] != ps[:-1], True]
    tp, fp, thr = tp[last], fp[last], ps[last]
    f1 = 2 * tp / np.maximum(2 * tp + fp + (ys.sum() - tp), 1)
    return float(thr[int(np.argmax(f1))]) if len(candidates) else 0.5


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion-derived rates at a fixed threshold."""

    threshold: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    accuracy: float
    tp: int
    fp: int
    tn: int
    fn: int


def operating_point(y_true, y_prob, threshold: float) -> OperatingPoint:
    """Sensitivity, specificity, precision, F1 and accuracy of ``p >= threshold``."""
    y, p = _as_arrays(y_true, y_prob)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=ratio(tp, tp + fn),
        specificity=ratio(tn, tn + fp),
        precision=ratio(tp, tp + fp),
        f1=float(f1_score(y, pred, zero_division=0)),
        accuracy=ratio(tp + tn, len(y)),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def summary(
    y_true, y_prob, n_bins: int = 15, threshold: float | None = None, prefix: str = ""
) -> dict[str, float]:
    """The headline metrics as a flat dict (keys optionally prefixed, e.g. ``val_``).

    ``threshold`` is the operating point chosen elsewhere (on val); when absent, the point
    reaching 95% sensitivity on these same data is reported (for val curves only).
    """
    y, p = _as_arrays(y_true, y_prob)
    thr = threshold if threshold is not None else threshold_for_sensitivity(y, p, 0.95)
    op = operating_point(y, p, thr)
    out = {
        "roc_auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "ece": ece(y, p, n_bins),
        "brier": brier(y, p),
        "f1_at_0.5": float(f1_score(y, p >= 0.5, zero_division=0)),
        "sensitivity": op.sensitivity,
        "specificity": op.specificity,
        "precision": op.precision,
        "threshold": op.threshold,
    }
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def as_dict(op: OperatingPoint) -> dict:
    """JSON-ready view of an operating point."""
    return asdict(op)


def logit(p: np.ndarray) -> np.ndarray:
    """``log p / (1 - p)`` of a classifier's probabilities, clipped to +-13.8 at 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def dx_figures(dx_true, probs: np.ndarray) -> dict:
    """The 7-way diagnosis figures of ``(N, 7)`` dx probabilities against HAM10000 dx codes:
    the confusion matrix of the most likely class (rows true, columns predicted, in
    ``DX_CODES`` order), accuracy, balanced accuracy, and each class's one-vs-rest ROC-AUC
    (``None`` where the class is absent or alone) and precision, recall and F1 of the most
    likely class (0 where undefined: a class never predicted or never present)."""
    from pipeline_lib.data import DX_CODES  # here: data imports torch, this module need not

    y = np.array([DX_CODES.index(c) for c in dx_true])
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    labels = list(range(len(DX_CODES)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    per_class = {}
    for i, code in enumerate(DX_CODES):
        positives = int((y == i).sum())
        defined = 0 < positives < len(y)
        per_class[code] = {
            "n": positives,
            "roc_auc": roc_auc(y == i, probs[:, i]) if defined else None,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
        }
    return {
        "classes": list(DX_CODES),
        "confusion": confusion_matrix(y, pred, labels=range(len(DX_CODES))).tolist(),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "per_class": per_class,
    }
