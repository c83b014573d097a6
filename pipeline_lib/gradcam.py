"""Grad-CAM (Selvaraju et al., 2017) heat maps of the float student's melanoma score.

The map is computed by the ``grad-cam`` package (``pytorch_grad_cam``): the activations of the
last spatial feature stage, weighted by the spatially averaged gradient of the melanoma logit,
summed over channels, clipped at zero and scaled to ``[0, 1]``. It shows where the evidence
that *raised* the melanoma score lies; an image with none gives an all-zero map.

This is the only module that imports ``pytorch_grad_cam`` and OpenCV.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from pipeline_lib import artifacts, data, inference, models


def target_layer(model: models.Classifier, image_size: int) -> nn.Module:
    """The last module, in the order the forward pass finishes them, whose output is spatial.

    That is the last feature stage before global pooling: ``blocks`` for timm's MobileNetV3
    (its ``conv_head`` runs after pooling, on a 1x1 map), ``layer4`` for a ResNet,
    ``features`` for ``dsnet_tiny``.
    """
    finished: list[nn.Module] = []

    def record(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
            finished.append(module)

    hooks = [m.register_forward_hook(record) for m in model.backbone.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    if not finished:
        raise ValueError(f"{type(model.backbone).__name__} has no spatial feature map for Grad-CAM")
    return finished[-1]


class _MelanomaLogit:
    """Grad-CAM target: the melanoma logit of one image's output (binary or dx)."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.task == "binary" else output[data.MELANOMA_INDEX]


def heatmap(
    model: models.Classifier, image: np.ndarray, image_size: int, layer: nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM of the melanoma logit for one uint8 ``(3, H, W)`` image.

    Returns:
        float32 ``(image_size, image_size)`` in ``[0, 1]``, in the model's input coordinates
        (the whole photo squeezed to a square, as the model sees it).
    """
    layer = layer if layer is not None else target_layer(model, image_size)
    x = inference.to_input(image[None], image_size)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[_MelanomaLogit(model.task)])[0]


def overlay(photo: Image.Image, heat: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The heat map stretched back onto the photo (any aspect ratio), as RGB uint8."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    mask = cv2.resize(heat.astype(np.float32), (rgb.shape[1], rgb.shape[0]), cv2.INTER_LINEAR)
    return show_cam_on_image(rgb, np.clip(mask, 0, 1), use_rgb=True, image_weight=image_weight)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as a PNG file, atomically."""
    with artifacts.atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(rgb))
