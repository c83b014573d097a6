import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline_lib import fusion, inference, models


def _val(n=600, informative=True, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.2).astype(int)
    site = np.where(label == 1, "back", "face") if informative else rng.choice(["back", "face"], n)
    if informative:  # the body site agrees with the label 80% of the time
        flip = rng.random(n) < 0.2
        site = np.where(flip, np.where(site == "back", "face", "back"), site)
    table = pd.DataFrame(
        {
            "label": label,
            "lesion_id": [f"L{i // 2}" for i in range(n)],
            "age": rng.normal(50, 15, n),
            "sex": rng.choice(["male", "female"], n),
            "localization": site,
        }
    )
    logit = label * 1.0 + rng.normal(0, 1.0, n)  # a weak image model
    return table, logit


def test_informative_metadata_raises_the_out_of_fold_auc():
    table, logit = _val()
    out = fusion.late_fusion(table, logit)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(table["label"], logit))
    assert out["oof_fused_roc_auc"] > out["oof_logit_only_roc_auc"] + 0.03
    assert out["gain"] == pytest.approx(out["oof_fused_roc_auc"] - out["oof_logit_only_roc_auc"])


def test_uninformative_metadata_adds_nothing():
    table, logit = _val(informative=False)
    out = fusion.late_fusion(table, logit)
    assert abs(out["gain"]) < 0.02


def test_lengths_must_match():
    table, logit = _val(n=40)
    with pytest.raises(ValueError, match="39 logits for 40 val rows"):
        fusion.late_fusion(table, logit[:39])


def test_a_complementary_baseline_raises_the_stacked_auc():
    table, logit = _val(informative=False, seed=1)
    rng = np.random.default_rng(2)
    # A second weak model whose errors are independent of the logit's: stacking must help.
    other = 1 / (1 + np.exp(-(table["label"] * 1.0 + rng.normal(0, 1.0, len(table)))))
    out = fusion.late_fusion(table, logit, baseline_prob=other.to_numpy())
    assert out["baseline_roc_auc"] == pytest.approx(roc_auc_score(table["label"], other))
    assert out["oof_stacked_roc_auc"] > max(out["oof_logit_only_roc_auc"], out["baseline_roc_auc"])
    assert out["stacking_gain"] > 0.03
    # A "baseline" that is the logit itself adds nothing.
    same = fusion.late_fusion(table, logit, baseline_prob=1 / (1 + np.exp(-logit)))
    assert abs(same["stacking_gain"]) < 0.01


def test_baseline_predictions_are_read_in_val_order(tmp_path):
    val = pd.DataFrame({"image_id": ["b", "a"]})
    csv = tmp_path / "predictions.csv"
    pd.DataFrame(
        {"split": ["val", "val", "test"], "image_id": ["a", "b", "c"], "gb": [0.1, 0.9, 0.5]}
    ).to_csv(csv, index=False)
    np.testing.assert_allclose(fusion.baseline_prob(str(csv), "gb", val), [0.9, 0.1])
    with pytest.raises(KeyError, match="no baseline 'svm'; expected one of \\['gb'\\]"):
        fusion.baseline_prob(str(csv), "svm", val)
    with pytest.raises(ValueError, match="1 val images missing, e.g. z"):
        fusion.baseline_prob(str(csv), "gb", pd.DataFrame({"image_id": ["a", "z"]}))


def test_the_stacker_is_fitted_on_val_and_scored_once_on_test():
    table, logit = _val(n=1200, informative=False, seed=3)
    rng = np.random.default_rng(4)
    other = 1 / (1 + np.exp(-(table["label"] * 1.0 + rng.normal(0, 1.0, len(table)))))
    other = other.to_numpy()
    v, t = slice(0, 600), slice(600, None)
    out = fusion.confirm_on_test(
        table.iloc[v], logit[v], other[v], table.iloc[t], logit[t], other[t]
    )
    y = table["label"].iloc[t]
    assert out["test_roc_auc"] == pytest.approx(roc_auc_score(y, logit[t]))
    assert out["test_baseline_roc_auc"] == pytest.approx(roc_auc_score(y, other[t]))
    assert out["test_stacked_roc_auc"] > max(out["test_roc_auc"], out["test_baseline_roc_auc"])
    # Both inputs are equally informative (unit signal, unit noise): similar, positive weights.
    assert 0.5 < out["stacker_logit_weight"] / out["stacker_baseline_weight"] < 2.0
    # Test labels never reach the stacker: shuffling them changes only the test scores.
    shuffled = table.copy()
    shuffled.loc[shuffled.index[t], "label"] = rng.permutation(y.to_numpy())
    again = fusion.confirm_on_test(
        shuffled.iloc[v], logit[v], other[v], shuffled.iloc[t], logit[t], other[t]
    )
    assert again["stacker_logit_weight"] == out["stacker_logit_weight"]


def test_cli_confirms_a_checkpoint_on_test(tmp_path, prepared, capsys):
    half = prepared.table["lesion_id"].isin(prepared.table["lesion_id"].unique()[::2])
    np.save(tmp_path / "images.npy", prepared.images)
    prepared.table.to_csv(tmp_path / "table.csv", index=False)
    split = prepared.table.assign(row=np.arange(len(prepared.table)))
    split[half].to_csv(tmp_path / "val.csv", index=False)
    split[~half].to_csv(tmp_path / "test.csv", index=False)
    torch.manual_seed(0)
    model = models.create("dsnet_tiny", drop_rate=0.0).eval()
    models.save_checkpoint(
        tmp_path / "model.pt",
        model,
        {"arch": "dsnet_tiny", "task": "binary", "global_pool": "avg", "drop_rate": 0.0}
        | {"image_size": 32},
    )
    z = inference.predict_logits(model, prepared.images, 32)
    np.save(tmp_path / "val_logits.npy", z[half.to_numpy()])
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "split": np.where(half, "val", "test"),
            "image_id": prepared.table["image_id"],
            "gb": np.clip(prepared.table["label"] * 0.5 + rng.random(len(half)) * 0.5, 0.01, 0.99),
        }
    ).to_csv(tmp_path / "predictions.csv", index=False)
    args = (
        ["--logits", str(tmp_path / "val_logits.npy"), "--val", str(tmp_path / "val.csv")]
        + ["--baseline", "gb", "--baseline-predictions", str(tmp_path / "predictions.csv")]
        + ["--confirm-on-test", str(tmp_path / "model.pt"), "--prepared", str(tmp_path)]
    )
    fusion.main(args)
    out = json.loads(capsys.readouterr().out)
    y = prepared.table["label"][~half]
    assert out["test_roc_auc"] == pytest.approx(roc_auc_score(y, z[~half.to_numpy()]), abs=1e-4)
    assert out["test_stacked_roc_auc"] > out["test_roc_auc"]
    # Val logits of another model cannot be confirmed with this checkpoint.
    np.save(tmp_path / "val_logits.npy", z[half.to_numpy()] + 1.0)
    with pytest.raises(ValueError, match="val_logits.npy does not match .*model.pt"):
        fusion.main(args)
