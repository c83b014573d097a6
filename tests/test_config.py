from pathlib import Path

import pytest
import yaml

from pipeline_lib import config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture()
def tree() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_load_every_section():
    for section, cls in config.SECTIONS.items():
        assert isinstance(config.load(section, REPO / "params.yaml"), cls)


def test_unknown_key_is_named(tmp_path, tree):
    tree["kd"]["alpah"] = 0.9  # the typo of `dvc exp run -S kd.alpah=0.9`
    with pytest.raises(config.ParamsError, match=r"kd\.alpah"):
        config.load("kd", _write(tmp_path, tree))


def test_typo_in_another_section_stops_every_stage(tmp_path, tree):
    tree["split"]["sed"] = 1
    with pytest.raises(config.ParamsError, match=r"split\.sed"):
        config.load("train_teacher", _write(tmp_path, tree))


def test_missing_key_is_named(tmp_path, tree):
    del tree["split"]["seed"]
    with pytest.raises(config.ParamsError, match=r"missing key\(s\) split\.seed"):
        config.load("split", _write(tmp_path, tree))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("kd", "alpha", "1e-4"),  # PyYAML reads 1e-4 as a string
        ("split", "seed", 1.5),
        ("train_teacher", "task", "multiclass"),
        ("train_teacher", "bf16", "yes"),
        ("benchmark", "threads", [1, "two"]),
    ],
)
def test_mistyped_value_is_named(tmp_path, tree, section, key, value):
    tree[section][key] = value
    with pytest.raises(config.ParamsError, match=rf"{section}\.{key}"):
        config.load(section, _write(tmp_path, tree))


def test_int_is_accepted_as_float_and_pretrained_takes_false_imagenet_or_path(tmp_path, tree):
    tree["kd"]["alpha"] = 1
    tree["train_teacher"]["pretrained"] = "weights/resnet18.pth"
    path = _write(tmp_path, tree)
    assert config.load("kd", path).alpha == 1.0
    assert isinstance(config.load("kd", path).alpha, float)
    assert config.load("train_teacher", path).pretrained == "weights/resnet18.pth"


def test_unknown_section_is_named(tmp_path, tree):
    tree["distil"] = {}
    with pytest.raises(config.ParamsError, match="distil"):
        config.load("kd", _write(tmp_path, tree))


def test_params_are_frozen():
    kd = config.load("kd", REPO / "params.yaml")
    with pytest.raises(AttributeError):
        kd.alpha = 0.1  # type: ignore[misc]


def test_negative_color_constancy_is_named(tmp_path, tree):
    tree["distill"]["color_constancy"] = -6
    with pytest.raises(config.ParamsError, match="color_constancy"):
        config.load("distill", _write(tmp_path, tree))


def test_teacher_member_overrides_the_shared_section(tmp_path, tree):
    tree["teachers"] = {"a": {}, "b": {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet"}}
    tree["train_teacher"]["epochs"] = 7
    path = _write(tmp_path, tree)
    a, b = config.load_member("a", path), config.load_member("b", path)
    assert (a.arch, a.pretrained, a.epochs) == (tree["train_teacher"]["arch"], False, 7)
    assert (b.arch, b.pretrained, b.epochs) == ("tf_efficientnet_lite0", "imagenet", 7)


def test_unknown_member_and_member_typo_are_named(tmp_path, tree):
    path = _write(tmp_path, tree)
    with pytest.raises(
        config.ParamsError, match="no teacher member 'lite9'.*members: lite0, resnet18"
    ):
        config.load_member("lite9", path)
    tree["teachers"]["lite0"]["epoch"] = 3
    with pytest.raises(config.ParamsError, match=r"teachers\.lite0\.epoch\b"):
        config.load("kd", _write(tmp_path, tree))


def test_member_value_of_the_wrong_type_is_named(tmp_path, tree):
    tree["teachers"]["lite0"]["lr"] = "fast"
    with pytest.raises(config.ParamsError, match=r"teachers\.lite0\.lr"):
        config.load("train_teacher", _write(tmp_path, tree))


def test_empty_teachers_section_is_refused(tmp_path, tree):
    tree["teachers"] = {}
    with pytest.raises(config.ParamsError, match="'teachers' must map one or more member"):
        config.load("distill", _write(tmp_path, tree))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pretrained", True, "pretrained must be false, imagenet or a weights file path"),
        ("freeze_epochs", -1.0, "freeze_epochs must be in"),
        ("freeze_epochs", 99.0, "freeze_epochs must be in"),
        ("backbone_lr_scale", 0.0, "backbone_lr_scale must be > 0"),
    ],
)
def test_fine_tuning_settings_are_checked(tmp_path, tree, key, value, message):
    tree["distill"][key] = value
    with pytest.raises(config.ParamsError, match=message):
        config.load("distill", _write(tmp_path, tree))


@pytest.mark.parametrize("value", ["auto", True, False])
def test_bf16_takes_auto_or_a_boolean(tmp_path, tree, value):
    tree["distill"]["bf16"] = value
    assert config.load("distill", _write(tmp_path, tree)).bf16 == value
