"""Figures, curve tables and the markdown summary of the evaluate stage (all on test data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from pipeline_lib import artifacts, evaluation, formatting, metrics, plotting
from pipeline_lib.evaluation import Scores
from pipeline_lib.plotting import plt, save


def curves(y, probs: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC (``model, fpr, tpr``) and precision-recall (``model, recall, precision``) curves."""
    roc, pr = [], []
    for name, p in probs.items():
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        roc.append(pd.DataFrame({"model": name, "fpr": fpr, "tpr": tpr}))
        pr.append(pd.DataFrame({"model": name, "recall": recall, "precision": precision}))
    return pd.concat(roc, ignore_index=True), pd.concat(pr, ignore_index=True)


def write_curve_files(table: pd.DataFrame, folder: Path, names: dict[str, str]) -> None:
    """One CSV per model of a long-format curve table, ``folder/<file name>.csv``, without the
    ``model`` column: the files that ``dvc plots`` draws one line each from (dvc.yaml).

    Args:
        names: the file name of each model (a model that changes from run to run, such as the
            best baseline, gets a fixed one).
    """
    for name, part in table.groupby("model", sort=False):
        artifacts.write_csv(folder / f"{names.get(name, name)}.csv", part.drop(columns="model"))


def plot_curves(table: pd.DataFrame, x: str, y: str, labels: dict[str, str], path: Path) -> None:
    """One line per model of a long-format curve table; ``labels`` carry the AUCs."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if x == "fpr":
        ax.plot([0, 1], [0, 1], "k:", lw=1)
    for name, part in table.groupby("model", sort=False):
        ax.plot(part[x], part[y], lw=1.5, label=labels[name], drawstyle="steps-post")
    ax.set(xlabel=x, ylabel=y, xlim=(0, 1), ylim=(0, 1.01), title="Test split")
    ax.legend(loc="lower right" if x == "fpr" else "upper right", fontsize=7)
    save(fig, path)


def confusion_grid(
    y, probs: dict[str, np.ndarray], thresholds: dict[str, float], path: Path
) -> None:
    """Confusion matrices on test at each model's val-chosen threshold."""
    n = len(probs)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, layout="constrained"
    )
    for ax, (name, p) in zip(axes.flat, probs.items(), strict=False):
        op = metrics.operating_point(y, p, thresholds[name])
        cells = np.array([[op.tn, op.fp], [op.fn, op.tp]])
        ax.imshow(cells / cells.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(cells):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=11)
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "mel"],
               yticklabels=["benign", "mel"], xlabel="predicted", ylabel="true")  # fmt: skip
        ax.set_title(f"{name}\nt={op.threshold:.3f} sens {op.sensitivity:.2f} spec "
                     f"{op.specificity:.2f}", fontsize=8)  # fmt: skip
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    save(fig, path)


def threshold_curves(
    y, probs: dict[str, np.ndarray], thresholds: dict[str, float], path: Path
) -> None:
    """Test sensitivity, specificity and precision against the threshold, val choice marked."""
    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 3.6), squeeze=False)
    grid = np.linspace(0, 1, 201)
    for ax, (name, p) in zip(axes[0], probs.items(), strict=True):
        ops = [metrics.operating_point(y, p, t) for t in grid]
        for field in ("sensitivity", "specificity", "precision"):
            ax.plot(grid, [getattr(o, field) for o in ops], label=field)
        ax.axvline(thresholds[name], color="k", ls="--", lw=1, label="val-chosen")
        ax.set(xlabel="threshold on p(melanoma)", ylim=(0, 1.02), title=name)
    axes[0, 0].legend(fontsize=7)
    save(fig, path)


def confidence_hist(
    y, probs: dict[str, np.ndarray], thresholds: dict[str, float], path: Path
) -> None:
    """Distribution of p(melanoma) per true class on test (log counts)."""
    y = np.asarray(y).astype(bool)
    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, (name, p) in zip(axes[0], probs.items(), strict=True):
        ax.hist(p[~y], bins=bins, alpha=0.6, label="benign", log=True)
        ax.hist(p[y], bins=bins, alpha=0.6, label="melanoma", log=True)
        ax.axvline(thresholds[name], color="k", ls="--", lw=1)
        ax.set(xlabel="p(melanoma)", title=name)
    axes[0, 0].legend(fontsize=7)
    save(fig, path)


def teacher_student_scatter(
    y, teacher: np.ndarray, students: dict[str, np.ndarray], thresholds: dict[str, float],
    teacher_threshold: float, figures: dict[str, dict], path: Path,
) -> None:  # fmt: skip
    """Each student's p(melanoma) against the teacher's on one image each (logit axes), with
    both val-chosen thresholds: the quadrants off the diagonal are the decisions they differ on."""
    y = np.asarray(y).astype(bool)
    fig, axes = plt.subplots(1, len(students), figsize=(4.4 * len(students), 4.2), squeeze=False)
    for ax, (name, p) in zip(axes[0], students.items(), strict=True):
        for mask, label, colour in ((~y, "benign", "tab:blue"), (y, "melanoma", "tab:red")):
            ax.scatter(teacher[mask], p[mask], s=6, alpha=0.5, c=colour, label=label, lw=0)
        ax.set(xscale="logit", yscale="logit", xlim=(1e-4, 1 - 1e-4), ylim=(1e-4, 1 - 1e-4))
        ax.plot([1e-4, 1 - 1e-4], [1e-4, 1 - 1e-4], color="0.6", lw=0.8)
        ax.axvline(teacher_threshold, color="k", ls="--", lw=0.8)
        ax.axhline(thresholds[name], color="k", ls="--", lw=0.8)
        f = figures[name]
        ax.set(
            xlabel="teacher p(melanoma)", ylabel=f"{name} p(melanoma)",
            title=f"{name}: Spearman {f['spearman']:.3f}, kappa {f['cohen_kappa']:.3f}",
        )  # fmt: skip
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=7, loc="upper left", markerscale=2)
    save(fig, path)


def gallery(
    images: np.ndarray,
    table: pd.DataFrame,
    rows: dict[str, np.ndarray],
    p_student,
    p_teacher,
    size: int,
    path: Path,
    note: str = "",
) -> None:
    """Test images by row (see :func:`evaluation.gallery_rows`), both probabilities in titles."""
    fig, axes = plt.subplots(
        len(rows), size, figsize=(1.5 * size + 1, 1.9 * len(rows)), squeeze=False
    )
    for r, (label, idx) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set(xticks=[], yticks=[])
            if c < len(idx):
                i, row = idx[c], table.iloc[idx[c]]
                ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
                ax.set_title(f"s {p_student[i]:.2f}  t {p_teacher[i]:.2f}\n{row['dx']}, "
                             f"{str(row['localization'])[:14]}", fontsize=6)  # fmt: skip
            else:
                ax.set_frame_on(False)
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"s = student p(mel), t = calibrated teacher p(mel). {note}", fontsize=8)
    save(fig, path)


def shift_plot(table: pd.DataFrame, path: Path) -> None:
    """Test ROC-AUC per perturbation and severity level, one panel per model."""
    names = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        part = table[table["model"] == name]
        clean = part.loc[part["level"] == 0, "roc_auc"].iloc[0]
        for pert, rows in part[part["level"] > 0].groupby("perturbation", sort=False):
            ax.plot([0, *rows["level"]], [clean, *rows["roc_auc"]], "o-", label=pert)
        levels = ["clean", "mild", "strong"][: int(part["level"].max()) + 1]
        ax.set(xticks=range(len(levels)), xticklabels=levels, ylabel="test ROC-AUC", title=name)
    axes[0, 0].legend(fontsize=7)
    save(fig, path)


def dx_table(d: dict, model: str) -> list[str]:
    """Markdown lines of one model's 7-way figures (:func:`metrics.dx_figures`)."""
    lines = [
        f"7-way diagnosis of `{model}`: accuracy {d['accuracy']:.3f}, balanced accuracy "
        f"{d['balanced_accuracy']:.3f}. Confusion (rows: true dx, columns: most likely dx) and "
        "one-vs-rest ROC-AUC; precision, recall and F1 of the most likely dx:",
        "",
    ]
    rows = []
    for code, counts in zip(d["classes"], d["confusion"], strict=True):
        c = d["per_class"][code]
        figures = [c.get(k) for k in ("roc_auc", "precision", "recall", "f1")]
        rows.append([code, *map(str, counts), str(c["n"]), *map(formatting.number, figures)])
    header = ["true \\ predicted", *d["classes"], "images", "ROC-AUC", "precision", "recall", "F1"]
    return lines + formatting.table(header, rows)


def markdown(results: dict, model_names: list[str], target_sensitivity: float) -> str:
    """A markdown summary of ``evaluate.json`` for the README (test split throughout)."""
    lines = [
        f"Test split: {results['n_test']} images, {results['n_test_melanoma']} melanomas, "
        f"{results['n_test_lesions']} lesions. 95% CIs from {results['bootstrap']} bootstrap "
        f"resamples of lesions. Sensitivity, specificity, precision and F1 at the threshold "
        f"chosen on val for {target_sensitivity:.0%} sensitivity.",
        "",
    ]
    rows = []
    ci = formatting.with_ci
    for name in model_names:
        m, op = results[name], results[name]["at_target_sensitivity"]
        rows.append(
            [name, ci(m, "roc_auc"), ci(m, "pr_auc"), ci(m, "ece"), f"{m['brier']:.3f}",
             ci(op, "sensitivity"), ci(op, "specificity"), f"{op['precision']:.3f}",
             f"{op['f1']:.3f}"]
        )  # fmt: skip
    header = ["model", "ROC-AUC", "PR-AUC", "ECE", "Brier", "sensitivity", "specificity"]
    lines += formatting.table([*header, "precision", "F1"], rows)
    lines += ["", "Teacher minus student ROC-AUC (paired lesion bootstrap):", ""]
    for name, d in results["paired_teacher_vs_student"].items():
        lines.append(f"- {name}: {ci(d, 'roc_auc_difference')}, p = {d['p_value']:.3f}")
    lines += ["", "Agreement of decisions at the val-chosen thresholds:", ""]
    for name, counts in results["agreement"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines += ["", "How closely each student's probabilities follow the teacher's:", ""]
    rows = [
        [name, *(f"{d[k]:.3f}" for k in ("spearman", "pearson_logit", "mean_abs_difference",
                                         "cohen_kappa"))]
        for name, d in results["probability_agreement"].items()
    ]  # fmt: skip
    lines += formatting.table(
        ["pair", "Spearman", "Pearson (logits)", "mean abs. difference", "Cohen's kappa"], rows
    )
    lines += ["", "Test ROC-AUC change under perturbation (level 1 mild, 2 strong):", ""]
    tables = results["shift"]
    keys = [k for k in next(iter(tables.values())) if k != "clean"]
    rows = [[k, *(f"{t[k]['roc_auc_change']:+.3f}" for t in tables.values())] for k in keys]
    lines += formatting.table(["perturbation", *tables], rows)
    lines += ["", "Test ROC-AUC by subgroup (* = small: too few images or melanomas):", ""]
    groups = results["subgroups"]
    first = next(iter(groups.values()))
    rows = []
    for attribute, by_group in first.items():
        for group, g in by_group.items():
            aucs = [groups[m][attribute][group]["roc_auc"] for m in groups]
            rows.append(
                [f"{attribute}: {group}{' *' if g['small'] else ''}", str(g["n_images"]),
                 str(g["n_melanoma"]), *map(formatting.number, aucs)]
            )  # fmt: skip
    lines += formatting.table(["group", "images", "melanomas", *groups], rows)
    for name, d in results.get("diagnosis", {}).items():
        lines += ["", *dx_table(d, name)]
    return "\n".join(lines) + "\n"


def write_all(
    results: dict,
    scores: dict[str, Scores],
    images: np.ndarray,
    table: pd.DataFrame,
    exported: list[str],
    bins: int,
    target: float,
    gallery_size: int,
    out: Path,
) -> None:
    """Every PNG, the curve and table CSVs, and report.md of the evaluate stage under ``out``.

    The ROC and PR curves are written twice: ``roc.csv`` and ``pr.csv`` with a ``model``
    column, and ``roc/<model>.csv`` and ``pr/<model>.csv`` for ``dvc plots`` (the best baseline
    as ``best_baseline.csv``).

    Args:
        results: :func:`evaluation.evaluate_all`'s dict, with ``best_baseline_by_val`` and
            ``shift`` added.
        scores: each model's probabilities; ``teacher``, ``teacher_calibrated``, ``student``
            and ``student_calibrated`` must be among them.
        images, table: the test split.
        exported: exported students, the deployed one first.
    """
    y = table["label"].to_numpy()
    best = results["best_baseline_by_val"]
    thresholds = {n: results[n]["at_target_sensitivity"]["threshold"] for n in scores}
    shown = {n: scores[n].test for n in [best, "teacher", "student", *exported]}
    roc, pr = curves(y, shown)  # calibrated variants left out: same ranking, same curves
    artifacts.write_csv(out / "roc.csv", roc)
    artifacts.write_csv(out / "pr.csv", pr)
    for curve, folder in ((roc, "roc"), (pr, "pr")):
        write_curve_files(curve, out / folder, {best: "best_baseline"})
    for curve, x, y_col, metric in (
        (roc, "fpr", "tpr", "roc_auc"),
        (pr, "recall", "precision", "pr_auc"),
    ):
        labels = {n: f"{n} ({results[n][metric]:.3f})" for n in shown}
        plot_curves(curve, x, y_col, labels, out / f"{metric.removesuffix('_auc')}.png")
    calibrated = ["teacher", "teacher_calibrated", "student", "student_calibrated", *exported[:1]]
    plotting.reliability_diagram(
        y, {n: scores[n].test for n in calibrated}, bins, out / "reliability.png", "Test split"
    )
    confusion_grid(y, shown, thresholds, out / "confusion.png")
    main_models = {n: scores[n].test for n in ["teacher_calibrated", "student", *exported[:1]]}
    threshold_curves(y, main_models, thresholds, out / "threshold_curves.png")
    confidence_hist(y, main_models, thresholds, out / "confidence_hist.png")
    student, teacher = scores["student"].test, scores["teacher_calibrated"].test
    t_student, t_teacher = thresholds["student"], thresholds["teacher_calibrated"]
    followers = {"student": "student_calibrated", **{n: n for n in exported[:1]}}
    teacher_student_scatter(
        y, teacher, {n: scores[s].test for n, s in followers.items()},
        {n: thresholds[s] for n, s in followers.items()}, t_teacher,
        {n: results["probability_agreement"][f"teacher_vs_{n}"] for n in followers},
        out / "teacher_vs_student.png",
    )  # fmt: skip
    rows = evaluation.gallery_rows(
        y, table["lesion_id"], student, t_student, teacher, t_teacher, gallery_size
    )
    note = f"Val-chosen thresholds: student {t_student:.3f}, teacher {t_teacher:.3f}."
    gallery(images, table, rows, student, teacher, gallery_size, out / "gallery.png", note)
    artifacts.write_csv(out / "subgroups.csv", evaluation.subgroup_table(results))
    names = [best, *(n for n in scores if not n.startswith("baseline_"))]
    with artifacts.atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(results, names, target))
