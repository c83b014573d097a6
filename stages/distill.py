"""distill: train the student with the frozen (calibrated) teacher on the same augmented batches."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline_lib import artifacts, config, memo, models, runs, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (model.pt)")
    parser.add_argument("--temperature", required=True, help="calibrate's temperature.json")
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--weights", required=True, help="folder of converted ImageNet weights")
    parser.add_argument("--out", required=True, help="folder for model.pt and val_logits.npy")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live", required=True, help="dvclive folder (per-epoch plots)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load("distill", args.params)
    kd = config.load("kd", args.params)
    aug = config.student_augment(args.params)
    ece_bins = config.load("metrics", args.params).ece_bins

    torch.manual_seed(params.seed)
    teacher, teacher_meta = models.load_checkpoint(args.teacher)
    fitted = artifacts.read_json(Path(args.temperature))["temperature"]
    teacher_temperature = fitted if kd.use_calibrated_teacher else 1.0
    student = runs.create_model(params, args.weights)
    objective = training.Distillation(
        teacher.to(memory_format=torch.channels_last), teacher_meta["task"], params.task,
        params.loss, kd.temperature, kd.alpha, teacher_temperature, params.pos_weight,
        params.focal_gamma, teacher_image_size=teacher_meta["image_size"],
        teacher_runtime=kd.teacher_runtime, memo=memo.cache_path(),
    )  # fmt: skip
    extra = {
        "kd_temperature": kd.temperature,
        "kd_alpha": kd.alpha,
        "teacher_temperature": teacher_temperature,
        "teacher_arch": teacher_meta["arch"],
        "color_constancy": params.color_constancy,
    }
    result = runs.train_and_save(
        student, objective, params, aug, ece_bins, args.prepared, args.split,
        args.out, args.metrics, args.live, extra,
    )  # fmt: skip
    if result.rank == 0:
        print(
            f"distill: best val ROC-AUC {result.best_metrics['val_roc_auc']:.4f} at epoch {result.best_epoch}"
        )


if __name__ == "__main__":
    main()
