"""The one predictor over a checkpoint, an ExecuTorch program and an ONNX model; its imports."""

import numpy as np
import pytest
import torch
from imported import NEVER, TORCH_EXPORTER, imported_modules, loaded
from tiny_student import SIZE, build

from pipeline_lib import data, inference, models, quantization, runtime


@pytest.fixture(scope="module")
def paths(prepared, tmp_path_factory):
    return build(tmp_path_factory.mktemp("student"), prepared)


@pytest.fixture(scope="module")
def float_logits(paths, prepared) -> np.ndarray:
    return inference.predict_logits(
        models.load_checkpoint(paths.checkpoint)[0], prepared.images, SIZE
    )


def test_the_runtime_imports_neither_training_nor_exporters_nor_timm():
    modules = imported_modules("import pipeline_lib.runtime")
    assert loaded(modules, NEVER + TORCH_EXPORTER) == []
    # timm (via models) comes only with a checkpoint: exported files load without it.
    assert loaded(modules, ("timm", "pipeline_lib.models", "sklearn")) == []


@pytest.mark.parametrize(
    ("field", "kind"), [("checkpoint", "pytorch"), ("pte", "executorch"), ("onnx", "onnxruntime")]
)
def test_every_file_loads_with_its_task_and_input_size(paths, prepared, float_logits, field, kind):
    predictor = runtime.Predictor.load(getattr(paths, field), threads=1)
    assert (predictor.runtime, predictor.task, predictor.image_size) == (kind, "binary", SIZE)
    assert (predictor.model is not None) == (kind == "pytorch")
    logits = predictor.logits(prepared.images)
    assert logits.shape == (len(prepared.images),) and logits.dtype == np.float32
    if kind == "pytorch":
        np.testing.assert_array_equal(logits, float_logits)
        assert predictor.meta["arch"] == "dsnet_tiny"
    else:  # int8: close to the float student, not equal
        assert np.corrcoef(logits, float_logits)[0, 1] > 0.95
    np.testing.assert_allclose(
        predictor(prepared.images), data.melanoma_probability(logits, "binary"), rtol=1e-12
    )
    np.testing.assert_allclose(
        predictor.probabilities(prepared.images, 2.0),
        data.melanoma_probability(logits / 2.0, "binary"),
        rtol=1e-6,
    )


@pytest.mark.parametrize("field", ["pte", "onnx"])
def test_batches_and_thread_counts_do_not_change_the_logits(paths, prepared, field):
    predictor = runtime.Predictor.load(getattr(paths, field))
    whole = predictor.logits(prepared.images)
    np.testing.assert_allclose(predictor.logits(prepared.images, batch_size=7), whole, atol=1e-6)
    two = predictor.with_threads(2)
    assert two.threads == 2 and two.path == predictor.path
    np.testing.assert_allclose(two.logits(prepared.images), whole, atol=1e-5)


def test_run_takes_float_inputs_at_the_input_size(paths, prepared):
    x = inference.to_input(prepared.images[:3], SIZE).contiguous().numpy()
    for file in (paths.checkpoint, paths.pte, paths.onnx):
        predictor = runtime.Predictor.load(file)
        np.testing.assert_allclose(
            predictor.run(x), predictor.logits(prepared.images[:3]), atol=1e-5
        )
    with pytest.raises(ValueError, match="takes"):
        runtime.Predictor.load(paths.pte).run(np.zeros((1, 3, SIZE + 8, SIZE + 8), np.float32))


def test_with_threads_sets_torch_threads_and_shares_the_model(paths):
    predictor = runtime.Predictor.load(paths.checkpoint)
    before = torch.get_num_threads()
    try:
        one = predictor.with_threads(1)
        assert torch.get_num_threads() == 1 and one.model is predictor.model
    finally:
        torch.set_num_threads(before)


def test_a_model_in_memory_and_a_dx_export(tmp_path, prepared):
    torch.manual_seed(0)
    model = models.create("dsnet_tiny", task="dx", drop_rate=0.0).eval()
    predictor = runtime.Predictor.from_model(model, "dx", SIZE)
    logits = predictor.logits(prepared.images)
    assert logits.shape == (len(prepared.images), 7)
    quantization.write_onnx(model, SIZE, tmp_path / "dx.onnx")
    exported = runtime.Predictor.load(tmp_path / "dx.onnx")
    assert exported.task == "dx"
    np.testing.assert_allclose(exported.logits(prepared.images), logits, atol=1e-4)
    p = predictor(prepared.images)
    assert p.shape == (len(prepared.images),) and ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("suffix", [".pte", ".onnx", ".pt"])
def test_corrupt_wrong_or_missing_files_raise_an_error_naming_the_file(tmp_path, suffix):
    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    wrong = tmp_path / f"notes{suffix}"
    wrong.write_text("these are notes, not a model\n" * 20)
    for path in (corrupt, wrong, tmp_path / f"missing{suffix}"):
        with pytest.raises(runtime.ModelFileError, match=str(path)):
            runtime.Predictor.load(path)


def test_truncated_program_and_unknown_suffix_raise(paths, tmp_path):
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(paths.pte.read_bytes()[:5000])
    with pytest.raises(runtime.ModelFileError, match=str(truncated)):
        runtime.Predictor.load(truncated)
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(runtime.ModelFileError, match="unsupported"):
        runtime.Predictor.load(other)


def test_size_mb(tmp_path):
    (tmp_path / "f").write_bytes(b"\0" * 2_500_000)
    assert runtime.size_mb(tmp_path / "f") == 2.5
