"""What the train_teacher and distill stages share: data in, checkpoint, logits and metrics out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline_lib import artifacts, data, models, tracking, training
from pipeline_lib.config import AugmentParams, TrainParams


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


def targets(table: pd.DataFrame) -> training.Batch:
    """Melanoma labels and dx indices of a split table."""
    return training.Batch(
        torch.tensor(table["label"].to_numpy()), torch.tensor(table["dx_index"].to_numpy())
    )


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
    """Train on train, select on val, write ``model.pt``, ``val_logits.npy`` and the metrics."""
    train = subsample(
        load_split(prepared, split_dir, "train"), params.max_train_images, params.seed
    )
    val = load_split(prepared, split_dir, "val")
    with tracking.open_live(str(live_dir)) as live:
        result = training.fit(
            model, objective, train.images, targets(train.table), val.images,
            val.table["label"].to_numpy(), params, aug, ece_bins, tracking.epoch_logger(live),
        )  # fmt: skip
    out_dir = Path(out_dir)
    meta = {
        "arch": params.arch,
        "task": params.task,
        "global_pool": params.global_pool,
        "drop_rate": params.drop_rate,
        "image_size": params.image_size,
        "best_epoch": result.best_epoch,
    }
    models.save_checkpoint(out_dir / "model.pt", result.model, meta)
    with artifacts.atomic_path(out_dir / "val_logits.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, result.val_logits)
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
    artifacts.write_json(metrics_path, summary)
    return result
