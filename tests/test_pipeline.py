"""End to end: `dvc repro` on a temporary copy of the project with synthetic data."""

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from synthetic import make_dataset, write_set

pytestmark = pytest.mark.slow  # a few minutes: every stage as a process, several experiments

BIN = Path(sys.executable).parent
TINY = {
    "prepare": {"image_size": 32},
    "train_teacher": {"arch": "test_resnet", "image_size": 32, "epochs": 1, "batch_size": 16},
    # Two members of different architectures and starts: one from scratch, one from the
    # packaged ImageNet weights (converted by the weights stage).
    "teachers": {
        "scratch": {"arch": "test_resnet", "pretrained": False},
        "lite0": {"arch": "tf_efficientnet_lite0", "pretrained": "imagenet", "lr": 1.0e-3},
    },
    "distill": {
        "arch": "dsnet_tiny",
        "pretrained": False,
        "bf16": False,
        "image_size": 32,
        "epochs": 1,
        "batch_size": 16,
    },
    "baselines": {"feature_size": 32},
    "quantize": {"calibration_images": 16, "qat_epochs": 1},
    "benchmark": {"warmup": 1, "runs": 3, "threads": [1], "throughput_batch": 4},
    "evaluate": {"bootstrap": 20, "gallery_size": 2},
    "search": {
        "study_name": "tiny",
        "fixed": {"distill.epochs": 1},
        "space": {"kd.alpha": {"low": 0.0, "high": 1.0}, "distill.lr": {"choices": [0.001, 0.003]}},
    },
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _write_reference(path: Path) -> None:
    """A from-scratch reference of tiny models, which the benchmark stage rebuilds and times."""
    test = {"roc_auc": 0.8, "roc_auc_low": 0.7, "roc_auc_high": 0.9, "pr_auc": 0.4, "ece": 0.03,
            "brier": 0.1}  # fmt: skip
    models = {
        key: {
            "runtime": runtime,
            "precision": precision,
            "arch": "dsnet_tiny",
            "task": task,
            "image_size": 32,
            "params": 1,
            "size_mb": 0.1,
            "pretrained": False,
            "val_roc_auc": 0.75,
            "test": test,
        }  # fmt: skip
        for key, runtime, precision, task in (
            ("teacher", "pytorch_eager", "fp32", "dx"),
            ("student_int8", "executorch_xnnpack", "int8", "binary"),
        )
    }
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"commit": "0" * 40, "description": "tiny", "models": models}))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    for name in ("stages", "pipeline_lib"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    make_dataset(root.parent / f"{root.name}_ham", n_lesions=60, images_per_lesion=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["root"] = str(root.parent / f"{root.name}_ham")
    for section, values in TINY.items():
        if section == "teachers":
            params[section] = values
        elif section in params:
            params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _write_reference(root / "data/reference/from_scratch.json")
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        assert _run(cmd, root).returncode == 0, cmd
    return root


@pytest.fixture(scope="module")
def repro(project) -> subprocess.CompletedProcess:
    return _run(["dvc", "repro"], project)


def test_repro_writes_every_metrics_file(project, repro):
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    expected = {
        "train_teacher/scratch": {"val_roc_auc", "best_epoch", "train_seconds", "params"},
        "train_teacher/lite0": {"val_roc_auc", "best_epoch", "pretrained"},
        "teacher": {"val_roc_auc", "members", "scratch_val_roc_auc", "lite0_val_roc_auc"},
        "calibrate": {"temperature", "val_ece_before", "val_ece_after", "val_nll_after"},
        "distill": {"val_roc_auc", "kd_alpha", "kd_temperature", "teacher_temperature"},
    }
    for name, keys in expected.items():
        if name.split("/")[0] in stages:
            data = json.loads((project / "metrics" / f"{name}.json").read_text())
            assert keys <= set(data), name
    for name in stages:
        if name not in ("split", "train_teacher", "external"):  # external: no set by default
            assert (project / "metrics" / f"{name}.json").is_file(), name
    report = json.loads((project / "plots/evaluate/report.json").read_text())
    assert {"teacher", "student", "student_int8"} <= set(report["diagnosis"])  # dx models
    assert "7-way diagnosis of `student_int8`" in (project / "plots/evaluate/report.md").read_text()
    bench = json.loads((project / "plots/benchmark/report.json").read_text())
    assert bench["machine"]["capability"] and bench["machine"]["label"]  # where it was measured
    # the from-scratch reference, rebuilt and timed here, beside the run's models
    summary = json.loads((project / "metrics/benchmark.json").read_text())["models"]
    for name in ("reference_teacher_pytorch", "reference_executorch_int8"):
        assert bench["models"][name]["val_roc_auc"] == 0.75 and name in summary
    assert bench["models"]["reference_executorch_int8"]["precision"] == "int8"
    card = (project / "plots/model_card/model_card.md").read_text()
    assert "| reference int8 student `dsnet_tiny` | 0.750 | 0.800 [0.700, 0.900] |" in card
    split = json.loads((project / "data/split/split_metadata.json").read_text())
    assert split["seed"] == 0 and split["train"]["images"] > split["val"]["images"] > 0
    # Platt scaling ran on both int8 files, and the model card ships what they output
    quantize = json.loads((project / "plots/quantize/report.json").read_text())
    points = json.loads((project / "data/model_card/operating_point.json").read_text())
    assert quantize["int8_pte"]["recalibration"]["applied"]  # a trained student ranks right
    for file, model in (("int8_pte", "int8"), ("int8_onnx", "int8-onnx")):
        fit = quantize[file]["recalibration"]
        assert fit["applied"] == (fit["slope"] > 0)
        if fit["applied"]:
            assert points[model]["temperature"] == 1.0
            assert quantize[file]["val_ece"] == pytest.approx(fit["val_ece_in_sample"], abs=1e-6)


def test_second_repro_does_nothing(project, repro):
    again = _run(["dvc", "repro"], project)
    assert again.returncode == 0
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout


def test_mistyped_param_in_exp_run_fails_loudly(project, repro):
    out = _run(["dvc", "exp", "run", "-S", "kd.alpah=0.9"], project)
    assert out.returncode != 0
    assert "kd.alpah" in out.stdout + out.stderr


def _memo_rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]


def test_documented_ablation_command_runs_verbatim(project, repro, teacher_memo):
    computed = _memo_rows(teacher_memo)  # the teacher's outputs of the repro's distill stage
    out = _run(["dvc", "exp", "run", "-S", "kd.alpha=0.9"], project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Same seed, data and augmentation: the sweep asks the teacher nothing new.
    assert computed > 0 and _memo_rows(teacher_memo) == computed
    assert "Running stage 'distill'" in out.stdout
    assert "Running stage 'train_teacher'" not in out.stdout  # the teacher is not retrained
    shown = _run(["dvc", "exp", "show", "--csv"], project)
    assert shown.returncode == 0
    table = pd.read_csv(io.StringIO(shown.stdout))
    experiments = table[table["Experiment"].notna() & (table["rev"] != "workspace")]
    assert (experiments["kd.alpha"].astype(float) == 0.9).any()


def test_search_trials_are_dvc_experiments(project, repro):
    params_before = (project / "params.yaml").read_text()
    out = _run([sys.executable, "-m", "pipeline_lib.search", "--trials", "2"], project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "dvc exp apply tiny-trial-" in out.stdout
    assert (project / "params.yaml").read_text() == params_before  # workspace put back
    shown = _run(["dvc", "exp", "show", "--csv"], project)
    table = pd.read_csv(io.StringIO(shown.stdout))
    trials = table[table["Experiment"].isin(["tiny-trial-0", "tiny-trial-1"])]
    assert len(trials) == 2
    assert trials["distill.epochs"].astype(int).eq(1).all()
    assert trials["kd.alpha"].astype(float).between(0, 1).all()
    report = pd.read_csv(project / "plots/search/trials.csv")
    assert list(report["state"]) == ["COMPLETE", "COMPLETE"]
    assert (report["epochs_reported"] == 1).all()  # the per-epoch curve reached the pruner
    status = _run(["dvc", "status"], project)
    assert "up to date" in status.stdout, status.stdout  # metrics and plots put back too
    by_name = dict(
        zip(
            trials["Experiment"],
            trials["metrics/distill.json:val_roc_auc"].astype(float),
            strict=True,
        )
    )
    for row in report.itertuples():
        assert row.val_roc_auc == pytest.approx(by_name[row.experiment])


def test_an_external_set_listed_in_params_is_scored_by_its_own_stage(project, repro):
    images, labels = write_set(project.parent / f"{project.name}_clinic", n=12)
    entry = {"images": images, "labels": labels, "max_bad_fraction": 0.05}
    sets = [f"+external.clinic_b.{key}={value}" for key, value in entry.items()]
    out = _run(["dvc", "exp", "run", *(x for s in sets for x in ("-S", s))], project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Running stage 'external@clinic_b'" in out.stdout
    assert "Running stage 'distill'" not in out.stdout  # nothing is refitted for a set
    metrics = json.loads((project / "metrics/external/clinic_b.json").read_text())
    assert metrics["n_scored"] == 12 and {"int8", "int8-onnx"} <= set(metrics)
    report = json.loads((project / "plots/external/clinic_b/report.json").read_text())
    assert metrics["int8"]["roc_auc"] == report["models"]["int8"]["roc_auc"]
    card = (project / "plots/model_card/model_card.md").read_text()
    assert "`clinic_b` (labels" in card and "plots/external/clinic_b/report.md" in card


def test_a_member_change_retrains_only_that_member(project, repro):
    # Last in this module: the experiment leaves its teacher in the workspace.
    out = _run(["dvc", "exp", "run", "teacher", "-S", "+teachers.scratch.epochs=2"], project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Running stage 'train_teacher@scratch'" in out.stdout
    assert "Running stage 'train_teacher@lite0'" not in out.stdout
    assert "Running stage 'teacher'" in out.stdout
