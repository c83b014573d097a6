"""ImageNet weights from the packages: conversion checked against the reference implementation."""

import re

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from pipeline_lib import models, weights

NATIVE = {"tf_efficientnet_lite0": 224, "tf_efficientnet_lite2": 260}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    written = weights.convert_installed(out)
    assert set(written) == set(weights.PACKAGES)  # all three packages are dependencies
    return out


@pytest.mark.parametrize("arch", sorted(NATIVE))
def test_converted_timm_model_matches_the_reference_implementation(converted, arch):
    """Same logits as the code the checkpoint was written for, at its native resolution.

    The reference pads "same" for a size fixed at construction, so the comparison holds there.
    """
    import timm

    reference = EfficientNet.from_pretrained(
        arch.removeprefix("tf_").replace("_", "-"),
        weights_path=str(weights.package_file(arch)),
    ).eval()
    ours = timm.create_model(arch).eval()
    ours.load_state_dict(torch.load(converted / f"{arch}.pth", weights_only=True))
    x = torch.randn(2, 3, NATIVE[arch], NATIVE[arch], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = reference(x), ours(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_converted_file_loads_into_the_pipeline_model_with_its_normalisation(converted):
    path = weights.resolve("tf_efficientnet_lite0", "imagenet", converted)
    assert path == str(converted / "tf_efficientnet_lite0.pth")
    model = models.create("tf_efficientnet_lite0", "binary", pretrained=path)
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    # The Lite family was trained on (x - 0.5) / 0.5: the model carries that, not ImageNet's.
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.5] * 3
    resnet = models.create("resnet18", "binary")
    assert resnet.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_truncated_weights_file_is_refused_naming_it(tmp_path):
    source = weights.package_file("tf_efficientnet_lite0").read_bytes()
    bad = tmp_path / "lite0_truncated.pth"
    bad.write_bytes(source[: len(source) // 3])
    with pytest.raises(weights.WeightsError, match="lite0_truncated.pth"):
        weights.convert("tf_efficientnet_lite0", bad)


def test_weights_of_another_architecture_are_refused_naming_the_tensor(tmp_path):
    lite2 = weights.package_file("tf_efficientnet_lite2")
    with pytest.raises(
        weights.WeightsError, match=r"efficientnet-lite2.*tensor \d+ '.+' has shape"
    ):
        weights.convert("tf_efficientnet_lite0", lite2)


def test_a_missing_tensor_is_named(tmp_path):
    state = torch.load(weights.package_file("tf_efficientnet_lite0"), weights_only=True)
    last = list(state)[-1]
    del state[last]
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(
        weights.WeightsError,
        match=r"short.pth holds 246 tensors, .* has 247: first unmatched tensor 'classifier.bias'",
    ):
        weights.convert("tf_efficientnet_lite0", path)


def test_imagenet_without_weights_fails_at_once_naming_what_has_them(converted, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsError) as err:
        weights.resolve("dsnet_tiny", "imagenet", converted)
    assert "'dsnet_tiny'" in str(err.value)
    assert "tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2" in str(err.value)


def test_resolve_passes_false_and_existing_paths_through(converted, tmp_path):
    own = tmp_path / "weights.pth"
    own.write_bytes(b"")
    assert weights.resolve("resnet18", False, converted) is False
    assert weights.resolve("resnet18", str(own), converted) == str(own)


def test_a_missing_weights_file_is_refused_naming_the_setting(converted, tmp_path):
    missing = tmp_path / "train_teacher" / "lite0" / "model.pt"
    with pytest.raises(
        weights.WeightsError, match=re.escape(f"pretrained: {missing}: no such file")
    ):
        weights.resolve("tf_efficientnet_lite0", str(missing), converted)


def test_a_weights_file_that_does_not_fit_is_refused_naming_the_first_tensor(converted):
    with pytest.raises(
        models.CheckpointError,
        match=r"does not fit architecture 'resnet18'.*first: 'conv1.weight' needs \(64, 3, 7, 7\), the file has no such tensor",
    ):
        models.create("resnet18", "binary", pretrained=str(converted / "tf_efficientnet_lite0.pth"))


def test_exported_files_carry_the_weights_normalisation(converted, tmp_path):
    """A phone app feeds [0, 1] pixels: the .onnx and .pte normalise as the Lite weights expect."""
    from pipeline_lib import quantization, runtime

    torch.manual_seed(0)
    path = str(converted / "tf_efficientnet_lite0.pth")
    model = models.create("tf_efficientnet_lite0", "binary", pretrained=path).eval()
    quantization.write_onnx(model, 64, tmp_path / "lite0.onnx")
    quantization.write_pte(quantization.export(model, 64), tmp_path / "lite0.pte")
    images = torch.randint(0, 256, (3, 3, 80, 80), dtype=torch.uint8).numpy()
    want = runtime.Predictor.from_model(model, "binary", 64).logits(images)
    for name in ("lite0.onnx", "lite0.pte"):
        got = runtime.Predictor.load(tmp_path / name).logits(images)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=name)
    # ImageNet's statistics instead give other logits: the normalisation is really in the file.
    model.mean.copy_(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
    model.std.copy_(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    other = runtime.Predictor.from_model(model, "binary", 64).logits(images)
    assert np.abs(other - want).max() > 1e-2
