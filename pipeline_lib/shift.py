"""Seeded perturbations of uint8 images, to measure robustness to acquisition shift.

Each perturbation mimics something that differs between dermatoscopes, phones and clinics:
focus (blur), exposure (brightness), white balance (per-channel gain), compression (JPEG),
orientation (rotation) and resolution (downscale then upscale). Every function maps a
``(N, 3, H, W)`` uint8 array to another of the same shape and dtype; the random parts draw
from the generator they are given, so a seed reproduces the exact images.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from pipeline_lib import metrics

Perturbation = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images)).float()


def _uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp_(0, 255).to(torch.uint8).numpy()


def blur(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (an out-of-focus lens)."""
    # scipy's separable filter is several times faster on CPU than a grouped conv2d in torch.
    x = np.asarray(images, dtype=np.float32)
    x = ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def brightness(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Scale each image's intensity by ``1 +- amount``, darker or brighter at random."""
    sign = rng.choice([-1.0, 1.0], size=len(images))
    gain = torch.as_tensor(1 + amount * sign, dtype=torch.float32).view(-1, 1, 1, 1)
    return _uint8(_float(images) * gain)


def white_balance(images: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply each colour channel by its own gain in ``[1 - amount, 1 + amount]``."""
    gain = rng.uniform(1 - amount, 1 + amount, size=(len(images), 3))
    return _uint8(_float(images) * torch.as_tensor(gain, dtype=torch.float32)[:, :, None, None])


def jpeg(images: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Re-encode every image as JPEG at ``quality`` (in memory, with PIL)."""
    out = np.empty_like(images)
    for i, img in enumerate(np.asarray(images)):
        buffer = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("RGB")).transpose(2, 0, 1)
    return out


def rotation(images: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate each image by ``+-degrees``, sign at random, borders reflected.

    Reflection is what the training augmentation uses, so the figure measures the rotation
    rather than black corners the model never saw.
    """
    angle = np.deg2rad(degrees) * rng.choice([-1.0, 1.0], size=len(images))
    cos, sin = torch.as_tensor(np.cos(angle)), torch.as_tensor(np.sin(angle))
    zero = torch.zeros(len(images), dtype=torch.float64)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    x = _float(images)
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    return _uint8(
        F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    )


def downscale(images: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink by ``factor`` (antialiased) and enlarge back: detail lost to a low-resolution camera."""
    x = _float(images)
    size = x.shape[-2:]
    small = [max(1, round(s / factor)) for s in size]
    x = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
    return _uint8(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


PERTURBATIONS: dict[str, Perturbation] = {
    "blur": blur,
    "brightness": brightness,
    "white_balance": white_balance,
    "jpeg": jpeg,
    "rotation": rotation,
    "downscale": downscale,
}
# Two severities each, mild then strong; brightness and white balance go past the training
# colour jitter (0.15), JPEG quality falls to what messaging apps use.
SEVERITIES: dict[str, tuple[float, float]] = {
    "blur": (1.0, 2.0),
    "brightness": (0.2, 0.4),
    "white_balance": (0.1, 0.25),
    "jpeg": (30, 10),
    "rotation": (15.0, 45.0),
    "downscale": (2.0, 4.0),
}


def perturb(images: np.ndarray, name: str, severity: float, seed: int) -> np.ndarray:
    """Apply perturbation ``name`` at ``severity`` with a generator seeded by ``seed``."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name](images, severity, np.random.default_rng(seed))


def robustness(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    thresholds: dict[str, float],
    images: np.ndarray,
    labels,
    seed: int,
    severities: dict[str, tuple[float, ...]] = SEVERITIES,
) -> pd.DataFrame:
    """ROC-AUC, sensitivity and specificity (at val-chosen thresholds) under each perturbation.

    Each perturbed copy is made once and scored by every model. Returns one row per model,
    perturbation and severity (``level`` 1, 2, ...; ``clean`` is level 0);
    ``roc_auc_change`` is relative to the model's clean ROC-AUC.
    """
    rows = []

    def score(name: str, level: int, severity: float, batch: np.ndarray) -> None:
        for model, predict in predictors.items():
            p = predict(batch)
            op = metrics.operating_point(labels, p, thresholds[model])
            rows.append(
                {"model": model, "perturbation": name, "level": level, "severity": severity,
                 "roc_auc": metrics.roc_auc(labels, p), "sensitivity": op.sensitivity,
                 "specificity": op.specificity}
            )  # fmt: skip

    score("clean", 0, 0.0, images)
    for name, levels in severities.items():
        for level, severity in enumerate(levels, start=1):
            score(name, level, float(severity), perturb(images, name, severity, seed))
    table = pd.DataFrame(rows)
    clean = table[table["level"] == 0].set_index("model")["roc_auc"]
    table["roc_auc_change"] = table["roc_auc"] - table["model"].map(clean)
    return table


def as_metrics(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """A :func:`robustness` table as ``{model: {"clean" | "blur_1" | ...: figures}}``."""
    fields = ("roc_auc", "roc_auc_change", "sensitivity", "specificity")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in table.iterrows():
        key = f"{row['perturbation']}_{row['level']}" if row["level"] else "clean"
        out.setdefault(row["model"], {})[key] = {f: float(row[f]) for f in fields}
    return out
