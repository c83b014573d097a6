"""Grad-CAM: against a hand computation, and on a model whose evidence lies in a known region."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline_lib import gradcam, inference, models

SIZE = 32


def _dark_spot_model() -> models.Classifier:
    """One 3x3 convolution that fires on dark pixels, ReLU, average pool, a positive head.

    The melanoma logit rises with the dark area, so the evidence is where the image is dark.
    """
    conv = nn.Conv2d(3, 1, 3, padding=1)
    head = nn.Linear(1, 1)
    with torch.no_grad():
        conv.weight.fill_(-1.0 / 27)  # inputs are normalised: dark pixels are strongly negative
        conv.bias.fill_(-0.5)  # skin-toned pixels stay below zero
        head.weight.fill_(1.0)
        head.bias.zero_()
    backbone = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return models.Classifier(backbone, "binary").eval()


def _skin_with_dark_square(top: int, left: int, side: int = 8) -> np.ndarray:
    image = np.empty((3, SIZE, SIZE), dtype=np.uint8)
    image[:] = np.array([200, 160, 140], dtype=np.uint8)[:, None, None]
    image[:, top : top + side, left : left + side] = 20
    return image


def test_heat_map_peaks_on_the_evidence():
    model = _dark_spot_model()
    image = _skin_with_dark_square(top=20, left=4)
    heat = gradcam.heatmap(model, image, SIZE)
    assert heat.shape == (SIZE, SIZE) and heat.max() == pytest.approx(1.0, abs=1e-4)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 20 <= row < 28 and 4 <= col < 12
    inside = np.zeros_like(heat, dtype=bool)
    inside[20:28, 4:12] = True
    assert heat[inside].mean() > 5 * heat[~inside].mean()


def test_no_evidence_gives_an_empty_map():
    image = np.full((3, SIZE, SIZE), 200, dtype=np.uint8)
    assert np.all(gradcam.heatmap(_dark_spot_model(), image, SIZE) == 0)


def _grad_cam_by_hand(
    model: models.Classifier, image: np.ndarray, layer: nn.Module
) -> torch.Tensor:
    saved = {}
    hook = layer.register_forward_hook(lambda _m, _i, out: saved.update(a=out))
    logit = model(inference.to_input(image[None], SIZE))[0]
    hook.remove()
    (grad,) = torch.autograd.grad(logit, saved["a"])
    weights = grad.mean(dim=(2, 3), keepdim=True)  # one weight per channel
    cam = F.relu((weights * saved["a"]).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]


def test_matches_grad_cam_computed_by_hand():
    torch.manual_seed(0)
    model = models.create("dsnet_tiny").eval()
    image = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    layer = model.backbone.features
    cam = _grad_cam_by_hand(model, image, layer)
    if cam.max() == 0:  # this random head sees no positive evidence: turn it round
        with torch.no_grad():
            model.backbone.head[-1].weight.neg_()
        cam = _grad_cam_by_hand(model, image, layer)
    assert cam.max() > 0
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    np.testing.assert_allclose(gradcam.heatmap(model, image, SIZE), cam.detach().numpy(), atol=1e-4)


def test_target_layer_is_the_last_spatial_stage():
    tiny = models.create("dsnet_tiny")
    assert gradcam.target_layer(tiny, SIZE) is tiny.backbone.features
    mobile = models.create("mobilenetv3_small_100")  # the real student: its blocks, before pooling
    assert gradcam.target_layer(mobile, 128) is mobile.backbone.blocks


def test_overlay_has_the_photo_size_and_colours_the_evidence():
    photo = Image.new("RGB", (90, 60), (200, 160, 140))
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    heat[:, SIZE // 2 :] = 1.0  # evidence on the right half
    rgb = gradcam.overlay(photo, heat)
    assert rgb.shape == (60, 90, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :30].astype(int), rgb[:, 60:].astype(int)
    # Jet: cold (blue) where there is no evidence, hot (red) where there is.
    assert left[..., 2].mean() > left[..., 0].mean()
    assert right[..., 0].mean() > right[..., 2].mean()
