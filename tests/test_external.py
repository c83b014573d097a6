"""`melanoma-kd evaluate` on image sets from elsewhere: another layout and format, a real
HAM10000 subset re-saved, the 7-way diagnosis, and every bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_DATA
from PIL import Image
from sklearn.metrics import confusion_matrix, roc_auc_score
from synthetic import draw_image, write_set
from tiny_student import build

from pipeline_lib import cli, data, external, operating_point, prediction, runtime


@pytest.fixture(scope="module")
def paths(prepared, tmp_path_factory) -> prediction.ModelPaths:
    return build(tmp_path_factory.mktemp("student"), prepared)


@pytest.fixture(scope="module")
def dx_paths(prepared, tmp_path_factory) -> prediction.ModelPaths:
    return build(tmp_path_factory.mktemp("dx_student"), prepared, exports=False, task="dx")


def _flags(paths: prediction.ModelPaths) -> list[str]:
    return [
        "--operating-point", str(paths.operating_point), "--checkpoint", str(paths.checkpoint),
        "--pte", str(paths.pte), "--onnx", str(paths.onnx),
    ]  # fmt: skip


def _evaluate(images, labels, out, paths, *extra) -> int:
    argv = ["evaluate", "--images", str(images), "--labels", str(labels), "--out", str(out)]
    return cli.main([*argv, "--bootstrap", "200", *extra, *_flags(paths)])


def _by_hand(paths, model: str, files: list[str]) -> np.ndarray:
    """Calibrated probabilities from the model file, decoded as prepare does, no external code."""
    op = operating_point.read(paths.operating_point, model)
    images = np.stack([data.decode(f, op.cache_size) for f in files])
    return runtime.Predictor.load(paths.file(model)).probabilities(images, op.temperature)


def test_cli_scores_a_set_in_another_layout_and_format(tmp_path, paths, capsys):
    images, labels = write_set(tmp_path)
    out = tmp_path / "report"
    assert _evaluate(images, labels, out, paths) == 0
    assert "External set" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "report.json", "report.md", "predictions.csv", "roc.png", "reliability.png", "gallery.png"
    }  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    table = pd.read_csv(out / "predictions.csv")
    truth = pd.read_csv(labels)
    assert report["n_scored"] == report["n_listed"] == len(truth) and report["n_skipped"] == 0
    assert report["bootstrap"]["unit"] == "image"  # no lesion_id column
    np.testing.assert_array_equal(table["label"], (truth["dx"] == "mel").astype(int))
    for model in ("int8", "int8-onnx"):
        p = table[f"p_{model}"].to_numpy()
        np.testing.assert_allclose(p, _by_hand(paths, model, table["file"].tolist()), atol=1e-6)
        m = report["models"][model]
        assert m["roc_auc"] == pytest.approx(roc_auc_score(table["label"], p))
        assert m["roc_auc_low"] <= m["roc_auc"] <= m["roc_auc_high"]
        threshold = operating_point.read(paths.operating_point, model).threshold
        assert m["at_target_sensitivity"]["threshold"] == threshold  # from val, not refitted
        y, hit = table["label"].to_numpy() == 1, p >= threshold
        assert m["at_target_sensitivity"]["sensitivity"] == pytest.approx(hit[y].mean())
        assert m["at_target_sensitivity"]["specificity"] == pytest.approx((~hit[~y]).mean())
        assert "dx" not in m  # a binary model has no 7-way figures


def test_a_real_subset_resaved_as_png_is_scored_by_lesion(tmp_path, paths):
    if not (REAL_DATA / "metadata.csv").exists():
        pytest.skip("real HAM10000 not present")
    meta = pd.read_csv(REAL_DATA / "metadata.csv")
    subset = pd.concat(
        [meta[meta["dx"] == "mel"].head(6), meta[meta["dx"] != "mel"].head(10)]
    ).reset_index(drop=True)
    folder = tmp_path / "clinic"
    folder.mkdir()
    for i, row in subset.iterrows():
        with Image.open(REAL_DATA / "images" / f"{row['image_id']}.jpg") as im:
            im.resize((300 if i % 2 else 150, 200)).save(folder / f"{row['image_id']}.png")
    subset.assign(file=subset["image_id"] + ".png")[["file", "dx", "lesion_id"]].to_csv(
        tmp_path / "labels.csv", index=False
    )
    out = tmp_path / "report"
    assert _evaluate(folder, tmp_path / "labels.csv", out, paths, "--models", "int8") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bootstrap"]["unit"] == "lesion"
    assert report["n_lesions"] == subset["lesion_id"].nunique()
    assert (report["n_scored"], report["n_melanoma"]) == (16, 6)
    table = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(
        table["p_int8"], _by_hand(paths, "int8", table["file"].tolist()), atol=1e-6
    )


def test_dx_model_reports_the_7_way_diagnosis_and_predict_shows_its_top_3(
    tmp_path, dx_paths, capsys
):
    images, labels = write_set(tmp_path)
    out = tmp_path / "report"
    assert _evaluate(images, labels, out, dx_paths, "--models", "float") == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    dx = report["models"]["float"]["dx"]
    table = pd.read_csv(out / "predictions.csv")
    ext = external.load(images, labels, 32, progress=False)
    op = operating_point.read(dx_paths.operating_point, "float")
    logits = runtime.Predictor.load(dx_paths.checkpoint).logits(ext.images)
    z = logits / op.temperature
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = ext.table["dx"].map(data.DX_CODES.index).to_numpy()
    written = table[[f"p_{c}_float" for c in data.DX_CODES]].to_numpy()
    np.testing.assert_allclose(written, probs, atol=1e-5)
    # The figures, from the probabilities written: near-ties of an untrained model would make a
    # second forward pass's ranking differ in the last bits.
    assert dx["confusion"] == confusion_matrix(y, written.argmax(1), labels=range(7)).tolist()
    for i, code in enumerate(data.DX_CODES):
        expected = roc_auc_score(y == i, written[:, i]) if 0 < (y == i).sum() < len(y) else None
        assert dx["per_class"][code]["roc_auc"] == pytest.approx(expected)
    assert (table["top_dx_float"] == [data.DX_CODES[i] for i in written.argmax(1)]).all()
    assert dx["accuracy"] == pytest.approx((written.argmax(1) == y).mean())
    assert (out / "dx_confusion_float.png").exists()

    file = ext.table["file"].iloc[0]
    assert cli.main(["predict", file, "--model", "float", "--json", *_flags(dx_paths)]) == 0
    (pred,) = json.loads(capsys.readouterr().out)["predictions"]
    top = pred["top_classes"]
    shown = [c["probability"] for c in top]
    np.testing.assert_allclose(
        shown, [probs[0, data.DX_CODES.index(c["dx"])] for c in top], atol=1e-5
    )
    np.testing.assert_allclose(shown, np.sort(probs[0])[::-1][:3], atol=1e-5)  # the 3 largest
    assert [c["name"] for c in top] == [data.DX_NAMES[c["dx"]] for c in top]
    assert pred["probability"] == pytest.approx(probs[0, data.MELANOMA_INDEX], abs=1e-5)
    assert cli.main(["predict", file, "--model", "float", *_flags(dx_paths)]) == 0
    assert f"most likely: {top[0]['dx']} {top[0]['probability']:.2f}" in capsys.readouterr().out


def test_a_binary_model_gives_no_top_classes(tmp_path, paths, capsys):
    images, labels = write_set(tmp_path, n=3)
    file = next(images.rglob("*.png"))
    assert cli.main(["predict", str(file), "--json", *_flags(paths)]) == 0
    (pred,) = json.loads(capsys.readouterr().out)["predictions"]
    assert pred["top_classes"] is None


# --- bad input: a clear error naming the culprit, or a counted skip ----------------------------


def _labels(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("image,label\na,1\nb,2\n", r"line 3: label '2' is not 0 or 1"),
        ("image,dx\na,mel\nb,melanoma\n", r"line 3: dx 'melanoma' is not a HAM10000 code"),
        ("image,dx\na,mel\nb,nv\na,nv\n", r"listed more than once in 'image': a \(1 in all\)"),
        ("image,label,dx\na,1,mel\nb,1,nv\n", r"line 3: label 1 contradicts dx 'nv'"),
        ("picture,label\na,1\n", r"no image column \(expected one of image, image_id"),
        ("image,diagnosis\na,x\n", r"no label column"),
        ("image,label\n,1\n", r"line 2: empty 'image'"),
        ("image,label,lesion_id\na,1,L1\nb,0,\n", r"line 3: empty lesion_id"),
        ("image,label\n", r"no rows"),
    ],
)
def test_bad_labels_are_refused_naming_file_row_and_value(tmp_path, text, match):
    path = _labels(tmp_path, text)
    with pytest.raises(external.ExternalSetError, match=match) as err:
        external.read_labels(path)
    assert str(path) in str(err.value)


def test_missing_labels_file_and_folder_are_named(tmp_path):
    with pytest.raises(external.ExternalSetError, match=r"labels file .*nope.csv not found"):
        external.read_labels(tmp_path / "nope.csv")
    with pytest.raises(external.ExternalSetError, match=r"image folder .*nodir not found"):
        external.index_folder(tmp_path / "nodir")


def test_missing_and_unreadable_images_are_skipped_and_counted(tmp_path, paths):
    images, labels = write_set(tmp_path, n=24)
    table = pd.read_csv(labels)
    table.loc[len(table)] = ["not_there", "nv"]
    pd.DataFrame(table).to_csv(labels, index=False)
    (images / "png" / "case001.png").write_bytes(b"not an image")
    out = tmp_path / "report"
    assert _evaluate(images, labels, out, paths, "--max-bad-fraction", "0.1") == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["n_listed"], report["n_scored"], report["n_skipped"]) == (25, 23, 2)
    reasons = {s["image"]: s["reason"] for s in report["skipped"]}
    assert reasons["not_there"] == "no such image file in the folder"
    assert "case001.png: not a readable image" in reasons["case001"]
    assert "not_there" in (out / "report.md").read_text()
    # Above the allowed fraction the run stops, names the images, and writes nothing.
    with pytest.raises(external.ExternalSetError, match=r"2 of 25 images .* not_there"):
        external.load(images, labels, 32, max_bad_fraction=0.05, progress=False)


@pytest.mark.parametrize(("dx", "missing"), [("nv", "melanoma"), ("mel", "benign")])
def test_a_set_of_one_class_says_roc_auc_is_undefined(tmp_path, dx, missing):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(draw_image(rng, dx == "mel")).save(folder / f"x{i}.png")
    labels = _labels(tmp_path, "image,dx\n" + "".join(f"x{i},{dx}\n" for i in range(3)))
    with pytest.raises(external.ExternalSetError, match=f"no {missing} .*ROC-AUC.*undefined"):
        external.load(folder, labels, 32, progress=False)


def test_cli_reports_bad_input_in_one_line_and_keeps_the_previous_report(tmp_path, paths, capsys):
    images, labels = write_set(tmp_path, n=6)
    out = tmp_path / "report"
    assert _evaluate(images, labels, out, paths) == 0
    before = (out / "report.json").read_bytes()
    bad = _labels(tmp_path / "images", "image,label\ncase000,7\n")
    capsys.readouterr()
    assert _evaluate(images, bad, out, paths) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("melanoma-kd evaluate: error:")]
    assert "line 2: label '7' is not 0 or 1" in line
    assert (out / "report.json").read_bytes() == before


def test_an_interrupted_report_leaves_the_previous_one_whole(tmp_path, paths, monkeypatch):
    images, labels = write_set(tmp_path, n=6)
    out = tmp_path / "report"
    assert _evaluate(images, labels, out, paths) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(external, "_gallery", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        _evaluate(images, labels, out, paths)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []
