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
