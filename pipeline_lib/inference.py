"""Batched scoring of cached uint8 images with any model of the factory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib import artifacts


def resize(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float ``(N, 3, H, W)`` at ``image_size`` (bilinear, antialiased), channels_last."""
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


def to_input(batch: torch.Tensor | np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float ``[0, 1]`` at ``image_size``, channels_last."""
    return resize(torch.as_tensor(np.asarray(batch)).float().div_(255.0), image_size)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    image_size: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits of ``model`` (in eval mode, on ``device``) for every image; ``(N,)`` or ``(N, C)``."""
    model.eval()
    outs = [
        model(to_input(images[i : i + batch_size], image_size).to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outs).numpy().astype(np.float32)


def write_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Export a float model to ONNX (opset 17) at ``example``'s image size, batch dynamic.

    ``dynamo=False`` uses the TorchScript exporter: the default dynamo exporter needs
    ``onnxscript``, which is not installed (docs/profiling.md).
    """
    # Exported in float32 even when called under a training loop's bf16 autocast (a
    # distillation teacher is exported on its first forward, inside the loop).
    with artifacts.atomic_path(path) as tmp, torch.autocast(example.device.type, enabled=False):
        torch.onnx.export(
            model.eval(), (example.contiguous(),), str(tmp),
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; ``threads`` None or 0 = one per core (ORT's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle ORT threads would otherwise spin after each run, taking the cores from what runs
    # next (measured: the student's forward 59 -> 105 ms per distillation step).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModule(nn.Module):
    """A frozen float model run by ONNX Runtime on CPU, for a teacher that only runs forward.

    Exported on the first call, at that batch's image size (batch dimension dynamic); ORT
    folds batch norm into the convolutions and fuses the activations: a ResNet-18 teacher's
    forward at batch 64, 128 px took 340-399 ms per distillation step against 406-452 ms in
    eager PyTorch on this 2-core CPU, and a distillation epoch 70-85 s against 84-96 s
    (docs/profiling.md). Outputs agree with the PyTorch model to float rounding (about 1e-6). The
    result is a CPU float32 tensor moved to the input's device; no gradient.
    """

    def __init__(self, model: nn.Module, threads: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.threads = threads or torch.get_num_threads()
        self._session: ort.InferenceSession | None = None

    def _start(self, x: torch.Tensor) -> ort.InferenceSession:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            write_onnx(self.model.cpu(), x[:1].detach().float().cpu(), path)
            return onnx_session(path, self.threads)  # the session holds the graph in memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._session is None:
            self._session = self._start(x)
        images = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self._session.run(None, {"images": images})
        return torch.from_numpy(logits).to(x.device)
