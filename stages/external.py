"""external: score one labelled image set from elsewhere (``external.<name>`` in params.yaml)
with the deployed students at their val-chosen operating points; nothing is refitted on it.

The report (``--out``) holds every figure; the metrics file keeps the ones ``dvc metrics diff``
compares (:func:`external.summary`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline_lib import artifacts, config, external, prediction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", required=True, help="the set's name under external: in params")
    parser.add_argument(
        "--operating-point", required=True, help="model_card's operating_point.json"
    )
    parser.add_argument("--checkpoint", required=True, help="the float student's model.pt")
    parser.add_argument("--pte", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    sets = config.load("external", args.params)
    if args.set not in sets:
        raise SystemExit(f"external: no set {args.set!r} under external: in {args.params}")
    entry = sets[args.set]
    params = config.load("evaluate", args.params)
    bins = config.load("metrics", args.params).ece_bins
    paths = prediction.ModelPaths(
        Path(args.operating_point), Path(args.checkpoint), Path(args.pte), Path(args.onnx)
    )
    results = external.run(
        entry.images, entry.labels, args.out, ["int8", "int8-onnx"], paths, args.set,
        params.bootstrap, params.seed, bins, entry.max_bad_fraction,
        threads=torch.get_num_threads(),
    )  # fmt: skip
    artifacts.write_json(args.metrics, external.summary(results))
    for model, m in results["models"].items():
        print(
            f"external {args.set}: {model} ROC-AUC {m['roc_auc']:.4f} on {results['n_scored']} images"
        )


if __name__ == "__main__":
    main()
