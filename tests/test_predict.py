"""`melanoma-kd predict` on a tiny student: probabilities, decisions, JSON, folders, errors."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imported import NEVER, TORCH_EXPORTER, imported_modules, loaded
from PIL import Image
from tiny_student import SIZE, build, write_photos

from pipeline_lib import cli, inference, models, operating_point, prediction, runtime


@pytest.fixture(scope="module")
def paths(prepared, tmp_path_factory) -> prediction.ModelPaths:
    return build(tmp_path_factory.mktemp("student"), prepared)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"), 5)


def _flags(paths: prediction.ModelPaths) -> list[str]:
    return [
        "--operating-point", str(paths.operating_point), "--checkpoint", str(paths.checkpoint),
        "--pte", str(paths.pte), "--onnx", str(paths.onnx),
    ]  # fmt: skip


def _predict(argv: list[str]) -> int:
    return cli.main(["predict", *argv])


def _json(capsys, argv: list[str]) -> dict:
    assert _predict(argv) == 0
    return json.loads(capsys.readouterr().out)


def _expected(paths, model: str, photo: Path) -> float:
    """The calibrated probability computed by hand from the model file and its operating point."""
    op = operating_point.read(paths.operating_point, model)
    image = np.array(Image.open(photo).convert("RGB").resize((32, 32), Image.BILINEAR))
    x = inference.to_input(image.transpose(2, 0, 1)[None], SIZE)
    if model == "float":
        logit = models.load_checkpoint(paths.checkpoint)[0](x).detach().numpy()
    else:
        logit = runtime.Predictor.load(paths.file(model)).run(x.contiguous().numpy())
    return float(torch.sigmoid(torch.tensor(logit[0] / op.temperature)))


def test_decode_matches_the_prepare_stage(synthetic_root, prepared):
    """One photo is preprocessed exactly as the training cache was built."""
    path = synthetic_root / "images" / f"{prepared.table['image_id'].iloc[3]}.jpg"
    np.testing.assert_array_equal(prediction.decode(path, 32), prepared.images[3])


@pytest.mark.parametrize("model", ["int8", "int8-onnx", "float"])
def test_json_gives_the_calibrated_probability_and_val_decision(capsys, paths, photos, model):
    out = _json(capsys, [str(photos[0]), "--model", model, "--json", *_flags(paths)])
    op = operating_point.read(paths.operating_point, model)
    assert out["model"] == model and out["model_file"] == str(paths.file(model))
    assert out["operating_point"]["threshold"] == op.threshold
    assert out["operating_point"]["val_sensitivity"] == op.val_sensitivity
    (pred,) = out["predictions"]
    assert set(pred) >= {"image", "probability", "decision", "suspicious", "threshold"}
    assert pred["val_sensitivity"] == op.val_sensitivity
    assert pred["val_specificity"] == op.val_specificity
    # Resizing 80x60 -> 32x32 in one step (here) or with draft/reducing_gap (decode) agree to
    # a few grey levels: the probabilities agree closely, not bit for bit.
    assert pred["probability"] == pytest.approx(_expected(paths, model, photos[0]), abs=0.02)
    assert pred["suspicious"] == (pred["probability"] >= op.threshold)
    assert pred["decision"] == (
        prediction.SUSPICIOUS if pred["suspicious"] else prediction.NOT_SUSPICIOUS
    )
    assert out["errors"] == [] and "not a diagnosis" in out["disclaimer"]


def test_text_output_names_probability_decision_and_val_figures(capsys, paths, photos):
    assert _predict([str(photos[1]), *_flags(paths)]) == 0
    out = capsys.readouterr().out
    op = operating_point.read(paths.operating_point, "int8")
    assert f"{photos[1]}: p(melanoma) = " in out
    assert f">= {op.threshold:.4f}" in out
    assert f"val sensitivity {op.val_sensitivity:.3f}, specificity {op.val_specificity:.3f}" in out
    assert "not a diagnosis" in out


def test_directory_scores_every_image_with_a_progress_bar(capsys, paths, photos):
    (photos[0].parent / "notes.txt").write_text("not an image, and not picked up")
    out = _json(capsys, [str(photos[0].parent), "--json", *_flags(paths)])
    scored = [p["image"] for p in out["predictions"]]
    assert scored == [str(p) for p in photos]


def test_directory_progress_bar_goes_to_stderr(capfd, paths, photos):
    assert _predict([str(photos[0].parent), "--json", *_flags(paths)]) == 0
    err = capfd.readouterr().err
    assert "predict" in err and f"{len(photos)}/{len(photos)}" in err


def test_batches_agree_with_single_images(paths, photos):
    scorer = prediction.Scorer("int8", paths)
    together = [p.probability for p in scorer.predict_files(photos, batch_size=4)]
    alone = [next(scorer.predict_files([f])).probability for f in photos]
    np.testing.assert_allclose(together, alone, rtol=1e-6)


def test_explain_writes_one_heat_map_per_photo(capsys, paths, photos, tmp_path):
    out = _json(capsys, [*map(str, photos[:2]), "--json", "--explain", str(tmp_path / "cam.png"),
                         *_flags(paths)])  # fmt: skip
    written = [Path(p["explanation"]) for p in out["predictions"]]
    assert written == [tmp_path / f"cam_{f.stem}.png" for f in photos[:2]]
    for png, photo in zip(written, photos[:2], strict=True):
        assert Image.open(png).size == Image.open(photo).size
    out = _json(capsys, [str(photos[0]), "--json", "--explain", str(tmp_path / "one.png"),
                         *_flags(paths)])  # fmt: skip
    assert out["predictions"][0]["explanation"] == str(tmp_path / "one.png")


def _fails(capsys, argv: list[str], *expected: str) -> str:
    assert _predict(argv) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    return err


def test_bad_photos_are_named_and_the_good_ones_still_scored(capsys, paths, photos, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photos[0].read_bytes()[:300])  # header only: a truncated JPEG
    argv = [str(text), str(corrupt), str(photos[0]), "--json", *_flags(paths)]
    assert _predict(argv) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [p["image"] for p in out["predictions"]] == [str(photos[0])]
    assert len(out["errors"]) == 2
    for path in (text, corrupt):
        assert f"{path}: not a readable image" in captured.err
    assert "expected a JPEG or PNG" in captured.err


def test_missing_input_and_empty_folder(capsys, paths, tmp_path):
    _fails(capsys, [str(tmp_path / "nope.jpg"), *_flags(paths)], "nope.jpg: no such file")
    (tmp_path / "empty").mkdir()
    _fails(capsys, [str(tmp_path / "empty"), *_flags(paths)], "empty: folder has no images")


def test_missing_model_files(capsys, paths, photos, tmp_path):
    flags = _flags(paths)
    missing = tmp_path / "missing.pte"
    _fails(
        capsys, [str(photos[0]), *flags, "--pte", str(missing)], f"model file {missing} not found"
    )
    _fails(
        capsys, [str(photos[0]), "--model", "float", *flags, "--checkpoint", str(missing)],
        f"checkpoint {missing} not found",
    )  # fmt: skip
    _fails(
        capsys, [str(photos[0]), *flags, "--operating-point", str(tmp_path / "op.json")],
        f"operating point file {tmp_path / 'op.json'} not found", "dvc repro model_card",
    )  # fmt: skip


def test_checkpoint_of_another_architecture_is_refused(capsys, paths, photos, tmp_path):
    other = tmp_path / "teacher.pt"
    teacher = models.create("test_resnet", task="dx")
    meta = {"arch": "test_resnet", "task": "dx", "global_pool": "avg", "drop_rate": 0.0}
    models.save_checkpoint(other, teacher, meta | {"image_size": SIZE})
    _fails(
        capsys, [str(photos[0]), "--model", "float", *_flags(paths), "--checkpoint", str(other)],
        f"{other} is not the model the operating point was chosen for", "dsnet_tiny binary student",
    )  # fmt: skip


def test_a_file_that_is_not_a_model_is_refused(capsys, paths, photos, tmp_path):
    fake = tmp_path / "fake.pte"
    fake.write_bytes(b"\0" * 64)
    _fails(capsys, [str(photos[0]), *_flags(paths), "--pte", str(fake)], f"{fake} is not the model")


def test_console_script_exits_nonzero_without_traceback(paths, photos, tmp_path):
    """The installed `melanoma-kd` entry point, as a user runs it."""
    script = Path(sys.executable).parent / "melanoma-kd"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline_lib.cli"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [*argv, "predict", str(tmp_path / "absent.jpg"), *_flags(paths)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "absent.jpg: no such file" in run.stderr and "Traceback" not in run.stderr


def test_decode_refuses_bytes_that_are_not_an_image():
    with pytest.raises(prediction.InputError, match="upload.png: not a readable image"):
        prediction.decode(b"hello", 32, "upload.png")
    assert isinstance(prediction.decode(_png_bytes(), 32), np.ndarray)


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (120, 80, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_files_keeps_order_and_filters_by_suffix(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert prediction.image_files([tmp_path]) == [tmp_path / "a.png", tmp_path / "b.JPG"]


def test_the_cli_imports_no_training_loop_exporter_or_tracker():
    """`melanoma-kd predict` starts in seconds: the CLI module pulls in the runtimes only."""
    modules = imported_modules("import pipeline_lib.cli")
    assert loaded(modules, NEVER + TORCH_EXPORTER) == []
    assert loaded(modules, ("timm", "sklearn", "cv2", "pytorch_grad_cam", "flask")) == []


@pytest.mark.parametrize("model", ["int8", "int8-onnx", "float"])
def test_predict_runs_without_the_training_loop_or_exporters(paths, photos, model):
    argv = [str(photos[0]), "--model", model, "--json", *_flags(paths)]
    modules = imported_modules(
        f"from pipeline_lib import cli\nassert cli.main(['predict', *{argv!r}]) == 0"
    )
    assert loaded(modules, NEVER) == []
    if model != "float":  # the float student needs timm, and only it
        assert loaded(modules, ("timm", "pipeline_lib.models", *TORCH_EXPORTER)) == []
