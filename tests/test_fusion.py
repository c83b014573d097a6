import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline_lib import fusion


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
