"""What a fresh interpreter has imported: the runtime and the CLI must stay light."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# What scoring must never import: the training loop, the exporters, the trackers.
NEVER = (
    "pipeline_lib.training", "pipeline_lib.losses", "pipeline_lib.augment",
    "pipeline_lib.distributed", "pipeline_lib.quantization", "torchao", "dvc", "dvclive",
    "optuna", "executorch.exir", "executorch.backends", "executorch.devtools",
    "onnxruntime.quantization", "onnxruntime.transformers", "onnx",
)  # fmt: skip
# torch's own ONNX exporter: torch loads it whenever timm is imported (for a checkpoint), so
# only a process scoring exported files alone can be checked for it.
TORCH_EXPORTER = ("torch.onnx",)


def imported_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The ``names`` (packages included) among ``modules``."""
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))
