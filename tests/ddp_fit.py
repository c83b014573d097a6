"""One ``training.fit`` on fixed synthetic arrays, run alone or under ``torchrun`` by
tests/test_distributed.py. Rank 0 saves the trained weights and the per-epoch history; every
rank saves its val logits to ``<out>.rank<r>.npy``. ``bn`` as second argument trains the
BatchNorm model ``dsnet_tiny`` instead of a BatchNorm-free one."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_lib import config, distributed, models, training

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, SIZE = 120, 60, 32


class NoNormCNN(nn.Module):
    """BatchNorm-free, so per-rank batch statistics cannot make CPU DDP differ from one process."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images; melanoma ones (30%) darker, so there is a signal to learn."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_VAL
    labels = (rng.random(n) < 0.3).astype(np.int64)
    images = rng.integers(0, 256, (n, 3, 40, 40)).astype(np.uint8)
    images[labels == 1] //= 2
    dx = np.where(labels == 1, 4, 5)
    return images, labels, dx


def main(out: str, arch: str) -> None:
    images, labels, dx = data()
    params = dataclasses.replace(
        config.load("distill", REPO / "params.yaml"),
        image_size=SIZE, epochs=2, batch_size=25, lr=3.0e-3, warmup_epochs=0.5, drop_rate=0.0,
        bf16=False, device="cpu", oversample_melanoma=1.0, patience=5,
    )  # fmt: skip
    aug = config.load("augment", REPO / "params.yaml")
    torch.manual_seed(0)
    targets = training.Batch(torch.tensor(labels[:N_TRAIN]), torch.tensor(dx[:N_TRAIN]))
    result = training.fit(
        models.create("dsnet_tiny", drop_rate=0.0) if arch == "bn" else NoNormCNN(),
        training.Supervised("binary", "bce"), images[:N_TRAIN], targets,
        images[N_TRAIN:], labels[N_TRAIN:], params, aug, progress=False,
    )  # fmt: skip
    ctx = distributed.setup("cpu")
    np.save(f"{out}.rank{ctx.rank}.npy", result.val_logits)
    if result.rank == 0:
        torch.save(
            {
                "state": result.model.state_dict(),
                "history": result.history,
                "world": ctx.world_size,
            },
            out,
        )
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "nonorm")
