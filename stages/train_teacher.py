"""train_teacher: train one teacher member (``teachers.<name>`` over ``train_teacher``)."""

from __future__ import annotations

import argparse

import torch

from pipeline_lib import config, runs, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", required=True, help="a key of the params' teachers section")
    parser.add_argument("--weights", required=True, help="folder of converted ImageNet weights")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="folder for model.pt and val_logits.npy")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live", required=True, help="dvclive folder (per-epoch plots)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load_member(args.member, args.params)
    aug = config.load("augment", args.params)
    ece_bins = config.load("metrics", args.params).ece_bins

    torch.manual_seed(params.seed)
    model = runs.create_model(params, args.weights)
    objective = training.Supervised(params.task, params.loss, params.pos_weight, params.focal_gamma)
    result = runs.train_and_save(
        model, objective, params, aug, ece_bins, args.prepared, args.split,
        args.out, args.metrics, args.live, {"member": args.member},
    )  # fmt: skip
    if result.rank == 0:
        print(
            f"train_teacher@{args.member}: best val ROC-AUC {result.best_metrics['val_roc_auc']:.4f} at epoch {result.best_epoch}"
        )


if __name__ == "__main__":
    main()
