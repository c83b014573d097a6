"""Bayesian hyperparameter search in which every trial is an ordinary DVC experiment.

``python -m pipeline_lib.search --trials 20`` runs an Optuna study (TPE sampler, median pruning
on the per-epoch val ROC-AUC that the training loop logs with dvclive). Each trial sets its
parameters with ``dvc exp run <stage> -S key=value``, so the search space names are params.yaml
keys, ``dvc exp show`` lists every finished trial and ``dvc exp apply`` promotes one. Only val
metrics are read; the test split is never touched.

The study lives in an Optuna storage (a local SQLite file by default, any storage URL otherwise),
so several machines can run this command against one study and share its trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from pipeline_lib import artifacts, config

DEFAULT_STORAGE_FILE = Path("data/search/optuna.db")
OBJECTIVE = "val_roc_auc"  # read from metrics/<stage>.json; per epoch from dvclive's val/roc_auc


class SearchError(ValueError):
    """The search section or a trial's outputs are not what the search expects."""


@dataclass(frozen=True)
class Dimension:
    """One searched params key: a numeric range or a list of choices."""

    key: str
    kind: type  # int or float: the type of the params key it sets; object for choices
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def key_annotation(key: str) -> Any:
    """The schema type of a dotted params key such as ``kd.alpha``; an unknown key is an error."""
    section, _, field = key.partition(".")
    if section not in config.SECTIONS or not field:
        raise SearchError(
            f"search key '{key}' is not 'section.key' with a known section "
            f"({', '.join(config.SECTIONS)})"
        )
    hints = typing.get_type_hints(config.SECTIONS[section])
    if field not in hints:
        raise SearchError(
            f"search key '{key}': '{section}' has no key '{field}'; it accepts {', '.join(hints)}"
        )
    return hints[field]


def parse_space(space: dict[str, dict]) -> list[Dimension]:
    """Check ``search.space`` entries against the params schema and build dimensions."""
    if not space:
        raise SearchError("search.space is empty: name at least one params key to search")
    dims = []
    for key, spec in space.items():
        annotation = key_annotation(key)
        if set(spec) == {"choices"}:
            choices = spec["choices"]
            bad = [c for c in choices if not config.value_matches(c, annotation)]
            if not choices or bad:
                raise SearchError(
                    f"search.space.{key}.choices must be a non-empty list of {annotation}, "
                    f"got {choices}"
                )
            dims.append(Dimension(key, object, choices=tuple(choices)))
            continue
        if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
            raise SearchError(
                f"search.space.{key} must be {{low, high[, log]}} or {{choices}}, got {spec}"
            )
        if annotation not in (int, float):
            raise SearchError(
                f"search.space.{key}: a range needs a numeric key, '{key}' is {annotation}"
            )
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if (
            isinstance(low, bool | list)
            or isinstance(high, bool | list)
            or not isinstance(log, bool)
        ):
            raise SearchError(f"search.space.{key}: low/high must be numbers and log a boolean")
        if not low < high or (log and low <= 0):
            raise SearchError(
                f"search.space.{key}: need low < high (and low > 0 with log), got {spec}"
            )
        if annotation is int and not (float(low).is_integer() and float(high).is_integer()):
            raise SearchError(f"search.space.{key} is an integer key; low/high must be integers")
        dims.append(Dimension(key, annotation, float(low), float(high), log))
    return dims


def check_fixed(fixed: dict[str, Any]) -> None:
    """Every ``search.fixed`` key must exist in the schema and its value have the right type."""
    for key, value in fixed.items():
        annotation = key_annotation(key)
        if not config.value_matches(value, annotation):
            raise SearchError(
                f"search.fixed.{key} = {value!r} has the wrong type; expected {annotation}"
            )


def overrides(values: dict[str, Any]) -> list[str]:
    """``dvc exp run`` arguments setting each params key (YAML literals, floats exact)."""
    args = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        args += ["-S", f"{key}={text}"]
    return args


def read_curve(path: Path) -> list[tuple[int, float]]:
    """Per-epoch ``(step, value)`` rows of a dvclive metric TSV, ignoring a partial last line.

    dvclive writes a header (``step``, the metric, and ``timestamp`` in some versions) and one
    row per step; the value is the column named after the file.
    """
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if not lines:
        return []
    if not text.endswith("\n"):
        lines = lines[:-1]  # still being written
    header = lines[0].split("\t")
    if "step" not in header or path.stem not in header:
        raise SearchError(f"{path}: expected columns 'step' and '{path.stem}', got {header}")
    step_at, value_at = header.index("step"), header.index(path.stem)
    rows = []
    for line in lines[1:]:
        parts = line.split("\t")
        with contextlib.suppress(ValueError, IndexError):
            rows.append((int(parts[step_at]), float(parts[value_at])))
    return rows


def curve_path(stage: str) -> Path:
    """Where the training stage's dvclive writes the per-epoch val ROC-AUC."""
    return Path("plots") / stage / "plots" / "metrics" / "val" / "roc_auc.tsv"


def run_monitored(
    command: list[str],
    curve: Path,
    report: Callable[[int, float], bool],
    poll_seconds: float = 2.0,
    log: Path | None = None,
) -> bool:
    """Run ``command``, passing each new epoch of ``curve`` to ``report``.

    ``report(step, value)`` returns True to prune: the whole process group is interrupted
    (SIGINT, so DVC releases its locks), then terminated if it does not stop.

    Returns:
        True if the command finished, False if it was pruned.

    Raises:
        SearchError: the command failed (with the tail of its output).
    """
    seen = -1
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A search started with nohup or `&` passes SIGINT ignored to its children; the
            # trial must get it so DVC can stop cleanly when pruned.
            preexec_fn=_default_sigint,
        )
        while True:
            finished = proc.poll() is not None
            for step, value in read_curve(curve):
                if step > seen:
                    seen = step
                    if report(step, value) and not finished:
                        _stop(proc)
                        return False
            if finished:
                break
            time.sleep(poll_seconds)
    finally:
        if log:
            out.close()
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log else ""
        raise SearchError(f"{' '.join(command)} failed with exit code {proc.returncode}\n{tail}")
    return True


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _files(dirs: tuple[str, ...]) -> list[Path]:
    return [f for d in dirs for f in Path(d).rglob("*") if f.is_file()]


@contextlib.contextmanager
def restored_workspace(dirs: tuple[str, ...] = ("metrics", "plots")) -> Iterator[None]:
    """Put the workspace back as it was after a workspace experiment.

    params.yaml, dvc.lock and every file under ``dirs`` (the stages' ``cache: false`` metrics
    and plots, which DVC cannot restore from its cache) get their previous content back, files
    the experiment added there are removed, and ``dvc checkout`` restores the cached outputs.
    """
    files = [Path("params.yaml"), Path("dvc.lock"), *_files(dirs)]
    saved = {f: f.read_bytes() for f in files if f.exists()}
    try:
        yield
    finally:
        for f in _files(dirs):
            if f not in saved:
                f.unlink()
        for f, content in saved.items():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
        subprocess.run(["dvc", "checkout", "--quiet", "--force"], check=False)


def storage_url(storage: str) -> str:
    """The study's storage: the configured URL, or a SQLite file under ``data/search/``."""
    if storage:
        return storage
    DEFAULT_STORAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORAGE_FILE}"


def make_study(params: config.SearchParams, storage: str | None = None) -> optuna.Study:
    """Create or join the study named in params (TPE sampler, median pruner)."""
    return optuna.create_study(
        study_name=params.study_name,
        storage=storage_url(params.storage if storage is None else storage),
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=params.pruner_startup_trials,
            n_warmup_steps=params.pruner_warmup_epochs,
        ),
        direction="maximize",
        load_if_exists=True,
    )


def experiment_name(study_name: str, number: int) -> str:
    return f"{study_name}-trial-{number}"


def incumbent(dims: list[Dimension], params_file: str | Path) -> dict[str, Any] | None:
    """The searched keys' current params.yaml values, or None if one lies outside the space.

    A new study runs them first, so the reduced schedule has the default recipe as a yardstick.
    """
    keys = [d.key.partition(".") for d in dims]
    sections = {section: config.load(section, params_file) for section, _, _ in keys}
    values = {}
    for d, (section, _, field) in zip(dims, keys, strict=True):
        value = getattr(sections[section], field)
        inside = value in d.choices if d.choices is not None else d.low <= value <= d.high
        if not inside:
            return None
        values[d.key] = value
    return values


def full_schedule_command(params: config.SearchParams, values: dict[str, Any]) -> list[str]:
    """``dvc exp run`` of a trial's parameters without ``search.fixed``: the full schedule."""
    name = f"{params.study_name}-best"
    return ["dvc", "exp", "run", params.stage, "-n", name, *overrides(values)]


def objective(
    params: config.SearchParams, dims: list[Dimension], logs: Path, poll_seconds: float = 2.0
) -> Callable:
    """The Optuna objective: one ``dvc exp run`` per trial, val ROC-AUC read back."""
    metrics_file = Path("metrics") / f"{params.stage}.json"

    def run(trial: optuna.Trial) -> float:
        values = {d.key: d.suggest(trial) for d in dims}
        name = experiment_name(params.study_name, trial.number)
        trial.set_user_attr("experiment", name)
        command = ["dvc", "exp", "run", params.stage, "-n", name]
        command += overrides(params.fixed | values)

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        with restored_workspace():
            curve_path(params.stage).unlink(missing_ok=True)
            finished = run_monitored(
                command, curve_path(params.stage), report, poll_seconds, logs / f"{name}.log"
            )
            if not finished:
                raise optuna.TrialPruned(f"{name} pruned by the median rule")
            result = json.loads(metrics_file.read_text())
        if OBJECTIVE not in result:
            raise SearchError(f"{metrics_file} has no '{OBJECTIVE}' after {name}")
        return float(result[OBJECTIVE])

    return run


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, experiment name, val ROC-AUC, parameters, seconds."""
    rows = []
    for t in study.trials:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else math.nan
        )
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "experiment": t.user_attrs.get("experiment", ""),
                OBJECTIVE: t.value,
                "epochs_reported": len(t.intermediate_values),
                **t.params,
                "seconds": round(seconds, 1),
            }
        )
    return pd.DataFrame(rows)


def write_report(study: optuna.Study, out: Path) -> None:
    """Trials table (CSV) and Optuna's history/importance plots as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    artifacts.write_csv(out / "trials.csv", table)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"history.png": optuna.visualization.matplotlib.plot_optimization_history}
    if len(complete) >= 2:
        plots["importance.png"] = optuna.visualization.matplotlib.plot_param_importances
    for filename, plot in plots.items():
        with _quiet_experimental():
            ax = plot(study)
        loc = "left" if ax.get_title(loc="left") else "center"  # Optuna titles either way
        ax.set_title(f"{ax.get_title(loc=loc)}: study '{study.study_name}'", loc=loc)
        fig = ax.figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        with artifacts.atomic_path(out / filename) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_lib.search", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--trials", type=int, help="trials to run now (default: search.trials)")
    parser.add_argument("--storage", help="Optuna storage URL (default: search.storage)")
    parser.add_argument("--out", default="plots/search", help="trials table and plots")
    args = parser.parse_args(argv)
    try:
        params = config.load("search", args.params)
        dims = parse_space(params.space)
        check_fixed(params.fixed)
        study = make_study(params, args.storage)
    except (config.ParamsError, SearchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_trials = params.trials if args.trials is None else args.trials
    if n_trials and not study.trials:
        current = incumbent(dims, args.params)
        if current is None:
            print("the current params lie outside search.space: no default trial", file=sys.stderr)
        else:  # a machine that finds it already queued in a new study does not queue it again
            study.enqueue_trial(current, user_attrs={"incumbent": True}, skip_if_exists=True)
    logs = Path(".dvc/tmp/search")
    logs.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study.optimize(objective(params, dims, logs), n_trials=n_trials, catch=(SearchError,))
    write_report(study, Path(args.out))
    print(trials_table(study).to_string(index=False))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print("no trial finished; see the logs under .dvc/tmp/search/", file=sys.stderr)
        return 1
    best = study.best_trial
    print(f"\nbest: trial {best.number}, {OBJECTIVE} = {best.value:.4f}, params {best.params}")
    print(f"promote it with:  dvc exp apply {best.user_attrs['experiment']}")
    rerun = " ".join(full_schedule_command(params, best.params))
    print(f"or re-run it on the full schedule:  {rerun}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
