"""The deployed student's operating point: a temperature and a threshold, both chosen on val.

``predict`` and the web page turn a logit into a calibrated melanoma probability with the
temperature and into a decision with the threshold. Both come from the validation split only,
the same way the evaluate stage chooses them (:func:`calibration.fit_temperature`, then the
highest threshold reaching the target sensitivity), so the figures a user sees beside a
decision are val figures and the test split stays untouched.

Each exported file gets its own temperature and threshold: int8 rounding moves the logits
(the int8 ``.pte`` is less calibrated on val than the float student), so the float student's
would not fit it.

Not to be confused with :class:`pipeline_lib.metrics.OperatingPoint`, the confusion-matrix
figures of any scores at any threshold.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline_lib import artifacts, calibration, data


class OperatingPointError(ValueError):
    """The operating-point file is missing, or was chosen for another model file."""


@dataclass(frozen=True)
class ModelOperatingPoint:
    """How one model file's logits become a calibrated probability and a decision.

    ``threshold`` applies to the calibrated probability (``p >= threshold`` is suspicious);
    ``threshold_raw`` is the same cut on the uncalibrated probability, the figure the evaluate
    stage reports. The ``val_*`` figures are measured at that cut on the validation split.
    """

    file: str
    md5: str
    arch: str
    task: str
    image_size: int
    cache_size: int  # the prepare stage's square decode size; images are resized from it
    temperature: float
    threshold: float
    threshold_raw: float
    target_sensitivity: float
    val_sensitivity: float
    val_specificity: float
    val_roc_auc: float
    val_ece: float
    val_ece_raw: float
    n_val: int
    n_val_melanoma: int
    # Of the uncalibrated probabilities, as the evaluate stage reports it: a dx model's
    # temperature reorders p(mel), so it can differ from val_roc_auc. None in older files.
    val_roc_auc_raw: float | None = None


def md5(path: str | Path) -> str:
    """Hex MD5 of a file (the digest DVC uses), to tie an operating point to its model file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def choose(
    logits,
    labels,
    dx_index,
    file: str | Path,
    meta: dict,
    cache_size: int,
    target_sensitivity: float,
    ece_bins: int,
    temperature: float | None = None,
) -> ModelOperatingPoint:
    """Fit the temperature and choose the threshold from one model's val logits.

    Args:
        logits: the model's val logits, ``(N,)`` (binary) or ``(N, 7)`` (dx).
        labels: val melanoma labels (1 = melanoma).
        dx_index: val dx indices (the calibration targets of a dx model).
        file: the model file these logits came from.
        meta: the student checkpoint's metadata (``arch``, ``task``, ``image_size``).
        temperature: ``None`` fits it; 1.0 for a file already calibrated on val (an int8 file
            with Platt scaling built in), whose output is then shown as it is.
    """
    # Imported here, not above: scikit-learn takes a second to import, and `melanoma-kd
    # predict` only reads the points chosen here.
    from pipeline_lib import metrics

    task = meta["task"]
    labels = np.asarray(labels).astype(int)
    targets = labels if task == "binary" else np.asarray(dx_index)
    if temperature is None:
        temperature = calibration.fit_temperature(logits, targets, task)
    raw = data.melanoma_probability(logits, task)
    prob = data.melanoma_probability(logits, task, temperature)
    threshold = metrics.threshold_for_sensitivity(labels, prob, target_sensitivity)
    op = metrics.operating_point(labels, prob, threshold)
    return ModelOperatingPoint(
        file=str(file),
        md5=md5(file),
        arch=meta["arch"],
        task=task,
        image_size=int(meta["image_size"]),
        cache_size=int(cache_size),
        temperature=temperature,
        threshold=threshold,
        threshold_raw=metrics.threshold_for_sensitivity(labels, raw, target_sensitivity),
        target_sensitivity=target_sensitivity,
        val_sensitivity=op.sensitivity,
        val_specificity=op.specificity,
        val_roc_auc=metrics.roc_auc(labels, prob),
        val_ece=metrics.ece(labels, prob, ece_bins),
        val_ece_raw=metrics.ece(labels, raw, ece_bins),
        n_val=len(labels),
        n_val_melanoma=int(labels.sum()),
        val_roc_auc_raw=metrics.roc_auc(labels, raw),
    )


def write(path: str | Path, points: dict[str, ModelOperatingPoint]) -> None:
    """Write the operating point of every model (``float``, ``int8``, ...) as one JSON."""
    artifacts.write_json(path, {name: asdict(op) for name, op in points.items()})


def read(path: str | Path, model: str) -> ModelOperatingPoint:
    """The operating point of ``model`` from a file written by :func:`write`.

    Raises:
        OperatingPointError: naming the file when it is missing or lacks ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise OperatingPointError(
            f"operating point file {path} not found: run `make repro` (or `dvc repro model_card`) "
            "to choose the threshold on the validation split"
        )
    points = artifacts.read_json(path)
    if model not in points:
        raise OperatingPointError(f"{path} has no operating point for model {model!r}")
    return ModelOperatingPoint(**points[model])


def check_file(op: ModelOperatingPoint, path: str | Path) -> None:
    """Refuse a model file other than the one ``op`` was chosen for (a threshold is per model).

    Raises:
        OperatingPointError: naming both files and the expected architecture.
    """
    if md5(path) != op.md5:
        raise OperatingPointError(
            f"{path} is not the model the operating point was chosen for (expected the "
            f"{op.arch} {op.task} student of {op.file}, with MD5 {op.md5}): rerun "
            "`dvc repro model_card` after changing a model"
        )
