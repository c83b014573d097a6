"""teacher: combine the trained teacher members into one teacher, scored on val."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_lib import artifacts, config, ensemble, models, runs


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

    teacher, meta = ensemble.combine([Path(args.members) / n / "model.pt" for n in names])
    val = runs.load_split(args.prepared, args.split, "val")
    z, scores = runs.score_val(teacher, val, meta["image_size"], meta["task"], ece_bins)
    runs.save_model(args.out, teacher, meta, z)
    summary = {"arch": meta["arch"], "members": len(names), **scores}
    if isinstance(teacher, models.Ensemble):
        for name, member in zip(names, teacher.members, strict=True):
            auc = runs.score_val(member, val, meta["image_size"], meta["task"], ece_bins)[1]
            summary[f"{name}_val_roc_auc"] = auc["val_roc_auc"]
    summary["params"] = models.count_parameters(teacher)
    artifacts.write_json(args.metrics, summary)
    print(f"teacher ({meta['arch']}): val ROC-AUC {scores['val_roc_auc']:.4f}")


if __name__ == "__main__":
    main()
