"""The README's headline results table, built from the committed metrics files.

``python -m pipeline_lib.headline`` prints the markdown table; ``--write README.md`` replaces
the block between :data:`START` and :data:`END` in that file (atomically). Rows: the teacher,
the float student, the int8 student as ExecuTorch ``.pte`` and as ONNX (when quantize wrote
one), the best baseline by val ROC-AUC and, when the benchmark stage timed them, the
from-scratch reference's teacher and int8 student (:mod:`pipeline_lib.reference`): accuracy
from the reference run's commit, size and latency from this run's benchmark.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline_lib import artifacts, reference

REPO = Path(__file__).resolve().parents[1]
START = "<!-- headline:start -->"
END = "<!-- headline:end -->"

# Every figure of the table: (metrics file, key path). Adapt here when a metrics file changes.
Key = tuple[str, tuple[str, ...]]
MODELS: dict[str, dict[str, Key]] = {
    "teacher": {
        "arch": ("teacher.json", ("arch",)),
        "val_roc_auc": ("teacher.json", ("val_roc_auc",)),
        "test": ("evaluate.json", ("teacher",)),
        "benchmark": ("benchmark.json", ("models", "teacher_pytorch")),
    },
    "student": {
        "arch": ("distill.json", ("arch",)),
        "val_roc_auc": ("distill.json", ("val_roc_auc",)),
        "test": ("evaluate.json", ("student",)),
        "benchmark": ("benchmark.json", ("models", "student_pytorch")),
    },
    "student_int8": {
        "val_roc_auc": ("quantize.json", ("int8_pte", "val_roc_auc")),
        "test": ("evaluate.json", ("student_int8",)),
        "benchmark": ("benchmark.json", ("models", "student_executorch_int8")),
    },
    "student_int8_onnx": {  # a row only when quantize.json has its "present" key
        "present": ("quantize.json", ("int8_onnx",)),
        "val_roc_auc": ("quantize.json", ("int8_onnx", "val_roc_auc")),
        "test": ("evaluate.json", ("student_int8_onnx",)),
        "benchmark": ("benchmark.json", ("models", "student_onnx_int8")),
    },
}
BASELINES = "baselines.json"  # {name: {"val_roc_auc": ...}}; the best by val is shown
BASELINE_VAL = ("val_roc_auc",)
BASELINE_TEST = ("evaluate.json", "baseline_{name}")
TEST = {
    "roc_auc": ("roc_auc",),
    "low": ("roc_auc_low",),
    "high": ("roc_auc_high",),
    "ece": ("ece",),
}
BENCHMARK = {"size_mb": ("size_mb",), "latency_ms": ("latency_ms", "1", "median")}
SPLIT = {  # the caption under the table
    "n_test": ("evaluate.json", ("n_test",)),
    "n_test_melanoma": ("evaluate.json", ("n_test_melanoma",)),
    "bootstrap": ("evaluate.json", ("bootstrap",)),
}
LABELS = {
    "teacher": "teacher `{arch}` (PyTorch)",
    "student": "student `{arch}`, float (PyTorch)",
    "student_int8": "student, int8 `.pte` (ExecuTorch, XNNPACK)",
    "student_int8_onnx": "student, int8 `.onnx` (ONNX Runtime)",
    "baseline": "best baseline by val: `{name}`",
    "reference_teacher": "from-scratch reference `{commit}`: teacher `{arch}` (PyTorch)",
    "reference_student_int8": "from-scratch reference `{commit}`: student `{arch}`, int8 `.pte`",
}
HEADER = (
    "| model | val ROC-AUC | test ROC-AUC [95% CI] | test ECE | size (MB) "
    "| latency, batch 1, 1 thread (ms) |\n|---|---|---|---|---|---|"
)


class HeadlineError(ValueError):
    """A metrics file or key the table needs is missing, or the README has no marker block."""


class Metrics:
    """The JSON files of one metrics folder, read once each, with errors naming file and key."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._files: dict[str, dict] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def file(self, name: str) -> dict:
        if name not in self._files:
            path = self.path(name)
            if not path.exists():
                raise HeadlineError(f"{path} is missing (run the pipeline: dvc repro)")
            self._files[name] = json.loads(path.read_text())
        return self._files[name]

    def has(self, name: str, keys: tuple[str, ...]) -> bool:
        value: Any = self.file(name)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        return True

    def get(self, name: str, keys: tuple[str, ...]) -> Any:
        value: Any = self.file(name)
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                raise HeadlineError(
                    f"{self.path(name)} has no key {'.'.join(keys[: depth + 1])!r} "
                    "(the table's keys are in pipeline_lib/headline.py)"
                )
            value = value[key]
        return value

    def number(self, name: str, keys: tuple[str, ...]) -> float:
        value = self.get(name, keys)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HeadlineError(f"{self.path(name)}: {'.'.join(keys)} is {value!r}, not a number")
        return float(value)


def _num(value: float) -> str:
    """Sizes and latencies: two decimals below 10, one above (1.79, 0.80, 44.8, 21.4)."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _format_test(auc: float, low: float, high: float, ece: float) -> list[str]:
    return [f"{auc:.3f} [{low:.3f}, {high:.3f}]", f"{ece:.3f}"]


def _test_cells(m: Metrics, source: Key) -> list[str]:
    name, keys = source
    return _format_test(
        *(m.number(name, keys + TEST[k]) for k in ("roc_auc", "low", "high", "ece"))
    )


def _benchmark_cells(m: Metrics, source: Key) -> list[str]:
    name, keys = source
    return [_num(m.number(name, keys + BENCHMARK[k])) for k in ("size_mb", "latency_ms")]


def best_baseline(m: Metrics) -> tuple[str, float]:
    """The baseline with the highest val ROC-AUC in ``baselines.json``, and that ROC-AUC."""
    names = [k for k, v in m.file(BASELINES).items() if isinstance(v, dict)]
    if not names:
        raise HeadlineError(f"{m.path(BASELINES)} lists no baseline")
    scores = {name: m.number(BASELINES, (name, *BASELINE_VAL)) for name in names}
    best = max(scores, key=scores.__getitem__)
    return best, scores[best]


def reference_rows(m: Metrics, path: str | Path) -> list[list[str]]:
    """The reference's rows, when ``benchmark.json`` has its models (else none): accuracy
    from the reference file at ``path``, size and latency as this run's benchmark measured."""
    if not all(
        m.has("benchmark.json", ("models", name)) for name in reference.BENCHMARK_NAMES.values()
    ):
        return []
    try:
        snapshot = reference.load(path)
    except reference.ReferenceError as err:
        raise HeadlineError(str(err)) from err
    out = []
    for key, bench_name in reference.BENCHMARK_NAMES.items():
        model = snapshot["models"][key]
        label = LABELS[f"reference_{key}"].format(commit=snapshot["commit"][:7], arch=model["arch"])
        test = (model["test"][k] for k in ("roc_auc", "roc_auc_low", "roc_auc_high", "ece"))
        out.append(
            [label, f"{model['val_roc_auc']:.3f}", *_format_test(*test)]
            + _benchmark_cells(m, ("benchmark.json", ("models", bench_name)))
        )
    return out


def rows(m: Metrics) -> list[list[str]]:
    """The table's rows as cells (label first), in order."""
    out = []
    for model, source in MODELS.items():
        if "present" in source and not m.has(*source["present"]):
            continue
        arch = m.get(*source["arch"]) if "arch" in source else ""
        out.append(
            [LABELS[model].format(arch=arch), f"{m.number(*source['val_roc_auc']):.3f}"]
            + _test_cells(m, source["test"])
            + _benchmark_cells(m, source["benchmark"])
        )
    name, val = best_baseline(m)
    test_file, test_key = BASELINE_TEST
    out.append(
        [LABELS["baseline"].format(name=name), f"{val:.3f}"]
        + _test_cells(m, (test_file, (test_key.format(name=name),)))
        + ["-", "-"]
    )
    return out


def table(
    metrics_dir: str | Path = REPO / "metrics", reference_path: str | Path = reference.DEFAULT_PATH
) -> str:
    """The headline block: the markdown table and a one-line caption."""
    m = Metrics(metrics_dir)
    n_test, n_mel, boot = (int(m.number(*SPLIT[k])) for k in SPLIT)
    own = rows(m)
    extra = reference_rows(m, reference_path)
    lines = [HEADER] + ["| " + " | ".join(cells) + " |" for cells in own + extra]
    lines.append("")
    caption = (
        f"Test split: {n_test:,} images, {n_mel:,} melanomas; 95% CIs from {boot:,} bootstrap "
        "resamples of lesions. Latency: median of the `benchmark` stage on the machine that ran it."
    )
    if extra:
        caption += (
            " The from-scratch reference's accuracy is that of its own committed run (same "
            "split); its size and latency are of the same architectures rebuilt and timed by "
            "this run's `benchmark` stage."
        )
    lines.append(caption)
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines between the START and END markers replaced by ``block``."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise HeadlineError(f"need exactly one {START} and one {END} marker")
    if text.index(END) < text.index(START):
        raise HeadlineError(f"{END} comes before {START}")
    head, rest = text.split(START)
    tail = rest.split(END)[1]
    return f"{head}{START}\n{block}\n{END}{tail}"


def block_of(text: str) -> str:
    """The text between the markers, without the newlines that frame it."""
    replace_block(text, "")  # validates the markers
    return text.split(START)[1].split(END)[0].strip("\n")


def write(readme: str | Path, block: str) -> None:
    """Replace the marker block of ``readme`` with ``block``, atomically."""
    readme = Path(readme)
    new = replace_block(readme.read_text(), block)
    with artifacts.atomic_path(readme) as tmp:
        tmp.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, default=REPO / "metrics", help="metrics folder")
    parser.add_argument("--write", type=Path, metavar="README.md", help="replace its block")
    parser.add_argument(
        "--reference", type=Path, default=reference.DEFAULT_PATH, help="the reference's figures"
    )
    args = parser.parse_args(argv)
    try:
        block = table(args.metrics, args.reference)
        if args.write:
            write(args.write, block)
        else:
            print(block)
    except HeadlineError as err:
        parser.exit(1, f"headline: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
