"""The model_card stage: each deployable student's operating point, and the model card.

The float student's temperature and threshold come from its saved val logits; each export is
scored on the val images in its own runtime and gets its own (:func:`choose_points`). The
choices are checked against the evaluate stage's, then written for ``melanoma-kd predict``
together with the card (:func:`build`).

Unlike the other stages, the model_card stage reads the other stages' reports: the card is an
end point for people that summarises them, and it is regenerated whenever any of them changes.
They are ``metrics/<stage>.json``, except for evaluate and benchmark, whose metrics files keep
only the headline figures: the card reads their full reports (``plots/evaluate/report.json``
with subgroups, shift robustness and paired comparisons; ``plots/benchmark/report.json`` with
peak RAM). Every figure in it comes from those files or from the operating points chosen on
val; nothing is computed on the test split here.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline_lib import data, formatting, operating_point, reference, runtime
from pipeline_lib.operating_point import ModelOperatingPoint

# The evaluate stage's name for each model that ``melanoma-kd predict --model`` offers
# (the names given to its --exported in dvc.yaml).
EVALUATE_NAMES = {"float": "student", "int8": "student_int8", "int8-onnx": "student_int8_onnx"}
BENCHMARK_NAMES = {
    "float": "student_pytorch",
    "int8": "student_executorch_int8",
    "int8-onnx": "student_onnx_int8",
}
FILE_KINDS = {
    "float": "PyTorch checkpoint",
    "int8": "ExecuTorch program, XNNPACK",
    "int8-onnx": "ONNX, QDQ",
}
REPORTS = (
    "prepare", "split", "teacher", "calibrate", "distill", "quantize", "evaluate", "benchmark",
)  # fmt: skip
# A key of each full report that its stage's metrics file (the headline figures) lacks.
FULL_REPORTS = {"evaluate": "subgroups", "benchmark": "teacher_over_student"}


def _check_reports(reports: dict[str, dict]) -> None:
    missing = [name for name in REPORTS if name not in reports]
    if missing:
        raise ValueError(f"model card needs the reports of {missing}")
    for name, key in FULL_REPORTS.items():
        if key not in reports[name]:
            raise ValueError(
                f"the {name} report has no {key!r}: pass plots/{name}/report.json, not the "
                f"headline figures of metrics/{name}.json"
            )


def _start(pretrained: str) -> str:
    if pretrained in ("false", False):
        return "from scratch (no pretrained weights)"
    if pretrained == "imagenet":
        return "from ImageNet weights"
    path = Path(pretrained)
    if path.name == "model.pt" and path.parent.parent.name == "train_teacher":
        return f"from the checkpoint of the teacher member `{path.parent.name}` (`{pretrained}`)"
    return f"from the weights file {pretrained}"


class ConsistencyError(ValueError):
    """The operating points disagree with the evaluate stage's figures (a stale report)."""


# The float student is compared exactly. An ExecuTorch int8 program gives slightly different
# logits with another thread count (measured: val ROC-AUC 0.86112 with 1 thread, 0.86116 with
# 2), so exports get a tolerance that still catches another model's figures.
TOLERANCE = {"float": 1e-5, "export": 2e-3}


def _close(a: float, b: float, tol: float) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol / 10)


def check_against_evaluate(
    points: dict[str, ModelOperatingPoint], evaluate: dict, pairs: int | None = None
) -> None:
    """The val choices here must be the ones the evaluate stage made from the same val scores.

    The float student's temperature and both of its thresholds, and each export's threshold on
    its raw probability, are compared with the evaluate stage's report (``evaluate``).
    ``pairs`` (melanoma x benign val images) lets an export's ROC-AUC differ by one swapped
    pair: XNNPACK's int8 kernels can round a near tie the other way in another process, which
    moves the ROC-AUC of a small val set by ``1 / pairs`` (0.007 for 36 images), far above the
    export tolerance, and of the real val split by about 5e-6, far below it.

    Raises:
        ConsistencyError: listing every figure that differs.
    """
    wrong = []

    def compare(what: str, ours: float, theirs: float) -> None:
        if not _close(ours, theirs, tol):
            wrong.append(f"{what}: {ours:.6g} here, {theirs:.6g} in the evaluate report")

    for name, op in points.items():
        tol = TOLERANCE["float" if name == "float" else "export"]
        entry = evaluate[EVALUATE_NAMES[name]]
        compare(
            f"{name} raw threshold", op.threshold_raw, entry["at_target_sensitivity"]["threshold"]
        )
        auc_tol = tol if name == "float" or not pairs else max(tol, 1.01 / pairs)
        # Uncalibrated against uncalibrated: a dx model's temperature reorders p(mel).
        ours = op.val_roc_auc if op.val_roc_auc_raw is None else op.val_roc_auc_raw
        if not math.isclose(ours, entry["val_roc_auc"], abs_tol=auc_tol):
            wrong.append(
                f"{name} val ROC-AUC: {ours:.6g} here, {entry['val_roc_auc']:.6g} in the evaluate "
                "report"
            )
        if name == "float":
            calibrated = evaluate["student_calibrated"]
            compare("float temperature", op.temperature, calibrated["temperature"])
            threshold = calibrated["at_target_sensitivity"]["threshold"]
            compare("float calibrated threshold", op.threshold, threshold)
    if wrong:
        raise ConsistencyError(
            "operating points differ from the evaluate report (rerun `dvc repro`): "
            + "; ".join(wrong)
        )


_f, _ci = formatting.number, formatting.with_ci


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [*formatting.table(header, rows), ""]  # each table ends its section's paragraph


def _model(points: dict[str, ModelOperatingPoint], r: dict) -> list[str]:
    distill, quantize, bench = r["distill"], r["quantize"], r["benchmark"]["models"]
    machine = r["benchmark"].get("machine", {}).get("label")  # absent from older reports
    op = points["float"]
    qat = quantize.get("qat", {}).get("used")
    pte_method = "quantization-aware training" if qat else "post-training static quantization"
    lines = [
        "## Model",
        "",
        f"- **What**: a {distill['arch']} image classifier ({distill['params'] / 1e6:.2f}M "
        f"parameters, task `{op.task}`) that gives the probability that a dermoscopy photo of "
        f"one skin lesion shows a melanoma. The whole photo is resized to a "
        f"{op.image_size} x {op.image_size} RGB square"
        + (
            f" and each colour channel is divided by its p-mean (shades-of-gray colour "
            f"constancy, p = {distill['color_constancy']}, inside the model files)"
            if distill.get("color_constancy")
            else ""
        )
        + "; the logit is divided by a temperature "
        "fitted on the validation split (calibrated probability), and the decision compares "
        "that probability with a threshold chosen on the validation split.",
        f"- **Training**: {_start(distill.get('pretrained', 'false'))}, fine-tuned on the HAM10000 "
        "train split, "
        f"distilled from a {distill['teacher_arch']} teacher (KD temperature "
        f"{distill['kd_temperature']:g}, alpha {distill['kd_alpha']:g}, teacher calibrated "
        f"with T = {distill['teacher_temperature']:.3f}); {distill['epochs_run']} epochs, best "
        f"epoch {distill['best_epoch']} by val ROC-AUC, {distill['train_seconds'] / 60:.1f} min "
        f"on a 2-core CPU. The int8 `.pte` comes from it by {pte_method}, the int8 ONNX by "
        "post-training static quantization.",
        "",
    ]
    rows = []
    for name, op in points.items():
        b = bench.get(BENCHMARK_NAMES[name], {})
        latency = b.get("latency_ms", {})
        rows.append(
            [f"`{name}`", FILE_KINDS[name], f"`{op.file}`", _f(b.get("size_mb"), ".2f"),
             _f(latency.get("1", {}).get("median"), ".2f"),
             _f(latency.get("2", {}).get("median"), ".2f"), _f(b.get("peak_ram_mb"), ".0f")]
        )  # fmt: skip
    header = ["`--model`", "runtime", "file", "size (MB)", "latency 1 thread (ms)"]
    lines += _table([*header, "latency 2 threads (ms)", "peak RAM of the process (MB)"], rows)
    lines += [
        "Batch-1 median latency on the benchmark machine ("
        + (f"{machine}, " if machine else "")
        + "`plots/benchmark/report.json`). "
        "Peak RAM counts the Python runtime and its libraries, not only the model.",
        "",
    ]
    return lines


def _intended_use() -> list[str]:
    return [
        "## Intended use",
        "",
        "- **For**: research and teaching on distilling and quantizing a melanoma classifier "
        "for phones; trying the model on HAM10000-like dermoscopy photos with "
        "`melanoma-kd predict` or `melanoma-kd serve`.",
        "- **Not for**: diagnosing, screening or triaging people, or any clinical decision. "
        "**This is a research tool, not a diagnosis.** A lesion of concern needs a "
        "dermatologist, whatever the model says.",
        "- **Inputs it was not built for**: phone or clinical (non-dermoscopic) photos, several "
        "lesions in one photo, non-pigmented lesions outside the seven HAM10000 diagnoses, "
        "skin types under-represented in HAM10000.",
        "",
    ]


def _data(r: dict) -> list[str]:
    prep, split = r["prepare"], r["split"]
    dx = ", ".join(f"{k} {v}" for k, v in prep["dx_counts"].items())
    lines = [
        "## Data",
        "",
        f"HAM10000 (Tschandl et al., 2018): {prep['images']:,} dermoscopy images of "
        f"{prep['lesions']:,} lesions, {prep['melanoma_images']:,} of them melanoma "
        f"({dx}). Diagnoses were confirmed by histopathology, follow-up, expert consensus or "
        "confocal microscopy, depending on the lesion.",
        "",
        f"Split by lesion (all images of a lesion on one side), stratified by melanoma, seed "
        f"{split['seed']}:",
        "",
    ]
    rows = [
        [part, f"{split[part]['images']:,}", f"{split[part]['lesions']:,}",
         f"{split[part]['melanoma_images']:,}", f"{split[part]['melanoma_share']:.1%}"]
        for part in ("train", "val", "test")
    ]  # fmt: skip
    return lines + _table(["split", "images", "lesions", "melanomas", "melanoma share"], rows)


def _operating_points(points: dict[str, ModelOperatingPoint], calibrated: frozenset) -> list[str]:
    op = next(iter(points.values()))
    fixed = [f"`{n}`" for n in points if n in calibrated]
    temperature = "its own temperature (fitted on its val logits)"
    if fixed:
        files = "whose files carry" if len(fixed) > 1 else "whose file carries"
        temperature += (
            f", except {' and '.join(fixed)}, {files} Platt scaling of p(melanoma) fitted on "
            "val (the quantize stage) and keep temperature 1,"
        )
    lines = [
        "## Operating point (chosen on the validation split)",
        "",
        f"Each file gets {temperature} and a threshold: the "
        f"highest one whose val sensitivity reaches {op.target_sensitivity:.0%} "
        f"({op.n_val:,} val images, {op.n_val_melanoma} melanomas). `melanoma-kd predict` and "
        "the web page print the calibrated probability and call a photo melanoma-suspicious "
        "at or above this threshold.",
        "",
    ]
    rows = [
        [f"`{name}`", f"{p.temperature:.3f}", f"{p.threshold:.4f}", f"{p.val_sensitivity:.3f}",
         f"{p.val_specificity:.3f}", f"{p.val_roc_auc:.3f}", f"{p.val_ece_raw:.3f} -> {p.val_ece:.3f}"]
        for name, p in points.items()
    ]  # fmt: skip
    header = ["`--model`", "temperature", "threshold (calibrated p)", "val sensitivity"]
    return lines + _table(
        [*header, "val specificity", "val ROC-AUC", "val ECE raw -> calibrated"], rows
    )


def _test(
    points: dict[str, ModelOperatingPoint], evaluate: dict, calibrated: frozenset
) -> list[str]:
    shown = {
        evaluate["best_baseline_by_val"]: "best baseline (by val)",
        "teacher_calibrated": "teacher, calibrated",
        "student_calibrated": "`float` student, calibrated",
    } | {EVALUATE_NAMES[n]: f"`{n}` student" for n in points if n != "float"}
    lines = [
        "## Test results",
        "",
        f"Holdout test split: {evaluate['n_test']:,} images, {evaluate['n_test_melanoma']} "
        f"melanomas, {evaluate['n_test_lesions']:,} lesions, never used to choose anything. "
        f"95% confidence intervals from {evaluate['bootstrap']:,} bootstrap resamples of "
        "lesions. Sensitivity and specificity at each model's threshold chosen on val.",
        "",
    ]
    rows = []
    for key, label in shown.items():
        m = evaluate[key]
        op = m["at_target_sensitivity"]
        rows.append(
            [label, _ci(m, "roc_auc"), _ci(m, "pr_auc"), _ci(m, "ece"),
             _ci(op, "sensitivity"), _ci(op, "specificity"), _f(op.get("precision"))]
        )  # fmt: skip
    header = ["model", "ROC-AUC", "PR-AUC", "ECE", "sensitivity", "specificity", "precision"]
    lines += _table(header, rows)
    fitted = [n for n in points if n != "float" and n not in calibrated]
    if fitted:
        lines += [
            f"The ECE of {', '.join(f'`{n}`' for n in fitted)} here is before its own "
            "temperature (which `predict` applies); the val ECE after it is in the "
            "operating-point table.",
            "",
        ]
    if len(fitted) < len(points) - 1:
        lines += [
            "The int8 files' ECE here is that of the probabilities they output: their Platt "
            "scaling is part of the file, and `predict` shows them as they are.",
            "",
        ]
    paired = evaluate.get("paired_teacher_vs_student", {})
    for name in points:
        d = paired.get(EVALUATE_NAMES[name])
        if d:
            lines.append(
                f"- Teacher minus `{name}` student, test ROC-AUC (paired lesion bootstrap): "
                f"{_ci(d, 'roc_auc_difference')}, p = {_f(d['p_value'])}."
            )
    return lines + [""]


def _reference(evaluate: dict, benchmark: dict) -> list[str]:
    """This run's teacher and int8 student beside the from-scratch reference's, when the
    benchmark stage timed the reference (its report has ``reference``)."""
    snapshot = benchmark.get("reference")
    if not snapshot:
        return []
    bench, commit = benchmark["models"], snapshot["commit"][:7]
    pairs = [  # (label, val ROC-AUC, test figures, benchmark row)
        ("teacher (this run)", evaluate["teacher"].get("val_roc_auc"), evaluate["teacher"],
         bench["teacher_pytorch"]),
        ("`int8` student (this run)", evaluate["student_int8"].get("val_roc_auc"),
         evaluate["student_int8"], bench["student_executorch_int8"]),
    ]  # fmt: skip
    for key, name in reference.BENCHMARK_NAMES.items():
        model = snapshot["models"][key]
        label = f"reference {'teacher' if key == 'teacher' else 'int8 student'} `{model['arch']}`"
        pairs.append((label, model["val_roc_auc"], model["test"], bench[name]))
    rows = [
        [label, _f(val), _ci(test, "roc_auc"), _f(test.get("ece")), _f(b["size_mb"], ".2f"),
         _f(b["latency_ms"]["1"]["median"], ".2f")]
        for label, val, test, b in pairs
    ]  # fmt: skip
    header = ["model", "val ROC-AUC", "test ROC-AUC", "test ECE", "size (MB)"]
    return [
        "## Against the from-scratch reference",
        "",
        f"The reference is {snapshot['description']} (commit `{commit}`, the same split). Its "
        "accuracy is that of its own run; its size and latency are of the same architectures "
        "rebuilt and timed on this run's benchmark machine.",
        "",
        *_table([*header, "latency 1 thread (ms)"], rows),
    ]


def _subgroups(evaluate: dict) -> list[str]:
    groups = evaluate["subgroups"]
    model = next(
        (EVALUATE_NAMES[n] for n in ("int8", "float") if EVALUATE_NAMES[n] in groups), None
    )
    if model is None:
        return []
    lines = [
        "## Subgroups (test split)",
        "",
        f"`{model}` at its val-chosen threshold, by sex, age band and body site. Groups marked "
        "**small** have too few images or melanomas (`evaluate.min_subgroup` in params.yaml, "
        "5 melanomas) for their figures to mean anything; no intervals are computed per group, "
        "so the others differ partly by chance too.",
        "",
    ]
    rows = []
    for attribute, by_group in groups[model].items():
        for group, g in by_group.items():
            rows.append(
                [attribute, group, str(g["n_images"]), str(g["n_melanoma"]), _f(g["roc_auc"]),
                 _f(g["sensitivity"]), _f(g["specificity"]), "**small**" if g["small"] else ""]
            )  # fmt: skip
    header = ["attribute", "group", "images", "melanomas", "ROC-AUC", "sensitivity"]
    return lines + _table([*header, "specificity", "flag"], rows)


def _shift(evaluate: dict) -> tuple[list[str], list[str]]:
    """The shift table, and the perturbations that cost the most (for the limits)."""
    tables = evaluate["shift"]
    names = list(tables)
    keys = [k for k in tables[names[0]] if k != "clean"]
    lines = [
        "## Robustness to acquisition shift (test split)",
        "",
        "Test ROC-AUC change when every test photo is perturbed (level 1 mild, 2 strong), and "
        "sensitivity at the unchanged val threshold:",
        "",
    ]
    rows = [
        [k, *(f"{_f(tables[n][k]['roc_auc_change'], '+.3f')} (sens {_f(tables[n][k]['sensitivity'], '.2f')})"
              for n in names)]
        for k in keys
    ]  # fmt: skip
    lines += _table(["perturbation", *names], rows)
    deployed = names[-1]
    changes = {k: tables[deployed][k]["roc_auc_change"] for k in keys}
    worst = sorted((k for k in keys if _f(changes[k]) != "-"), key=lambda k: changes[k])[:2]
    return lines, [f"{k} ({changes[k]:+.3f})" for k in worst]


def _limits(points: dict[str, ModelOperatingPoint], evaluate: dict, worst: list[str]) -> list[str]:
    deployed = next(iter(points))
    op = evaluate[EVALUATE_NAMES[deployed]]["at_target_sensitivity"]
    precision = op.get("precision")
    false_alarms = "-" if _f(precision) == "-" else f"{1 - precision:.0%}"
    small = sorted(
        {f"{attribute}: {group}"
         for by_attribute in evaluate["subgroups"].values()
         for attribute, groups in by_attribute.items()
         for group, g in groups.items() if g["small"]}
    )  # fmt: skip
    lines = [
        "## Limits",
        "",
        "- **Research tool, not a diagnosis.** No regulator has reviewed it; do not use it on "
        "patients.",
        "- **One data set, no external validation**: trained on HAM10000 only "
        "(dermoscopy from two centres, Vienna and Queensland, mostly fair skin; skin type is not "
        "recorded). Its figures on other cameras, clinics or populations are unknown.",
        f"- **Many false alarms by design**: at the operating point "
        f"({points[deployed].target_sensitivity:.0%} sensitivity on val) the `{deployed}` "
        f"student's test sensitivity is {_ci(op, 'sensitivity')} and its specificity "
        f"{_ci(op, 'specificity')}: about {false_alarms} of the photos it calls suspicious are "
        "not melanomas, and some melanomas are still missed.",
    ]
    if worst:
        lines.append(
            f"- **Acquisition shift**: the largest test ROC-AUC losses come from {' and '.join(worst)}; "
            "phone photos differ from dermoscopy in exactly these ways."
        )
    if small:
        lines.append(
            "- **Small subgroups** (figures too noisy to trust): " + ", ".join(small) + "."
        )
    lines += [
        "- **Heat maps are not explanations a clinician can rely on**: Grad-CAM shows where the "
        "float student's evidence for melanoma lies, at the coarse resolution of its last "
        "feature map; it is drawn from the float model even when an int8 one scores the photo.",
        "",
    ]
    return lines


def _external(sets: dict[str, str]) -> list[str]:
    lines = [
        "## Other clinics and cameras",
        "",
        "Every figure above comes from HAM10000 images. Before the model is used elsewhere, score "
        "a labelled sample of that site's images with the shipped thresholds: `melanoma-kd "
        "evaluate --images DIR --labels CSV --out REPORT` (nothing is refitted on the sample; "
        "the report has ROC-AUC, PR-AUC, ECE, sensitivity and specificity with 95% intervals).",
        "",
    ]
    if not sets:
        return lines + ["No external set is listed under `external:` in params.yaml.", ""]
    lines.append(
        "Sets listed under `external:` in params.yaml are scored by the `external@<name>` stages "
        "with this card's operating points (so after it); their reports:"
    )
    lines += [
        "",
        *(f"- `{n}` (labels `{lab}`): `plots/external/{n}/report.md`" for n, lab in sets.items()),
    ]
    return lines + [""]


def markdown(
    points: dict[str, ModelOperatingPoint],
    reports: dict[str, dict],
    external: dict[str, str] | None = None,
) -> str:
    """The model card.

    Args:
        points: the operating point of each ``--model`` name, the deployed one (``int8``) first.
        reports: the pipeline's reports by stage name (:data:`REPORTS`): ``metrics/<stage>.json``;
            for ``evaluate`` and ``benchmark`` the stage's full ``plots/<stage>/report.json``
            (the metrics files keep only the headline figures); for ``split``,
            ``data/split/split_metadata.json``.
        external: the labels file of each external set listed in params.yaml, by set name.
    """
    _check_reports(reports)
    evaluate = reports["evaluate"]
    calibrated = recalibrated(reports["quantize"])  # int8 files with Platt scaling built in
    shift, worst = _shift(evaluate)
    lines = [
        "# Model card: melanoma-kd student",
        "",
        "Generated by the `model_card` stage (`dvc repro model_card`) from the pipeline's "
        "reports; edit `pipeline_lib/model_card.py`, not this file.",
        "",
        *_model(points, reports),
        *_intended_use(),
        *_data(reports),
        *_operating_points(points, calibrated),
        *_test(points, evaluate, calibrated),
        *_reference(evaluate, reports["benchmark"]),
        *_subgroups(evaluate),
        *shift,
        *_limits(points, evaluate, worst),
        *_external(external or {}),
    ]
    return "\n".join(lines).rstrip() + "\n"


def choose_points(
    val: data.Prepared,
    student: str | Path,
    exported: dict[str, str | Path],
    target_sensitivity: float,
    ece_bins: int,
    threads: int | None = None,
    calibrated: frozenset[str] = frozenset(),
) -> dict[str, ModelOperatingPoint]:
    """The operating point of the float student and of each export, chosen on val.

    Args:
        student: the folder with the float student's ``model.pt`` and its ``val_logits.npy``.
        exported: exported students (``.pte``, ``.onnx``) by ``melanoma-kd --model`` name,
            each scored on ``val`` in its own runtime.
        threads: intra-op threads of the exports' runtimes (as the evaluate stage scores them).
        calibrated: exports whose file already carries a calibration fitted on val (Platt
            scaling, :func:`recalibrated`): they keep temperature 1.

    Returns:
        the points by ``--model`` name, the deployed export (the first) first, ``float`` next.
    """
    checkpoint = Path(student) / "model.pt"
    meta = runtime.Predictor.load(checkpoint).meta
    logits = {checkpoint: np.load(Path(student) / "val_logits.npy")}
    names = {checkpoint: "float"}
    for name, path in exported.items():
        logits[Path(path)] = runtime.Predictor.load(path, threads).logits(val.images)
        names[Path(path)] = name
    labels, dx_index = val.table["label"].to_numpy(), val.table["dx_index"].to_numpy()
    points = {
        names[path]: operating_point.choose(
            z,
            labels,
            dx_index,
            path,
            meta,
            val.images.shape[-1],
            target_sensitivity,
            ece_bins,
            temperature=1.0 if names[path] in calibrated else None,
        )
        for path, z in logits.items()
    }
    deployed = [n for n in names.values() if n != "float"][:1]
    return {n: points[n] for n in [*deployed, *points] if n in points}


# The quantize stage's name for each int8 file that ``melanoma-kd predict --model`` offers.
QUANTIZE_NAMES = {"int8": "int8_pte", "int8-onnx": "int8_onnx"}


def recalibrated(quantize: dict) -> frozenset[str]:
    """The ``--model`` names whose file the quantize stage calibrated (its ``quantize.json``)."""
    return frozenset(
        name
        for name, key in QUANTIZE_NAMES.items()
        if quantize.get(key, {}).get("recalibration", {}).get("applied", False)
    )


def summary(points: dict[str, ModelOperatingPoint]) -> dict[str, dict[str, float]]:
    """The stage's metrics: each point's temperature, threshold and val figures at it."""
    keep = ("temperature", "threshold", "val_sensitivity", "val_specificity", "val_ece")
    return {n: {k: v for k, v in asdict(p).items() if k in keep} for n, p in points.items()}


def build(
    val: data.Prepared,
    student: str | Path,
    exported: dict[str, str | Path],
    reports: dict[str, dict],
    target_sensitivity: float,
    ece_bins: int,
    threads: int | None = None,
    external: dict[str, str] | None = None,
) -> tuple[dict[str, ModelOperatingPoint], dict[str, dict[str, float]], str]:
    """Everything the model_card stage writes: the points, their summary and the card.

    Args:
        val, student, exported, threads: as :func:`choose_points` takes them.
        reports, external: as :func:`markdown` takes them.

    Raises:
        ConsistencyError: when the points differ from the evaluate stage's choices.
    """
    _check_reports(reports)
    points = choose_points(
        val, student, exported, target_sensitivity, ece_bins, threads,
        calibrated=recalibrated(reports["quantize"]),
    )  # fmt: skip
    labels = val.table["label"].to_numpy()
    pairs = int(labels.sum()) * int(len(labels) - labels.sum())
    check_against_evaluate(points, reports["evaluate"], pairs)
    return points, summary(points), markdown(points, reports, external)
