"""Scoring images with a trained model in its own runtime: one :class:`Predictor` for a PyTorch
checkpoint, an ExecuTorch program (``.pte``) or an ONNX model (``.onnx``).

``melanoma-kd predict``, the web page and the quantize, evaluate, benchmark and model_card
stages all turn images into logits here: uint8 ``(N, 3, H, W)`` images are resized to the
model's input as in training (:func:`inference.to_input`), run in the file's runtime, and the
logits become a melanoma probability (:func:`pipeline_lib.data.melanoma_probability`).

This module imports the runtimes only: PyTorch, ExecuTorch's runtime bindings and ONNX Runtime.
The training loop, torchao and the exporters (:mod:`pipeline_lib.quantization`) stay out, so
that ``melanoma-kd predict`` starts in a couple of seconds; timm comes in with
:mod:`pipeline_lib.models`, only when a checkpoint is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# ExecuTorch's compiled runtime, imported after torch (it links against libtorch). Its public
# wrappers (executorch.runtime, ...pybindings.portable_lib) import executorch.exir, the whole
# exporter with torchao, for one warning class: 4 s of the CLI's start-up here (measured).
from executorch.extension.pybindings import _C as executorch_runtime

from pipeline_lib import data, inference

PTE_IDENTIFIER = b"ET12"  # flatbuffer file identifier at bytes 4-8 of every .pte
NUM_OUTPUTS = {1: "binary", len(data.DX_CODES): "dx"}  # logits per image -> task
EXPORTED_BATCH = 64  # images per call of an exported model: quantization.MAX_BATCH, its bound
Runner = Callable[[np.ndarray], np.ndarray]  # float32 [0, 1] (N, 3, S, S) -> logits


class ModelFileError(RuntimeError):
    """A model file is missing, corrupt or of another kind; the message names it."""


def size_mb(path: str | os.PathLike) -> float:
    """File size in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def set_executorch_threads(threads: int) -> bool:
    """Resize ExecuTorch's process-wide thread pool; ``False`` when this build cannot.

    The call is private in ExecuTorch 1.5.1 and affects every loaded program.
    """
    reset = getattr(executorch_runtime, "_unsafe_reset_threadpool", None)
    if reset is None:
        return False
    reset(threads)
    return True


def _task(outputs: tuple, path: Path) -> str:
    """The task of an exported model from its output shape: ``(N,)`` binary, ``(N, 7)`` dx."""
    count = 1 if len(outputs) == 1 else outputs[-1]
    if len(outputs) > 2 or count not in NUM_OUTPUTS:
        raise ModelFileError(f"{path} gives outputs of shape {outputs}, not melanoma logits")
    return NUM_OUTPUTS[count]


def _pte(path: Path, threads: int | None) -> tuple[Runner, int, str]:
    with open(path, "rb") as f:
        head = f.read(8)
    # Checked before the runtime sees the file: ExecuTorch 1.5.1 logs a wrong identifier's raw
    # bytes and aborts the whole process when they are not valid UTF-8 (measured).
    if head[4:8] != PTE_IDENTIFIER:
        raise ModelFileError(
            f"{path} is not an ExecuTorch program (no {PTE_IDENTIFIER.decode()} identifier): "
            "the file is corrupt or of another kind"
        )
    if threads:
        set_executorch_threads(threads)
    try:
        program = executorch_runtime._load_program(
            str(path), program_verification=executorch_runtime.Verification.InternalConsistency
        )
        method = program.load_method("forward")  # holds on to its program
    except RuntimeError as err:
        raise ModelFileError(f"cannot load ExecuTorch program {path}: {err}") from err
    meta = method.method_meta()
    bound = tuple(meta.input_tensor_meta(0).sizes())
    task = _task(tuple(meta.output_tensor_meta(0).sizes()), path)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1:] != bound[1:]:
            raise ValueError(f"{path} takes (N, {bound[1:]}) inputs, got {x.shape}")
        outs = []
        for i in range(0, len(x), bound[0]):  # the program's planned batch bound
            try:
                out = method([torch.from_numpy(x[i : i + bound[0]])])[0]
            except RuntimeError as err:
                raise ModelFileError(f"ExecuTorch program {path} failed to run: {err}") from err
            outs.append(out.numpy().copy())  # the output may alias the planned buffer
        return np.concatenate(outs)

    return run, bound[-1], task


def _onnx(path: Path, threads: int | None) -> tuple[Runner, int, str]:
    try:
        session = inference.onnx_session(path, threads)
    except Exception as err:  # ORT raises several pybind types (InvalidProtobuf, Fail, ...)
        raise ModelFileError(f"cannot load ONNX model {path}: {err}") from err
    name = session.get_inputs()[0].name
    task = _task(tuple(session.get_outputs()[0].shape), path)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run, int(session.get_inputs()[0].shape[-1]), task


def _eager(model: torch.nn.Module) -> Runner:
    """PyTorch eager in float32 as a user would run it: eval mode, inference mode, NCHW input."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


EXPORTED = {".pte": _pte, ".onnx": _onnx}
RUNTIMES = {".pte": "executorch", ".onnx": "onnxruntime", ".pt": "pytorch"}


class Predictor:
    """One model in its runtime: uint8 images in, logits or melanoma probabilities out.

    Build it with :meth:`load` (a model file) or :meth:`from_model` (a PyTorch model in
    memory). Calling it gives uncalibrated melanoma probabilities, so it can stand wherever a
    function of images to probabilities is expected (:func:`pipeline_lib.shift.robustness`).

    Attributes:
        runtime: ``pytorch``, ``executorch`` or ``onnxruntime``.
        task: ``binary`` (one logit) or ``dx`` (7 logits).
        image_size: the model's square input size; images are resized to it.
        path: the model file, ``None`` for a model in memory.
        model: the PyTorch module (checkpoints and models in memory; ``None`` for exports).
        meta: the checkpoint's metadata (empty for exports and models in memory).
        threads: the intra-op threads it was loaded with; ``None``: the runtime's default.
    """

    def __init__(
        self,
        run: Runner,
        runtime: str,
        task: str,
        image_size: int,
        path: Path | None = None,
        model: torch.nn.Module | None = None,
        meta: dict | None = None,
        threads: int | None = None,
    ):
        self._run = run
        self.runtime = runtime
        self.task = task
        self.image_size = int(image_size)
        self.path = path
        self.model = model
        self.meta = meta or {}
        self.threads = threads

    @classmethod
    def load(
        cls, path: str | os.PathLike, threads: int | None = None, suffix: str | None = None
    ) -> Predictor:
        """The model at ``path`` in its own runtime, its task and input size read from the file.

        Args:
            path: a PyTorch checkpoint (``.pt``, :func:`models.save_checkpoint`), an
                ExecuTorch program (``.pte``) or an ONNX model (``.onnx``).
            threads: intra-op threads; ``None`` keeps the runtime's default. PyTorch's and
                ExecuTorch's settings are process-wide: the last model loaded sets them.
            suffix: the file type when the name does not give it (a temporary file);
                ``None``: ``path``'s suffix.

        Raises:
            ModelFileError: naming ``path`` when it is missing, corrupt or of another kind.
        """
        path = Path(path)
        suffix = suffix or path.suffix
        if suffix not in RUNTIMES:
            raise ModelFileError(
                f"{path}: unsupported model file type; expected one of {list(RUNTIMES)}"
            )
        if not path.is_file():
            kind = "model file" if suffix in EXPORTED else "checkpoint"
            raise ModelFileError(f"{kind} {path} not found")
        if suffix in EXPORTED:
            run, image_size, task = EXPORTED[suffix](path, threads)
            return cls(run, RUNTIMES[suffix], task, image_size, path, threads=threads)
        # timm comes with models (2 s of imports): only a checkpoint needs it.
        from pipeline_lib import models

        try:
            model, meta = models.load_checkpoint(path)
        except models.CheckpointError as err:
            raise ModelFileError(str(err)) from err
        if threads:
            torch.set_num_threads(threads)
        return cls(
            _eager(model), "pytorch", meta["task"], meta["image_size"], path, model, meta, threads
        )

    @classmethod
    def from_model(cls, model: torch.nn.Module, task: str, image_size: int) -> Predictor:
        """A PyTorch model in memory (put in eval mode), run eagerly on CPU."""
        return cls(_eager(model), "pytorch", task, image_size, model=model)

    def with_threads(self, threads: int) -> Predictor:
        """The same model with ``threads`` intra-op threads (the model itself is shared).

        An exported file is loaded again (ONNX Runtime fixes the thread count per session);
        for PyTorch, ``torch.set_num_threads`` is set, for the whole process.
        """
        if self.model is None:
            suffix = next(k for k, v in RUNTIMES.items() if v == self.runtime)
            return Predictor.load(self.path, threads, suffix)
        torch.set_num_threads(threads)
        return Predictor(
            self._run, self.runtime, self.task, self.image_size, self.path, self.model,
            self.meta, threads,
        )  # fmt: skip

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of float32 ``[0, 1]`` inputs ``(N, 3, S, S)`` already at :attr:`image_size`:
        one call of the runtime, as an app makes it (what the benchmark times)."""
        return self._run(x)

    def logits(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """float32 logits, ``(N,)`` or ``(N, 7)``, of uint8 images ``(N, 3, H, W)``.

        Args:
            batch_size: images per call; ``None``: 64 for an export (the planned bound of its
                program), :func:`inference.predict_logits`'s default for PyTorch.
        """
        if self.model is not None:
            kwargs = {} if batch_size is None else {"batch_size": batch_size}
            return inference.predict_logits(self.model, images, self.image_size, **kwargs)
        step = batch_size or EXPORTED_BATCH
        outs = [
            self._run(
                inference.to_input(images[i : i + step], self.image_size).contiguous().numpy()
            )
            for i in range(0, len(images), step)
        ]
        return np.concatenate(outs).astype(np.float32)

    def probabilities(self, images: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Melanoma probabilities of uint8 images, the logits divided by ``temperature``."""
        return data.melanoma_probability(self.logits(images), self.task, temperature)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.probabilities(images)

    def __repr__(self) -> str:
        source = self.path or type(self.model).__name__
        return f"Predictor({source}, {self.runtime}, {self.task}, {self.image_size} px)"
