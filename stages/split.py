"""split: lesion-grouped, melanoma-stratified 70/15/15 train/val/test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_lib import artifacts, config, data, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--out", required=True, help="folder for train/val/test.csv")
    parser.add_argument("--summary", required=True, help="split_metadata.json")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("split", args.params)

    table = data.load_prepared(args.prepared).table
    assignment = split.assign(table, params.seed, params.val_fraction, params.test_fraction)
    table = table.assign(row=range(len(table)))
    for name in split.SPLITS:
        artifacts.write_csv(Path(args.out) / f"{name}.csv", table[assignment == name])
    summary = split.describe(table, assignment, params.seed)
    artifacts.write_json(args.summary, summary)
    print("split:", {k: v["images"] for k, v in summary.items() if k != "seed"})


if __name__ == "__main__":
    main()
