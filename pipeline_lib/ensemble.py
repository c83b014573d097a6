"""One teacher from several members: checkpoints of any architectures, averaged in probability.

Each teacher member trains in its own ``train_teacher@<name>`` stage (so a member's change
retrains only that member, and members can train on different machines); the ``teacher``
stage combines them here into one checkpoint that ``calibrate`` and ``distill`` take as they
would a single model. Members must share the task; architecture, weights, input normalisation
and input size may differ (the teacher takes the largest size and resizes it for a smaller
member as inference would). Only val is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from pipeline_lib import artifacts, data, inference, metrics, models, runs

# What every member must share for one output to serve them all.
SHARED_KEYS = ("task",)
# What rebuilds one member inside an ensemble checkpoint (models.load_checkpoint).
MEMBER_KEYS = ("arch", "global_pool", "drop_rate", "color_constancy", "pretrained")


def combine(paths: list[str | Path]) -> tuple[models.Classifier | models.Ensemble, dict]:
    """The teacher of the single-model checkpoints ``paths`` and its checkpoint metadata.

    One path gives that model back unchanged; several give a :class:`models.Ensemble` whose
    metadata lists each member (``members``) and names the architectures joined by ``+``.
    The teacher's input size is the largest member's; a member of a smaller size records its
    own (``image_size`` in its entry) and sees the input resized to it.

    Raises:
        models.CheckpointError: no path, a file that is already an ensemble, or members whose
            task differs (named with both values).
    """
    if not paths:
        raise models.CheckpointError("a teacher needs at least one member checkpoint")
    loaded = [models.load_checkpoint(p) for p in paths]
    first = loaded[0][1]
    for path, (model, meta) in zip(paths, loaded, strict=True):
        if isinstance(model, models.Ensemble):
            raise models.CheckpointError(
                f"{path} is already an ensemble: pass its members' checkpoints"
            )
        for key in SHARED_KEYS:
            if meta[key] != first[key]:
                raise models.CheckpointError(
                    f"{path} has {key}={meta[key]!r} but {paths[0]} has {key}={first[key]!r}: "
                    f"ensemble members must agree on {', '.join(SHARED_KEYS)}"
                )
    if len(loaded) == 1:
        return loaded[0]
    metas = [meta for _, meta in loaded]
    sizes = [int(m["image_size"]) for m in metas]
    size = max(sizes)
    specs = [{k: m.get(k, 0) for k in MEMBER_KEYS} for m in metas]
    for spec, member_size in zip(specs, sizes, strict=True):
        if member_size != size:
            spec["image_size"] = member_size
    meta = {
        "task": first["task"],
        "image_size": size,
        **{k: first[k] for k in ("global_pool", "drop_rate")},
        "arch": "+".join(m["arch"] for m in metas),
        "members": specs,
        "best_epoch": [m.get("best_epoch") for m in metas],
    }
    return models.Ensemble([model for model, _ in loaded], sizes, size).eval(), meta


def saved_val_logits(
    folder: str | Path, model: nn.Module, val: data.Prepared, image_size: int
) -> np.ndarray:
    """The ``val_logits.npy`` a member's run saved in ``folder``, checked against ``model``.

    Raises:
        ValueError: the file's rows are not the val split's, or its logits are not ``model``'s
            on the first 16 val images (a stale file); the file is named.
    """
    path = Path(folder) / "val_logits.npy"
    z = np.load(path)
    if len(z) != len(val.images):
        raise ValueError(f"{path} has {len(z)} rows but the val split {len(val.images)}")
    fresh = inference.predict_logits(model, val.images[:16], image_size)
    if not np.allclose(fresh, z[:16], rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"{path} does not match the model beside it: rerun the stage that wrote it"
        )
    return z


def write_teacher(
    members: dict[str, str | Path],
    val: data.Prepared,
    out_dir: str | Path,
    metrics_path: str | Path,
    ece_bins: int,
) -> dict:
    """Combine ``members`` (name -> ``model.pt``) and write the teacher the later stages read.

    Writes ``out_dir/model.pt``, ``out_dir/val_logits.npy`` and the metrics: the teacher's
    val figures, its size and each member's val ROC-AUC (``<name>_val_roc_auc``). A member's
    figure is that of the ``val_logits.npy`` its own run saved beside its ``model.pt``, so
    the members are not run on val a second time.

    Returns:
        The metrics written.
    """
    teacher, meta = combine(list(members.values()))
    z, scores = runs.score_val(teacher, val, meta["image_size"], meta["task"], ece_bins)
    runs.save_model(out_dir, teacher, meta, z)
    summary = {"arch": meta["arch"], "members": len(members), **scores}
    if isinstance(teacher, models.Ensemble):
        labels = val.table["label"].to_numpy()
        for (name, path), member, spec in zip(
            members.items(), teacher.members, meta["members"], strict=True
        ):
            size = spec.get("image_size", meta["image_size"])
            logits = saved_val_logits(Path(path).parent, member, val, size)
            probs = data.melanoma_probability(logits, meta["task"])
            summary[f"{name}_val_roc_auc"] = metrics.roc_auc(labels, probs)
    summary["params"] = models.count_parameters(teacher)
    artifacts.write_json(metrics_path, summary)
    return summary
