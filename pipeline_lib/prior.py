"""A handcrafted-feature prior for distillation: the teacher stacked with gradient boosting.

Gradient boosting on the handcrafted lesion features of :mod:`pipeline_lib.features` (colour,
Otsu-mask shape and asymmetry, texture; image only, no metadata) scores about as well on val as
the from-scratch ResNet teacher, and the two err differently: a logistic regression on both
logits beats either (README, "Accuracy without pretraining"). Both read nothing but the image,
so their stack is a target the image-only student can learn. With ``kd.feature_prior > 0`` the
distillation target becomes

    z = teacher_weight * z_teacher(augmented view) + prior_weight * z_prior(image) + bias

where ``z_teacher`` is the calibrated teacher's melanoma logit on the student's augmented batch
and ``z_prior`` the boosting logit of the un-augmented image. ``z_prior`` of a train image is
out of fold (lesion-grouped cross-fitting on train), so the prior never scores an image it was
fitted on; the three weights are a logistic regression on val, fitted like the calibration
temperature; test is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from pipeline_lib import baselines, features, inference, metrics, runs, training


@dataclass(frozen=True)
class FeaturePrior:
    """Out-of-fold prior logits of the train images and the stacker's weights."""

    train_logit: pd.Series  # indexed by image_id
    weights: tuple[float, float, float]  # teacher_weight, prior_weight, bias
    val_roc_auc: dict[str, float]  # the prior, the teacher and their stack on val

    def summary(self) -> dict[str, float]:
        """The figures distill's metrics report about the prior."""
        names = ("prior_teacher_weight", "prior_weight", "prior_bias")
        aucs = {"prior": "prior", "teacher": "prior_teacher", "stacked": "prior_stacked"}
        return {k: round(v, 4) for k, v in zip(names, self.weights, strict=True)} | {
            f"{aucs[k]}_val_roc_auc": round(v, 4) for k, v in self.val_roc_auc.items()
        }


def boosting(seed: int) -> ClassifierMixin:
    """The baselines stage's gradient boosting at its first grid point (learning rate 0.03, 15
    leaves: the best of the grid on image features alone, val 0.888 on the real data)."""
    spec = baselines.MODELS["hist_gradient_boosting"]
    return spec.build({"learning_rate": 0.03, "max_leaf_nodes": 15}, seed, [])


def logit(p: np.ndarray) -> np.ndarray:
    """``log p / (1 - p)`` of a classifier's probabilities, clipped to +-13.8 at 0 and 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit(
    train_features: np.ndarray,
    train_table: pd.DataFrame,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    teacher_val_logit: np.ndarray,
    seed: int,
    folds: int = 5,
) -> FeaturePrior:
    """Cross-fit the prior on train, fit it on all of train for val, stack it with the teacher.

    Args:
        train_table: train rows with ``image_id``, ``lesion_id`` and ``label``, in the order of
            ``train_features``.
        teacher_val_logit: the calibrated teacher's melanoma logit of each val image.
    """
    y = train_table["label"].to_numpy()
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    oof = cross_val_predict(
        boosting(seed), train_features, y, groups=train_table["lesion_id"], cv=cv,
        method="predict_proba",
    )[:, 1]  # fmt: skip
    val_prior = logit(boosting(seed).fit(train_features, y).predict_proba(val_features)[:, 1])
    both = np.column_stack([teacher_val_logit, val_prior])
    stacker = LogisticRegression(C=1.0, max_iter=1000).fit(both, val_labels)
    (a, b), c = stacker.coef_[0], stacker.intercept_[0]
    return FeaturePrior(
        pd.Series(logit(oof), index=train_table["image_id"].to_numpy()),
        (float(a), float(b), float(c)),
        {
            "prior": metrics.roc_auc(val_labels, val_prior),
            "teacher": metrics.roc_auc(val_labels, teacher_val_logit),
            "stacked": metrics.roc_auc(val_labels, both @ np.array([a, b]) + c),
        },
    )


def for_distillation(
    prepared: str | Path,
    split_dir: str | Path,
    teacher: torch.nn.Module,
    teacher_meta: dict,
    teacher_temperature: float,
    feature_size: int,
    seed: int,
) -> FeaturePrior:
    """The distill stage's prior: features of the train and val images at ``feature_size``, and
    the teacher's calibrated val logits (scored here, as distillation will see them)."""
    train = runs.load_split(prepared, split_dir, "train")
    val = runs.load_split(prepared, split_dir, "val")
    z = inference.predict_logits(teacher, val.images, teacher_meta["image_size"])
    teacher_logit = training.binary_logit(
        torch.from_numpy(z).float() / teacher_temperature, teacher_meta["task"]
    ).numpy()
    return fit(
        features.image_features(train.images, feature_size),
        train.table,
        features.image_features(val.images, feature_size),
        val.table["label"].to_numpy(),
        teacher_logit,
        seed,
    )
