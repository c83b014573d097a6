"""Loading a split of the prepared cache: one definition, in data, for every stage."""

import numpy as np
import pytest

from pipeline_lib import data, runs


@pytest.fixture
def cache(prepared, tmp_path):
    (tmp_path / "prepared").mkdir()
    np.save(tmp_path / "prepared/images.npy", prepared.images)
    prepared.table.to_csv(tmp_path / "prepared/table.csv", index=False)
    table = prepared.table.assign(row=range(len(prepared.table)))
    table.iloc[::3].to_csv(tmp_path / "val.csv", index=False)
    return tmp_path


def test_load_split_selects_the_rows_of_the_split_file(cache, prepared):
    val = data.load_split(cache / "prepared", cache, "val")
    np.testing.assert_array_equal(val.images, prepared.images[::3])
    assert list(val.table["image_id"]) == list(prepared.table["image_id"].iloc[::3])
    assert list(data.read_split(cache, "val")["row"]) == list(range(0, len(prepared.table), 3))


def test_a_missing_split_file_is_named(cache):
    with pytest.raises(data.DataError, match="test.csv missing"):
        data.load_split(cache / "prepared", cache, "test")


def test_the_training_runs_use_the_same_function():
    assert runs.load_split is data.load_split
