"""The from-scratch reference: a committed run's figures, shown beside the current models.

The reference is the pipeline as it ran with a ResNet-18 teacher and a MobileNetV3-Small
student, both trained from scratch (no ImageNet weights), named by the commit that holds its
``dvc.lock`` and metrics. ``python -m pipeline_lib.reference --rev <commit>`` reads that
commit's ``metrics/benchmark.json``, ``metrics/evaluate.json`` and ``params.yaml`` from git
and writes the figures compared here to :data:`DEFAULT_PATH`, a small tracked file, so a
clone without that history (or a shallow one) still has them.

Its accuracy (val and test ROC-AUC, ECE) is that run's, scored once on the same lesion-grouped
split. Its latency is not carried over: it was measured on another machine. The benchmark
stage rebuilds the reference student's int8 program from its architecture
(:func:`pipeline_lib.benchmarking.benchmark_architecture`) and times it where it runs, so
``plots/benchmark`` and the README compare latencies taken on one CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline_lib import artifacts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / "data" / "reference" / "from_scratch.json"
DEFAULT_REV = "56ac890"  # the committed from-scratch run (docs/experiments.md)

# name -> (model in metrics/benchmark.json, model in metrics/evaluate.json, params section)
MODELS = {
    "teacher": ("teacher_pytorch", "teacher", "train_teacher"),
    "student_int8": ("student_executorch_int8", "student_int8", "distill"),
}
# name -> the model's name in the benchmark stage's report when it rebuilds and times it
BENCHMARK_NAMES = {
    "teacher": "reference_teacher_pytorch",
    "student_int8": "reference_executorch_int8",
}
BENCHMARK_KEYS = ("runtime", "precision", "arch", "task", "image_size", "params", "size_mb")
TEST_KEYS = ("roc_auc", "roc_auc_low", "roc_auc_high", "pr_auc", "ece", "brier")
SPLIT_KEYS = ("n_test", "n_test_melanoma", "n_test_lesions", "bootstrap")


class ReferenceError(ValueError):
    """The reference commit, one of its files or one of their keys is missing."""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ReferenceError(f"git {' '.join(args)} in {repo}: {done.stderr.strip()}")
    return done.stdout


def _key(data: dict, source: str, *keys: str) -> Any:
    value: Any = data
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ReferenceError(f"{source} has no key {'.'.join(keys[: depth + 1])!r}")
        value = value[key]
    return value


def extract(rev: str = DEFAULT_REV, repo: str | Path = REPO) -> dict:
    """The reference figures of the run committed at ``rev`` (read from git, not the disk).

    Raises:
        ReferenceError: naming the commit, file or key that is missing.
    """
    repo = Path(repo)
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    files = {}
    for name in ("metrics/benchmark.json", "metrics/evaluate.json", "params.yaml"):
        text = _git(repo, "show", f"{commit}:{name}")
        files[name] = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    bench, evaluate, params = files.values()
    models = {}
    for name, (bench_name, eval_name, section) in MODELS.items():
        b = _key(bench, f"{commit[:7]}:metrics/benchmark.json", "models", bench_name)
        e = _key(evaluate, f"{commit[:7]}:metrics/evaluate.json", eval_name)
        where_b = f"{commit[:7]}:metrics/benchmark.json models.{bench_name}"
        where_e = f"{commit[:7]}:metrics/evaluate.json {eval_name}"
        models[name] = {k: _key(b, where_b, k) for k in BENCHMARK_KEYS} | {
            "pretrained": _key(params, f"{commit[:7]}:params.yaml", section, "pretrained"),
            "val_roc_auc": _key(b, where_b, "val_roc_auc"),
            "test": {k: _key(e, where_e, k) for k in TEST_KEYS},
            "latency_ms_at_commit": {
                t: v["median"] for t, v in _key(b, where_b, "latency_ms").items()
            },
        }
    return {
        "commit": commit,
        "date": _git(repo, "log", "-1", "--format=%cs", commit).strip(),
        "description": "the pipeline with a ResNet-18 teacher and a MobileNetV3-Small student, "
        "both trained from scratch",
        "split": {k: _key(evaluate, f"{commit[:7]}:metrics/evaluate.json", k) for k in SPLIT_KEYS},
        "models": models,
    }


def load(path: str | Path = DEFAULT_PATH) -> dict:
    """The reference file written by :func:`main`, checked for the keys the stages read."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(
            f"reference file {path} not found (write it: python -m pipeline_lib.reference)"
        )
    snapshot = json.loads(path.read_text())
    for name in MODELS:
        model = _key(snapshot, str(path), "models", name)
        for key in (*BENCHMARK_KEYS, "val_roc_auc", "test"):
            _key(model, f"{path} models.{name}", key)
    _key(snapshot, str(path), "commit")
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=DEFAULT_REV, help="the reference run's commit")
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    args = parser.parse_args()
    snapshot = extract(args.rev)
    artifacts.write_json(args.out, snapshot)
    for name, m in snapshot["models"].items():
        print(
            f"{name}: {m['arch']} val {m['val_roc_auc']:.3f} test {m['test']['roc_auc']:.3f} "
            f"{m['size_mb']:.2f} MB (commit {snapshot['commit'][:7]})"
        )


if __name__ == "__main__":
    main()
