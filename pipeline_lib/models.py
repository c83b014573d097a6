"""Model factory and self-describing checkpoints.

Model names go straight to :func:`timm.create_model`; the tiny DSNet-like student is registered
with timm too, so one factory builds every teacher and student. Every model takes a float image
batch in ``[0, 1]`` (N, 3, H, W) and normalises it itself, so exported programs (ONNX,
ExecuTorch) need no separate preprocessing beyond resizing and dividing by 255.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import nn

from pipeline_lib import artifacts
from pipeline_lib.data import DX_CODES

NUM_OUTPUTS = {"binary": 1, "dx": len(DX_CODES)}
CHECKPOINT_KEYS = ("arch", "task", "global_pool", "drop_rate", "image_size", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint or weights file is unreadable or belongs to another architecture."""


class TinyCNN(nn.Module):
    """A DSNet-like student of about 0.26M parameters: three conv blocks with max pooling.

    The first convolution has stride 2: without early downsampling a model this small costs
    more compute than ResNet-18 at 128 px (measured on a 2-core CPU: docs/profiling.md).
    """

    def __init__(
        self, num_classes: int = 1, drop_rate: float = 0.25, global_pool: str = "avg", **_: Any
    ):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, 32, 2), block(32, 64, 1), block(64, 120, 1))
        pools = {"avg": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1)}
        if global_pool not in pools:
            raise ValueError(
                f"dsnet_tiny global_pool must be one of {list(pools)}, not {global_pool!r}"
            )
        self.pool = pools[global_pool]
        self.num_features = 120
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(120, num_classes))

    def get_classifier(self) -> nn.Module:
        """The classifier head, as timm models name it (fine-tuning gives it its own lr)."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model
def dsnet_tiny(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """timm entry point for :class:`TinyCNN` (no hub weights exist)."""
    if pretrained:
        raise ValueError("dsnet_tiny has no hub weights; train it from scratch")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return TinyCNN(**kwargs)


GRAY = 0.6  # what shades_of_gray maps each channel's p-mean to, keeping inputs near [0, 1]


def shades_of_gray(x: torch.Tensor, p: int, gray: float = GRAY) -> torch.Tensor:
    """Colour constancy: each image's channels divided by their Minkowski p-mean, times ``gray``.

    Shades of gray (Finlayson & Trezzi 2004; p = 6 is the usual choice for dermoscopy): the
    p-mean of a channel estimates the light's colour in it. Multiplying a channel by a gain
    (white balance) or the whole image by one (exposure) multiplies its p-mean by the same gain,
    so the output is unchanged as long as no pixel clipped.
    """
    illuminant = x.pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p)
    return x * (gray / illuminant.clamp_min(1e-3))


def input_normalization(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone's weights expect (timm's ``pretrained_cfg``).

    The EfficientNet-Lite family was trained on ``(x - 0.5) / 0.5``; most timm models on
    ImageNet's mean and std, which is also the default for a model without a config.
    """
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD))
    return mean, std


class Classifier(nn.Module):
    """A backbone with its input normalisation built in; outputs raw logits.

    The mean and std are the ones the backbone's weights expect (:func:`input_normalization`);
    they are buffers, so checkpoints, ``.pte`` and ``.onnx`` files carry them and a phone app
    feeds ``[0, 1]`` pixels whatever the architecture.
    ``color_constancy``: 0 = off; p > 0 = :func:`shades_of_gray` with that p before the
    mean/std normalisation.
    """

    def __init__(self, backbone: nn.Module, task: str, color_constancy: int = 0):
        super().__init__()
        if color_constancy < 0:
            raise ValueError(f"color_constancy must be 0 (off) or a p >= 1, not {color_constancy}")
        self.backbone = backbone
        self.task = task
        self.color_constancy = color_constancy
        mean, std = input_normalization(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.color_constancy:
            x = shades_of_gray(x, self.color_constancy)
        logits = self.backbone((x - self.mean) / self.std)
        return logits[:, 0] if self.task == "binary" else logits


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """The ``(size_out, size_in)`` matrix of a 1-D antialiased bilinear resize.

    Antialiased bilinear resizing is separable, so ``A @ x @ A.T`` resizes a square image
    exactly as ``F.interpolate(x, mode="bilinear", antialias=True)`` (and
    :func:`pipeline_lib.inference.resize`) do; unlike that call, two matrix products export to
    ONNX.
    """
    basis = torch.eye(size_in).view(size_in, 1, 1, size_in)  # each unit vector, a 1-row image
    rows = F.interpolate(basis, size=(1, size_out), mode="bilinear", antialias=True)
    return rows.view(size_in, size_out).T.contiguous()


class Resize(nn.Module):
    """Square ``size_in`` images to ``size_out`` as inference resizes them (antialiased bilinear)."""

    def __init__(self, size_in: int, size_out: int):
        super().__init__()
        self.size_in, self.size_out = int(size_in), int(size_out)
        # Derived from the two sizes, so not saved in checkpoints.
        self.register_buffer("matrix", resize_matrix(self.size_in, self.size_out), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-2:] != (self.size_in, self.size_in):
            raise ValueError(
                f"expected {self.size_in}x{self.size_in} images, got {tuple(x.shape[-2:])}"
            )
        out = torch.matmul(torch.matmul(self.matrix, x), self.matrix.T)
        return out.contiguous(memory_format=torch.channels_last)  # as inference.resize gives it


class Ensemble(nn.Module):
    """Several classifiers of one task averaged in probability; outputs logits of that average.

    Binary: ``logit(mean_i sigmoid(z_i))``; dx: ``log(mean_i softmax(z_i))``, whose softmax is
    the mean of the members' probabilities. Members may differ in architecture, weights,
    input normalisation (each normalises its own input) and input size: with ``sizes`` (each
    member's square input size) and ``input_size`` (the ensemble's), a member of another size
    sees the input resized as inference resizes (:class:`Resize`). A teacher ensemble is a
    drop-in teacher.
    """

    def __init__(
        self,
        members: list[Classifier],
        sizes: list[int] | None = None,
        input_size: int | None = None,
    ):
        super().__init__()
        if not members or len({m.task for m in members}) != 1:
            raise ValueError("an ensemble needs at least one member, all of one task")
        if sizes is not None and (len(sizes) != len(members) or input_size is None):
            raise ValueError(
                f"sizes needs one input size per member ({len(members)}, got {len(sizes)}) "
                "and the ensemble's input_size"
            )
        self.members = nn.ModuleList(members)
        self.resizes = nn.ModuleList(
            Resize(input_size, size) if size != input_size else nn.Identity()
            for size in (sizes if sizes is not None else [input_size] * len(members))
        )
        self.task = members[0].task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack(
            [m(resize(x)).float() for m, resize in zip(self.members, self.resizes, strict=True)]
        )
        if self.task == "binary":  # log mean p - log mean (1 - p); the log n cancels
            return torch.logsumexp(F.logsigmoid(z), 0) - torch.logsumexp(F.logsigmoid(-z), 0)
        return torch.logsumexp(torch.log_softmax(z, -1), 0) - math.log(len(self.members))


def create(
    arch: str,
    task: str = "binary",
    global_pool: str = "avg",
    drop_rate: float = 0.0,
    pretrained: bool | str = False,
    color_constancy: int = 0,
) -> Classifier:
    """Build a classifier for ``task`` (``binary``: one logit; ``dx``: 7 logits).

    Args:
        arch: any :func:`timm.create_model` name, or ``dsnet_tiny``.
        color_constancy: 0, or the p of :func:`shades_of_gray` applied to the input.
        pretrained: ``False`` (from scratch), ``True`` (timm hub weights; needs network or
            the HF cache) or a path to a local weights file (a state_dict, a timm/torchvision
            file, a converted package checkpoint or a checkpoint of this project) for the same
            architecture. :func:`pipeline_lib.weights.resolve` turns ``pretrained: imagenet``
            into one of these.
    """
    if task not in NUM_OUTPUTS:
        raise ValueError(f"task must be one of {list(NUM_OUTPUTS)}, not {task!r}")
    kwargs = {"num_classes": NUM_OUTPUTS[task], "global_pool": global_pool, "drop_rate": drop_rate}
    try:
        backbone = timm.create_model(arch, pretrained=pretrained is True, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown architecture {arch!r}: not a timm model name") from err
        raise
    model = Classifier(backbone, task, color_constancy)
    if isinstance(pretrained, str) and pretrained:
        load_backbone_weights(model, pretrained, arch)
    return model


def load_backbone_weights(model: Classifier, path: str | os.PathLike, arch: str) -> None:
    """Load a local weights file into ``model``'s backbone, skipping only a mismatched head."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise CheckpointError(f"cannot read weights file {path}: {err}") from err
    if isinstance(blob, dict) and "arch" in blob and blob["arch"] != arch:
        raise CheckpointError(
            f"weights file {path} is for architecture {blob['arch']!r}, not {arch!r}"
        )
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else blob
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = model.backbone.state_dict()
    # The classifier may legitimately differ (hub weights have 1000 classes); nothing else may.
    head = getattr(model.backbone, "pretrained_cfg", {}).get("classifier") or "head"
    head_keys = {k for k in own if k.startswith(f"{head}.")}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting and k not in head_keys]
    if missing or len(fitting) < 0.5 * len(own):
        first = missing[0] if missing else next(k for k in own if k not in fitting)
        found = f"shape {tuple(state[first].shape)}" if first in state else "no such tensor"
        raise CheckpointError(
            f"weights file {path} does not fit architecture {arch!r}: {len(missing)} of its "
            f"tensors are missing or have another shape; first: {first!r} needs "
            f"{tuple(own[first].shape)}, the file has {found}"
        )
    model.backbone.load_state_dict(fitting, strict=False)


def save_checkpoint(
    path: str | os.PathLike, model: Classifier | Ensemble, meta: dict[str, Any]
) -> None:
    """Write ``model`` with everything needed to rebuild it (atomically)."""
    blob = dict(meta)
    if isinstance(model, Ensemble) and "members" not in blob:
        blob["members"] = len(model.members)
    blob["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    missing = [k for k in CHECKPOINT_KEYS if k not in blob]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    # Saved through a file object: torch.save(blob, path) names the zip's root folder after the
    # (random) temporary file, so equal weights would give different bytes and DVC hashes.
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)


def load_checkpoint(path: str | os.PathLike) -> tuple[Classifier | Ensemble, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint` (in eval mode).

    A checkpoint whose metadata has ``members`` holds an :class:`Ensemble`: ``members`` is a
    list of each member's ``arch``, ``global_pool``, ``drop_rate`` and ``color_constancy``
    (members of different architectures), and ``image_size`` where a member's input size is
    not the ensemble's; or a count ``n`` of members of ``arch``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(blob, dict) or any(k not in blob for k in CHECKPOINT_KEYS):
        raise CheckpointError(
            f"{path} is not a melanoma-kd checkpoint (expected keys {list(CHECKPOINT_KEYS)})"
        )
    specs = blob.get("members", 1)
    if isinstance(specs, int):
        specs = [blob] * specs
    members = [
        create(
            spec["arch"],
            blob["task"],
            spec["global_pool"],
            spec["drop_rate"],
            color_constancy=spec.get("color_constancy", 0),  # older checkpoints: off
        )  # fmt: skip
        for spec in specs
    ]
    size = blob["image_size"]
    sizes = [spec.get("image_size", size) for spec in specs]
    model = Ensemble(members, sizes, size) if "members" in blob else members[0]
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not match architecture {blob['arch']!r}: {err}"
        ) from err
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.eval(), meta


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
