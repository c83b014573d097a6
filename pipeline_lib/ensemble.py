"""One teacher from several members: checkpoints of any architectures, averaged in probability.

Each teacher member trains in its own ``train_teacher@<name>`` stage (so a member's change
retrains only that member, and members can train on different machines); the ``teacher``
stage combines them here into one checkpoint that ``calibrate`` and ``distill`` take as they
would a single model. Members must share the task and the input size; architecture, weights
and input normalisation may differ. Only val is read.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_lib import models

# What every member must share for one input and one output to serve them all.
SHARED_KEYS = ("task", "image_size")
# What rebuilds one member inside an ensemble checkpoint (models.load_checkpoint).
MEMBER_KEYS = ("arch", "global_pool", "drop_rate", "color_constancy", "pretrained")


def combine(paths: list[str | Path]) -> tuple[models.Classifier | models.Ensemble, dict]:
    """The teacher of the single-model checkpoints ``paths`` and its checkpoint metadata.

    One path gives that model back unchanged; several give a :class:`models.Ensemble` whose
    metadata lists each member (``members``) and names the architectures joined by ``+``.

    Raises:
        models.CheckpointError: no path, a file that is already an ensemble, or members whose
            task or input size differ (named with both values).
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
    meta = {
        **{k: first[k] for k in (*SHARED_KEYS, "global_pool", "drop_rate")},
        "arch": "+".join(m["arch"] for m in metas),
        "members": [{k: m.get(k, 0) for k in MEMBER_KEYS} for m in metas],
        "best_epoch": [m.get("best_epoch") for m in metas],
    }
    return models.Ensemble([model for model, _ in loaded]).eval(), meta
