"""The reference studies as one grid of DVC experiments: queue them, run them, tabulate them.

Each row is a named ``dvc exp run`` with its ``-S`` overrides on the committed defaults, so a row
is reproduced by its name, its overrides and the commit it ran on, and ``dvc exp show`` lists it.

    python -m pipeline_lib.studies list                      # every study and row
    python -m pipeline_lib.studies queue [--study kd_grid]   # dvc exp run --queue -n <row> -S ...
    dvc queue start -j 1                                     # one worker: trainings use both cores
    python -m pipeline_lib.studies report --out plots/studies.md  # a val table per study

Every figure of the report is a validation figure (the test split is scored once per committed
run, by the evaluate stage). A row that only retrains the student starts ``dvc exp run distill``
(with its downstream stages when ``--full``).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

Overrides = dict[str, object]

SCRATCH_STUDENT: Overrides = {  # a student without ImageNet weights needs a longer schedule
    "distill.pretrained": False,
    "distill.epochs": 16,
    "distill.lr": 3.0e-3,
    "distill.bf16": False,
    "distill.patience": 5,
}


@dataclass(frozen=True)
class Study:
    """Rows (name -> overrides) that answer one reference project's question."""

    question: str
    rows: dict[str, Overrides]
    stage: str = "distill"  # the stage each row targets (its upstream comes from the cache)
    columns: tuple[str, ...] = field(default=())  # the params shown in the table
    metrics: dict[str, str] | None = None  # `dvc exp show` column -> header; None: the student's
    member: str | None = None  # the teacher member of {member} in metrics, unless a row adds one


def _kd_grid() -> dict[str, Overrides]:
    rows: dict[str, Overrides] = {"kd-alpha0": {"kd.alpha": 0.0}}
    for t in (1.0, 2.0):
        for alpha in (0.1, 0.5, 0.7, 0.9):
            rows[f"kd-T{t:g}-a{alpha:g}"] = {"kd.temperature": t, "kd.alpha": alpha}
    return rows


LATENCY = "metrics/benchmark.json:models.student_executorch_int8.latency_ms.1.median"
INT8_AUC = "metrics/quantize.json:int8_pte.val_roc_auc"
METRICS = {  # column of `dvc exp show --csv` -> table header
    "metrics/distill.json:val_roc_auc": "val ROC-AUC",
    "metrics/distill.json:val_pr_auc": "val PR-AUC",
    "metrics/distill.json:val_ece": "val ECE",
    "metrics/distill.json:best_epoch": "best epoch",
    "metrics/distill.json:train_seconds": "train (min)",
    INT8_AUC: "int8 val ROC-AUC",
    "metrics/quantize.json:int8_pte.size_mb": "int8 MB",
    LATENCY: "int8 ms (1 thread)",
}
STUDENT_METRICS = {c: h for c, h in METRICS.items() if c.startswith("metrics/distill.json:")}
OPERATING_METRICS = {  # a class-imbalance row: the ranking and where the operating point went
    **STUDENT_METRICS,
    "metrics/distill.json:val_threshold": "threshold (95% sens.)",
    "metrics/distill.json:val_specificity": "specificity (95% sens.)",
}
MEMBER = "metrics/train_teacher/{member}.json"  # the member a teacher row retrains or adds
TEACHER_METRICS = {  # a teacher row: that member, the mean teacher, its calibration
    f"{MEMBER}:val_roc_auc": "member val ROC-AUC",
    f"{MEMBER}:val_ece": "member val ECE",
    f"{MEMBER}:best_epoch": "member best epoch",
    f"{MEMBER}:val_threshold": "member threshold (95% sens.)",
    "metrics/teacher.json:val_roc_auc": "teacher val ROC-AUC",
    "metrics/teacher.json:val_pr_auc": "teacher val PR-AUC",
    "metrics/calibrate.json:val_ece_after": "teacher val ECE calibrated",
    f"{MEMBER}:train_seconds": "member train (min)",
}
EEE4709: Overrides = {  # the report's student and recipe: T = 50, class-balanced sampling
    "distill.arch": "mobilenetv2_100",
    **SCRATCH_STUDENT,
    "kd.temperature": 50.0,
    "distill.oversample_melanoma": 8.0,
}


# How far two runs of one setting differ in val ROC-AUC (docs/experiments.md): the band a row
# must leave to count, shaded and grouped by the plots below.
RUN_TO_RUN_SPREAD = 0.006

STUDIES: dict[str, Study] = {
    "imbalance": Study(
        "Class imbalance on the student: weighted loss, focal loss, oversampling (default: none)",
        {
            "student-posweight8": {"distill.pos_weight": 8.0},
            "student-posweight8-s1": {"distill.pos_weight": 8.0, "distill.seed": 1},
            "student-seed1": {"distill.seed": 1},  # the default at seed 1: the spread
            "student-focal2": {"distill.loss": "focal", "distill.focal_gamma": 2.0},
            "student-oversample2": {"distill.oversample_melanoma": 2.0},
        },
        columns=(
            "distill.loss",
            "distill.pos_weight",
            "distill.oversample_melanoma",
            "distill.seed",
        ),
        metrics=OPERATING_METRICS,
    ),
    "teacher_imbalance": Study(
        "Class imbalance on the teacher: the ImageNet Lite0 member retrained with a weighted "
        "loss, focal loss or oversampling, the ResNet-18 member unchanged (default: none)",
        {
            "teacher-lite0-posweight8": {"+teachers.lite0.pos_weight": 8.0},
            "teacher-lite0-focal2": {"+teachers.lite0.loss": "focal"},
            "teacher-lite0-oversample2": {"+teachers.lite0.oversample_melanoma": 2.0},
        },
        stage="calibrate",  # member, mean teacher, calibration: the student is not retrained
        columns=(
            "teachers.lite0.pos_weight",
            "teachers.lite0.loss",
            "teachers.lite0.oversample_melanoma",
        ),
        metrics=TEACHER_METRICS,
        member="lite0",
    ),
    "teacher_architectures": Study(
        "Teacher architectures at the full schedule, each added as a third member beside the "
        "from-scratch ResNet-18 and the ImageNet Lite0: ImageNet EfficientNet-Lite1/2 (6 epochs "
        "like Lite0), ResNet-34 and EfficientNet-B0 from scratch (16 epochs like ResNet-18)",
        {
            **{
                f"teacher-plus-lite{i}": {
                    f"+teachers.lite{i}": {
                        "arch": f"tf_efficientnet_lite{i}",
                        "pretrained": "imagenet",
                        "epochs": 6,
                        "lr": 1.0e-3,
                    }
                }
                for i in (1, 2)
            },
            "teacher-plus-resnet34": {
                "+teachers.resnet34": {"arch": "resnet34", "pretrained": False}
            },
            "teacher-plus-b0": {"+teachers.b0": {"arch": "efficientnet_b0", "pretrained": False}},
        },
        stage="calibrate",
        metrics=TEACHER_METRICS,
    ),
    "pooling_and_warmup": Study(
        "Max against average pooling; frozen-backbone warm-up and a slower backbone against full "
        "fine-tuning",
        {
            "student-maxpool": {"distill.global_pool": "max"},
            "student-freeze1": {"distill.freeze_epochs": 1.0},
            "student-backbone-lr0.1": {"distill.backbone_lr_scale": 0.1},
        },
        columns=("distill.global_pool", "distill.freeze_epochs", "distill.backbone_lr_scale"),
    ),
    "kd_grid": Study(
        "KD temperature x alpha on the full student schedule, and alpha = 0 (no teacher)",
        _kd_grid(),
        columns=("kd.temperature", "kd.alpha"),
    ),
    "students": Study(
        "Students from scratch distilled from the default teacher: MobileNetV3-Small, the "
        "0.26M-parameter DSNet-like student at the DSNet paper's temperatures, MobileNetV2 with "
        "the EEE4709 report's recipe (T = 50, class-balanced oversampling) and its single teacher",
        {
            "student-mnv3": {"distill.arch": "mobilenetv3_small_100", **SCRATCH_STUDENT},
            **{
                f"dsnet-T{t:g}": {
                    "distill.arch": "dsnet_tiny",
                    **SCRATCH_STUDENT,
                    "kd.temperature": t,
                }
                for t in (1.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)
            },
            "eee4709-mnv2": EEE4709,
            # the report's single teacher against its averaged one: the better member alone
            "eee4709-mnv2-single": {**EEE4709, "~teachers.resnet18": None},
            # the control of that row: the same single teacher at the default T = 2
            "eee4709-mnv2-single-T2": {
                **EEE4709,
                "~teachers.resnet18": None,
                "kd.temperature": 2.0,
            },
        },
        stage="benchmark",  # quantized and benchmarked like the default student
        columns=("distill.arch", "kd.temperature", "distill.oversample_melanoma"),
    ),
    "robustness": Study(
        "The student's acquisition augmentation (exposure, white balance) against the shift "
        "report's strong levels",
        {
            "robust-acq": {"student_augment.exposure": 0.4, "student_augment.channel_gain": 0.25},
            "robust-acq-mild": {
                "student_augment.exposure": 0.2,
                "student_augment.channel_gain": 0.1,
            },
        },
        stage="evaluate",  # the shift table is the evaluate stage's
        columns=("student_augment.exposure", "student_augment.channel_gain"),
    ),
}


def _metrics(study: Study) -> dict[str, str]:
    """The columns of a study's table. A row that stops at ``distill`` shows no int8 figures:
    its experiment carries the committed run's quantize and benchmark metrics unchanged."""
    if study.metrics is not None:
        return study.metrics
    if study.stage == "distill":
        return STUDENT_METRICS
    return METRICS


def _value(v: object) -> str:
    """A value as dvc's ``-S`` (Hydra) override grammar reads it; a dict without spaces."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _member(study: Study, overrides: Overrides) -> str | None:
    """The teacher member a row adds or retrains (``+teachers.<member>...``), else the study's."""
    for key in overrides:
        if key.startswith("+teachers."):
            return key.split(".")[1]
    return study.member


def command(name: str, study: Study, queue: bool = True, data_root: str | None = None) -> list[str]:
    """The ``dvc exp run`` of one row.

    Args:
        data_root: ``data.root`` made absolute for a queued run, which runs in a copy of the
            repository under ``.dvc/tmp/exps`` where the relative default does not resolve.
    """
    argv = ["dvc", "exp", "run", study.stage, "-n", name]
    if queue:
        argv.insert(3, "--queue")
        if data_root:
            argv += ["-S", f"data.root={data_root}"]
    for key, value in study.rows[name].items():  # None: dvc's (Hydra's) "remove the key"
        argv += ["-S", key if value is None else f"{key}={_value(value)}"]
    return argv


def rows(names: list[str] | None = None) -> list[tuple[str, str, Study]]:
    """(study, row, study definition) for the named studies (all when ``None``)."""
    unknown = sorted(set(names or []) - set(STUDIES))
    if unknown:
        raise SystemExit(f"unknown study {', '.join(unknown)}; known: {', '.join(STUDIES)}")
    chosen = names or list(STUDIES)
    return [(s, row, STUDIES[s]) for s in chosen for row in STUDIES[s].rows]


def _named(table: pd.DataFrame) -> pd.DataFrame:
    """``dvc exp show --csv`` indexed by experiment name (the rev where unnamed), each metric
    under its ``file:key`` column (dvc drops the file of a key no other file has); a row
    re-run on a newer commit keeps its newest run (listed first)."""
    known = {c for study in STUDIES.values() for c in _metrics(study) if "{" not in c}
    table = table.rename(columns={c.split(":", 1)[-1]: c for c in known if ":" in c})
    named = table.set_index(table["Experiment"].fillna(table["rev"]))
    return named[~named.index.duplicated()]


def report(table: pd.DataFrame, baseline: str = "workspace") -> str:
    """Markdown: one table per study of the rows found in ``dvc exp show --csv`` output, each
    beside the baseline (the committed run)."""
    named = _named(table)
    lines = []
    for key, study in STUDIES.items():
        found = [r for r in study.rows if r in named.index]
        lines += [f"## {key}", "", study.question, ""]
        if not found:
            lines += ["No row has run yet.", ""]
            continue
        columns = _metrics(study)
        header = ["experiment", *study.columns, *columns.values()]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in [baseline, *found] if baseline in named.index else found:
            row = named.loc[name]
            cells = [f"`{name}`", *(_cell(row, c) for c in study.columns)]
            member = _member(study, study.rows.get(name, {}))
            for column in columns:
                if "{member}" in column:
                    column = column.format(member=member) if member else "(none)"
                value = row.get(column)
                if column.endswith("train_seconds") and _is_number(value):
                    cells.append(f"{float(value) / 60:.1f}")
                else:
                    cells.append(_cell_value(value))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def label_groups(
    points: list[tuple[str, float, float]],
    baseline: str,
    ms_tol: float = 0.1,
    auc_tol: float = RUN_TO_RUN_SPREAD,
) -> list[tuple[float, float, list[str]]]:
    """Points that one label can stand for: each (name, latency ms, ROC-AUC) joins the first
    group whose first point lies within ``ms_tol`` and ``auc_tol`` (the run-to-run spread) of
    it, so a sweep of one student gets one label instead of a pile; the baseline stays alone.
    Returns (ms, ROC-AUC, names) per group, at the group's highest point."""
    groups: list[list[tuple[str, float, float]]] = []
    for point in points:
        name, ms, auc = point
        near = [
            g for g in groups
            if name != baseline and g[0][0] != baseline
            and abs(g[0][1] - ms) <= ms_tol and abs(g[0][2] - auc) <= auc_tol
        ]  # fmt: skip
        if near:
            near[0].append(point)
        else:
            groups.append([point])
    tops = [max(g, key=lambda p: p[2]) for g in groups]
    return [(top[1], top[2], [p[0] for p in g]) for top, g in zip(tops, groups, strict=True)]


def students_plot(table: pd.DataFrame, path: str | Path, baseline: str = "workspace") -> int:
    """Int8 ``.pte`` val ROC-AUC against its batch-1 latency at one thread for every row of
    the students study that has both, beside the committed student; returns the points drawn."""
    from pipeline_lib.plotting import plt, save

    named = _named(table)
    names = [n for n in [baseline, *STUDIES["students"].rows] if n in named.index]
    points = [
        (n, float(named.loc[n, LATENCY]), float(named.loc[n, INT8_AUC]))
        for n in names
        if LATENCY in named and _is_number(named.loc[n, LATENCY])
        and _is_number(named.loc[n, INT8_AUC])
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, ms, auc in points:
        ax.scatter(ms, auc, s=30, c="tab:red" if name == baseline else "tab:blue")
    for ms, auc, group in label_groups(points, baseline):
        label = "committed student" if group[0] == baseline else group[0]
        label += f" ... {group[-1]} ({len(group)} rows)" if len(group) > 1 else ""
        size = named.loc[group[0]].get("metrics/quantize.json:int8_pte.size_mb")
        label += f" ({float(size):.2f} MB)" if _is_number(size) else ""
        ax.annotate(label, (ms, auc), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel="int8 .pte latency, batch 1, 1 thread (ms)", ylabel="int8 .pte val ROC-AUC",
           title="Students study: int8 .pte on val")  # fmt: skip
    ax.margins(x=0.3, y=0.15)
    save(fig, path)
    return len(points)


def kd_grid_plot(table: pd.DataFrame, path: str | Path, baseline: str = "workspace") -> int:
    """Val ROC-AUC and ECE of the KD grid against alpha, one line per temperature, the
    committed run among them and alpha = 0 (no teacher, any T) as a line of its own; returns
    the points drawn."""
    from pipeline_lib.plotting import plt, save

    named = _named(table)
    auc, ece = "metrics/distill.json:val_roc_auc", "metrics/distill.json:val_ece"
    names = [n for n in [baseline, *STUDIES["kd_grid"].rows] if n in named.index]
    points = [
        (n, float(named.loc[n, "kd.temperature"]), float(named.loc[n, "kd.alpha"]))
        for n in names
        if _is_number(named.loc[n].get(auc))
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, column, label in ((axes[0], auc, "val ROC-AUC"), (axes[1], ece, "val ECE")):
        value = {n: float(named.loc[n, column]) for n, _, _ in points
                 if _is_number(named.loc[n].get(column))}  # fmt: skip
        for n, _, alpha in points:
            if alpha == 0 and n in value:
                ax.axhline(value[n], color="grey", ls="--", label="alpha = 0 (no teacher)")
        for t in sorted({t for _, t, alpha in points if alpha > 0}):
            line = sorted((a, value[n]) for n, tt, a in points if tt == t and a > 0 and n in value)
            ax.plot([a for a, _ in line], [v for _, v in line], marker="o", label=f"T = {t:g}")
        for n, _, alpha in points:
            if n == baseline and n in value:
                ax.scatter(alpha, value[n], s=90, facecolors="none", edgecolors="tab:red",
                           zorder=3, label="committed run")  # fmt: skip
        ax.set(xlabel="kd.alpha (weight of the teacher's soft targets)", ylabel=label)
    axes[0].legend(fontsize=8)
    fig.suptitle("KD grid, 7-way ImageNet Lite0 student (dvc exp kd-*, val)", fontsize=10)
    save(fig, path)
    return len(points)


def temperature_plot(
    table: pd.DataFrame,
    path: str | Path,
    prefix: str = "dsnet-T",
    spread: float = RUN_TO_RUN_SPREAD,
) -> int:
    """Val ROC-AUC of the float student and of its int8 ``.pte`` against the KD temperature
    (log scale) for the rows named ``<prefix><T>`` (the DSNet paper's sweep), over a band of
    +-``spread`` (two runs of one setting, docs/experiments.md) around the float rows' median;
    returns the temperatures drawn."""
    from pipeline_lib.plotting import plt, save

    named = _named(table)
    auc = "metrics/distill.json:val_roc_auc"
    points = sorted(
        (float(named.loc[n, "kd.temperature"]), float(named.loc[n, auc]), named.loc[n].get(INT8_AUC))
        for n in named.index
        if str(n).startswith(prefix) and _is_number(named.loc[n].get(auc))
    )  # fmt: skip
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if points:
        mid = float(np.median([a for _, a, _ in points]))
        ax.axhspan(mid - spread, mid + spread, color="grey", alpha=0.15,
                   label=f"run-to-run spread (+-{spread:g})")  # fmt: skip
    ax.plot([t for t, _, _ in points], [a for _, a, _ in points], marker="o", label="float")
    int8 = [(t, float(q)) for t, _, q in points if _is_number(q)]
    ax.plot([t for t, _ in int8], [q for _, q in int8], marker="s", ls="--", label="int8 .pte")
    ax.set_xscale("log")
    ax.set_xticks([t for t, _, _ in points], [f"{t:g}" for t, _, _ in points])
    ax.set(xlabel="kd.temperature", ylabel="val ROC-AUC (best epoch)",
           title=f"Temperature sweep (dvc exp {prefix}*, val)")  # fmt: skip
    ax.legend(fontsize=8)
    save(fig, path)
    return len(points)


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return value == value  # not NaN


def _cell_value(value: object) -> str:
    if not _is_number(value):
        return "-"
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.0f}" if number.is_integer() and abs(number) >= 1 else f"{number:.3f}"


def _cell(row: pd.Series, column: str) -> str:
    value = row.get(column)
    return "-" if value is None or value != value else str(value)


def teacher_members(
    members: dict[str, np.ndarray], task: str, y: np.ndarray, others: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Val ROC-AUC and PR-AUC of each teacher member, of their mean in probability (the
    ``teacher`` stage's combination), and of that mean with one more, non-network member
    (``others``: name -> val p(melanoma), e.g. the handcrafted-feature baselines) weighted
    like a network member.

    Args:
        members: each member's raw val logits, row-aligned with ``y``.
    """
    from pipeline_lib import data, metrics

    probs = {name: data.melanoma_probability(z, task) for name, z in members.items()}
    rows = dict(probs)
    together = np.mean(list(probs.values()), axis=0)
    rows[" + ".join(probs)] = together
    for name, p in others.items():
        rows[f"{' + '.join(probs)} + {name}"] = (together * len(probs) + p) / (len(probs) + 1)
    return pd.DataFrame(
        [
            {
                "teacher": name,
                "val ROC-AUC": metrics.roc_auc(y, p),
                "val PR-AUC": metrics.pr_auc(y, p),
            }
            for name, p in rows.items()
        ]
    )


def _members_table(folder: Path, split: Path, baselines: Path) -> str:
    """:func:`teacher_members` of the committed members under ``folder`` (one sub-folder each,
    with ``model.pt`` and ``val_logits.npy``) and the baselines' val predictions, as markdown."""
    from pipeline_lib import data, formatting

    val = data.read_split(split, "val")
    paths = sorted(folder.glob("*/val_logits.npy"))
    if not paths:
        raise SystemExit(f"no member val_logits.npy under {folder}: run `dvc repro teacher` first")
    members = {p.parent.name: np.load(p) for p in paths}
    task = "dx" if next(iter(members.values())).ndim == 2 else "binary"  # (N, 7) or (N,)
    predictions = pd.read_csv(baselines)
    predictions = predictions[predictions["split"] == "val"].set_index("image_id")
    columns = [c for c in predictions if c not in ("split", "lesion_id", "label")]
    others = {c: predictions.loc[val["image_id"], c].to_numpy() for c in columns}
    table = teacher_members(members, task, val["label"].to_numpy(), others)
    rows = [
        [r.teacher, f"{r['val ROC-AUC']:.3f}", f"{r['val PR-AUC']:.3f}"]
        for _, r in table.iterrows()
    ]
    return "\n".join(formatting.table(list(table.columns), rows)) + "\n"


def class_figures(dx_true, logits: np.ndarray) -> pd.DataFrame:
    """Per-class accuracy, precision, recall, F1 and one-vs-rest ROC-AUC of a dx model's val
    logits (the DSNet paper's table), from :func:`metrics.dx_figures`. A class's accuracy is
    the binary accuracy of "this class or not" over all images."""
    from pipeline_lib import data, metrics

    d = metrics.dx_figures(dx_true, data.dx_probabilities(logits))
    confusion = np.asarray(d["confusion"])
    n = confusion.sum()
    rows = []
    for i, code in enumerate(d["classes"]):
        c = d["per_class"][code]
        wrong = confusion[:, i].sum() + confusion[i].sum() - 2 * confusion[i, i]  # FP + FN
        rows.append(
            {"class": code, "images": c["n"], "accuracy": (n - wrong) / n,
             "precision": c["precision"], "recall": c["recall"], "F1": c["f1"], "ROC-AUC": c["roc_auc"]}
        )  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["accuracy"] = d["accuracy"]  # of the most likely class, over all images
    return table


def _classes_table(rev: str | None) -> str:
    """:func:`class_figures` of the val logits of ``rev`` (an experiment name or commit; the
    workspace when ``None``) as markdown, after the overall accuracy."""
    import dvc.api

    from pipeline_lib import formatting

    with dvc.api.open("data/distill/val_logits.npy", rev=rev, mode="rb") as f:
        logits = np.load(io.BytesIO(f.read()))
    with dvc.api.open("data/split/val.csv", rev=rev) as f:
        val = pd.read_csv(f)
    if logits.ndim != 2:
        raise SystemExit(f"the student of {rev or 'the workspace'} is binary: no class table")
    table = class_figures(val["dx"], logits)
    rows = [[r["class"], str(r["images"]), *(formatting.number(r[k]) for k in table.columns[2:])]
            for _, r in table.iterrows()]  # fmt: skip
    head = f"val accuracy {table.attrs['accuracy']:.3f} ({len(val)} images)"
    return head + "\n\n" + "\n".join(formatting.table(list(table.columns), rows)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_lib.studies", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "queue"):
        p = sub.add_parser(name)
        p.add_argument("--study", action="append", help="one study (repeatable); default all")
    r = sub.add_parser("report")
    r.add_argument("--out", type=Path, help="markdown file (default: stdout)")
    r.add_argument("--csv", type=Path, help="a saved `dvc exp show --csv` (default: run it)")
    r.add_argument("--plot", type=Path, help="PNG: the students' int8 accuracy against latency")
    r.add_argument("--kd-plot", type=Path, help="PNG: the KD grid's val ROC-AUC and ECE")
    r.add_argument("--temperature-plot", type=Path, help="PNG: the DSNet sweep against T")
    m = sub.add_parser("members", help="val figures of the teacher's members and combinations")
    m.add_argument("--members", type=Path, default=Path("data/train_teacher"))
    m.add_argument("--split", type=Path, default=Path("data/split"))
    m.add_argument("--baselines", type=Path, default=Path("data/baselines/predictions.csv"))
    c = sub.add_parser("classes", help="per-class val figures of a dx student (DSNet's table)")
    c.add_argument("--rev", help="experiment name or commit (default: the workspace)")
    args = parser.parse_args(argv)
    if args.command == "classes":
        print(_classes_table(args.rev), end="")
        return 0
    if args.command == "members":
        print(_members_table(args.members, args.split, args.baselines), end="")
        return 0
    if args.command in ("list", "queue"):
        from pipeline_lib import config

        root = str(Path(config.load("data").root).resolve())
        for study, row, definition in rows(args.study):
            argv_ = command(row, definition, args.command == "queue", root)
            print(f"{study:20s} {' '.join(argv_)}")
            if args.command == "queue":
                subprocess.run(argv_, check=True)
        if args.command == "queue":
            print("queued; run them with: dvc queue start -j 1")
        return 0
    text = (
        args.csv.read_text()
        if args.csv
        else subprocess.run(
            ["dvc", "exp", "show", "--csv", "--all-commits"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    table = pd.read_csv(io.StringIO(text))
    markdown = report(table)
    if args.plot:
        students_plot(table, args.plot)
    if args.kd_plot:
        kd_grid_plot(table, args.kd_plot)
    if args.temperature_plot:
        temperature_plot(table, args.temperature_plot)
    if args.out:
        from pipeline_lib import artifacts

        with artifacts.atomic_path(args.out) as tmp:
            tmp.write_text(markdown)
    else:
        print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
