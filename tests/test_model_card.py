"""The model card from small fake reports, its consistency check, and the stage on a tiny student."""

import copy
import dataclasses
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from pipeline_lib import (
    calibration,
    data,
    evaluation,
    inference,
    metrics,
    model_card,
    models,
    operating_point,
    quantization,
    runtime,
)


def _point(**kw) -> operating_point.ModelOperatingPoint:
    fields = dict(
        file="data/quantize/student_int8.pte", md5="0" * 32, arch="mobilenetv3_small_100",
        task="binary", image_size=128, cache_size=128, temperature=1.23, threshold=0.0777,
        threshold_raw=0.0455, target_sensitivity=0.95, val_sensitivity=0.952,
        val_specificity=0.546, val_roc_auc=0.861, val_ece=0.030, val_ece_raw=0.040, n_val=1503,
        n_val_melanoma=168,
    )  # fmt: skip
    return operating_point.ModelOperatingPoint(**(fields | kw))


POINTS = {
    "int8": _point(),
    "float": _point(file="data/distill/model.pt", temperature=0.898, threshold=0.0525,
                    threshold_raw=0.0692, val_roc_auc=0.866),
}  # fmt: skip


def _model(roc: float, threshold: float, sens: float = 0.935) -> dict:
    return {
        "val_roc_auc": roc, "roc_auc": 0.871, "roc_auc_low": 0.840, "roc_auc_high": 0.900,
        "pr_auc": 0.478, "pr_auc_low": 0.379, "pr_auc_high": 0.577,
        "ece": 0.042, "ece_low": 0.024, "ece_high": 0.063, "brier": 0.08,
        "at_target_sensitivity": {
            "threshold": threshold, "sensitivity": sens, "sensitivity_low": 0.892,
            "sensitivity_high": 0.971, "specificity": 0.573, "specificity_low": 0.543,
            "specificity_high": 0.604, "precision": 0.216,
        },
    }  # fmt: skip


def _group(n: int, mel: int, small: bool) -> dict:
    roc = float("nan") if mel == 0 else 0.85
    return {"n_images": n, "n_melanoma": mel, "roc_auc": roc, "sensitivity": 0.9,
            "specificity": 0.6, "small": small}  # fmt: skip


def _shift() -> dict:
    def level(change: float) -> dict:
        return {"roc_auc": 0.87 + change, "roc_auc_change": change, "sensitivity": 0.9,
                "specificity": 0.6}  # fmt: skip

    return {"clean": level(0.0), "blur_1": level(-0.004), "white_balance_2": level(-0.115),
            "brightness_2": level(-0.048)}  # fmt: skip


def _reports() -> dict:
    groups = {
        "sex": {"male": _group(794, 94, False), "unknown": _group(9, 0, True)},
        "site": {"ear": _group(9, 3, True), "back": _group(302, 46, False)},
    }
    evaluate = {
        "n_test": 1503, "n_test_melanoma": 168, "n_test_lesions": 1119, "bootstrap": 1000,
        "best_baseline_by_val": "baseline_hgb",
        "baseline_hgb": _model(0.900, 0.1), "teacher_calibrated": _model(0.878, 0.08),
        "student": _model(0.866, 0.0692), "student_calibrated": _model(0.866, 0.0525) | {"temperature": 0.898},
        "student_int8": _model(0.861, 0.0455),
        "paired_teacher_vs_student": {
            "student_int8": {"roc_auc_difference": -0.004, "roc_auc_difference_low": -0.018,
                             "roc_auc_difference_high": 0.010, "p_value": 0.642},
        },
        "subgroups": {"student": groups, "student_int8": groups},
        "shift": {"student": _shift(), "student_int8": _shift()},
    }  # fmt: skip
    latency = {"1": {"median": 1.01}, "2": {"median": 0.81}}
    return {
        "prepare": {"images": 10015, "lesions": 7470, "melanoma_images": 1113,
                    "dx_counts": {"mel": 1113, "nv": 6705}},
        "split": {"seed": 0} | {
            part: {"images": n, "lesions": n - 400, "melanoma_images": n // 9, "melanoma_share": 0.111}
            for part, n in (("train", 7009), ("val", 1503), ("test", 1503))
        },
        "teacher": {"arch": "resnet18"},
        "calibrate": {"temperature": 0.863},
        "distill": {"arch": "mobilenetv3_small_100", "params": 1518881, "teacher_arch": "resnet18",
                    "kd_temperature": 2.0, "kd_alpha": 0.5, "teacher_temperature": 0.863,
                    "epochs_run": 8, "best_epoch": 8, "train_seconds": 790.0},
        "quantize": {"qat": {"used": True}},
        "evaluate": evaluate,
        "benchmark": {"models": {
            "student_executorch_int8": {"size_mb": 1.787, "latency_ms": latency, "peak_ram_mb": 1049},
            "student_pytorch": {"size_mb": 6.2, "latency_ms": latency, "peak_ram_mb": 838},
        }, "teacher_over_student": {}, "machine": {"label": "AMD EPYC, AVX2, no VNNI, 2 CPUs"}},
    }  # fmt: skip


def test_card_has_every_section_with_the_reported_figures():
    card = model_card.markdown(POINTS, _reports())
    for heading in ("Model", "Intended use", "Data", "Operating point", "Test results",
                    "Subgroups", "Robustness to acquisition shift", "Limits"):  # fmt: skip
        assert f"## {heading}" in card
    assert "10,015 dermoscopy images of 7,470 lesions, 1,113 of them melanoma" in card
    assert "| val | 1,503 |" in card
    assert "0.871 [0.840, 0.900]" in card  # test ROC-AUC with its CI
    assert "| `int8` | 1.230 | 0.0777 | 0.952 | 0.546 |" in card  # the val operating point
    assert (
        "| `int8` | ExecuTorch program, XNNPACK | `data/quantize/student_int8.pte` | 1.79 | 1.01 | 0.81 |"
        in card
    )
    assert "| sex | unknown | 9 | 0 | - | 0.900 | 0.600 | **small** |" in card
    assert "| site | back | 302 | 46 | 0.850 | 0.900 | 0.600 |  |" in card
    assert "| white_balance_2 | -0.115 (sens 0.90) |" in card
    assert "white_balance_2 (-0.115) and brightness_2 (-0.048)" in card
    assert "**Small subgroups** (figures too noisy to trust): sex: unknown, site: ear." in card
    assert "not a diagnosis" in card and "no external validation" in card
    assert "from scratch (no pretrained weights), fine-tuned on the HAM10000 train split" in card
    assert "-0.004 [-0.018, 0.010], p = 0.642" in card
    assert "colour constancy" not in card
    reports = _reports()
    reports["distill"]["color_constancy"] = 6
    assert "shades-of-gray colour constancy, p = 6" in model_card.markdown(POINTS, reports)
    reports["distill"]["pretrained"] = "data/train_teacher/lite0/model.pt"
    assert (
        "from the checkpoint of the teacher member `lite0` (`data/train_teacher/lite0/model.pt`), "
        "fine-tuned on the HAM10000 train split" in model_card.markdown(POINTS, reports)
    )
    reports["distill"]["pretrained"] = "weights/lite0_in1k.pt"
    assert "from the weights file weights/lite0_in1k.pt, fine" in model_card.markdown(
        POINTS, reports
    )
    assert "No external set is listed" in card
    assert "on the benchmark machine (AMD EPYC, AVX2, no VNNI, 2 CPUs, `plots/" in card
    del reports["benchmark"]["machine"]  # a report written before the machine was recorded
    assert "on the benchmark machine (`plots/benchmark/report.json`)" in model_card.markdown(
        POINTS, reports
    )


def test_files_calibrated_by_the_quantize_stage_are_named_in_the_card():
    reports = _reports()
    assert model_card.recalibrated(reports["quantize"]) == frozenset()
    card = model_card.markdown(POINTS, reports)
    assert "Platt" not in card and "The ECE of `int8` here is before its own temperature" in card
    reports["quantize"] |= {
        "int8_pte": {"recalibration": {"applied": True}},
        "int8_onnx": {"recalibration": {"applied": False}},
    }
    assert model_card.recalibrated(reports["quantize"]) == frozenset({"int8"})
    card = model_card.markdown(POINTS, reports)
    assert "except `int8`, whose file carries Platt scaling of p(melanoma) fitted on val" in card
    points = POINTS | {"int8-onnx": _point(file="data/quantize/student_int8.onnx")}
    section = "\n".join(model_card._operating_points(points, frozenset({"int8", "int8-onnx"})))
    assert "except `int8` and `int8-onnx`, whose files carry Platt" in section
    assert "`predict` shows them as they are" in card
    assert "before its own temperature" not in card  # POINTS has no other export


def test_card_lists_each_external_set_with_its_report():
    card = model_card.markdown(POINTS, _reports(), {"clinic_b": "../b/labels.csv"})
    section = card[card.index("## Other clinics and cameras") :]
    assert "`melanoma-kd evaluate --images DIR --labels CSV --out REPORT`" in section
    assert "- `clinic_b` (labels `../b/labels.csv`): `plots/external/clinic_b/report.md`" in section
    assert "No external set" not in section


def test_card_needs_every_report():
    reports = _reports()
    del reports["benchmark"]
    with pytest.raises(ValueError, match="benchmark"):
        model_card.markdown(POINTS, reports)


def test_card_refuses_the_headline_metrics_in_place_of_the_full_reports():
    for stage, key in (("evaluate", "subgroups"), ("benchmark", "teacher_over_student")):
        reports = _reports()
        del reports[stage][key]  # what metrics/<stage>.json keeps lacks it
        with pytest.raises(ValueError, match=f"plots/{stage}/report.json"):
            model_card.markdown(POINTS, reports)


def test_consistency_check_accepts_evaluates_choices_and_names_a_stale_one():
    reports = _reports()
    model_card.check_against_evaluate(POINTS, reports["evaluate"])
    stale = copy.deepcopy(reports["evaluate"])
    stale["student_calibrated"]["temperature"] = 0.95
    stale["student_int8"]["at_target_sensitivity"]["threshold"] = 0.06
    with pytest.raises(model_card.ConsistencyError) as err:
        model_card.check_against_evaluate(POINTS, stale)
    assert "float temperature" in str(err.value) and "int8 raw threshold" in str(err.value)


def test_consistency_check_compares_uncalibrated_roc_auc():
    """A dx model's temperature reorders p(mel): the evaluate stage's val ROC-AUC is of the raw
    probabilities, and so is the one the check compares."""
    points = {
        n: dataclasses.replace(p, val_roc_auc_raw=p.val_roc_auc + 0.01) for n, p in POINTS.items()
    }
    ev = copy.deepcopy(_reports()["evaluate"])
    with pytest.raises(model_card.ConsistencyError, match="float val ROC-AUC"):
        model_card.check_against_evaluate(points, ev)
    for name, key in (("float", "student"), ("int8", "student_int8")):
        ev[key]["val_roc_auc"] = points[name].val_roc_auc_raw
    model_card.check_against_evaluate(points, ev)


def _stage():
    spec = importlib.util.spec_from_file_location("model_card_stage", REPO / "stages/model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_on_a_tiny_student(prepared, tmp_path, monkeypatch):
    """The stage script end to end: val logits -> operating points that agree with evaluate's."""
    root = tmp_path
    (root / "prepared").mkdir()
    np.save(root / "prepared/images.npy", prepared.images)
    prepared.table.to_csv(root / "prepared/table.csv", index=False)
    (root / "split").mkdir()
    val = prepared.table.assign(row=range(len(prepared.table)))
    val.to_csv(root / "split/val.csv", index=False)
    torch.manual_seed(0)
    model = models.create("dsnet_tiny", drop_rate=0.0).eval()
    with torch.no_grad():
        model.backbone.head[-1].weight.mul_(300.0)
    meta = {"arch": "dsnet_tiny", "task": "binary", "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(root / "student/model.pt", model, meta | {"image_size": 32})
    z_float = inference.predict_logits(model, prepared.images, 32)
    np.save(root / "student/val_logits.npy", z_float)
    quantization.write_onnx(model, 32, root / "fp32.onnx")
    calib = quantization.calibration_inputs(prepared.images, 32, 16, seed=0)
    quantization.write_onnx_int8(root / "fp32.onnx", root / "int8.onnx", calib)

    # evaluate.json as the evaluate stage computes its val choices.
    y = val["label"].to_numpy()
    prob = data.melanoma_probability
    t = calibration.fit_temperature(z_float, y, "binary")
    z_onnx = runtime.Predictor.load(root / "int8.onnx").logits(prepared.images)
    choose = evaluation.choose_thresholds
    reports = _reports()
    ev = reports["evaluate"]
    ev["student"] = _model(0.5, choose(y, prob(z_float, "binary"), 0.95).sensitivity)
    ev["student_calibrated"] = _model(0.5, choose(y, prob(z_float, "binary", t), 0.95).sensitivity)
    ev["student_calibrated"]["temperature"] = t
    ev["student_int8_onnx"] = _model(0.5, choose(y, prob(z_onnx, "binary"), 0.95).sensitivity)
    for name, z in (
        ("student", z_float),
        ("student_calibrated", z_float),
        ("student_int8_onnx", z_onnx),
    ):
        ev[name]["val_roc_auc"] = metrics.roc_auc(y, z)
    reports["quantize"]["int8_onnx"] = {"recalibration": {"applied": True}}
    argv = ["model_card.py", "--prepared", str(root / "prepared"), "--split", str(root / "split"),
            "--student", str(root / "student"), "--exported", f"int8-onnx={root / 'int8.onnx'}",
            "--out", str(root / "op.json"), "--metrics", str(root / "metrics.json"),
            "--card", str(root / "card.md"), "--params", str(REPO / "params.yaml")]  # fmt: skip
    for name, report in reports.items():
        (root / f"{name}.json").write_text(json.dumps(report))
        argv += ["--report", f"{name}={root / f'{name}.json'}"]
    monkeypatch.setattr(sys, "argv", argv)
    _stage().main()

    points = json.loads((root / "op.json").read_text())
    assert list(points) == ["int8-onnx", "float"]  # the deployed export first
    assert points["float"]["temperature"] == pytest.approx(t, rel=1e-9)
    # the quantize stage calibrated the int8 file: its output is shown as it is
    assert points["int8-onnx"]["temperature"] == 1.0
    assert points["int8-onnx"]["threshold"] == points["int8-onnx"]["threshold_raw"]
    assert set(json.loads((root / "metrics.json").read_text())["float"]) == {
        "temperature",
        "threshold",
        "val_sensitivity",
        "val_specificity",
        "val_ece",
    }
    card = (root / "card.md").read_text()
    assert "# Model card" in card and "`int8-onnx`" in card

    ev["student_calibrated"]["temperature"] = 2 * t  # a stale evaluate.json stops the stage
    (root / "evaluate.json").write_text(json.dumps(reports["evaluate"]))
    with pytest.raises(model_card.ConsistencyError, match="float temperature"):
        _stage().main()


def test_card_compares_with_the_reference_when_the_benchmark_timed_it():
    reports = _reports()
    assert "## Against the from-scratch reference" not in model_card.markdown(POINTS, reports)
    latency = {"1": {"median": 57.17}, "2": {"median": 30.0}}
    test = {"roc_auc": 0.884, "roc_auc_low": 0.857, "roc_auc_high": 0.910, "ece": 0.0237}
    snapshot = {
        "commit": "56ac890461f0803bc278b63ac6df9d260de4e234",
        "description": "the pipeline with two from-scratch networks",
        "models": {
            "teacher": {"arch": "resnet18", "val_roc_auc": 0.888, "test": test},
            "student_int8": {"arch": "mobilenetv3_small_100", "val_roc_auc": 0.873,
                             "test": test | {"roc_auc": 0.883}},
        },
    }  # fmt: skip
    bench = reports["benchmark"]
    bench["reference"] = snapshot
    bench["models"] |= {
        "teacher_pytorch": {"size_mb": 58.6, "latency_ms": latency},
        "reference_teacher_pytorch": {"size_mb": 44.8, "latency_ms": latency},
        "reference_executorch_int8": {"size_mb": 1.69, "latency_ms": {"1": {"median": 2.07}}},
    }
    reports["evaluate"]["teacher"] = _model(0.902, 0.025) | {"val_roc_auc": 0.903}
    reports["evaluate"]["student_int8"] |= {"val_roc_auc": 0.891}
    card = model_card.markdown(POINTS, reports)
    assert "## Against the from-scratch reference" in card
    assert "the pipeline with two from-scratch networks (commit `56ac890`, the same split)" in card
    assert "| teacher (this run) | 0.903 |" in card
    assert "| `int8` student (this run) | 0.891 |" in card
    assert (
        "| reference int8 student `mobilenetv3_small_100` | 0.873 | 0.883 [0.857, 0.910] "
        "| 0.024 | 1.69 | 2.07 |" in card
    )
    assert "| reference teacher `resnet18` | 0.888 | 0.884 [0.857, 0.910] | 0.024 | 44.80 |" in card
