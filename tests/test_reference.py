"""The from-scratch reference's figures come from its commit in git, exactly, or fail by name."""

import json
import subprocess

import pytest
import yaml
from conftest import REPO

from pipeline_lib import reference


def _bench_row(arch: str, task: str, size_mb: float, val: float, latency: float) -> dict:
    return {
        "runtime": "executorch_xnnpack", "precision": "int8", "arch": arch, "task": task,
        "image_size": 128, "params": 1000, "macs": 5000, "size_mb": size_mb, "val_roc_auc": val,
        "latency_ms": {"1": {"median": latency, "p90": 9.0}, "2": {"median": latency / 2}},
    }  # fmt: skip


def _test_row(auc: float) -> dict:
    return {"val_roc_auc": 0.5, "roc_auc": auc, "roc_auc_low": auc - 0.03,
            "roc_auc_high": auc + 0.02, "pr_auc": 0.4, "ece": 0.02, "brier": 0.07,
            "at_target_sensitivity": {"sensitivity": 0.95}}  # fmt: skip


def _files(teacher_test: float = 0.884) -> dict:
    return {
        "metrics/benchmark.json": {"models": {
            "teacher_pytorch": _bench_row("resnet18", "dx", 44.8, 0.888, 21.4)
            | {"runtime": "pytorch_eager", "precision": "fp32"},
            "student_executorch_int8": _bench_row("mobilenetv3_small_100", "binary", 1.79, 0.873, 0.8),
        }},
        "metrics/evaluate.json": {
            "n_test": 1503, "n_test_melanoma": 168, "n_test_lesions": 1119, "bootstrap": 1000,
            "teacher": _test_row(teacher_test), "student_int8": _test_row(0.883),
        },
        "params.yaml": {"train_teacher": {"pretrained": False}, "distill": {"pretrained": False}},
    }  # fmt: skip


def _commit(repo, files: dict, message: str) -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(content) if name.endswith(".yaml") else json.dumps(content)
        path.write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def test_extract_reads_the_commit_not_the_working_tree(repo):
    rev = _commit(repo, _files(), "reference run")
    _commit(repo, _files(teacher_test=0.999), "a later run")  # HEAD and the disk move on
    snapshot = reference.extract(rev[:7], repo)
    assert snapshot["commit"] == rev
    assert snapshot["split"] == {
        "n_test": 1503, "n_test_melanoma": 168, "n_test_lesions": 1119, "bootstrap": 1000
    }  # fmt: skip
    teacher, student = snapshot["models"]["teacher"], snapshot["models"]["student_int8"]
    assert teacher["test"] == {
        "roc_auc": 0.884, "roc_auc_low": 0.884 - 0.03, "roc_auc_high": 0.884 + 0.02,
        "pr_auc": 0.4, "ece": 0.02, "brier": 0.07,
    }  # fmt: skip
    assert (teacher["arch"], teacher["runtime"], teacher["val_roc_auc"]) == (
        "resnet18", "pytorch_eager", 0.888
    )  # fmt: skip
    assert (student["arch"], student["task"], student["size_mb"]) == (
        "mobilenetv3_small_100", "binary", 1.79
    )  # fmt: skip
    assert student["latency_ms_at_commit"] == {"1": 0.8, "2": 0.4}
    assert student["pretrained"] is False and "macs" not in student


def test_a_missing_commit_file_or_key_is_named(repo):
    with pytest.raises(reference.ReferenceError, match="rev-parse"):
        reference.extract("0123456", repo)
    files = _files()
    del files["metrics/evaluate.json"]["student_int8"]
    rev = _commit(repo, files, "no int8 test figures")
    with pytest.raises(reference.ReferenceError, match=r"evaluate\.json has no key 'student_int8'"):
        reference.extract(rev, repo)
    files = _files()
    del files["metrics/benchmark.json"]["models"]["teacher_pytorch"]["size_mb"]
    rev = _commit(repo, files, "no teacher size")
    with pytest.raises(reference.ReferenceError, match=r"teacher_pytorch has no key 'size_mb'"):
        reference.extract(rev, repo)


def test_load_checks_the_keys_the_stages_read(repo, tmp_path):
    rev = _commit(repo, _files(), "reference run")
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(reference.extract(rev, repo)))
    assert reference.load(path)["commit"] == rev
    broken = json.loads(path.read_text())
    del broken["models"]["student_int8"]["test"]
    path.write_text(json.dumps(broken))
    with pytest.raises(reference.ReferenceError, match=r"models\.student_int8 has no key 'test'"):
        reference.load(path)
    with pytest.raises(reference.ReferenceError, match="not found"):
        reference.load(tmp_path / "absent.json")


def test_the_tracked_reference_file_is_its_commit_s_figures():
    """The file the pipeline reads holds exactly what the reference commit recorded."""
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{reference.DEFAULT_REV}^{{commit}}"],
        capture_output=True,
    )
    if known.returncode != 0:
        pytest.skip(f"commit {reference.DEFAULT_REV} is not in this clone (a shallow clone?)")
    tracked = json.loads(reference.DEFAULT_PATH.read_text())
    assert tracked == json.loads(json.dumps(reference.extract()))
    assert tracked["models"]["student_int8"]["arch"] == "mobilenetv3_small_100"
    assert tracked["models"]["teacher"]["pretrained"] is False
