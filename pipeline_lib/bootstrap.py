"""Cluster bootstrap over lesions, with every metric of a thousand resamples computed at once.

Images of one lesion are not independent, so a resample draws lesions with replacement and
keeps all their images together. Each resample is a vector of integer image weights (how often
the image's lesion was drawn); the metrics below take a ``(resamples, images)`` weight matrix
and return one value per resample. They reproduce :mod:`pipeline_lib.metrics` on the expanded
resample (the tests check this): that module stays the single definition of each metric, this
one only makes a thousand of them fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def lesion_weights(lesion_ids, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_resamples, N)`` integer weights: how often each image's lesion was drawn.

    Each resample draws as many lesions as there are, with replacement; an image's weight is
    its lesion's draw count, so the images of a lesion always enter a resample together.
    """
    codes, uniques = pd.factorize(np.asarray(lesion_ids))
    n = len(uniques)
    draws = rng.integers(0, n, size=(n_resamples, n))
    offsets = np.arange(n_resamples)[:, None] * n
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n)
    return counts.reshape(n_resamples, n)[:, codes]


def _tie_groups(p: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-p if descending else p, kind="stable")
    ps = p[order]
    return order, np.r_[0, np.flatnonzero(ps[1:] != ps[:-1]) + 1]


def _class_weights(y, p, weights, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per tie group of scores (sorted), the resampled weight of positives and of negatives."""
    y = np.asarray(y).astype(bool)
    order, starts = _tie_groups(np.asarray(p, dtype=float), descending)
    w = np.asarray(weights, dtype=float)[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)
    neg = np.add.reduceat(w * ~y[order], starts, axis=1)
    return pos, neg


def roc_auc(y, p, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of every resample (Mann-Whitney with ties counted half; NaN if one class)."""
    pos, neg = _class_weights(y, p, weights, descending=False)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def pr_auc(y, p, weights: np.ndarray) -> np.ndarray:
    """Average precision of every resample, as :func:`metrics.pr_auc` defines it."""
    pos, neg = _class_weights(y, p, weights, descending=True)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        return (pos * precision).sum(1) / pos.sum(1)


def ece(y, p, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of every resample, with the bins of :func:`metrics.ece`."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    onehot = np.eye(n_bins)[np.minimum((p * n_bins).astype(int), n_bins - 1)]
    w = np.asarray(weights, dtype=float)
    gap = np.abs((w * y) @ onehot - (w * p) @ onehot).sum(1)
    return gap / w.sum(1)


def rates(y, pred, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of fixed decisions ``pred`` in every resample."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    w = np.asarray(weights, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (w @ (pred & y)) / (w @ y)
        spec = (w @ (~pred & ~y)) / (w @ ~y)
    return sens, spec


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval, ignoring resamples where the figure was undefined."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    tail = 50 * (1 - level)
    return float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))
