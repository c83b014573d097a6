"""Batched scoring of cached uint8 images with any model of the factory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float ``(N, 3, H, W)`` at ``image_size`` (bilinear, antialiased), channels_last."""
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


def to_input(batch: torch.Tensor | np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float ``[0, 1]`` at ``image_size``, channels_last."""
    return resize(torch.as_tensor(np.asarray(batch)).float().div_(255.0), image_size)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    image_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits of ``model`` (in eval mode, on ``device``) for every image; ``(N,)`` or ``(N, C)``."""
    model.eval()
    outs = [
        model(to_input(images[i : i + batch_size], image_size).to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outs).numpy().astype(np.float32)
