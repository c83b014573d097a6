"""Baselines on a small synthetic dataset: they learn, and they select on validation only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline_lib import baselines, features, metrics

SIZE = 32
SEED = 0
TARGET = 0.9

# Small grids keep the test fast; the logistic grid spans weak to strong regularisation so
# its candidates really differ.
SMALL_MODELS = {
    "logreg_metadata": baselines.ModelSpec("metadata", baselines.MODELS["logreg"].build, {"C": [0.01, 1.0]}),
    "logreg": baselines.ModelSpec("all", baselines.MODELS["logreg"].build, {"C": [1.0e-4, 0.1, 10.0]}),
    "random_forest": baselines.ModelSpec("all", baselines.MODELS["random_forest"].build, {"min_samples_leaf": [3]}),
    "hist_gradient_boosting": baselines.ModelSpec(
        "all", baselines.MODELS["hist_gradient_boosting"].build, {"learning_rate": [0.1], "max_leaf_nodes": [7]}
    ),
    "svm": baselines.ModelSpec("all", baselines.MODELS["svm"].build, {"C": [1.0]}),
}  # fmt: skip


def synthetic_frames(n_lesions: int = 150, per_lesion: int = 2) -> dict[str, pd.DataFrame]:
    """Skin-toned images; melanomas (30%) are larger, darker blobs and slightly older patients."""
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    label = (rng.random(n_lesions) < 0.3).astype(int)
    rows, images = [], []
    for lesion in range(n_lesions):
        y = label[lesion]
        radius = rng.uniform(6, 11) if y else rng.uniform(3, 8)
        tone = rng.uniform(0.2, 0.45) if y else rng.uniform(0.35, 0.6)
        age = rng.normal(62 if y else 50, 12)
        for k in range(per_lesion):
            cy, cx = SIZE / 2 + rng.normal(0, 2, 2)
            r = np.hypot(yy - cy, xx - cx) / radius
            skin = np.array([0.85, 0.65, 0.6])[:, None, None] + rng.normal(0, 0.03, (3, SIZE, SIZE))
            lesion_rgb = np.array([tone, 0.7 * tone, 0.5 * tone])[:, None, None]
            img = np.where(r <= 1, lesion_rgb, skin)
            images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
            rows.append(
                {
                    "image_id": f"img_{lesion}_{k}",
                    "lesion_id": f"les_{lesion}",
                    "label": y,
                    "age": np.nan if rng.random() < 0.05 else round(age),
                    "sex": rng.choice(["male", "female"]),
                    "localization": rng.choice(["back", "trunk", "face", "lower extremity"]),
                }
            )
    table = pd.DataFrame(rows)
    feats = pd.DataFrame(
        features.image_features(np.stack(images), SIZE), columns=list(features.FEATURE_NAMES)
    )
    table = pd.concat([table, feats], axis=1)
    # Lesion-grouped 60/20/20 split.
    part = np.array(["train", "val", "test"])[rng.choice(3, n_lesions, p=[0.6, 0.2, 0.2])]
    by_lesion = dict(zip([f"les_{i}" for i in range(n_lesions)], part, strict=True))
    split = table["lesion_id"].map(by_lesion)
    return {name: table[split == name].reset_index(drop=True) for name in ("train", "val", "test")}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return synthetic_frames()


@pytest.fixture(scope="module")
def results(frames) -> dict[str, baselines.Result]:
    return baselines.run(
        frames["train"], frames["val"], frames["test"], SEED, 10, TARGET, SMALL_MODELS
    )


def test_image_feature_models_learn_the_synthetic_signal(results):
    for name in ("logreg", "random_forest", "hist_gradient_boosting", "svm"):
        assert results[name].val["val_roc_auc"] > 0.7, name
        assert results[name].test["test_roc_auc"] > 0.7, name
        assert ((results[name].test_prob >= 0) & (results[name].test_prob <= 1)).all()


def test_the_chosen_hyperparameters_have_the_best_val_auc(results, frames):
    for r in results.values():
        aucs = [auc for _, auc in r.candidates]
        assert r.hyperparameters == r.candidates[int(np.argmax(aucs))][0]
        assert r.val["val_roc_auc"] == pytest.approx(max(aucs))
    # The reported val AUC is really that of the reported val probabilities.
    y_val = frames["val"]["label"]
    assert results["svm"].val["val_roc_auc"] == pytest.approx(
        metrics.roc_auc(y_val, results["svm"].val_prob)
    )


def test_threshold_is_chosen_on_val_and_applied_to_test(results, frames):
    r = results["logreg"]
    threshold = metrics.threshold_for_sensitivity(frames["val"]["label"], r.val_prob, TARGET)
    op = metrics.operating_point(frames["test"]["label"], r.test_prob, threshold)
    assert r.test["test_threshold"] == threshold
    assert r.test["test_sensitivity"] == op.sensitivity
    assert r.test["test_specificity"] == op.specificity
    assert r.val["val_sensitivity"] >= TARGET


def test_test_labels_do_not_influence_the_selection(results, frames):
    spec = {"logreg": SMALL_MODELS["logreg"]}
    flipped = frames["test"].assign(label=1 - frames["test"]["label"])
    # Precondition: choosing on these test labels would pick a different candidate than
    # choosing on the true ones, so a selection that looked at test data would be caught.
    y_train = frames["train"]["label"]
    test_aucs = []
    for hp, _ in results["logreg"].candidates:
        model = baselines.build_pipeline(spec["logreg"], hp, SEED, []).fit(frames["train"], y_train)
        test_aucs.append(
            metrics.roc_auc(frames["test"]["label"], model.predict_proba(frames["test"])[:, 1])
        )
    assert np.argmax(test_aucs) != np.argmin(test_aucs)

    again = baselines.run(frames["train"], frames["val"], flipped, SEED, 10, TARGET, spec)["logreg"]

    assert again.hyperparameters == results["logreg"].hyperparameters
    np.testing.assert_array_equal(again.val_prob, results["logreg"].val_prob)
    assert again.val == results["logreg"].val
    assert again.test["test_roc_auc"] == pytest.approx(1 - results["logreg"].test["test_roc_auc"])


def test_report_predictions_and_roc_table(results, frames):
    report = baselines.report(results)
    assert report["best_by_val"] == max(results, key=lambda n: results[n].val["val_roc_auc"])
    for name in results:
        assert {
            "val_roc_auc",
            "test_roc_auc",
            "test_brier",
            "test_sensitivity",
            "hyperparameters",
        } <= set(report[name])

    preds = baselines.predictions(frames["val"], frames["test"], results)
    assert list(preds.columns) == ["split", "image_id", "lesion_id", "label", *results]
    assert (preds["split"] == "val").sum() == len(frames["val"])
    test_rows = preds[preds["split"] == "test"]
    np.testing.assert_array_equal(test_rows["svm"], results["svm"].test_prob)
    np.testing.assert_array_equal(test_rows["image_id"], frames["test"]["image_id"])

    curves = baselines.roc_table(
        frames["test"]["label"].to_numpy(), {n: r.test_prob for n, r in results.items()}
    )
    for _, curve in curves.groupby("model"):
        assert curve["fpr"].iloc[0] == 0 and curve["tpr"].iloc[-1] == 1
        assert curve["fpr"].is_monotonic_increasing

    table = baselines.candidates_table(results)
    assert table.groupby("model")["chosen"].sum().eq(1).all()
