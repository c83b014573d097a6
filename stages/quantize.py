"""quantize: export the student to ExecuTorch and ONNX, float and int8, each scored on val in its runtime.

Every figure goes to the report (``--report``, JSON); the metrics file keeps the ones a
reviewer compares between runs (:func:`quantization.summary`).
"""

from __future__ import annotations

import argparse

from pipeline_lib import artifacts, config, data, quantization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="the float student's model.pt")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="folder for the .pte and .onnx files")
    parser.add_argument("--metrics", required=True, help="quantize.json: the headline figures")
    parser.add_argument("--report", required=True, help="report.json: every figure")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("quantize", args.params)
    recipe = config.load("distill", args.params)  # the student's recipe, for QAT
    aug = config.student_augment(args.params)
    bins = config.load("metrics", args.params).ece_bins

    train, val = (data.load_split(args.prepared, args.split, name) for name in ("train", "val"))
    report = quantization.quantize_student(
        args.checkpoint, train, val, args.out, params, recipe, aug, bins
    )
    artifacts.write_json(args.report, report)
    artifacts.write_json(args.metrics, quantization.summary(report))
    for name in quantization.FILES:
        r = report[name]
        print(
            f"quantize: {r['file']:<18} {r['size_mb']:6.2f} MB  val ROC-AUC {r['val_roc_auc']:.4f} "
            f"(drop {r['val_roc_auc_drop']:+.4f})  ECE {r['val_ece']:.4f}"
        )
    print(f"quantize: QAT triggered={report['qat']['triggered']} used={report['qat']['used']}")


if __name__ == "__main__":
    main()
