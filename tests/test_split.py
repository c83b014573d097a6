import numpy as np
import pandas as pd
import pytest

from pipeline_lib import split


@pytest.fixture()
def table():
    rng = np.random.default_rng(0)
    rows = []
    for lesion in range(1500):
        mel = rng.random() < 0.11
        for k in range(rng.integers(1, 4)):
            rows.append(
                {"lesion_id": f"L{lesion}", "image_id": f"I{lesion}_{k}", "label": int(mel)}
            )
    return pd.DataFrame(rows)


def test_no_lesion_in_two_splits(table):
    s = split.assign(table, seed=0)
    assert (table.assign(s=s).groupby("lesion_id")["s"].nunique() == 1).all()


def test_proportions_and_stratification(table):
    s = split.assign(table, seed=0)
    share = s.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.02)
    assert share["val"] == pytest.approx(0.15, abs=0.02)
    assert share["test"] == pytest.approx(0.15, abs=0.02)
    mel = table.assign(s=s).groupby("s")["label"].mean()
    assert mel.max() - mel.min() < 0.02


def test_same_seed_same_split_regardless_of_row_order(table):
    a = split.assign(table, seed=3)
    shuffled = table.sample(frac=1, random_state=1)
    b = split.assign(shuffled, seed=3)
    assert (a == b.loc[a.index]).all()
    assert not (a == split.assign(table, seed=4)).all()


def test_describe_counts(table):
    s = split.assign(table, seed=0)
    d = split.describe(table, s, 0)
    assert d["seed"] == 0
    assert sum(d[n]["images"] for n in split.SPLITS) == len(table)
    assert sum(d[n]["lesions"] for n in split.SPLITS) == table["lesion_id"].nunique()


def test_bad_fractions_rejected(table):
    with pytest.raises(ValueError, match="fractions"):
        split.assign(table, 0, 0.6, 0.5)
