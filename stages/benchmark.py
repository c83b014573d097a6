"""benchmark: teacher vs every student format on this CPU: size, MACs, latency, throughput, RAM, val AUC.

With ``--reference`` (the from-scratch reference run, :mod:`pipeline_lib.reference`), its
teacher and int8 student are rebuilt from their architectures and timed here too, beside the
current models; their val ROC-AUC is the reference run's. Every figure goes to the report
(``--report``, JSON); the metrics file keeps size, latency and throughput of :data:`SUMMARY`
(:func:`benchmarking.summary`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline_lib import artifacts, benchmarking, config, data, reference

EXPORTED = {  # name -> (file written by the quantize stage, runtime, precision)
    "student_executorch_fp32": ("student_fp32.pte", "executorch_xnnpack", "fp32"),
    "student_executorch_int8": ("student_int8.pte", "executorch_xnnpack", "int8"),
    "student_onnx_fp32": ("student_fp32.onnx", "onnxruntime_cpu", "fp32"),
    "student_onnx_int8": ("student_int8.onnx", "onnxruntime_cpu", "int8"),
    "student_onnx_fp16": ("student_fp16.onnx", "onnxruntime_cpu", "fp16"),
}
# In the metrics file: the deployable students (`melanoma-kd predict --model float, int8,
# int8-onnx`) and the teacher they are compared with.
SUMMARY = ["teacher_pytorch", "student_pytorch", "student_executorch_int8", "student_onnx_int8"]
REFERENCE = reference.BENCHMARK_NAMES  # the from-scratch reference's models, when timed


def summary_models(report: dict) -> list[str]:
    """The models of the metrics file: :data:`SUMMARY`, and the reference's when timed."""
    return SUMMARY + [name for name in REFERENCE.values() if name in report["models"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="teacher model.pt")
    parser.add_argument("--student", required=True, help="float student model.pt")
    parser.add_argument("--quantized", required=True, help="the quantize stage's folder")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--metrics", required=True, help="benchmark.json: the headline figures")
    parser.add_argument("--report", required=True, help="report.json: every figure")
    parser.add_argument("--plots", required=True)
    parser.add_argument("--reference", help="the from-scratch reference's figures (JSON)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("benchmark", args.params)
    # Val ROC-AUC is measured here, in each runtime: no stage reads metrics/.
    val = data.load_split(args.prepared, args.split, "val")
    images, labels = val.images, val.table["label"].to_numpy()

    results = {}
    for name, path in (("teacher_pytorch", args.teacher), ("student_pytorch", args.student)):
        results[name] = benchmarking.benchmark_checkpoint(path, images, labels, params)
        print(f"benchmark: {name} done")
    for name, (file, runtime, precision) in EXPORTED.items():
        path = Path(args.quantized) / file
        row = benchmarking.benchmark_file(path, images, labels, params, results["student_pytorch"])
        results[name] = {"runtime": runtime, "precision": precision} | row
        print(f"benchmark: {name} done")
    snapshot = reference.load(args.reference) if args.reference else None
    if snapshot:
        for key, name in REFERENCE.items():
            spec = snapshot["models"][key]
            with tempfile.TemporaryDirectory() as workdir:
                row = benchmarking.benchmark_architecture(spec, params, workdir)
            results[name] = row | {
                "val_roc_auc": spec["val_roc_auc"],
                "weights": f"random: cost only; val ROC-AUC of commit {snapshot['commit'][:7]}",
            }
            print(f"benchmark: {name} ({spec['arch']}, rebuilt) done")

    machine = benchmarking.machine()
    machine["label"] = benchmarking.machine_label(machine)
    report = {
        "machine": machine,
        "threads": params.threads,
        "throughput_batch": params.throughput_batch,
        "models": results,
        "teacher_over_student": benchmarking.ratios(results, "teacher_pytorch"),
    }
    notes = {}
    if snapshot:
        report["reference"] = snapshot
        notes = {n: f"from scratch, {snapshot['commit'][:7]}" for n in REFERENCE.values()}
    artifacts.write_json(args.report, report)
    artifacts.write_json(args.metrics, benchmarking.summary(report, summary_models(report)))
    one_thread = str(min(params.threads))
    plot = Path(args.plots) / "auc_vs_latency.png"
    benchmarking.plot_auc_vs_cost(results, one_thread, plot, machine["label"], notes)
    print(f"benchmark: on {machine['label']}")
    for name, r in results.items():
        lat = "  ".join(f"{t}t {v['median']:6.2f} ms" for t, v in r["latency_ms"].items())
        print(
            f"benchmark: {name:<24} {r['size_mb']:6.2f} MB  {lat}  "
            f"RAM {r['peak_ram_mb']:.0f} MB (model +{r['model_ram_mb']:.0f})  "
            f"val ROC-AUC {r['val_roc_auc']:.4f}"
        )


if __name__ == "__main__":
    main()
