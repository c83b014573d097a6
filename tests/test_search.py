"""The Optuna search: space checking, trial commands, pruning wired to the per-epoch curve."""

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline_lib import config, search

PARAMS = config.SearchParams(
    stage="distill",
    trials=3,
    seed=0,
    storage="",
    study_name="t",
    pruner_startup_trials=1,
    pruner_warmup_epochs=1,
    fixed={"distill.epochs": 3},
    space={"kd.alpha": {"choices": [0.9, 0.1]}},
)

# Stands in for `dvc`: `exp run` writes a dvclive curve of constant kd.alpha for 3 epochs
# (a pause between epochs) and the stage's metrics; `checkout` does nothing.
FAKE_DVC = r"""#!{python}
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
if args[:2] != ["exp", "run"]:
    sys.exit(0)
Path("calls.txt").open("a").write(" ".join(args) + "\n")
values = dict(a.split("=", 1) for a in args if "=" in a)
alpha = float(values["kd.alpha"])
curve = Path("plots/distill/plots/metrics/val/roc_auc.tsv")
curve.parent.mkdir(parents=True, exist_ok=True)
curve.write_text("step\troc_auc\n")
for step in range(int(values["distill.epochs"])):
    with curve.open("a") as f:
        f.write(f"{{step}}\t{{alpha}}\n")
    time.sleep(0.6)
Path("metrics").mkdir(exist_ok=True)
Path("metrics/distill.json").write_text(json.dumps({{"val_roc_auc": alpha}}))
Path("params.yaml").write_text("changed by the experiment")
"""


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """FAKE_DVC first on PATH as `dvc`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dvc"
    fake.write_text(FAKE_DVC.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_parse_space_builds_typed_dimensions():
    dims = search.parse_space(
        {
            "kd.alpha": {"low": 0.0, "high": 1.0},
            "distill.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "distill.batch_size": {"choices": [32, 64]},
            "distill.epochs": {"low": 1, "high": 4},
        }
    )
    kinds = {d.key: (d.kind, d.log, d.choices) for d in dims}
    assert kinds == {
        "kd.alpha": (float, False, None),
        "distill.lr": (float, True, None),
        "distill.batch_size": (object, False, (32, 64)),
        "distill.epochs": (int, False, None),
    }
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = {d.key: d.suggest(trial) for d in dims}
    assert 0.0 <= values["kd.alpha"] <= 1.0 and 1e-4 <= values["distill.lr"] <= 1e-2
    assert values["distill.batch_size"] in (32, 64) and isinstance(values["distill.epochs"], int)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"kd.alpah": {"low": 0.0, "high": 1.0}}, "'kd' has no key 'alpah'"),
        ({"kdd.alpha": {"low": 0.0, "high": 1.0}}, "known section"),
        ({"kd.alpha": {"low": 1.0, "high": 0.5}}, "low < high"),
        ({"distill.lr": {"low": 0.0, "high": 0.1, "log": True}}, "low > 0 with log"),
        ({"kd.alpha": {"low": 0.0}}, "{low, high[, log]} or {choices}"),
        ({"distill.batch_size": {"choices": ["big"]}}, "search.space.distill.batch_size.choices"),
        ({"distill.epochs": {"low": 1, "high": 2.5}}, "integer key"),
        ({"distill.arch": {"low": 1, "high": 2}}, "numeric key"),
        ({}, "empty"),
    ],
)
def test_parse_space_rejects_bad_entries_by_name(space, message):
    with pytest.raises(search.SearchError, match=re.escape(message)):
        search.parse_space(space)


def test_check_fixed_names_a_mistyped_value():
    search.check_fixed({"distill.epochs": 2, "kd.use_calibrated_teacher": False})
    with pytest.raises(search.SearchError, match="search.fixed.distill.epochs"):
        search.check_fixed({"distill.epochs": "two"})


def test_overrides_are_exact_yaml_literals():
    assert search.overrides({"kd.alpha": 0.1 + 0.2, "distill.batch_size": 64, "x.y": True}) == [
        "-S",
        "kd.alpha=0.30000000000000004",
        "-S",
        "distill.batch_size=64",
        "-S",
        "x.y=true",
    ]


def test_incumbent_reads_the_searched_keys_from_params():
    params_file = Path(__file__).parents[1] / "params.yaml"
    tree = yaml.safe_load(params_file.read_text())
    dims = search.parse_space(
        {"kd.alpha": {"low": 0.0, "high": 1.0}, "distill.batch_size": {"choices": [16, 64]}}
    )
    assert search.incumbent(dims, params_file) == {
        "kd.alpha": tree["kd"]["alpha"],
        "distill.batch_size": tree["distill"]["batch_size"],
    }
    outside = search.parse_space({"kd.alpha": {"low": 0.9, "high": 1.0}})
    assert tree["kd"]["alpha"] < 0.9 and search.incumbent(outside, params_file) is None


def test_a_new_study_runs_the_current_params_first(tmp_path, monkeypatch, capsys, fake_dvc):
    params_file = Path(__file__).parents[1] / "params.yaml"
    tree = yaml.safe_load(params_file.read_text())
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["--params", str(params_file), "--trials", "1", "--storage", storage, "--out", "out"]
    assert search.main(argv) == 0
    (trial,) = optuna.load_study(study_name=tree["search"]["study_name"], storage=storage).trials
    assert trial.user_attrs["incumbent"] is True
    assert trial.params == {
        key: tree[key.split(".")[0]][key.split(".")[1]] for key in tree["search"]["space"]
    }
    assert f"{tree['search']['study_name']}-best" in capsys.readouterr().out


def test_full_schedule_command_drops_the_fixed_reduced_schedule():
    command = search.full_schedule_command(PARAMS, {"kd.alpha": 0.25, "distill.batch_size": 32})
    assert command == [
        "dvc", "exp", "run", "distill", "-n", "t-best",
        "-S", "kd.alpha=0.25", "-S", "distill.batch_size=32",
    ]  # fmt: skip
    assert "distill.epochs=3" not in command  # search.fixed is the trials' schedule only


def test_read_curve_skips_header_and_a_line_still_being_written(tmp_path):
    path = tmp_path / "roc_auc.tsv"
    assert search.read_curve(path) == []
    path.write_text("step\troc_auc\n0\t0.61\n1\t0.7")  # dvclive 3.49's layout
    assert search.read_curve(path) == [(0, 0.61)]
    path.write_text("timestamp\tstep\troc_auc\n1\t0\t0.61\n2\t1\t0.7\n")
    assert search.read_curve(path) == [(0, 0.61), (1, 0.7)]
    path.write_text("step\tpr_auc\n0\t0.5\n")
    with pytest.raises(search.SearchError, match="expected columns 'step' and 'roc_auc'"):
        search.read_curve(path)


def _fake_trainer(tmp_path: Path, epochs: int, pause: float) -> list[str]:
    script = tmp_path / "trainer.py"
    script.write_text(
        "import sys, time\n"
        f"for step in range({epochs}):\n"
        f"    open({str(tmp_path / 'roc_auc.tsv')!r}, 'a').write(f'{{step}}\\t0.5\\n')\n"
        f"    time.sleep({pause})\n"
    )
    (tmp_path / "roc_auc.tsv").write_text("step\troc_auc\n")
    return [sys.executable, str(script)]


def test_run_monitored_reports_every_epoch_when_not_pruned(tmp_path):
    seen = []

    def report(step: int, value: float) -> bool:
        seen.append((step, value))
        return False  # never prune

    finished = search.run_monitored(
        _fake_trainer(tmp_path, 3, 0.05), tmp_path / "roc_auc.tsv", report, poll_seconds=0.02
    )
    assert finished
    assert seen == [(0, 0.5), (1, 0.5), (2, 0.5)]  # every epoch, once, in order


def test_run_monitored_stops_the_process_when_told_to_prune(tmp_path):
    start = time.monotonic()
    finished = search.run_monitored(
        _fake_trainer(tmp_path, 200, 0.1), tmp_path / "roc_auc.tsv", lambda s, v: s >= 1, 0.02
    )
    assert not finished
    assert time.monotonic() - start < 10  # 200 epochs would take 20 s
    steps = len(search.read_curve(tmp_path / "roc_auc.tsv"))
    time.sleep(0.3)
    assert len(search.read_curve(tmp_path / "roc_auc.tsv")) == steps  # nothing is writing any more


def test_run_monitored_raises_with_the_output_of_a_failed_command(tmp_path):
    command = [sys.executable, "-c", "import sys; print('boom: bad key'); sys.exit(3)"]
    with pytest.raises(search.SearchError, match="(?s)exit code 3.*boom: bad key"):
        search.run_monitored(
            command, tmp_path / "none.tsv", lambda s, v: False, 0.02, tmp_path / "l"
        )


def test_objective_runs_one_experiment_per_trial_and_prunes_a_worse_one(
    tmp_path, monkeypatch, fake_dvc
):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("original")
    study = search.make_study(PARAMS, storage="sqlite:///study.db")
    study.enqueue_trial({"kd.alpha": 0.9})
    study.enqueue_trial({"kd.alpha": 0.1})
    dims = search.parse_space(PARAMS.space)
    study.optimize(search.objective(PARAMS, dims, tmp_path, poll_seconds=0.05), n_trials=2)

    first, second = study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == pytest.approx(0.9)
    assert first.intermediate_values == {0: 0.9, 1: 0.9, 2: 0.9}
    assert second.state == optuna.trial.TrialState.PRUNED
    assert max(second.intermediate_values) == 1  # stopped at the first epoch past warm-up
    calls = Path("calls.txt").read_text().splitlines()
    assert calls[0].split() == [
        "exp", "run", "distill", "-n", "t-trial-0", "-S", "distill.epochs=3", "-S", "kd.alpha=0.9",
    ]  # fmt: skip
    assert len(calls) == 2
    assert Path("params.yaml").read_text() == "original"  # the workspace is put back
    search.write_report(study, tmp_path / "report")
    table = (tmp_path / "report" / "trials.csv").read_text()
    assert "t-trial-0" in table and "PRUNED" in table
    assert (tmp_path / "report" / "history.png").stat().st_size > 0


JOIN = """
import sys
import optuna
from pipeline_lib import config, search
params = config.SearchParams("distill", 3, int(sys.argv[2]), "", "shared", 1, 1, {{}}, {{}})
study = search.make_study(params, storage=sys.argv[1])
study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
"""


def test_two_processes_join_one_local_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    search.make_study(  # created once, as the first machine would
        config.SearchParams("distill", 3, 0, "", "shared", 1, 1, {}, {}), storage=storage
    )
    env = os.environ | {"PYTHONPATH": str(Path(search.__file__).parents[1])}
    procs = [
        subprocess.Popen([sys.executable, "-c", JOIN.format(), storage, str(seed)], env=env)
        for seed in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == 6
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
