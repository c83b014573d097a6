"""model_card: choose each deployable student's operating point on val, and write the model card.

The float student's temperature and threshold come from its saved val logits; each export is
scored on the val images in its own runtime and gets its own. The choices are checked against
the evaluate stage's, then written for ``melanoma-kd predict`` together with the card.
"""

from __future__ import annotations

import argparse

import torch

from pipeline_lib import artifacts, config, data, model_card, operating_point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True, help="folder with val.csv")
    parser.add_argument("--student", required=True, help="folder with model.pt, val_logits.npy")
    parser.add_argument(
        "--exported", action="append", default=[], metavar="NAME=PATH",
        help="an exported student (.pte or .onnx) under its `melanoma-kd --model` name",
    )  # fmt: skip
    parser.add_argument(
        "--report", action="append", default=[], metavar="STAGE=PATH",
        help="a stage's JSON report: metrics/<stage>.json, evaluate and benchmark: their "
        "plots/<stage>/report.json, split: split_metadata.json",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="operating_point.json")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--card", required=True, help="model_card.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    mp = config.load("metrics", args.params)

    val = data.load_split(args.prepared, args.split, "val")
    exported = dict(item.split("=", 1) for item in args.exported)
    reports = {k: artifacts.read_json(v) for k, v in (r.split("=", 1) for r in args.report)}
    points, summary, card = model_card.build(
        val, args.student, exported, reports, mp.target_sensitivity, mp.ece_bins,
        threads=torch.get_num_threads(),  # as many as torch, as the evaluate stage scores them
        external={n: s.labels for n, s in config.load("external", args.params).items()},
    )  # fmt: skip
    operating_point.write(args.out, points)
    artifacts.write_json(args.metrics, summary)
    with artifacts.atomic_path(args.card) as tmp:
        tmp.write_text(card)
    for name, p in points.items():
        print(
            f"model_card: {name}: T={p.temperature:.3f}, p >= {p.threshold:.4f}, val sensitivity "
            f"{p.val_sensitivity:.3f}, specificity {p.val_specificity:.3f}"
        )


if __name__ == "__main__":
    main()
