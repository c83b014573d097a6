"""Strict loading of ``params.yaml`` sections into frozen dataclasses.

Every stage reads its own section (plus shared ones) through :func:`load`. An unknown key, a
missing key or a value of the wrong type is an error naming the key, so a typo such as
``dvc exp run -S kd.alpah=0.9`` fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

Task = Literal["binary", "dx"]
LossName = Literal["bce", "focal", "ce"]
Device = Literal["auto", "cpu", "cuda"]
# bf16 autocast: auto = where the hardware computes bf16 natively (a GPU, an AVX-512 CPU).
Precision = bool | Literal["auto"]
TeacherRuntime = Literal["auto", "torch", "onnxruntime"]


class ParamsError(ValueError):
    """A params.yaml section does not match its schema."""


@dataclass(frozen=True)
class DataParams:
    """Where the raw HAM10000 lives (either supported layout)."""

    root: str


@dataclass(frozen=True)
class PrepareParams:
    """Decoding of every JPEG once into a square uint8 cache."""

    image_size: int


@dataclass(frozen=True)
class SplitParams:
    """Lesion-grouped, melanoma-stratified train/val/test split."""

    seed: int
    val_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class BaselinesParams:
    """Classical baselines on metadata and handcrafted image features."""

    seed: int
    feature_size: int


@dataclass(frozen=True)
class MetricsParams:
    """Shared metric settings: ECE bins and the target sensitivity of the operating point."""

    ece_bins: int
    target_sensitivity: float


@dataclass(frozen=True)
class AugmentParams:
    """Batched tensor augmentation applied on the training set."""

    crop_scale_min: float
    max_rotation_deg: float
    brightness: float
    contrast: float
    saturation: float
    hue_shift: float
    # Not keys of `augment`: the student's acquisition augmentation (`student_augment`),
    # merged in by the stages that train the student (:func:`student_augment`).
    exposure: float = dataclasses.field(default=0.0, metadata={"params": False})
    channel_gain: float = dataclasses.field(default=0.0, metadata={"params": False})


@dataclass(frozen=True)
class StudentAugmentParams:
    """Acquisition shift the student (the phone model) is trained on, beyond `augment`."""

    exposure: float  # each image's intensity times a gain in [1 - exposure, 1 + exposure]
    channel_gain: float  # each colour channel times its own gain in [1 - g, 1 + g] (white balance)


@dataclass(frozen=True)
class TrainParams:
    """One model's training run; shared by ``train_teacher`` and ``distill``."""

    arch: str
    task: Task
    global_pool: str
    pretrained: bool | str
    drop_rate: float
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    grad_clip: float
    patience: int
    loss: LossName
    pos_weight: float
    focal_gamma: float
    oversample_melanoma: float
    bf16: Precision
    device: Device
    seed: int
    max_train_images: int
    ema_decay: float  # 0 = off; else the best epoch is chosen, and saved, on the weights' EMA
    mixup_alpha: float  # 0 = off; Beta(alpha, alpha) mixing weight, targets mixed alike
    cutmix_alpha: float  # 0 = off; with both > 0 each batch picks one
    color_constancy: int  # 0 = off; p > 0: shades-of-gray colour constancy inside the model
    freeze_epochs: float  # epochs at the start that train only the new head (backbone lr 0)
    backbone_lr_scale: float  # the backbone's learning rate relative to ``lr`` (the head's)

    def __post_init__(self):
        if self.pretrained is True or (
            isinstance(self.pretrained, str) and self.pretrained in ("", "false")
        ):
            raise ParamsError(
                f"pretrained must be false, imagenet or a weights file path, got {self.pretrained!r}"
            )
        if self.freeze_epochs < 0 or self.freeze_epochs >= self.epochs:
            raise ParamsError(
                f"freeze_epochs must be in [0, epochs = {self.epochs}), got {self.freeze_epochs}"
            )
        if self.backbone_lr_scale <= 0:
            raise ParamsError(f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale}")
        if self.color_constancy < 0:
            raise ParamsError(
                f"color_constancy must be 0 (off) or a p >= 1, got {self.color_constancy}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ParamsError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ParamsError(f"{key} must be >= 0 (0 = off), got {getattr(self, key)}")


@dataclass(frozen=True)
class CalibrateParams:
    """Temperature scaling fitted on val logits."""

    max_iter: int


@dataclass(frozen=True)
class KDParams:
    """Distillation: ``alpha`` weighs the teacher's soft term, ``1 - alpha`` the hard labels.

    ``temperature`` is the KD softening temperature, not the calibration temperature.
    ``teacher_runtime`` runs the frozen teacher's forward (``training.Distillation``).
    """

    temperature: float
    alpha: float
    use_calibrated_teacher: bool
    teacher_runtime: TeacherRuntime


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1]
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _type_ok(k, key_type) and _type_ok(v, value_type) for k, v in value.items()
        )
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def value_matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a schema annotation, by the same rules as :func:`from_dict`."""
    return _type_ok(value, annotation)


def from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown, missing or mistyped keys.

    Args:
        cls: a frozen dataclass type.
        values: the mapping read from YAML.
        where: the section name used in error messages (e.g. ``"kd"``).
    """
    if not isinstance(values, dict):
        raise ParamsError(f"params section '{where}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.metadata.get("params", True)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ParamsError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)} in params; "
            f"'{where}' accepts: {', '.join(names)}"
        )
    missing = [n for n in names if n not in values]
    if missing:
        raise ParamsError(f"missing key(s) {', '.join(f'{where}.{k}' for k in missing)} in params")
    kwargs = {}
    for name in names:
        value, annotation = values[name], hints[name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(annotation, value, f"{where}.{name}")
        elif not _type_ok(value, annotation):
            raise ParamsError(
                f"params key {where}.{name} = {value!r} has the wrong type; expected {annotation}"
            )
        elif annotation is float:
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class QuantizeParams:
    """Post-training int8 quantization of the student, with a QAT fallback."""

    calibration_images: int  # train images used to calibrate activation ranges
    seed: int
    max_auc_drop: float  # int8 val ROC-AUC drop that triggers QAT
    max_ece_change: float  # int8 val ECE change that triggers QAT
    qat_epochs: int
    qat_lr: float
    recalibrate: bool  # Platt scaling of p(melanoma), fitted on val, built into each int8 file
    onnx_reduce_range: bool  # 7-bit ONNX weights: no int16 saturation on x86 CPUs without VNNI
    fuse_relu6: bool  # int8 .pte: a conv's output quantized after its ReLU6, not before


@dataclass(frozen=True)
class BenchmarkParams:
    """CPU latency, throughput and memory measurements."""

    warmup: int
    runs: int
    threads: list[int]
    throughput_batch: int


@dataclass(frozen=True)
class ExternalSetParams:
    """A labelled image set from elsewhere, scored by an ``external@<name>`` stage."""

    images: str  # folder of images (searched recursively), relative to the repo
    labels: str  # CSV: image column, 0/1 label or dx code, optional lesion_id
    max_bad_fraction: float  # missing or unreadable images above this fraction stop the stage


@dataclass(frozen=True)
class EvaluateParams:
    """Holdout report: bootstrap CIs, subgroups and shift robustness."""

    bootstrap: int
    seed: int
    min_subgroup: int  # subgroups smaller than this are flagged
    gallery_size: int


Scalar = bool | int | float | str


@dataclass(frozen=True)
class SearchParams:
    """Optuna search over params.yaml keys; every trial is one ``dvc exp run <stage>``.

    ``space`` maps a dotted params key to ``{low, high[, log]}`` or ``{choices}``
    (checked by :func:`pipeline_lib.search.parse_space`); ``fixed`` sets keys for every trial.
    """

    stage: str
    trials: int
    seed: int
    storage: str  # Optuna storage URL; "" = a SQLite file under data/search/
    study_name: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    fixed: dict[str, Scalar]
    space: dict[str, dict[str, float | bool | list[Scalar]]]


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "prepare": PrepareParams,
    "split": SplitParams,
    "baselines": BaselinesParams,
    "metrics": MetricsParams,
    "augment": AugmentParams,
    "student_augment": StudentAugmentParams,
    "train_teacher": TrainParams,
    "teachers": dict,  # member name -> the train_teacher keys it overrides (load_member)
    "external": dict,  # set name -> ExternalSetParams (may be empty)
    "calibrate": CalibrateParams,
    "kd": KDParams,
    "distill": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
    "evaluate": EvaluateParams,
    "search": SearchParams,
}


def student_augment(path: str | Path = "params.yaml") -> AugmentParams:
    """The student's augmentation: `augment` plus the acquisition shift of `student_augment`."""
    extra = load("student_augment", path)
    return dataclasses.replace(load("augment", path), **dataclasses.asdict(extra))


def read_params(path: str | Path = "params.yaml") -> dict:
    """Read the whole params file and check that every top-level section is known."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file {path} not found")
    tree = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(tree) - set(SECTIONS))
    if unknown:
        raise ParamsError(
            f"unknown section(s) {', '.join(unknown)} in {path}; known: {', '.join(SECTIONS)}"
        )
    return tree


def load(section: str, path: str | Path = "params.yaml") -> Any:
    """Load one section of ``params.yaml`` into its dataclass.

    Args:
        section: a key of :data:`SECTIONS`.
        path: the params file.

    Raises:
        ParamsError: naming the offending section or key.
    """
    if section not in SECTIONS:
        raise ParamsError(f"no schema for params section '{section}'")
    tree = read_params(path)
    if section not in tree:
        raise ParamsError(f"params section '{section}' missing from {path}")
    # Every section is checked, so a typo anywhere stops whichever stage runs first.
    parsed = {
        name: from_dict(SECTIONS[name], values, name)
        for name, values in tree.items()
        if name not in ("teachers", "external")
    }
    parsed["external"] = _external(tree.get("external", {}))
    parsed["teachers"] = _members(tree.get("teachers"), tree.get("train_teacher"))
    return parsed[section]


def _external(values: Any) -> dict[str, ExternalSetParams]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ParamsError(
            f"params section 'external' must map set names to {{images, labels, "
            f"max_bad_fraction}} (or be {{}}), got {values!r}"
        )
    sets = {}
    for name, entry in values.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ParamsError(f"external set name {name!r} must be letters, digits, - and _")
        sets[name] = from_dict(ExternalSetParams, entry, f"external.{name}")
    return sets


def _members(values: Any, defaults: Any) -> dict[str, TrainParams]:
    if not isinstance(values, dict) or not values:
        raise ParamsError(
            f"params section 'teachers' must map one or more member names to the train_teacher "
            f"keys each overrides (e.g. resnet18: {{arch: resnet18}}), got {values!r}"
        )
    members = {}
    for name, overrides in values.items():
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise ParamsError(f"teacher member name {name!r} must be letters, digits and _")
        if not isinstance(overrides, dict):
            raise ParamsError(f"teachers.{name} must be a mapping of train_teacher keys")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainParams)})
        if unknown:
            raise ParamsError(
                f"unknown key(s) {', '.join(f'teachers.{name}.{k}' for k in unknown)} in params; "
                f"a member overrides train_teacher keys"
            )
        members[name] = from_dict(TrainParams, {**defaults, **overrides}, f"teachers.{name}")
    return members


def load_member(name: str, path: str | Path = "params.yaml") -> TrainParams:
    """The training run of teacher member ``name``: ``train_teacher`` with ``teachers.<name>``'s
    overrides on top (both checked as strictly as any section).

    Raises:
        ParamsError: an unknown member (naming those that exist) or a bad key.
    """
    members = load("teachers", path)
    if name not in members:
        raise ParamsError(f"no teacher member {name!r} in {path}; members: {', '.join(members)}")
    return members[name]
