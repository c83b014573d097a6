"""teacher: combine the trained teacher members into one teacher, scored on val."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_lib import config, ensemble, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", required=True, help="folder of <member>/model.pt")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="folder for model.pt and val_logits.npy")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    names = list(config.load("teachers", args.params))
    ece_bins = config.load("metrics", args.params).ece_bins

    val = runs.load_split(args.prepared, args.split, "val")
    members = {name: Path(args.members) / name / "model.pt" for name in names}
    summary = ensemble.write_teacher(members, val, args.out, args.metrics, ece_bins)
    print(f"teacher ({summary['arch']}): val ROC-AUC {summary['val_roc_auc']:.4f}")


if __name__ == "__main__":
    main()
