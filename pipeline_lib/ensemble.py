"""Combine teachers trained apart into one ensemble teacher, scored on val.

``train_teacher.ensemble: N`` trains the N members one after another inside one stage. Members
trained apart (``train_teacher.seed: k`` on several machines at once, or runs already in the
DVC cache) combine here into the very checkpoint the stage would have written: member ``k`` of
``ensemble: N`` is the single teacher of seed ``seed + k``, so seeds 0, 1, 2 combined equal
``ensemble: 3``. The output folder holds ``model.pt`` and ``val_logits.npy`` like the
train_teacher stage's, so ``calibrate`` and ``distill`` take it unchanged:

    python -m pipeline_lib.ensemble --members t0/model.pt t1/model.pt t2/model.pt \\
        --out ensemble --metrics ensemble.json

Only val is read (the members' and the ensemble's val ROC-AUC); the test split never is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline_lib import artifacts, config, models, runs

# What every member must share for one preprocessing and one output to serve them all.
SHARED_KEYS = ("arch", "task", "global_pool", "drop_rate", "image_size")


def combine(paths: list[str | Path]) -> tuple[models.Ensemble, list[dict]]:
    """The ensemble of the single-model checkpoints ``paths`` and each one's metadata.

    Raises:
        models.CheckpointError: fewer than two files, a file that is already an ensemble, or
            one whose architecture, task, pooling, dropout or input size differs from the
            first's (named with both values).
    """
    if len(paths) < 2:
        raise models.CheckpointError(f"an ensemble needs two or more checkpoints, got {len(paths)}")
    loaded = [models.load_checkpoint(p) for p in paths]
    first = loaded[0][1]
    for path, (model, meta) in zip(paths, loaded, strict=True):
        if isinstance(model, models.Ensemble):
            raise models.CheckpointError(
                f"{path} is already an ensemble of {meta['members']}: pass its members' checkpoints"
            )
        for key in SHARED_KEYS:
            if meta[key] != first[key]:
                raise models.CheckpointError(
                    f"{path} has {key}={meta[key]!r} but {paths[0]} has {key}={first[key]!r}: "
                    f"ensemble members must agree on {', '.join(SHARED_KEYS)}"
                )
    return models.Ensemble([model for model, _ in loaded]).eval(), [m for _, m in loaded]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", nargs="+", required=True, help="model.pt of each teacher")
    ap.add_argument("--out", required=True, help="folder for model.pt and val_logits.npy")
    ap.add_argument("--metrics", required=True, help="metrics JSON, as train_teacher writes it")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--split", default="data/split")
    ap.add_argument("--params", default="params.yaml", help="for metrics.ece_bins")
    args = ap.parse_args(argv)
    ece_bins = config.load("metrics", args.params).ece_bins
    ensemble, metas = combine(args.members)
    meta = metas[0]
    val = runs.load_split(args.prepared, args.split, "val")
    member_auc = [
        runs.score_val(m, val, meta["image_size"], meta["task"], ece_bins)[1]["val_roc_auc"]
        for m in ensemble.members
    ]
    z, best = runs.score_val(ensemble, val, meta["image_size"], meta["task"], ece_bins)
    keep = {k: meta[k] for k in (*SHARED_KEYS, "best_epoch") if k in meta}
    runs.save_model(args.out, ensemble, keep, z)
    summary = {
        "arch": meta["arch"],
        "task": meta["task"],
        "params": models.count_parameters(ensemble),
        **best,
        **runs.member_summary(member_auc, [m.get("best_epoch") for m in metas]),
        "member_checkpoints": [str(p) for p in args.members],
    }
    artifacts.write_json(args.metrics, summary)
    print(json.dumps({k: summary[k] for k in ("val_roc_auc", "member_val_roc_auc")}))


if __name__ == "__main__":
    main()
