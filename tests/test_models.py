import numpy as np
import pytest
import torch

from pipeline_lib import data, models

META = {"global_pool": "avg", "drop_rate": 0.0, "image_size": 32}


@pytest.mark.parametrize(("task", "shape"), [("binary", (2,)), ("dx", (2, 7))])
def test_output_shapes(task, shape):
    model = models.create("test_resnet", task=task).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == shape


def test_tiny_student_size_and_pooling():
    assert 0.2e6 < models.count_parameters(models.create("dsnet_tiny")) < 0.3e6
    model = models.create("test_resnet", global_pool="max")
    assert isinstance(model.backbone.global_pool.pool, torch.nn.AdaptiveMaxPool2d)


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="resnet_18"):
        models.create("resnet_18")


def test_checkpoint_round_trip(tmp_path):
    model = models.create("test_resnet", task="dx").eval()
    path = tmp_path / "m.pt"
    models.save_checkpoint(path, model, {"arch": "test_resnet", "task": "dx", **META})
    loaded, meta = models.load_checkpoint(path)
    assert meta["arch"] == "test_resnet" and meta["task"] == "dx" and meta["image_size"] == 32
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(model(x), loaded(x))


def test_equal_models_give_byte_identical_checkpoints(tmp_path):
    """Reproducible DVC hashes: the bytes depend on the weights, not on the file's name."""
    torch.manual_seed(0)
    model = models.create("test_resnet", task="dx").eval()
    meta = {"arch": "test_resnet", "task": "dx", **META}
    models.save_checkpoint(tmp_path / "a" / "model.pt", model, meta)
    models.save_checkpoint(tmp_path / "b.pt", model, meta)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    models.save_checkpoint(tmp_path / "c.pt", model, meta)
    assert (tmp_path / "c.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()


def test_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(models.CheckpointError, match="broken.pt"):
        models.load_checkpoint(path)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(models.CheckpointError, match="not a melanoma-kd checkpoint"):
        models.load_checkpoint(tmp_path / "foreign.pt")


def test_checkpoint_of_tampered_architecture_is_named(tmp_path):
    model = models.create("test_resnet")
    path = tmp_path / "m.pt"
    models.save_checkpoint(path, model, {"arch": "dsnet_tiny", "task": "binary", **META})
    with pytest.raises(models.CheckpointError, match="does not match architecture 'dsnet_tiny'"):
        models.load_checkpoint(path)


def test_local_pretrained_weights_load_and_skip_head(tmp_path):
    source = models.create("test_resnet", task="dx")
    path = tmp_path / "w.pth"
    torch.save(source.backbone.state_dict(), path)  # a plain timm state_dict, 7-way head
    target = models.create("test_resnet", task="binary", pretrained=str(path))
    stem = "conv1.0.weight"
    assert torch.equal(target.backbone.state_dict()[stem], source.backbone.state_dict()[stem])


def test_a_pipeline_checkpoint_as_pretrained_starts_the_model_as_that_checkpoint(tmp_path):
    """A teacher member's model.pt can initialise a student of its architecture, head too."""
    torch.manual_seed(0)
    member = models.create("test_resnet", task="dx").eval()
    path = tmp_path / "member" / "model.pt"
    models.save_checkpoint(path, member, {"arch": "test_resnet", "task": "dx", **META})
    torch.manual_seed(1)  # another draw: only the loaded weights can make the two agree
    student = models.create("test_resnet", task="dx", pretrained=str(path)).eval()
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(student(x), member(x))


def test_pretrained_weights_of_another_architecture_name_both(tmp_path):
    path = tmp_path / "w.pt"
    models.save_checkpoint(
        path, models.create("dsnet_tiny"), {"arch": "dsnet_tiny", "task": "binary", **META}
    )
    with pytest.raises(models.CheckpointError, match="'dsnet_tiny', not 'test_resnet'"):
        models.create("test_resnet", pretrained=str(path))
    torch.save(models.create("dsnet_tiny").backbone.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(models.CheckpointError, match="does not fit architecture 'test_resnet'"):
        models.create("test_resnet", pretrained=str(tmp_path / "plain.pth"))


def test_melanoma_probability_binary_and_dx():
    assert data.melanoma_probability(np.array([0.0]), "binary")[0] == pytest.approx(0.5)
    logits = np.zeros((1, 7))
    logits[0, data.MELANOMA_INDEX] = np.log(7.0)  # p(mel) = 7 / (7 + 6)
    assert data.melanoma_probability(logits, "dx")[0] == pytest.approx(7 / 13)
    assert data.melanoma_probability(np.array([2.0]), "binary", 2.0)[0] == pytest.approx(
        1 / (1 + np.exp(-1.0))
    )


def test_shades_of_gray_matches_a_hand_computation():
    x = torch.rand(2, 3, 5, 4)
    out = models.shades_of_gray(x, 6)
    a = x.numpy().astype(np.float64)
    illuminant = (a**6).mean(axis=(2, 3), keepdims=True) ** (1 / 6)
    np.testing.assert_allclose(out.numpy(), a * models.GRAY / illuminant, rtol=1e-5)
    # p = 1 is gray world: every channel's mean becomes GRAY.
    np.testing.assert_allclose(models.shades_of_gray(x, 1).mean(dim=(2, 3)), models.GRAY, rtol=1e-5)


def test_color_constancy_makes_the_model_blind_to_exposure_and_white_balance():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.6  # no pixel clips under the gains below
    gains = torch.tensor([[0.7, 1.2, 1.5], [1.3, 1.3, 1.3]]).view(2, 1, 3, 1, 1)
    with torch.no_grad():
        for p, invariant in [(6, True), (0, False)]:
            model = models.create("test_resnet", color_constancy=p).eval()
            diffs = [float((model(x * g) - model(x)).abs().max()) for g in gains]
            scale = float(model(x).abs().max())
            assert all(d < 1e-4 * scale for d in diffs) == invariant, (p, diffs, scale)


def test_color_constancy_survives_the_checkpoint_and_old_checkpoints_load_without_it(tmp_path):
    model = models.create("test_resnet", task="dx", color_constancy=6).eval()
    meta = {"arch": "test_resnet", "task": "dx", **META}
    models.save_checkpoint(tmp_path / "cc.pt", model, meta | {"color_constancy": 6})
    loaded, saved = models.load_checkpoint(tmp_path / "cc.pt")
    x = torch.rand(2, 3, 32, 32)
    assert loaded.color_constancy == 6 and saved["color_constancy"] == 6
    assert torch.equal(model(x), loaded(x))
    models.save_checkpoint(tmp_path / "old.pt", model, meta)  # written before the option
    assert models.load_checkpoint(tmp_path / "old.pt")[0].color_constancy == 0


def test_negative_color_constancy_is_rejected():
    with pytest.raises(ValueError, match="color_constancy"):
        models.create("test_resnet", color_constancy=-1)
