"""The reference-study grid: each row's `dvc exp run`, and the val tables built from
`dvc exp show --csv`."""

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline_lib import config, studies


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "teachers":
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_row_overrides_existing_params_with_values_of_their_type(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    known = _flatten(params)
    for _, row, study in studies.rows():
        changed = yaml.safe_load((REPO / "params.yaml").read_text())
        for key, value in study.rows[row].items():
            assert key in known, f"{row}: {key} is not a params.yaml key"
            section, name = key.split(".")
            changed[section][name] = value
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(changed))
        for section in {k.split(".")[0] for k in study.rows[row]}:
            config.load(section, path)  # a wrong type or value fails here, naming the key


def test_command_is_the_documented_dvc_exp_run():
    study = studies.STUDIES["kd_grid"]
    assert studies.command("kd-T1-a0.9", study) == [
        "dvc", "exp", "run", "--queue", "distill", "-n", "kd-T1-a0.9",
        "-S", "kd.temperature=1.0", "-S", "kd.alpha=0.9",
    ]  # fmt: skip
    run = studies.command("student-mnv3", studies.STUDIES["students"], queue=False)
    assert run[:6] == ["dvc", "exp", "run", "benchmark", "-n", "student-mnv3"]
    assert "distill.pretrained=false" in run and "distill.arch=mobilenetv3_small_100" in run
    assert len(studies.STUDIES["kd_grid"].rows) == 9  # T in {1, 2} x 4 alphas, plus alpha = 0
    queued = studies.command("kd-alpha0", study, data_root="/abs/ham")
    at = queued.index("data.root=/abs/ham")  # a queued copy cannot resolve ../shared
    assert queued[at - 1] == "-S" and queued[3] == "--queue"


def test_report_tables_each_study_beside_the_committed_run():
    table = pd.DataFrame(
        {
            "Experiment": [None, "kd-T1-a0.9", "kd-alpha0", "other"],
            "rev": ["workspace", "abc", "def", "ghi"],
            "kd.temperature": [2.0, 1.0, 2.0, 2.0],
            "kd.alpha": [0.5, 0.9, 0.0, 0.5],
            "metrics/distill.json:val_roc_auc": [0.9016, 0.8951, 0.8882, 0.5],
            "metrics/distill.json:train_seconds": [1092.3, 1200.0, 816.0, 1.0],
            "metrics/distill.json:best_epoch": [6, 5, 6, 1],
        }
    )
    text = studies.report(table)
    kd = text[text.index("## kd_grid") :].split("## ")[1]
    assert "| `workspace` | 2.0 | 0.5 | 0.902 | - | - | 6 | 18.2 | - |" in kd
    assert "| `kd-T1-a0.9` | 1.0 | 0.9 | 0.895 | - | - | 5 | 20.0 | - |" in kd
    assert "`kd-alpha0`" in kd and "`other`" not in text
    assert "## imbalance" in text and "No row has run yet." in text


def test_unknown_study_is_named():
    with pytest.raises(SystemExit, match="unknown study nope"):
        studies.rows(["nope"])
