"""What the train_teacher and distill stages share: data in, checkpoint, logits and metrics out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline_lib import (
    artifacts,
    data,
    distributed,
    inference,
    metrics,
    models,
    tracking,
    training,
)
from pipeline_lib.config import AugmentParams, TrainParams


def create_model(params: TrainParams) -> models.Classifier:
    """The untrained model a training section of ``params.yaml`` describes."""
    return models.create(
        params.arch, params.task, params.global_pool, params.drop_rate, params.pretrained,
        color_constancy=params.color_constancy,
    )  # fmt: skip


def load_split(prepared: str | Path, split_dir: str | Path, name: str) -> data.Prepared:
    """One split (``train``, ``val`` or ``test``) of the prepared cache, in memory."""
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise data.DataError(f"split file {path} missing: run `dvc repro split` first")
    return data.select(data.load_prepared(prepared), pd.read_csv(path))


def subsample(part: data.Prepared, limit: int, seed: int) -> data.Prepared:
    """At most ``limit`` rows (0 = all), drawn with a seeded generator."""
    if limit <= 0 or limit >= len(part.table):
        return part
    rows = np.sort(np.random.default_rng(seed).choice(len(part.table), limit, replace=False))
    return data.Prepared(part.images[rows], part.table.iloc[rows])


def targets(table: pd.DataFrame, prior: pd.Series | None = None) -> training.Batch:
    """Melanoma labels and dx indices of a split table, and the rows' prior logits if given
    (``prior`` indexed by ``image_id``)."""
    rows = None
    if prior is not None:
        missing = sorted(set(table["image_id"]) - set(prior.index))
        if missing:
            raise KeyError(f"no prior logit for {len(missing)} images, e.g. {missing[0]}")
        rows = torch.tensor(prior.loc[table["image_id"]].to_numpy(), dtype=torch.float32)
    return training.Batch(
        torch.tensor(table["label"].to_numpy()),
        torch.tensor(table["dx_index"].to_numpy()),
        prior=rows,
    )


def score_val(
    model: nn.Module, val: data.Prepared, image_size: int, task: str, ece_bins: int
) -> tuple[np.ndarray, dict[str, float]]:
    """``model``'s val logits and its headline val metrics (keys prefixed ``val_``)."""
    z = inference.predict_logits(model, val.images, image_size)
    probs = models.melanoma_probability(z, task)
    return z, metrics.summary(val.table["label"].to_numpy(), probs, ece_bins, prefix="val_")


def save_model(out_dir: str | Path, model: nn.Module, meta: dict, val_logits: np.ndarray) -> None:
    """``out_dir/model.pt`` and ``out_dir/val_logits.npy``, the folder a teacher stage writes."""
    out_dir = Path(out_dir)
    models.save_checkpoint(out_dir / "model.pt", model, meta)
    with artifacts.atomic_path(out_dir / "val_logits.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, val_logits)


def member_summary(val_roc_auc: list[float], best_epoch: list[int]) -> dict:
    """The metrics an ensemble adds: its size and each member's val ROC-AUC and best epoch."""
    return {
        "members": len(val_roc_auc),
        "member_val_roc_auc": [round(v, 4) for v in val_roc_auc],
        "member_best_epoch": list(best_epoch),
    }


def _fit_member(
    model: nn.Module,
    objective: training.Objective,
    params: TrainParams,
    aug: AugmentParams,
    ece_bins: int,
    train: data.Prepared,
    val: data.Prepared,
    live_dir: Path,
    train_prior: pd.Series | None,
) -> training.FitResult:
    args = (model, objective, train.images, targets(train.table, train_prior), val.images,
            val.table["label"].to_numpy(), params, aug, ece_bins)  # fmt: skip
    if not distributed.setup(params.device).is_main:  # under torchrun, rank 0 writes everything
        return training.fit(*args, progress=False)
    with tracking.open_live(str(live_dir)) as live:
        return training.fit(*args, tracking.epoch_logger(live))


def train_and_save(
    members: list[models.Classifier],
    objective: training.Objective,
    params: TrainParams,
    aug: AugmentParams,
    ece_bins: int,
    prepared: str | Path,
    split_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    live_dir: str | Path,
    extra_metrics: dict | None = None,
    train_prior: pd.Series | None = None,
) -> training.FitResult:
    """Train on train, select on val, write ``model.pt``, ``val_logits.npy`` and the metrics.

    ``train_prior`` (prior logits by ``image_id``) rides along with the train targets, for a
    distillation objective with a feature prior.

    Member ``k`` of ``members`` trains with seed ``params.seed + k`` (its dvclive curves under
    ``live_dir/member<k>`` for ``k > 0``); several members are saved as one
    :class:`~pipeline_lib.models.Ensemble` checkpoint, scored on val as the ensemble.
    """
    train = subsample(
        load_split(prepared, split_dir, "train"), params.max_train_images, params.seed
    )
    val = load_split(prepared, split_dir, "val")
    fits = [
        _fit_member(
            model,
            objective,
            dataclasses.replace(params, seed=params.seed + k),
            aug,
            ece_bins,
            train,
            val,
            Path(live_dir) / (f"member{k}" if k else ""),
            train_prior,
        )
        for k, model in enumerate(members)
    ]
    result = fits[0]
    if result.rank != 0:
        return result
    if len(fits) > 1:
        ensemble = models.Ensemble([f.model for f in fits]).eval()
        z, best = score_val(ensemble, val, params.image_size, params.task, ece_bins)
        result = dataclasses.replace(
            result,
            model=ensemble,
            val_logits=z,
            best_metrics=best,
            seconds=sum(f.seconds for f in fits),
        )
    meta = {
        "arch": params.arch,
        "task": params.task,
        "global_pool": params.global_pool,
        "drop_rate": params.drop_rate,
        "image_size": params.image_size,
        "color_constancy": params.color_constancy,
        "best_epoch": result.best_epoch,
    }
    save_model(out_dir, result.model, meta, result.val_logits)
    best = result.best_metrics
    summary = {
        "arch": params.arch,
        "task": params.task,
        "params": models.count_parameters(result.model),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 1),
        "train_images_per_second": round(result.images_per_second, 1),
        **{k: v for k, v in best.items() if k.startswith("val_")},
        **(extra_metrics or {}),
    }
    if len(fits) > 1:
        summary |= member_summary(
            [f.best_metrics["val_roc_auc"] for f in fits], [f.best_epoch for f in fits]
        )
    artifacts.write_json(metrics_path, summary)
    return result
