"""Holdout evaluation: val-chosen thresholds applied to test, lesion-bootstrap CIs, paired
comparison, error agreement and subgroup figures.

Every operating threshold is chosen on the validation split and applied unchanged to test;
nothing here looks at test labels to choose anything. Confidence intervals resample lesions
(all images of a lesion together), because images of one lesion are not independent.

Point estimates come from :mod:`pipeline_lib.metrics`, intervals from
:mod:`pipeline_lib.bootstrap`. Every model is scored by a :class:`runtime.Predictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from pipeline_lib import bootstrap, calibration, data, metrics, runtime, shift
from pipeline_lib.config import EvaluateParams, MetricsParams

AGE_BANDS = ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74"), (np.inf, "75+"))
SUBGROUP_COLUMNS = {"sex": "sex", "age": "age_band", "site": "localization"}
MIN_SUBGROUP_MELANOMAS = 5  # below this a subgroup's sensitivity moves in steps of 20%+


@dataclass(frozen=True)
class Scores:
    """One model's melanoma probabilities, row-aligned with the val and test split tables."""

    val: np.ndarray
    test: np.ndarray
    dx_test: np.ndarray | None = None  # a dx model's (N, 7) test probabilities, uncalibrated


@dataclass(frozen=True)
class Thresholds:
    """Operating thresholds chosen on val (``p >= t`` is positive)."""

    sensitivity: float  # the highest threshold reaching the target sensitivity on val
    f1: float  # the F1-optimal threshold on val


def _saved_and_test_logits(
    predictor: runtime.Predictor,
    val_logits: str | Path,
    val_images: np.ndarray,
    test_images: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    val = np.load(val_logits)
    if len(val) != len(val_images):
        raise ValueError(f"{val_logits} has {len(val)} rows but the val split {len(val_images)}")
    if not np.allclose(predictor.logits(val_images[:16]), val[:16], rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"{val_logits} does not match {predictor.path}: rerun the stage that wrote it"
        )
    return val, predictor.logits(test_images)


def checkpoint_logits(
    checkpoint: str | Path, val_logits: str | Path, val_images: np.ndarray, test_images: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A trained model's saved val logits and fresh test logits, plus its checkpoint metadata.

    The saved val logits are checked against the checkpoint on a few images, so thresholds are
    never chosen on another model's scores (a stale ``val_logits.npy``).
    """
    predictor = runtime.Predictor.load(checkpoint)
    val, test = _saved_and_test_logits(predictor, val_logits, val_images, test_images)
    return val, test, predictor.meta


def baseline_scores(
    predictions: pd.DataFrame, val_ids: pd.Series, test_ids: pd.Series
) -> dict[str, Scores]:
    """Each baseline column of the baselines stage's ``predictions.csv``, aligned by image_id."""
    names = [c for c in predictions.columns if c not in ("split", "image_id", "lesion_id", "label")]
    parts = {}
    for split, ids in (("val", val_ids), ("test", test_ids)):
        part = predictions[predictions["split"] == split].set_index("image_id")
        missing = set(ids) - set(part.index)
        if missing:
            raise ValueError(f"baseline predictions lack {len(missing)} {split} images")
        parts[split] = part.loc[ids.to_numpy()]
    return {
        n: Scores(parts["val"][n].to_numpy(float), parts["test"][n].to_numpy(float)) for n in names
    }


def choose_thresholds(y_val, p_val, target_sensitivity: float) -> Thresholds:
    """Both operating thresholds, from validation labels and scores only."""
    return Thresholds(
        metrics.threshold_for_sensitivity(y_val, p_val, target_sensitivity),
        metrics.threshold_for_f1(y_val, p_val),
    )


def _with_ci(name: str, value: float, samples: np.ndarray) -> dict[str, float]:
    low, high = bootstrap.interval(samples)
    return {name: value, f"{name}_low": low, f"{name}_high": high}


def _operating(y, p, threshold: float) -> dict[str, float]:
    return metrics.as_dict(metrics.operating_point(y, p, threshold))


def holdout_figures(y, p, threshold: float, weights: np.ndarray, n_bins: int) -> dict:
    """ROC-AUC, PR-AUC and ECE with 95% bootstrap intervals, Brier, and sensitivity and
    specificity (with intervals) at a threshold chosen elsewhere (``at_target_sensitivity``).

    The threshold stays fixed across resamples: the intervals cover sampling of these images
    only. ``weights`` are the bootstrap's resample weights (:func:`bootstrap.lesion_weights`).
    """
    at_sens = _operating(y, p, threshold)
    sens, spec = bootstrap.rates(y, p >= threshold, weights)
    at_sens.update(_with_ci("sensitivity", at_sens["sensitivity"], sens))
    at_sens.update(_with_ci("specificity", at_sens["specificity"], spec))
    return {
        **_with_ci("roc_auc", metrics.roc_auc(y, p), bootstrap.roc_auc(y, p, weights)),
        **_with_ci("pr_auc", metrics.pr_auc(y, p), bootstrap.pr_auc(y, p, weights)),
        **_with_ci("ece", metrics.ece(y, p, n_bins), bootstrap.ece(y, p, weights, n_bins)),
        "brier": metrics.brier(y, p),
        "at_target_sensitivity": at_sens,
    }


def evaluate_model(
    y_val, scores: Scores, y_test, weights: np.ndarray, target_sensitivity: float, n_bins: int
) -> dict:
    """Test figures of one model at thresholds chosen on val, with lesion-bootstrap CIs."""
    thr = choose_thresholds(y_val, scores.val, target_sensitivity)
    return {
        "val_roc_auc": metrics.roc_auc(y_val, scores.val),
        "val_ece": metrics.ece(y_val, scores.val, n_bins),
        **holdout_figures(y_test, scores.test, thr.sensitivity, weights, n_bins),
        "at_best_f1": _operating(y_test, scores.test, thr.f1),
    }


def paired_difference(y, p_a, p_b, weights: np.ndarray) -> dict[str, float]:
    """ROC-AUC of ``a`` minus ``b`` on the same lesion resamples, with CI and a two-sided p.

    ``p_value`` is twice the smaller share of resamples on either side of zero (capped at 1):
    a bootstrap approximation, not an exact test, resolved to ``2 / resamples`` (0.0 means
    no resample crossed zero).
    """
    diff = bootstrap.roc_auc(y, p_a, weights) - bootstrap.roc_auc(y, p_b, weights)
    diff = diff[np.isfinite(diff)]
    p_value = min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))) if len(diff) else np.nan
    return {
        **_with_ci("roc_auc_difference", metrics.roc_auc(y, p_a) - metrics.roc_auc(y, p_b), diff),
        "p_value": float(p_value),
    }


def agreement(y, pred_a, pred_b, a: str = "a", b: str = "b") -> dict[str, int]:
    """How two models' decisions on the same images agree, and who is right when they differ."""
    y, pa, pb = (np.asarray(v).astype(bool) for v in (y, pred_a, pred_b))
    ok_a, ok_b = pa == y, pb == y
    return {
        "n": int(len(y)),
        "agree": int(np.sum(pa == pb)),
        "disagree": int(np.sum(pa != pb)),
        "both_right": int(np.sum(ok_a & ok_b)),
        "both_wrong": int(np.sum(~ok_a & ~ok_b)),
        f"{a}_right_{b}_wrong": int(np.sum(ok_a & ~ok_b)),
        f"{b}_right_{a}_wrong": int(np.sum(~ok_a & ok_b)),
        "shared_false_negatives": int(np.sum(y & ~pa & ~pb)),
        f"{a}_only_false_negatives": int(np.sum(y & ~pa & pb)),
        f"{b}_only_false_negatives": int(np.sum(y & pa & ~pb)),
        "shared_false_positives": int(np.sum(~y & pa & pb)),
    }


def probability_agreement(p_a, p_b, pred_a, pred_b) -> dict[str, float]:
    """How closely two models' melanoma probabilities follow each other (the reference
    repository's teacher-against-student scatter, in numbers): Spearman rank correlation,
    Pearson correlation of the logits, mean absolute difference of the probabilities, and
    Cohen's kappa of the decisions (agreement beyond chance)."""
    p_a, p_b = np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    z_a, z_b = metrics.logit(p_a), metrics.logit(p_b)
    return {
        "spearman": float(pd.Series(p_a).corr(pd.Series(p_b), method="spearman")),
        "pearson_logit": float(np.corrcoef(z_a, z_b)[0, 1]),
        "mean_abs_difference": float(np.mean(np.abs(p_a - p_b))),
        "cohen_kappa": float(cohen_kappa_score(np.asarray(pred_a), np.asarray(pred_b))),
    }


def age_band(age: pd.Series) -> pd.Series:
    """Age bands ``<30 ... 75+``; a missing age is ``unknown``."""
    bands = pd.Series("unknown", index=age.index, dtype=object)
    for upper, name in reversed(AGE_BANDS):
        bands[age < upper] = name
    return bands


def subgroups(
    table: pd.DataFrame, p, threshold: float, min_images: int
) -> dict[str, dict[str, dict]]:
    """Test figures by sex, age band and body site at a val-chosen threshold.

    A group is flagged ``small`` with fewer than ``min_images`` images or fewer than
    :data:`MIN_SUBGROUP_MELANOMAS` melanomas: its figures are too noisy to compare.
    """
    frame = table.assign(age_band=age_band(table["age"]), p=np.asarray(p, dtype=float))
    order = {"age_band": [name for _, name in AGE_BANDS] + ["unknown"]}
    out: dict[str, dict[str, dict]] = {}
    for key, column in SUBGROUP_COLUMNS.items():
        present = frame[column].value_counts().index.tolist()
        values = [v for v in order.get(column, present) if v in present]
        out[key] = {}
        for value in values:
            g = frame[frame[column] == value]
            y = g["label"].to_numpy()
            op = metrics.operating_point(y, g["p"], threshold)
            out[key][str(value)] = {
                "n_images": len(g),
                "n_melanoma": int(y.sum()),
                "roc_auc": metrics.roc_auc(y, g["p"]),
                "sensitivity": op.sensitivity,
                "specificity": op.specificity,
                "small": bool(len(g) < min_images or y.sum() < MIN_SUBGROUP_MELANOMAS),
            }
    return out


def gallery_rows(
    y,
    lesion_ids,
    p_student,
    threshold_student: float,
    p_teacher,
    threshold_teacher: float,
    size: int,
) -> dict[str, np.ndarray]:
    """Test indices to show: the student's most confident errors and the melanomas it misses.

    Rows: false positives with the highest student probability; the melanomas with the lowest
    student probability (the hardest, which include its most confident false negatives); the
    melanomas the teacher catches and the student misses (what distillation failed to pass on).
    One image per lesion, so a lesion photographed several times does not fill a row.
    """
    y = np.asarray(y).astype(bool)
    ps, pt = np.asarray(p_student), np.asarray(p_teacher)
    lesions = np.asarray(lesion_ids)

    def top(mask: np.ndarray, key: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(key[idx], kind="stable")]
        _, first = np.unique(lesions[idx], return_index=True)
        return idx[np.sort(first)][:size]

    return {
        "false positives\n(highest student p)": top(~y & (ps >= threshold_student), -ps),
        "hardest melanomas\n(lowest student p)": top(y, ps),
        "teacher catches,\nstudent misses": top(
            y & (pt >= threshold_teacher) & (ps < threshold_student), ps
        ),
    }


def evaluate_all(
    scores: dict[str, Scores],
    val_table: pd.DataFrame,
    test_table: pd.DataFrame,
    teacher: str,
    students: list[str],
    subgroup_models: list[str],
    n_resamples: int,
    seed: int,
    target_sensitivity: float,
    n_bins: int,
    min_subgroup: int,
) -> dict:
    """Every figure of the evaluate stage except shift robustness, as one JSON-ready dict.

    Args:
        scores: each model's val and test probabilities.
        teacher: the model compared against each of ``students`` (paired bootstrap, agreement).
        students: the float student first, then its exported versions.
        subgroup_models: models reported by sex, age band and body site.
    """
    y_val, y_test = val_table["label"].to_numpy(), test_table["label"].to_numpy()
    # One set of lesion resamples for every model, so all intervals and differences are paired.
    weights = bootstrap.lesion_weights(
        test_table["lesion_id"], n_resamples, np.random.default_rng(seed)
    )
    out: dict = {
        "n_val": len(y_val),
        "n_test": len(y_test),
        "n_test_melanoma": int(y_test.sum()),
        "n_test_lesions": int(test_table["lesion_id"].nunique()),
        "bootstrap": n_resamples,
    }
    for name, s in scores.items():
        out[name] = evaluate_model(y_val, s, y_test, weights, target_sensitivity, n_bins)
    out["paired_teacher_vs_student"] = {
        name: paired_difference(y_test, scores[teacher].test, scores[name].test, weights)
        for name in students
    }

    def decisions(name: str) -> np.ndarray:
        return scores[name].test >= out[name]["at_target_sensitivity"]["threshold"]

    student = students[0]
    out["agreement"] = {
        f"{teacher}_vs_{student}": agreement(
            y_test, decisions(teacher), decisions(student), teacher, student
        ),
        **{
            f"{student}_vs_{other}": agreement(
                y_test, decisions(student), decisions(other), student, other
            )
            for other in students[1:]
        },
    }

    def calibrated(name: str) -> str:  # probabilities on one scale, where a calibrated one exists
        return f"{name}_calibrated" if f"{name}_calibrated" in scores else name

    out["probability_agreement"] = {
        f"{teacher}_vs_{name}": probability_agreement(
            scores[calibrated(teacher)].test,
            scores[calibrated(name)].test,
            decisions(calibrated(teacher)),
            decisions(calibrated(name)),
        )  # fmt: skip
        for name in students
    }
    out["subgroups"] = {
        name: subgroups(
            test_table,
            scores[name].test,
            out[name]["at_target_sensitivity"]["threshold"],
            min_subgroup,
        )  # fmt: skip
        for name in subgroup_models
    }
    return out


# The figures ``metrics/evaluate.json`` keeps (:func:`summary`); everything else the stage
# computes goes to its report (``plots/evaluate/report.json``), which is not a DVC metric.
SUMMARY_COUNTS = ("n_test", "n_test_melanoma", "n_test_lesions", "bootstrap")
SUMMARY_FIGURES = ("val_roc_auc", "roc_auc", "roc_auc_low", "roc_auc_high", "pr_auc", "ece")
SUMMARY_OPERATING = ("sensitivity", "specificity")


def summary(results: dict, exported: list[str]) -> dict:
    """The figures a reviewer compares across runs (``dvc metrics diff``): ``evaluate.json``.

    The split's counts; for the teacher, the float student, each export except the fp32 ones
    (the float student again, checked by the quantize stage) and the best baseline by val:
    val ROC-AUC, test ROC-AUC with its CI, PR-AUC and ECE, and sensitivity and specificity at
    the threshold chosen on val; for the calibrated teacher and student, their test ECE; how
    closely the deployed student's probabilities follow the teacher's. Every
    figure keeps its key path and value from ``results`` (the stage's report), so the summary
    of a summary is itself.

    Args:
        results: :func:`evaluate_stage`'s dict (or a summary).
        exported: the exported students' names.
    """
    best = results["best_baseline_by_val"]
    out: dict = {k: results[k] for k in SUMMARY_COUNTS} | {"best_baseline_by_val": best}
    for name in ["teacher", "student", *(n for n in exported if "fp32" not in n), best]:
        figures = results[name]
        out[name] = {k: figures[k] for k in SUMMARY_FIGURES}
        at = figures["at_target_sensitivity"]
        out[name]["at_target_sensitivity"] = {k: at[k] for k in SUMMARY_OPERATING}
        if f"{name}_calibrated" in results:
            out[f"{name}_calibrated"] = {"ece": results[f"{name}_calibrated"]["ece"]}
    if exported and "probability_agreement" in results:  # how closely the phone follows
        key = f"teacher_vs_{exported[0]}"
        out["probability_agreement"] = {key: results["probability_agreement"][key]}
    return out


def subgroup_table(results: dict) -> pd.DataFrame:
    """The ``subgroups`` section of :func:`evaluate_all` as one long table."""
    rows = [
        {"model": model, "attribute": attribute, "group": group, **figures}
        for model, by_attribute in results["subgroups"].items()
        for attribute, groups in by_attribute.items()
        for group, figures in groups.items()
    ]
    return pd.DataFrame(rows)


def score_models(
    val: data.Prepared,
    test: data.Prepared,
    baselines: pd.DataFrame,
    teacher: str | Path,
    teacher_temperature: float,
    student: str | Path,
    exported: dict[str, str | Path],
    threads: int | None = None,
) -> tuple[dict[str, Scores], dict[str, runtime.Predictor], dict[str, float]]:
    """Val and test probabilities of every model, the students' predictors, the temperatures.

    Args:
        baselines: the baselines stage's ``predictions.csv``.
        teacher, student: folders with ``model.pt`` and the ``val_logits.npy`` saved beside it.
        teacher_temperature: the calibrate stage's; the student's own is fitted on val here
            (it is trained raw with KD).
        exported: exported students (``.pte`` or ``.onnx``) by name, the deployed one first.
        threads: intra-op threads of the exports' runtimes.

    Returns:
        ``scores``: baselines (``baseline_<name>``), ``teacher``, ``student``, their
        ``_calibrated`` versions and each export; ``predictors``: ``student`` and each export;
        ``temperatures``: by calibrated model name.
    """
    baseline = baseline_scores(baselines, val.table["image_id"], test.table["image_id"])
    scores = {f"baseline_{name}": s for name, s in baseline.items()}
    temperatures, predictors = {}, {}
    for role, folder in (("teacher", Path(teacher)), ("student", Path(student))):
        predictor = runtime.Predictor.load(folder / "model.pt")
        z_val, z_test = _saved_and_test_logits(
            predictor, folder / "val_logits.npy", val.images, test.images
        )
        task = predictor.task
        if role == "teacher":
            t = teacher_temperature
        else:
            t = calibration.fit_temperature(
                z_val, val.table["label" if task == "binary" else "dx_index"], task
            )
        prob = data.melanoma_probability
        dx = data.dx_probabilities(z_test) if task == "dx" else None
        scores[role] = Scores(prob(z_val, task), prob(z_test, task), dx)
        scores[f"{role}_calibrated"] = Scores(prob(z_val, task, t), prob(z_test, task, t))
        temperatures[f"{role}_calibrated"] = t
        if role == "student":
            predictors["student"] = predictor  # shift robustness scores it again
    for name, path in exported.items():
        predictor = predictors[name] = runtime.Predictor.load(path, threads)
        z_val, z_test = predictor.logits(val.images), predictor.logits(test.images)
        task = predictor.task
        dx = data.dx_probabilities(z_test) if task == "dx" else None
        scores[name] = Scores(
            data.melanoma_probability(z_val, task), data.melanoma_probability(z_test, task), dx
        )
    return scores, predictors, temperatures


def evaluate_stage(
    scores: dict[str, Scores],
    predictors: dict[str, runtime.Predictor],
    temperatures: dict[str, float],
    val: data.Prepared,
    test: data.Prepared,
    exported: list[str],
    params: EvaluateParams,
    mp: MetricsParams,
) -> tuple[dict, pd.DataFrame]:
    """Every figure of the evaluate stage, from :func:`score_models`'s output.

    The teacher is compared with the float student and each export; subgroups are reported
    for the teacher, the student and the deployed export (``exported[0]``), shift robustness
    for the student and the deployed export (the teacher would take minutes more).

    Returns:
        the stage's report (:func:`evaluate_all` with temperatures, the best baseline by val
        and the shift figures; :func:`summary` takes the metrics from it), and the shift
        robustness table.
    """
    results = evaluate_all(
        scores, val.table, test.table, "teacher", ["student", *exported],
        ["teacher", "student", *exported[:1]], params.bootstrap, params.seed,
        mp.target_sensitivity, mp.ece_bins, params.min_subgroup,
    )  # fmt: skip
    for name, t in temperatures.items():
        results[name]["temperature"] = t
    baselines = [n for n in scores if n.startswith("baseline_")]
    results["best_baseline_by_val"] = max(baselines, key=lambda n: results[n]["val_roc_auc"])
    shifted = ["student", *exported[:1]]
    table = shift.robustness(
        {n: predictors[n] for n in shifted},
        {n: results[n]["at_target_sensitivity"]["threshold"] for n in shifted},
        test.images, test.table["label"].to_numpy(), params.seed,
    )  # fmt: skip
    results["shift"] = shift.as_metrics(table)
    results["diagnosis"] = {  # the 7-way figures of every dx model, on test
        name: metrics.dx_figures(test.table["dx"], s.dx_test)
        for name, s in scores.items()
        if s.dx_test is not None
    }
    return results, table
