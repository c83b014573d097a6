import json
from pathlib import Path

import pytest

from pipeline_lib import headline

REPO = Path(__file__).resolve().parents[1]


def _test_figures(auc: float, low: float, high: float, ece: float) -> dict:
    return {"roc_auc": auc, "roc_auc_low": low, "roc_auc_high": high, "ece": ece, "brier": 0.07}


def _bench(size_mb: float, latency_1: float) -> dict:
    return {
        "size_mb": size_mb,
        "latency_ms": {"1": {"median": latency_1, "p90": 99.0}, "2": {"median": 0.1}},
    }


def write_metrics(directory: Path, onnx: bool = True) -> Path:
    """Small metrics files shaped like the pipeline's, with figures that test the rounding."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "teacher.json": {"arch": "resnet18+lite0", "members": 2, "val_roc_auc": 0.88849},
        "distill.json": {"arch": "tiny", "val_roc_auc": 0.87751},
        "quantize.json": {"int8_pte": {"val_roc_auc": 0.87254}},
        "baselines.json": {  # forest is the best by val; its test figures are shown
            "logreg": {"val_roc_auc": 0.7273, "test_roc_auc": 0.99},
            "forest": {"val_roc_auc": 0.90305, "test_roc_auc": 0.5},
            "svm": {"val_roc_auc": 0.8961},
        },
        "evaluate.json": {
            "n_test": 1503,
            "n_test_melanoma": 168,
            "bootstrap": 1000,
            "teacher": _test_figures(0.88395, 0.85693, 0.90963, 0.02369),
            "student": _test_figures(0.8844, 0.8571, 0.91074, 0.0257),
            "student_int8": _test_figures(0.88251, 0.85533, 0.9069, 0.021999),
            "student_int8_onnx": _test_figures(0.8791, 0.8521, 0.9028, 0.0211),
            "baseline_forest": _test_figures(0.8904, 0.8634, 0.9151, 0.02098),
            "baseline_logreg": _test_figures(0.5, 0.4, 0.6, 0.5),
        },
        "benchmark.json": {
            "models": {
                "teacher_pytorch": _bench(44.796935, 21.440417),
                "student_pytorch": _bench(6.198419, 4.941039),
                "student_executorch_int8": _bench(1.787268, 0.79967),
                "student_onnx_int8": _bench(1.875272, 0.807977),
            }
        },
    }
    if onnx:
        files["quantize.json"]["int8_onnx"] = {"val_roc_auc": 0.86818}
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))
    return directory


EXPECTED = """\
| model | val ROC-AUC | test ROC-AUC [95% CI] | test ECE | size (MB) | latency, batch 1, 1 thread (ms) |
|---|---|---|---|---|---|
| teacher `resnet18+lite0` (PyTorch) | 0.888 | 0.884 [0.857, 0.910] | 0.024 | 44.8 | 21.4 |
| student `tiny`, float (PyTorch) | 0.878 | 0.884 [0.857, 0.911] | 0.026 | 6.20 | 4.94 |
| student, int8 `.pte` (ExecuTorch, XNNPACK) | 0.873 | 0.883 [0.855, 0.907] | 0.022 | 1.79 | 0.80 |
| student, int8 `.onnx` (ONNX Runtime) | 0.868 | 0.879 [0.852, 0.903] | 0.021 | 1.88 | 0.81 |
| best baseline by val: `forest` | 0.903 | 0.890 [0.863, 0.915] | 0.021 | - | - |

Test split: 1,503 images, 168 melanomas; 95% CIs from 1,000 bootstrap resamples of lesions. \
Latency: median of the `benchmark` stage on the machine that ran it."""


def test_table_from_synthetic_metrics(tmp_path):
    assert headline.table(write_metrics(tmp_path / "metrics")) == EXPECTED


def test_skips_a_missing_onnx(tmp_path):
    metrics = write_metrics(tmp_path / "m", onnx=False)
    lines = headline.table(metrics).splitlines()
    assert lines[2].startswith("| teacher `resnet18+lite0` (PyTorch) | 0.888 |")
    assert not any("`.onnx`" in line for line in lines)
    assert len([line for line in lines if line.startswith("| ")]) == 5  # header + 4 rows


def test_missing_file_and_key_are_named(tmp_path):
    metrics = write_metrics(tmp_path / "m")
    evaluate = json.loads((metrics / "evaluate.json").read_text())
    del evaluate["student_int8"]["ece"]
    (metrics / "evaluate.json").write_text(json.dumps(evaluate))
    with pytest.raises(
        headline.HeadlineError, match=r"evaluate\.json has no key 'student_int8\.ece'"
    ):
        headline.table(metrics)
    (metrics / "benchmark.json").unlink()
    with pytest.raises(headline.HeadlineError, match=r"benchmark\.json is missing"):
        headline.table(metrics)
    (metrics / "teacher.json").unlink()
    with pytest.raises(headline.HeadlineError, match=r"teacher\.json is missing"):
        headline.table(metrics)


def _reference_file(path: Path) -> Path:
    def model(arch: str, val: float, auc: float) -> dict:
        test = {"roc_auc": auc, "roc_auc_low": auc - 0.0284, "roc_auc_high": auc + 0.0246,
                "ece": 0.02368, "pr_auc": 0.4, "brier": 0.07}  # fmt: skip
        return {"runtime": "r", "precision": "p", "arch": arch, "task": "dx", "image_size": 128,
                "params": 1, "size_mb": 99.0, "val_roc_auc": val, "test": test}  # fmt: skip

    path.write_text(json.dumps({
        "commit": "56ac890461f0803bc278b63ac6df9d260de4e234",
        "models": {"teacher": model("resnet18", 0.88804, 0.88395),
                   "student_int8": model("mobilenetv3_small_100", 0.87308, 0.88252)},
    }))  # fmt: skip
    return path


def test_reference_rows_when_the_benchmark_timed_the_reference(tmp_path):
    metrics = write_metrics(tmp_path / "metrics")
    reference_file = _reference_file(tmp_path / "reference.json")
    # The benchmark did not time the reference: no rows, and the file is not read.
    assert headline.table(metrics, tmp_path / "absent.json") == EXPECTED
    bench = json.loads((metrics / "benchmark.json").read_text())
    bench["models"]["reference_teacher_pytorch"] = _bench(44.796871, 57.17)
    bench["models"]["reference_executorch_int8"] = _bench(1.690116, 2.0724)
    (metrics / "benchmark.json").write_text(json.dumps(bench))
    lines = headline.table(metrics, reference_file).splitlines()
    assert lines[2:7] == EXPECTED.splitlines()[2:7]  # the run's own rows come first, unchanged
    assert lines[7:9] == [
        "| from-scratch reference `56ac890`: teacher `resnet18` (PyTorch) | 0.888 "
        "| 0.884 [0.856, 0.909] | 0.024 | 44.8 | 57.2 |",
        "| from-scratch reference `56ac890`: student `mobilenetv3_small_100`, int8 `.pte` "
        "| 0.873 | 0.883 [0.854, 0.907] | 0.024 | 1.69 | 2.07 |",
    ]
    assert "its size and latency are of the same architectures rebuilt" in lines[-1]
    with pytest.raises(headline.HeadlineError, match="absent.json not found"):
        headline.table(metrics, tmp_path / "absent.json")


def test_write_replaces_only_the_marker_block(tmp_path, capsys):
    metrics = write_metrics(tmp_path / "metrics")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# title\n\nbefore\n<!-- headline:start -->\nold table\nold caption\n"
        "<!-- headline:end -->\nafter\n"
    )
    assert headline.main(["--metrics", str(metrics), "--write", str(readme)]) == 0
    assert readme.read_text() == (
        f"# title\n\nbefore\n<!-- headline:start -->\n{EXPECTED}\n<!-- headline:end -->\nafter\n"
    )
    assert headline.main(["--metrics", str(metrics)]) == 0
    assert capsys.readouterr().out == EXPECTED + "\n"
    # idempotent, and nothing left beside the file
    headline.main(["--metrics", str(metrics), "--write", str(readme)])
    assert readme.read_text().count(EXPECTED) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "metrics"]


@pytest.mark.parametrize(
    "text",
    [
        "no markers\n",
        "<!-- headline:start -->\nonly a start\n",
        "<!-- headline:end -->\n<!-- headline:start -->\n",
        "<!-- headline:start -->\n<!-- headline:end -->\n<!-- headline:start -->\n",
    ],
)
def test_bad_markers_are_refused_and_the_file_is_kept(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        headline.main(["--metrics", str(write_metrics(tmp_path / "m")), "--write", str(readme)])
    assert exit_info.value.code == 1
    assert readme.read_text() == text


def test_committed_readme_block_matches_the_committed_metrics():
    metrics = REPO / "metrics"
    block = headline.block_of((REPO / "README.md").read_text())
    assert block == headline.table(metrics), (
        "README.md's headline block is stale: python -m pipeline_lib.headline --write README.md"
    )
