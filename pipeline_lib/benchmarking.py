"""CPU cost of the teacher and of every student format, measured the same way for each.

Every model is a :class:`runtime.Predictor`, timed through :meth:`runtime.Predictor.run`
(float32 ``[0, 1]`` images in, logits out) with its thread count set explicitly in its own
runtime (:meth:`runtime.Predictor.with_threads`): ``torch.set_num_threads`` for PyTorch eager,
``intra_op_num_threads`` for ONNX Runtime, the process-wide pool for ExecuTorch. Latency is
per call at batch 1 after warm-up; peak RAM is taken in a fresh process per model, so that one
model's allocations never hide another's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline_lib import (
    data,
    distributed,
    inference,
    metrics,
    models,
    plotting,
    quantization,
    runtime,
)
from pipeline_lib.config import BenchmarkParams


def cpu_from_cpuinfo(text: str) -> dict:
    """The CPU's model name and its x86 int8 flags (VNNI, AMX) from ``/proc/cpuinfo`` text."""
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {
        "cpu": name,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "amx": "amx_tile" in flags,
    }


def machine() -> dict:
    """What the latencies were measured on: the CPU, its vector ISA as PyTorch dispatches it
    (``torch.backends.cpu.get_cpu_capability``), VNNI and AMX (x86 int8 dot products), whether
    ``bf16: auto`` trains in bf16 here (:func:`distributed.native_bf16`), the logical CPUs this
    process may use, and the torch version."""
    cpuinfo = Path("/proc/cpuinfo")
    info = cpu_from_cpuinfo(cpuinfo.read_text()) if cpuinfo.is_file() else {}
    return {
        "cpu": info.pop("cpu", "") or platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        **info,
        "native_bf16": distributed.native_bf16(),
        "logical_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch": torch.__version__,
    }


def machine_label(m: dict) -> str:
    """One line for a figure: ``AMD EPYC, AVX2, no VNNI, 2 CPUs``."""
    vnni = {True: "VNNI", False: "no VNNI"}.get(m.get("vnni"), "")
    parts = [m.get("cpu", ""), m.get("capability", ""), vnni, f"{m.get('logical_cpus')} CPUs"]
    return ", ".join(p for p in parts if p)


def macs(model: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one image (FLOPs counted by PyTorch, halved)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() // 2


def call_times_ms(
    run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, runs: int
) -> np.ndarray:
    """Wall time of each of ``runs`` calls of ``run(x)`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        run(x)
        times[i] = time.perf_counter() - start
    return times * 1e3


def measure(
    predictor: runtime.Predictor, image: np.ndarray, batch: np.ndarray, params: BenchmarkParams
) -> dict:
    """Batch-1 latency (median, p90) and batch throughput at every thread count of ``params``.

    Args:
        image, batch: float32 ``[0, 1]`` inputs at the model's input size, as
            :meth:`runtime.Predictor.run` takes them.

    Throughput repeats ``max(3, runs // throughput_batch)`` batches, so it sees about as many
    images as the latency runs do.
    """
    latency, throughput = {}, {}
    for threads in params.threads:
        run = predictor.with_threads(threads).run  # set again before each measurement
        times = call_times_ms(run, image, params.warmup, params.runs)
        latency[str(threads)] = {
            "median": float(np.median(times)),
            "p90": float(np.percentile(times, 90)),
        }
        reps = max(3, params.runs // params.throughput_batch)
        batch_ms = call_times_ms(run, batch, min(2, params.warmup), reps)
        throughput[str(threads)] = float(len(batch) / (np.median(batch_ms) / 1e3))
    return {"latency_ms": latency, "throughput_img_s": throughput}


# Run by a fresh interpreter per model. Peaks are read from VmHWM, not ru_maxrss: a forked
# child's ru_maxrss starts at the parent's resident size (1.8 GB in the benchmark stage,
# measured), VmHWM belongs to the child's own address space. After the imports the mark is
# reset (Linux: writing 5 to /proc/self/clear_refs), so the model's own peak is measured apart
# from the libraries'. Each process imports what an app of its format would link: onnxruntime
# alone for ONNX (importing torch, 750 MB resident here, a CUDA build, would swamp a 2 MB
# model), the runtime module without the exporter for ExecuTorch, torch and timm for PyTorch.
_PEAK_RAM_CHILD = """
import json, re, sys
def rss(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
path, size = sys.argv[1], int(sys.argv[2])
import numpy as np
x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
if path.endswith(".onnx"):
    import onnxruntime as ort
    def load_and_score():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: x})
elif path.endswith(".pte"):
    from pipeline_lib import runtime
    def load_and_score():
        runtime.Predictor.load(path, threads=1).run(x)
else:
    import torch
    from pipeline_lib import models
    torch.set_num_threads(1)
    def load_and_score():
        model, _ = models.load_checkpoint(path)
        with torch.inference_mode():
            model(torch.from_numpy(x))
imports_peak, imports_rss = rss("VmHWM"), rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
load_and_score()
peak = rss("VmHWM")
print(json.dumps({"peak_ram_mb": max(peak, imports_peak), "libraries_ram_mb": imports_rss,
                  "model_ram_mb": peak - imports_rss}))
"""


def peak_ram(path: str | Path, image_size: int) -> dict:
    """Peak RAM (MB) of a fresh process that loads ``path`` and scores one image.

    Returns ``peak_ram_mb`` (peak resident set of the whole process), ``libraries_ram_mb``
    (resident after the imports, before the model) and ``model_ram_mb`` (what loading the
    model and one inference add to it).
    """
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RAM_CHILD, str(path), str(image_size)],
        stdin=subprocess.DEVNULL,  # a child reading a terminal would be stopped (SIGTTIN)
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"peak-RAM run of {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _val_roc_auc(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    return metrics.roc_auc(labels, data.melanoma_probability(logits, task))


def benchmark_checkpoint(
    path: str | Path, val_images: np.ndarray, val_labels: np.ndarray, params: BenchmarkParams
) -> dict:
    """Every figure of a PyTorch checkpoint run eagerly in float32, val ROC-AUC included."""
    predictor = runtime.Predictor.load(path)
    meta, size = predictor.meta, predictor.image_size
    x = inference.to_input(val_images[: params.throughput_batch], size).contiguous().numpy()
    logits = predictor.logits(val_images)
    row = {
        "runtime": "pytorch_eager", "precision": "fp32", "arch": meta["arch"],
        "task": meta["task"], "image_size": size,
        "params": models.count_parameters(predictor.model), "macs": macs(predictor.model, size),
        "size_mb": runtime.size_mb(path),
        "val_roc_auc": _val_roc_auc(logits, val_labels, meta["task"]),
    }  # fmt: skip
    row |= measure(predictor, x[:1], x, params)
    return row | peak_ram(path, size)


def benchmark_file(
    path: str | Path,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    params: BenchmarkParams,
    float_row: dict,
) -> dict:
    """Every figure of an exported ``.pte``/``.onnx`` student, run in its own runtime.

    Args:
        float_row: :func:`benchmark_checkpoint` of the float student it was exported from
            (architecture, task, image size, parameters and MACs carry over).
    """
    predictor = runtime.Predictor.load(path)
    size = predictor.image_size
    x = inference.to_input(val_images[: params.throughput_batch], size).contiguous().numpy()
    logits = predictor.logits(val_images)
    keep = ("arch", "task", "image_size", "params", "macs")
    row = {k: float_row[k] for k in keep} | {
        "size_mb": runtime.size_mb(path),
        "val_roc_auc": _val_roc_auc(logits, val_labels, float_row["task"]),
    }
    row |= measure(predictor, x[:1], x, params)
    return row | peak_ram(path, size)


def benchmark_architecture(
    spec: dict, params: BenchmarkParams, workdir: str | Path, seed: int = 0
) -> dict:
    """Cost of a model this run did not train, measured here from its architecture alone.

    The model is built with random weights (``spec``: ``arch``, ``task``, ``image_size``,
    ``runtime`` and ``precision`` as a benchmark row gives them) and, for an int8 ExecuTorch
    program, quantized post-training on random images and lowered to XNNPACK as the quantize
    stage does. Latency, throughput, size and RAM do not depend on the weights' values (no
    kernel here skips zeros), so they are the trained model's on this CPU; val ROC-AUC is not
    measured (the caller carries the trained run's over).

    Args:
        workdir: where the rebuilt file is written (the caller removes it).

    Raises:
        ValueError: for a runtime and precision other than PyTorch eager fp32 or ExecuTorch int8.
    """
    kind = (spec["runtime"], spec["precision"])
    if kind not in (("pytorch_eager", "fp32"), ("executorch_xnnpack", "int8")):
        raise ValueError(f"cannot rebuild a {kind} model; expected PyTorch fp32 or ExecuTorch int8")
    torch.manual_seed(seed)
    size = int(spec["image_size"])
    model = models.create(spec["arch"], spec["task"]).eval()
    rng = np.random.default_rng(seed)
    x = rng.random((params.throughput_batch, 3, size, size), dtype=np.float32)
    row = {
        "runtime": spec["runtime"], "precision": spec["precision"], "arch": spec["arch"],
        "task": spec["task"], "image_size": size,
        "params": models.count_parameters(model), "macs": macs(model, size),
    }  # fmt: skip
    if kind[0] == "pytorch_eager":
        path = Path(workdir) / "reference.pt"
        meta = {"arch": spec["arch"], "task": spec["task"], "global_pool": "avg",
                "drop_rate": 0.0, "image_size": size}  # fmt: skip
        models.save_checkpoint(path, model, meta)
    else:
        path = Path(workdir) / "reference_int8.pte"
        calibration = rng.random((32, 3, size, size), dtype=np.float32)
        graph = quantization.ptq_int8(model, calibration)
        quantization.write_pte(quantization.export(graph, size), path)
    predictor = runtime.Predictor.load(path)
    row["size_mb"] = runtime.size_mb(path)
    row |= measure(predictor, x[:1], x, params)
    return row | peak_ram(path, size)


def ratios(results: dict[str, dict], reference: str) -> dict[str, dict[str, float]]:
    """``reference``'s cost divided by each other model's: how many times smaller or faster."""
    ref = results[reference]
    out = {}
    for name, r in results.items():
        if name == reference:
            continue
        row = {
            f"latency_{t}t": ref["latency_ms"][t]["median"] / r["latency_ms"][t]["median"]
            for t in r["latency_ms"]
        }
        for key in ("params", "macs", "size_mb"):
            row[key] = ref[key] / r[key]
        out[name] = row
    return out


def summary(report: dict, models: list[str]) -> dict:
    """The figures a reviewer compares across runs (``dvc metrics diff``): ``benchmark.json``.

    For each of ``models``: file size, median batch-1 latency and batch throughput at every
    thread count. Every figure keeps its key path and value from ``report`` (the stage's
    report: every model and figure, p90 latencies, RAM, MACs, ratios), so the summary of a
    summary is itself.
    """
    out = {}
    for name in models:
        r = report["models"][name]
        out[name] = {
            "size_mb": r["size_mb"],
            "latency_ms": {t: {"median": v["median"]} for t, v in r["latency_ms"].items()},
            "throughput_img_s": dict(r["throughput_img_s"]),
        }
    return {"models": out}


def plot_auc_vs_cost(
    results: dict[str, dict],
    threads: str,
    path: str | Path,
    where: str = "this CPU",
    notes: dict[str, str] | None = None,
) -> None:
    """Val ROC-AUC against batch-1 latency (at ``threads``) and against file size, as PNG;
    ``where`` names the machine in the title (:func:`machine_label`). A model in ``notes``
    (a model of another run: the from-scratch reference) is drawn hollow, its note in the
    legend."""
    notes = notes or {}
    # plotting's pyplot, which it has switched to the Agg backend (renders without a display)
    fig, axes = plotting.plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = "osD^vP*Xh<>"
    for ax, key, label in (
        (axes[0], "latency", f"batch-1 median latency, {threads} thread(s) [ms]"),
        (axes[1], "size_mb", "file size [MB]"),
    ):
        for i, (name, r) in enumerate(results.items()):
            x = r["latency_ms"][threads]["median"] if key == "latency" else r["size_mb"]
            colour = f"C{i % 10}"
            hollow = {"facecolors": "none", "edgecolors": colour, "linewidths": 1.5}
            ax.scatter(
                x, r["val_roc_auc"], s=50, marker=markers[i % len(markers)],
                label=f"{name} ({notes[name]})" if name in notes else name,
                **(hollow if name in notes else {"color": colour}),
            )  # fmt: skip
        ax.set(xscale="log", xlabel=label)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("val ROC-AUC (raw)")
    # Students cluster within a few percent of each other: a legend stays readable, labels do not.
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(f"Teacher and students: accuracy against cost on {where}")
    plotting.save(fig, path)
