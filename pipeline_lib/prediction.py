"""Scoring lesion photos with a trained student: the engine of ``melanoma-kd predict`` and the
web page.

A photo goes through the training preprocessing (:func:`data.decode` to the prepare stage's
square cache size, then :func:`inference.to_input` to the model's input size), the chosen
student file in its own runtime (:class:`runtime.Predictor`), the temperature fitted on val,
and the threshold chosen on val (:mod:`pipeline_lib.operating_point`).

Grad-CAM (:mod:`pipeline_lib.gradcam`, with OpenCV) is imported only when a heat map is
drawn: ``melanoma-kd predict`` without ``--explain`` starts faster without it.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline_lib import data, operating_point, runtime

ModelName = Literal["int8", "int8-onnx", "float"]
MODEL_NAMES: tuple[ModelName, ...] = ("int8", "int8-onnx", "float")
# The file type of each model, whatever its file is called.
SUFFIXES: dict[ModelName, str] = {"int8": ".pte", "int8-onnx": ".onnx", "float": ".pt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SUSPICIOUS, NOT_SUSPICIOUS = "melanoma-suspicious", "not suspicious"
DISCLAIMER = "Research tool, not a diagnosis: a dermatologist must examine any lesion of concern."
DISPLAY_SIDE = 512  # longest side of the photo the heat map is drawn on


class InputError(ValueError):
    """An input photo is missing or unreadable; the message names it and what was expected."""


@dataclass(frozen=True)
class ModelPaths:
    """The pipeline outputs a :class:`Scorer` reads."""

    operating_point: Path  # model_card stage: temperature and threshold of every model
    checkpoint: Path  # float student (also the model Grad-CAM explains)
    pte: Path  # int8 ExecuTorch program
    onnx: Path  # int8 ONNX model

    def file(self, model: ModelName) -> Path:
        return {"float": self.checkpoint, "int8": self.pte, "int8-onnx": self.onnx}[model]


@dataclass(frozen=True)
class Prediction:
    """One photo's calibrated melanoma probability and the decision at the val operating point."""

    image: str
    probability: float
    suspicious: bool
    decision: str
    milliseconds: float  # decoding and scoring (a batch's time shared equally), no Grad-CAM
    explanation: str | None = None  # the Grad-CAM PNG written for this photo
    # A dx model's three most likely diagnoses: {"dx", "name", "probability"} (calibrated).
    top_classes: list[dict] | None = None


def decode(source: str | os.PathLike | bytes, size: int, name: str | None = None) -> np.ndarray:
    """A photo (a path or the bytes of a file) as uint8 ``(3, size, size)``, as prepare decodes.

    Raises:
        InputError: naming the photo when it is missing or not a readable image.
    """
    name = name or str(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif not Path(source).is_file():
        raise InputError(f"{name}: no such file (expected a JPEG or PNG lesion photo)")
    try:
        return data.decode(source, size).copy()  # writable: torch warns on a read-only view
    except (data.DataError, Image.DecompressionBombError) as err:
        # PIL names an in-memory upload by its object's repr: drop that from the message.
        cause = str(err.__cause__ or err).replace(f" {source!r}", "")
        raise InputError(
            f"{name}: not a readable image ({cause}); expected a JPEG or PNG lesion photo"
        ) from err


def photo(source: str | os.PathLike | bytes, max_side: int = DISPLAY_SIDE) -> Image.Image:
    """The photo as RGB, its longest side at most ``max_side`` (for drawing the heat map on)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.BILINEAR)
        return im


def image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The files to score: each file as given, each folder's images (by suffix), sorted.

    Raises:
        InputError: for a path that does not exist, or a folder without images.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise InputError(f"{item}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise InputError(f"{item}: no such file or folder (expected lesion photos)")
    return files


def _load(model: ModelName, paths: ModelPaths, threads: int | None) -> runtime.Predictor:
    """The file of ``model`` in its runtime; a file its operating point was not chosen for is
    refused."""
    point = operating_point.read(paths.operating_point, model)
    path = paths.file(model)
    if not path.is_file():
        kind, stage = ("checkpoint", "train") if model == "float" else ("model file", "export")
        raise runtime.ModelFileError(
            f"{kind} {path} not found: run `make repro` to {stage} the student"
        )
    operating_point.check_file(point, path)
    return runtime.Predictor.load(path, threads, SUFFIXES[model])


class Scorer:
    """One student file, its operating point and, when asked, the float student for Grad-CAM.

    Args:
        model: ``int8`` (ExecuTorch ``.pte``), ``int8-onnx`` or ``float`` (PyTorch checkpoint).
        explain: also load the float student to draw Grad-CAM heat maps.
        threads: intra-op threads of the model's runtime; ``None`` keeps its default.

    Raises:
        operating_point.OperatingPointError, runtime.ModelFileError: naming the file that is
            missing or of another model.
    """

    def __init__(
        self, model: ModelName, paths: ModelPaths, explain: bool = False, threads: int | None = None
    ):
        if model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {MODEL_NAMES}, not {model!r}")
        self.model = model
        self.file = paths.file(model)
        self.point = operating_point.read(paths.operating_point, model)
        self.explains = explain
        student = None  # the float student: the model scored, Grad-CAM's model, or both
        if model == "float" or explain:
            student = _load("float", paths, threads)
        self.predictor = student if model == "float" else _load(model, paths, threads)
        self._explainer = student if explain else None
        self._gradcam = None
        if explain:
            from pipeline_lib import gradcam  # OpenCV and grad-cam: only to draw heat maps

            self._gradcam = gradcam
            self._layer = gradcam.target_layer(student.model, student.image_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated melanoma probabilities of uint8 images ``(N, 3, S, S)``."""
        return self.scores(images)[0]

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated melanoma probabilities and, for a dx model, the calibrated ``(N, 7)``
        probabilities of the HAM10000 diagnoses (``None`` for a binary model)."""
        logits = self.predictor.logits(images)
        p = data.melanoma_probability(logits, self.predictor.task, self.point.temperature)
        if self.predictor.task != "dx":
            return p, None
        return p, data.dx_probabilities(logits, self.point.temperature)

    def decide(self, probability: float) -> tuple[bool, str]:
        """The decision at the val operating point."""
        suspicious = bool(probability >= self.point.threshold)
        return suspicious, SUSPICIOUS if suspicious else NOT_SUSPICIOUS

    def heatmap(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM of the float student for one decoded image, ``[0, 1]`` at the input size."""
        if self._explainer is None:
            raise ValueError("this scorer was built without explain=True")
        model = self._explainer.model
        return self._gradcam.heatmap(model, image, self.point.image_size, self._layer)

    def explain(self, source: str | os.PathLike | bytes, image: np.ndarray) -> np.ndarray:
        """The Grad-CAM heat map drawn over the photo, RGB uint8."""
        heat = self.heatmap(image)
        return self._gradcam.overlay(photo(source), heat)

    def predict_files(
        self,
        files: list[Path],
        explanations: list[Path] | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> Iterator[Prediction | InputError]:
        """Score ``files`` in batches; yield a :class:`Prediction` or the file's error, in order.

        Args:
            explanations: one PNG path per file to draw its Grad-CAM heat map into.
        """
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
        for start in range(0, len(files), batch_size):
            chunk = list(range(start, min(start + batch_size, len(files))))
            began = time.perf_counter()
            decoded: dict[int, np.ndarray] = {}
            errors: dict[int, InputError] = {}
            for i in chunk:
                try:
                    decoded[i] = decode(files[i], self.point.cache_size)
                except InputError as err:
                    errors[i] = err
            ok = list(decoded)
            probs, dx = self.scores(np.stack([decoded[i] for i in ok])) if ok else ([], None)
            ms = 1000 * (time.perf_counter() - began) / max(len(ok), 1)
            by_index = dict(zip(ok, probs, strict=True))
            top = (
                {} if dx is None else {i: data.top_classes(q) for i, q in zip(ok, dx, strict=True)}
            )
            for i in chunk:
                bar.update(1)
                if i in errors:
                    yield errors[i]
                    continue
                p = float(by_index[i])
                out = None
                if explanations is not None:
                    self._gradcam.save_png(self.explain(files[i], decoded[i]), explanations[i])
                    out = str(explanations[i])
                yield Prediction(str(files[i]), p, *self.decide(p), ms, out, top.get(i))
        bar.close()
