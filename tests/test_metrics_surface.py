"""The metrics files keep the figures `dvc metrics diff` compares; the stage reports keep the rest.

Each summary is checked on the committed metrics: every figure keeps its key path and value
from the full report, the summary of a summary is itself, it stays small, and the README's
headline table reads the same from it.
"""

import importlib.util
import json
import re
import shutil

import pytest
import yaml
from conftest import REPO

from pipeline_lib import baselines, benchmarking, evaluation, headline, quantization

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
EXPORTED = re.findall(r"--exported (\w+)=", DVC["stages"]["evaluate"]["cmd"])


def _benchmark_stage():
    spec = importlib.util.spec_from_file_location("benchmark_stage", REPO / "stages/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUMMARIES = {
    "evaluate": lambda r: evaluation.summary(r, EXPORTED),
    "benchmark": lambda r: benchmarking.summary(r, _benchmark_stage().summary_models(r)),
    "quantize": quantization.summary,
    "baselines": baselines.summary,
}
MAX_FIGURES = {"evaluate": 50, "benchmark": 40, "quantize": 40, "baselines": 40}


def _leaves(tree, path=()) -> dict[tuple, object]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, (*path, key)).items()}
    return {path: tree}


def _figures(tree) -> int:
    """Numeric leaves: the rows `dvc metrics diff` can show."""
    return sum(
        isinstance(v, int | float) and not isinstance(v, bool) for v in _leaves(tree).values()
    )


def _committed(stage: str) -> dict:
    path = REPO / "metrics" / f"{stage}.json"
    if not path.exists():
        pytest.skip(f"no committed {path.name}")
    return json.loads(path.read_text())


@pytest.mark.parametrize("stage", list(SUMMARIES))
def test_summary_keeps_key_paths_and_values_and_is_small(stage):
    full = _committed(stage)
    summary = SUMMARIES[stage](full)
    kept, every = _leaves(summary), _leaves(full)
    assert all(path in every and every[path] == value for path, value in kept.items())
    assert SUMMARIES[stage](summary) == summary
    assert 0 < _figures(summary) <= MAX_FIGURES[stage]


def test_summaries_of_the_committed_run():
    evaluate = SUMMARIES["evaluate"](_committed("evaluate"))
    best = evaluate["best_baseline_by_val"]
    assert set(evaluate) == {
        "n_test", "n_test_melanoma", "n_test_lesions", "bootstrap", "best_baseline_by_val",
        "teacher", "teacher_calibrated", "student", "student_calibrated", "student_int8",
        "student_int8_onnx", best, "probability_agreement",
    }  # fmt: skip
    assert set(evaluate["probability_agreement"]) == {"teacher_vs_student_int8"}
    assert set(evaluate["student_int8"]["at_target_sensitivity"]) == {"sensitivity", "specificity"}
    assert set(evaluate["teacher_calibrated"]) == {"ece"}
    bench = SUMMARIES["benchmark"](_committed("benchmark"))["models"]["student_executorch_int8"]
    assert set(bench["latency_ms"]) == set(bench["throughput_img_s"]) == {"1", "2"}
    quantize = SUMMARIES["quantize"](_committed("quantize"))
    assert set(quantize) == {"float_pytorch", "int8_pte", "int8_onnx", "qat"}


def test_headline_table_reads_the_same_from_the_summaries(tmp_path):
    metrics = REPO / "metrics"
    if not (metrics / "teacher.json").exists():
        pytest.skip("no committed teacher metrics")
    for name in ("teacher.json", "distill.json"):
        shutil.copy(metrics / name, tmp_path / name)
    for stage, summarise in SUMMARIES.items():
        (tmp_path / f"{stage}.json").write_text(json.dumps(summarise(_committed(stage))))
    assert headline.table(tmp_path) == headline.table(metrics)


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


@pytest.mark.parametrize("stage", list(SUMMARIES))
def test_each_report_is_an_uncached_output_and_not_a_metric(stage):
    definition = DVC["stages"][stage]
    report = re.search(r"--report (\S+)", definition["cmd"]).group(1)
    assert report == f"plots/{stage}/report.json"
    owners = [o for o in _outs(definition) if report == o or report.startswith(f"{o}/")]
    assert owners, f"{report} is not an output of {stage}"
    entry = next(o for o in definition["outs"] if isinstance(o, dict) and owners[0] in o)
    assert entry[owners[0]] == {"cache": False}
    metrics = [next(iter(m)) if isinstance(m, dict) else m for m in definition["metrics"]]
    assert metrics == [f"metrics/{stage}.json"]


def test_model_card_reads_the_full_evaluate_and_benchmark_reports():
    card = DVC["stages"]["model_card"]
    for stage in ("evaluate", "benchmark"):
        assert f"--report {stage}=plots/{stage}/report.json" in card["cmd"]
        assert f"plots/{stage}/report.json" in card["deps"]
        assert f"metrics/{stage}.json" not in card["deps"]


def test_curve_plots_name_files_the_evaluate_stage_writes():
    written = {"teacher", "student", "best_baseline", *EXPORTED}
    plots = {next(iter(p)): p[next(iter(p))] for p in DVC["plots"] if isinstance(p, dict)}
    for name, folder, x, y in (
        ("test_roc", "roc", "fpr", "tpr"),
        ("test_precision_recall", "pr", "recall", "precision"),
    ):
        assert plots[name]["x"] == x
        files = plots[name]["y"]
        assert set(files.values()) == {y}
        pattern = rf"plots/evaluate/{folder}/(\w+)\.csv"
        assert {re.fullmatch(pattern, f).group(1) for f in files} <= written
    members = set(yaml.safe_load((REPO / "params.yaml").read_text())["teachers"])
    declared = {p for p in DVC["plots"] if isinstance(p, str)}
    assert {f"plots/train_teacher/{m}/curves.png" for m in members} <= declared
    assert "plots/distill/curves.png" in declared
