"""What the train_teacher and distill stages share: data in, checkpoint, logits and metrics out."""

from __future__ import annotations

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
    weights,
)
from pipeline_lib.config import AugmentParams, TrainParams


def create_model(params: TrainParams, weights_dir: str | Path | None = None) -> models.Classifier:
    """The untrained model a training section of ``params.yaml`` describes.

    ``pretrained: imagenet`` takes ``weights_dir/<arch>.pth`` when the ``weights`` stage wrote
    one, else timm's hub weights (:func:`pipeline_lib.weights.resolve`).
    """
    pretrained = weights.resolve(params.arch, params.pretrained, weights_dir)
    return models.create(
        params.arch, params.task, params.global_pool, params.drop_rate, pretrained,
        color_constancy=params.color_constancy,
    )  # fmt: skip


def checkpoint_meta(params: TrainParams, model: models.Classifier, best_epoch: int) -> dict:
    """What a checkpoint records beside the weights: enough to rebuild, and where it began."""
    return {
        "arch": params.arch,
        "task": params.task,
        "global_pool": params.global_pool,
        "drop_rate": params.drop_rate,
        "image_size": params.image_size,
        "color_constancy": params.color_constancy,
        "pretrained": params.pretrained or "false",
        "input_mean": model.mean.flatten().tolist(),
        "input_std": model.std.flatten().tolist(),
        "best_epoch": best_epoch,
    }


load_split = data.load_split  # kept in data: scoring stages load splits without the training loop


def subsample(part: data.Prepared, limit: int, seed: int) -> data.Prepared:
    """At most ``limit`` rows (0 = all), drawn with a seeded generator."""
    if limit <= 0 or limit >= len(part.table):
        return part
    rows = np.sort(np.random.default_rng(seed).choice(len(part.table), limit, replace=False))
    return data.Prepared(part.images[rows], part.table.iloc[rows])


def targets(table: pd.DataFrame) -> training.Batch:
    """Melanoma labels and dx indices of a split table."""
    return training.Batch(
        torch.tensor(table["label"].to_numpy()), torch.tensor(table["dx_index"].to_numpy())
    )


def score_val(
    model: nn.Module, val: data.Prepared, image_size: int, task: str, ece_bins: int
) -> tuple[np.ndarray, dict[str, float]]:
    """``model``'s val logits and its headline val metrics (keys prefixed ``val_``)."""
    z = inference.predict_logits(model, val.images, image_size)
    probs = data.melanoma_probability(z, task)
    return z, metrics.summary(val.table["label"].to_numpy(), probs, ece_bins, prefix="val_")


def save_model(out_dir: str | Path, model: nn.Module, meta: dict, val_logits: np.ndarray) -> None:
    """``out_dir/model.pt`` and ``out_dir/val_logits.npy``, the folder a teacher stage writes."""
    out_dir = Path(out_dir)
    models.save_checkpoint(out_dir / "model.pt", model, meta)
    with artifacts.atomic_path(out_dir / "val_logits.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, val_logits)


def _fit(
    model: nn.Module,
    objective: training.Objective,
    params: TrainParams,
    aug: AugmentParams,
    ece_bins: int,
    train: data.Prepared,
    val: data.Prepared,
    live_dir: Path,
) -> training.FitResult:
    args = (model, objective, train.images, targets(train.table), val.images,
            val.table["label"].to_numpy(), params, aug, ece_bins)  # fmt: skip
    if not distributed.setup(params.device).is_main:  # under torchrun, rank 0 writes everything
        return training.fit(*args, progress=False)
    with tracking.open_live(str(live_dir)) as live:
        return training.fit(*args, tracking.epoch_logger(live))


def train_and_save(
    model: models.Classifier,
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
) -> training.FitResult:
    """Train on train, select on val, write ``model.pt``, ``val_logits.npy`` and the metrics.

    ``live_dir`` gets dvclive's per-epoch TSVs and ``curves.png`` (train loss, val ROC-AUC).
    """
    train = subsample(
        load_split(prepared, split_dir, "train"), params.max_train_images, params.seed
    )
    val = load_split(prepared, split_dir, "val")
    result = _fit(model, objective, params, aug, ece_bins, train, val, Path(live_dir))
    if result.rank != 0:
        return result
    save_model(out_dir, result.model, checkpoint_meta(params, model, result.best_epoch),
               result.val_logits)  # fmt: skip
    tracking.plot_curves(result.history, result.best_epoch, Path(live_dir) / "curves.png")
    best = result.best_metrics
    summary = {
        "arch": params.arch,
        "task": params.task,
        "pretrained": params.pretrained or "false",
        "params": models.count_parameters(result.model),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.seconds, 1),
        "train_images_per_second": round(result.images_per_second, 1),
        **{k: v for k, v in best.items() if k.startswith("val_")},
        **(extra_metrics or {}),
    }
    artifacts.write_json(metrics_path, summary)
    return result
