"""Benchmark measurements on a tiny model with a few runs: structure and sanity, not speed."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import REPO
from torch import nn

from pipeline_lib import benchmarking, config, models, quantization, runtime

SIZE = 32
PARAMS = dataclasses.replace(
    config.load("benchmark", REPO / "params.yaml"), warmup=1, runs=5, threads=[1, 2],
    throughput_batch=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("dsnet_tiny").eval()
    path = tmp_path_factory.mktemp("bench") / "model.pt"
    meta = {"arch": "dsnet_tiny", "task": "binary", "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(path, model, meta | {"image_size": SIZE})
    return path


def test_macs_of_a_single_convolution():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    # 8 outputs x 3 inputs x 9 taps per output pixel, 8 x 8 pixels
    assert benchmarking.macs(conv, 8) == 8 * 3 * 9 * 64


def test_measure_returns_latency_and_throughput_per_thread_count():
    model = models.create("dsnet_tiny").eval()
    x = np.random.default_rng(0).random((4, 3, SIZE, SIZE), dtype=np.float32)
    predictor = runtime.Predictor.from_model(model, "binary", SIZE)
    out = benchmarking.measure(predictor, x[:1], x, PARAMS)
    assert set(out["latency_ms"]) == set(out["throughput_img_s"]) == {"1", "2"}
    for lat in out["latency_ms"].values():
        assert 0 < lat["median"] <= lat["p90"]
    assert all(v > 0 for v in out["throughput_img_s"].values())
    assert torch.get_num_threads() == 2  # the last thread count measured was really set


def test_call_times_counts_runs_only():
    calls = []
    times = benchmarking.call_times_ms(lambda x: calls.append(x), np.zeros(1), warmup=3, runs=7)
    assert len(times) == 7 and len(calls) == 10 and (times >= 0).all()


def test_benchmark_checkpoint_and_exported_file(checkpoint, prepared, tmp_path):
    labels = prepared.table["label"].to_numpy()
    row = benchmarking.benchmark_checkpoint(checkpoint, prepared.images, labels, PARAMS)
    assert row["params"] == models.count_parameters(models.load_checkpoint(checkpoint)[0])
    assert row["macs"] > row["params"]  # a conv net reuses each weight at many pixels
    assert 0 <= row["val_roc_auc"] <= 1 and row["size_mb"] > 0
    assert row["peak_ram_mb"] >= row["libraries_ram_mb"] > 0 and row["model_ram_mb"] >= 0

    onnx_path = tmp_path / "student_fp32.onnx"
    quantization.write_onnx(models.load_checkpoint(checkpoint)[0], SIZE, onnx_path)
    exported = benchmarking.benchmark_file(onnx_path, prepared.images, labels, PARAMS, row)
    assert exported["macs"] == row["macs"] and exported["params"] == row["params"]
    assert exported["val_roc_auc"] == pytest.approx(row["val_roc_auc"], abs=1e-3)
    assert set(exported["latency_ms"]) == {"1", "2"}
    # ONNX models are measured with onnxruntime alone, without torch's ~750 MB.
    assert exported["libraries_ram_mb"] < row["libraries_ram_mb"]


@pytest.mark.parametrize(
    ("runtime_name", "precision", "task", "suffix"),
    [("executorch_xnnpack", "int8", "binary", ".pte"), ("pytorch_eager", "fp32", "dx", ".pt")],
)
def test_benchmark_architecture_rebuilds_and_times_an_untrained_model(
    runtime_name, precision, task, suffix, tmp_path
):
    spec = {"runtime": runtime_name, "precision": precision, "arch": "dsnet_tiny", "task": task,
            "image_size": SIZE, "val_roc_auc": 0.9}  # fmt: skip
    row = benchmarking.benchmark_architecture(spec, PARAMS, tmp_path)
    rebuilt = next(tmp_path.glob(f"*{suffix}"))
    assert row["size_mb"] == runtime.size_mb(rebuilt)
    predictor = runtime.Predictor.load(rebuilt)
    assert (predictor.task, predictor.image_size) == (task, SIZE)
    assert row["params"] == models.count_parameters(models.create("dsnet_tiny", task))
    assert row["macs"] == benchmarking.macs(models.create("dsnet_tiny", task), SIZE)
    assert {k: row[k] for k in ("runtime", "precision", "arch", "task", "image_size")} == {
        k: spec[k] for k in ("runtime", "precision", "arch", "task", "image_size")
    }
    assert set(row["latency_ms"]) == {"1", "2"} and row["peak_ram_mb"] > 0
    assert "val_roc_auc" not in row  # untrained: its accuracy is the caller's to carry over


def test_benchmark_architecture_refuses_a_format_it_cannot_rebuild(tmp_path):
    spec = {"runtime": "onnxruntime_cpu", "precision": "int8", "arch": "dsnet_tiny",
            "task": "binary", "image_size": SIZE}  # fmt: skip
    with pytest.raises(ValueError, match="cannot rebuild a .*onnxruntime_cpu"):
        benchmarking.benchmark_architecture(spec, PARAMS, tmp_path)


def test_ratios_divide_the_reference_by_each_model():
    def row(ms, params, macs, size):
        return {
            "latency_ms": {"1": {"median": ms}},
            "params": params,
            "macs": macs,
            "size_mb": size,
        }

    results = {"teacher": row(20.0, 1000, 10**6, 4.0), "student": row(5.0, 100, 10**5, 1.0)}
    assert benchmarking.ratios(results, "teacher") == {
        "student": {"latency_1t": 4.0, "params": 10.0, "macs": 10.0, "size_mb": 4.0}
    }


def test_plot_writes_a_png(tmp_path):
    row = {"latency_ms": {"1": {"median": 3.0}}, "size_mb": 2.0, "val_roc_auc": 0.8}
    path = tmp_path / "plots" / "auc_vs_latency.png"
    results = {"a": row, "b": row | {"size_mb": 5.0}, "ref": row | {"val_roc_auc": 0.7}}
    benchmarking.plot_auc_vs_cost(results, "1", path, "AMD EPYC", {"ref": "from scratch, abc1234"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2
"""


def test_cpuinfo_gives_the_cpu_and_its_int8_flags():
    assert benchmarking.cpu_from_cpuinfo(CPUINFO) == {
        "cpu": "Intel(R) Xeon(R) Platinum 8480+",
        "vnni": True,
        "amx": True,
    }  # the first processor's lines
    avx2 = benchmarking.cpu_from_cpuinfo("model name : AMD EPYC\nflags : fpu avx2 fma\n")
    assert avx2 == {"cpu": "AMD EPYC", "vnni": False, "amx": False}
    assert benchmarking.cpu_from_cpuinfo("flags : avx2 avx_vnni\n")["vnni"]  # AVX-VNNI (no 512)


def test_machine_names_what_the_latencies_were_measured_on():
    m = benchmarking.machine()
    assert m["capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["torch"] == torch.__version__ and m["logical_cpus"] >= 1 and m["cpu"]
    assert m["native_bf16"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    label = benchmarking.machine_label(m | {"cpu": "AMD EPYC", "capability": "AVX2", "vnni": False})
    assert label == f"AMD EPYC, AVX2, no VNNI, {m['logical_cpus']} CPUs"
