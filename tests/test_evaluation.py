import numpy as np
import pandas as pd
import pytest

from pipeline_lib import bootstrap, evaluation, metrics, report, shift
from pipeline_lib.evaluation import Scores


@pytest.fixture()
def clustered():
    """Scores with ties, 2-3 images per lesion, about 20% melanoma lesions."""
    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(120), rng.integers(1, 4, 120))
    y = (rng.random(120) < 0.2).astype(int)[lesions]
    p = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 2)  # rounding makes ties
    return lesions, y, p


def test_lesion_weights_keep_the_images_of_a_lesion_together():
    lesions = np.array(["a", "a", "b", "c", "c", "c"])
    w = bootstrap.lesion_weights(lesions, 500, np.random.default_rng(0))
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # three lesions drawn per resample
    assert (w[:, 0] == 3).any() and (w[:, 0] == 0).any()  # with replacement


def test_lesion_weights_are_seeded():
    lesions = np.arange(50) // 2
    a = bootstrap.lesion_weights(lesions, 20, np.random.default_rng(3))
    b = bootstrap.lesion_weights(lesions, 20, np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_bootstrap_metrics_match_metrics_module_on_expanded_resamples(clustered):
    lesions, y, p = clustered
    w = bootstrap.lesion_weights(lesions, 5, np.random.default_rng(1))
    auc, ap = bootstrap.roc_auc(y, p, w), bootstrap.pr_auc(y, p, w)
    ece = bootstrap.ece(y, p, w, 10)
    sens, spec = bootstrap.rates(y, p >= 0.4, w)
    for r in range(len(w)):
        yy, pp = np.repeat(y, w[r]), np.repeat(p, w[r])
        op = metrics.operating_point(yy, pp, 0.4)
        assert auc[r] == pytest.approx(metrics.roc_auc(yy, pp))
        assert ap[r] == pytest.approx(metrics.pr_auc(yy, pp))
        assert ece[r] == pytest.approx(metrics.ece(yy, pp, 10))
        assert (sens[r], spec[r]) == pytest.approx((op.sensitivity, op.specificity))


def test_bootstrap_auc_of_one_class_resample_is_nan_and_ignored_by_interval():
    w = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    auc = bootstrap.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], w)
    assert np.isnan(auc[0]) and auc[1] == 1.0
    assert bootstrap.interval(auc) == (1.0, 1.0)


def test_ci_contains_point_estimate_and_separable_auc_ci_is_one(clustered):
    lesions, y, p = clustered
    w = bootstrap.lesion_weights(lesions, 300, np.random.default_rng(0))
    low, high = bootstrap.interval(bootstrap.roc_auc(y, p, w))
    assert low < metrics.roc_auc(y, p) < high
    separable = y * 0.5 + 0.25  # every melanoma above every other lesion
    assert bootstrap.interval(bootstrap.roc_auc(y, separable, w)) == (1.0, 1.0)


def test_paired_difference_of_identical_models_is_zero(clustered):
    lesions, y, p = clustered
    w = bootstrap.lesion_weights(lesions, 200, np.random.default_rng(0))
    d = evaluation.paired_difference(y, p, p.copy(), w)
    assert d["roc_auc_difference"] == 0.0
    assert (d["roc_auc_difference_low"], d["roc_auc_difference_high"]) == (0.0, 0.0)
    assert d["p_value"] == 1.0


def test_paired_difference_detects_a_better_model(clustered):
    lesions, y, p = clustered
    w = bootstrap.lesion_weights(lesions, 200, np.random.default_rng(0))
    d = evaluation.paired_difference(y, y * 0.5 + 0.25, p, w)
    assert d["roc_auc_difference_low"] > 0 and d["p_value"] < 0.05


def test_operating_threshold_is_chosen_on_val_and_applied_to_test():
    # Val melanomas score 0.6-0.9, so the 95%-sensitivity cut on val is 0.6; on test the
    # melanomas score 0.3-0.9 and choosing there would give 0.3.
    y_val = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p_val = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    y_test = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p_test = np.array([0.1, 0.2, 0.4, 0.5, 0.3, 0.7, 0.8, 0.9])
    assert metrics.threshold_for_sensitivity(y_test, p_test, 0.95) == 0.3
    w = bootstrap.lesion_weights(np.arange(8), 50, np.random.default_rng(0))
    out = evaluation.evaluate_model(y_val, Scores(p_val, p_test), y_test, w, 0.95, 5)
    op = out["at_target_sensitivity"]
    assert op["threshold"] == 0.6
    assert op["sensitivity"] == 0.75 and op["specificity"] == 1.0  # 0.3 melanoma missed
    assert out["at_best_f1"]["threshold"] == metrics.threshold_for_f1(y_val, p_val)


def test_agreement_counts_on_a_hand_example():
    y = np.array([1, 1, 1, 0, 0, 0])
    teacher = np.array([1, 0, 0, 1, 0, 0])
    student = np.array([1, 1, 0, 0, 0, 1])
    a = evaluation.agreement(y, teacher, student, "teacher", "student")
    assert a == {
        "n": 6, "agree": 3, "disagree": 3, "both_right": 2, "both_wrong": 1,
        "teacher_right_student_wrong": 1, "student_right_teacher_wrong": 2,
        "shared_false_negatives": 1, "teacher_only_false_negatives": 1,
        "student_only_false_negatives": 0, "shared_false_positives": 0,
    }  # fmt: skip


def test_probability_agreement_on_hand_examples():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    follows = 1 / (1 + np.exp(-(2 * metrics.logit(p) + 1)))  # a monotone map of the logit
    a = evaluation.probability_agreement(p, follows, [1, 1, 0, 0], [1, 0, 0, 0])
    assert a["spearman"] == pytest.approx(1.0)
    assert a["pearson_logit"] == pytest.approx(1.0)
    assert a["mean_abs_difference"] == pytest.approx(np.mean(np.abs(p - follows)))
    # kappa by hand: observed 3/4; chance 1/2 * 1/4 + 1/2 * 3/4 = 1/2; (3/4 - 1/2) / (1 - 1/2)
    assert a["cohen_kappa"] == pytest.approx(0.5)
    reverse = evaluation.probability_agreement(p, p[::-1], [1, 0, 1, 0], [1, 0, 1, 0])
    assert reverse["spearman"] == pytest.approx(-1.0)
    assert reverse["cohen_kappa"] == pytest.approx(1.0)


def test_age_bands():
    ages = pd.Series([0.0, 29.0, 30.0, 44.0, 45.0, 60.0, 74.0, 75.0, 90.0, np.nan])
    assert evaluation.age_band(ages).tolist() == [
        "<30", "<30", "30-44", "30-44", "45-59", "60-74", "60-74", "75+", "75+", "unknown",
    ]  # fmt: skip


def test_subgroups_flag_small_groups_and_one_class_auc():
    n = {"female": 40, "male": 40, "unknown": 6}
    mel = {"female": 10, "male": 3, "unknown": 0}
    rows = [
        {"sex": s, "label": int(i < mel[s]), "age": 50.0, "localization": "back"}
        for s in n for i in range(n[s])
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    p = np.where(table["label"], 0.8, 0.2)
    out = evaluation.subgroups(table, p, 0.5, min_images=30)
    assert not out["sex"]["female"]["small"]
    assert out["sex"]["male"]["small"]  # 3 melanomas < 5
    assert out["sex"]["unknown"]["small"] and np.isnan(out["sex"]["unknown"]["roc_auc"])
    assert out["sex"]["female"]["n_images"] == 40 and out["sex"]["female"]["n_melanoma"] == 10
    assert out["sex"]["female"]["sensitivity"] == 1.0
    assert list(out["age"]) == ["45-59"] and list(out["site"]) == ["back"]


def test_gallery_rows_take_one_image_per_lesion_in_order():
    y = np.array([0, 0, 0, 1, 1, 1])
    lesions = np.array(["a", "a", "b", "c", "d", "e"])
    ps = np.array([0.9, 0.95, 0.7, 0.1, 0.3, 0.8])
    pt = np.array([0.5, 0.5, 0.5, 0.9, 0.2, 0.9])
    rows = list(evaluation.gallery_rows(y, lesions, ps, 0.5, pt, 0.5, 2).values())
    assert rows[0].tolist() == [1, 2]  # highest p first; image 0 shares lesion "a" with 1
    assert rows[1].tolist() == [3, 4]
    assert rows[2].tolist() == [3]  # the teacher catches 3 (0.9), misses 4 (0.2)


@pytest.mark.parametrize("name", list(shift.PERTURBATIONS))
def test_perturbations_are_seeded_and_keep_shape_and_dtype(name):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 24, 24), dtype=np.uint8)
    for severity in shift.SEVERITIES[name]:
        a = shift.perturb(images, name, severity, seed=1)
        assert a.shape == images.shape and a.dtype == np.uint8
        assert np.array_equal(a, shift.perturb(images, name, severity, seed=1))
        assert not np.array_equal(a, images)


def test_random_perturbations_depend_on_the_seed():
    images = np.full((16, 3, 8, 8), 128, dtype=np.uint8)
    for name in ("brightness", "white_balance"):
        assert not np.array_equal(
            shift.perturb(images, name, 0.3, 0), shift.perturb(images, name, 0.3, 1)
        )


def test_unknown_perturbation_is_an_error():
    with pytest.raises(ValueError, match="unknown perturbation"):
        shift.perturb(np.zeros((1, 3, 4, 4), np.uint8), "fog", 1.0, 0)


def test_robustness_table_and_metrics():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 10)
    images = np.where(y[:, None, None, None], 60, 190).astype(np.uint8) + rng.integers(
        0, 20, (20, 3, 16, 16), dtype=np.uint8
    )

    def darkness(batch: np.ndarray) -> np.ndarray:
        return 1 - np.asarray(batch, float).mean(axis=(1, 2, 3)) / 255

    table = shift.robustness({"m": darkness}, {"m": 0.5}, images, y, seed=0)
    assert len(table) == 1 + 2 * len(shift.PERTURBATIONS)
    clean = shift.as_metrics(table)["m"]["clean"]
    assert clean["roc_auc"] == 1.0 and clean["roc_auc_change"] == 0.0
    assert set(shift.as_metrics(table)["m"]) >= {"blur_1", "jpeg_2", "downscale_2"}


def test_evaluate_all_and_report_files(clustered, tmp_path):
    lesions, y, p = clustered
    n = len(y)
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {"image_id": np.arange(n), "lesion_id": lesions, "label": y, "dx": "nv",
         "sex": rng.choice(["male", "female"], n), "age": rng.choice([25.0, 50.0, np.nan], n),
         "localization": rng.choice(["back", "face"], n)}
    )  # fmt: skip
    noisy = np.clip(p + rng.normal(0, 0.05, n), 0, 1)
    scores = {
        name: Scores(s, s)
        for name, s in [("baseline_lr", noisy), ("teacher", p), ("teacher_calibrated", p),
                        ("student", noisy), ("student_calibrated", noisy)]
    }  # fmt: skip
    scores["int8"] = Scores(p, noisy)
    out = evaluation.evaluate_all(
        scores, table, table, "teacher", ["student", "int8"], ["teacher", "student"],
        100, 0, 0.95, 10, 30,
    )  # fmt: skip
    assert out["n_test"] == n and out["n_test_lesions"] == 120
    assert (
        out["teacher"]["roc_auc_low"] <= out["teacher"]["roc_auc"] <= out["teacher"]["roc_auc_high"]
    )
    assert set(out["paired_teacher_vs_student"]) == {"student", "int8"}
    assert set(out["agreement"]) == {"teacher_vs_student", "student_vs_int8"}
    # probabilities compared on one scale: the calibrated teacher and student where they exist
    assert out["probability_agreement"]["teacher_vs_student"]["mean_abs_difference"] == (
        pytest.approx(np.mean(np.abs(p - noisy)))
    )
    assert out["probability_agreement"]["teacher_vs_int8"]["spearman"] == pytest.approx(
        pd.Series(p).rank().corr(pd.Series(noisy).rank())
    )
    assert set(out["subgroups"]) == {"teacher", "student"}
    assert len(evaluation.subgroup_table(out)) == 2 * (2 + 3 + 2)

    images = rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)
    table_shift = shift.robustness({"student": lambda x: noisy}, {"student": 0.5}, images, y, 0)
    out["shift"] = shift.as_metrics(table_shift)
    out["best_baseline_by_val"] = "baseline_lr"
    # The metrics file: the counts, six figures and the operating point of the teacher, the
    # student, each export but the fp32 ones and the best baseline; calibrated ECEs.
    small = evaluation.summary(out, ["int8", "student_fp32_onnx"])
    models = {"teacher", "student", "int8", "baseline_lr"}
    assert set(small) == models | {"teacher_calibrated", "student_calibrated",
        "n_test", "n_test_melanoma", "n_test_lesions", "bootstrap", "best_baseline_by_val",
        "probability_agreement"}  # fmt: skip
    assert small["probability_agreement"] == {
        "teacher_vs_int8": out["probability_agreement"]["teacher_vs_int8"]
    }
    assert small["student_calibrated"] == {"ece": out["student_calibrated"]["ece"]}
    assert small["int8"]["roc_auc_low"] == out["int8"]["roc_auc_low"]
    assert small["int8"]["at_target_sensitivity"] == {
        k: out["int8"]["at_target_sensitivity"][k] for k in ("sensitivity", "specificity")
    }
    assert evaluation.summary(small, ["int8"]) == small
    report.write_all(out, scores, images, table, ["int8"], 10, 0.95, 2, tmp_path)
    report.shift_plot(table_shift, tmp_path / "shift.png")
    names = ["roc", "pr", "reliability", "confusion", "threshold_curves", "confidence_hist",
             "gallery", "shift", "teacher_vs_student"]  # fmt: skip
    for name in names:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    roc = pd.read_csv(tmp_path / "roc.csv")
    assert list(roc.columns) == ["model", "fpr", "tpr"]
    assert set(roc["model"]) == {"baseline_lr", "teacher", "student", "int8"}
    for folder, columns in (("roc", ["fpr", "tpr"]), ("pr", ["recall", "precision"])):
        files = {p.stem for p in (tmp_path / folder).iterdir()}
        assert files == {"best_baseline", "teacher", "student", "int8"}  # dvc.yaml's data plots
        assert list(pd.read_csv(tmp_path / folder / "best_baseline.csv").columns) == columns
    long = roc[roc["model"] == "baseline_lr"][["fpr", "tpr"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "roc/best_baseline.csv"), long)
    text = (tmp_path / "report.md").read_text()
    assert "| teacher |" in text and "blur_1" in text and "sex: male" in text
