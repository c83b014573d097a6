import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA
from synthetic import make_dataset

from pipeline_lib import data


def test_compact_layout_loads(synthetic_root):
    raw = data.load_raw(synthetic_root)
    assert raw.metadata_path.name == "metadata.csv"
    assert len(raw.table) == 120
    assert set(raw.table["label"]) == {0, 1}
    assert (raw.table["label"] == (raw.table["dx"] == "mel")).all()
    assert raw.table["dx_index"].between(0, 6).all()


def test_official_layout_loads(tmp_path):
    make_dataset(tmp_path, n_lesions=6, layout="official")
    raw = data.load_raw(tmp_path)
    assert raw.metadata_path.name == "HAM10000_metadata.csv"
    folders = {p.split("/")[-2] for p in raw.table["path"]}
    assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


def test_missing_root_says_where_to_download(tmp_path):
    with pytest.raises(data.DataError, match=r"does not exist.*DVN/DBW86T.*HAM10000_images_part_1"):
        data.load_raw(tmp_path / "nowhere")


@pytest.fixture()
def small(tmp_path):
    make_dataset(tmp_path, n_lesions=4)
    return tmp_path


def test_missing_image_is_named(small):
    (small / "images" / "ISIC_0000003.jpg").unlink()
    with pytest.raises(data.DataError, match=r"missing, first: ISIC_0000003\.jpg"):
        data.load_raw(small)


def test_corrupt_jpeg_is_named(small):
    (small / "images" / "ISIC_0000002.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    raw = data.load_raw(small)
    with pytest.raises(data.DataError, match="ISIC_0000002.jpg"):
        data.decode_all(raw.table["path"].tolist(), 16, progress=False)


def test_missing_column_is_named(small):
    table = pd.read_csv(small / "metadata.csv").drop(columns=["lesion_id"])
    table.to_csv(small / "metadata.csv", index=False)
    with pytest.raises(data.DataError, match=r"missing column\(s\) lesion_id"):
        data.load_raw(small)


def test_unknown_dx_is_named(small):
    table = pd.read_csv(small / "metadata.csv")
    table.loc[3, "dx"] = "melanoma"
    table.to_csv(small / "metadata.csv", index=False)
    with pytest.raises(data.DataError, match=r"unknown dx code\(s\) \['melanoma'\].*row 5"):
        data.load_raw(small)


def test_duplicate_image_is_named(small):
    table = pd.read_csv(small / "metadata.csv")
    pd.concat([table, table.iloc[[0]]]).to_csv(small / "metadata.csv", index=False)
    with pytest.raises(data.DataError, match="ISIC_0000000 appears more than once"):
        data.load_raw(small)


def test_decode_resizes_whole_image(synthetic_root):
    raw = data.load_raw(synthetic_root)
    img = data.decode(raw.table["path"][0], 24)
    assert img.shape == (3, 24, 24) and img.dtype == np.uint8


def test_load_prepared_reports_missing_cache(tmp_path):
    with pytest.raises(data.DataError, match="images.npy missing"):
        data.load_prepared(tmp_path)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real HAM10000 not beside the checkout")
def test_real_subset(tmp_path):
    table = pd.read_csv(REAL_DATA / "metadata.csv")
    subset = table.groupby("dx").head(3)
    (tmp_path / "images").mkdir()
    for image_id in subset["image_id"]:
        shutil.copy(REAL_DATA / "images" / f"{image_id}.jpg", tmp_path / "images")
    subset.to_csv(tmp_path / "metadata.csv", index=False)
    raw = data.load_raw(tmp_path)
    assert sorted(raw.table["dx"].unique()) == sorted(data.DX_CODES)
    images = data.decode_all(raw.table["path"].tolist(), 64, progress=False)
    assert images.shape == (21, 3, 64, 64)
    # Real dermoscopy is neither blank nor saturated.
    assert 40 < images.mean() < 220 and images.std() > 10
