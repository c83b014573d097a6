"""The reference-study grid: each row's `dvc exp run`, and the val tables built from
`dvc exp show --csv`."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline_lib import config, studies
from pipeline_lib.data import MELANOMA_INDEX


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
        sections = set()
        for key, value in study.rows[row].items():
            if key.startswith("~"):  # dvc's "remove a key": a teacher member
                section, member = key[1:].split(".")
                assert section == "teachers" and member in params["teachers"], f"{row}: {key}"
                assert value is None, f"{row}: {key} removes a key and takes no value"
                del changed[section][member]
            elif key.startswith("+"):  # dvc's "add a key": a new member or a key of one member
                section, member, *name = key[1:].split(".")
                assert section == "teachers", f"{row}: {key}"
                if name:
                    assert name[0] not in params["teachers"][member], f"{row}: {key} exists"
                    assert name[0] in params["train_teacher"], f"{row}: {key}: no such key"
                    changed[section][member][name[0]] = value
                else:
                    assert member not in params["teachers"], f"{row}: member {member} exists"
                    assert set(value) <= set(params["train_teacher"]), f"{row}: {value}"
                    changed[section][member] = value
            else:
                assert key in known, f"{row}: {key} is not a params.yaml key"
                section, name = key.split(".")
                changed[section][name] = value
            sections.add(section)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(changed))
        for section in sections:
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
            "Experiment": [None, "kd-T1-a0.9", "kd-alpha0", "other", "student-mnv3"],
            "rev": ["workspace", "abc", "def", "ghi", "jkl"],
            "kd.temperature": [2.0, 1.0, 2.0, 2.0, 2.0],
            "kd.alpha": [0.5, 0.9, 0.0, 0.5, 0.5],
            "metrics/distill.json:val_roc_auc": [0.9016, 0.8951, 0.8882, 0.5, 0.8822],
            "metrics/distill.json:train_seconds": [1092.3, 1200.0, 816.0, 1.0, 1752.0],
            "metrics/distill.json:best_epoch": [6, 5, 6, 1, 13],
            # dvc drops the file prefix of a metric no other file has; a distill-only row
            # carries the committed run's int8 figure unchanged
            "int8_pte.val_roc_auc": [0.897, 0.897, 0.897, 0.5, 0.878],
        }
    )
    text = studies.report(table)
    kd = text[text.index("## kd_grid") :].split("## ")[1]
    assert "| `workspace` | 2.0 | 0.5 | 0.902 | - | - | 6 | 18.2 |\n" in kd
    assert "| `kd-T1-a0.9` | 1.0 | 0.9 | 0.895 | - | - | 5 | 20.0 |\n" in kd
    assert "`kd-alpha0`" in kd and "`other`" not in text and "int8" not in kd
    students = text[text.index("## students") :].split("## ")[1]
    assert "| `workspace` | - | 2.0 | - | 0.902 | - | - | 6 | 18.2 | 0.897 | - | - |" in students
    assert (
        "| `student-mnv3` | - | 2.0 | - | 0.882 | - | - | 13 | 29.2 | 0.878 | - | - |" in students
    )
    assert "## imbalance" in text and "No row has run yet." in text


def test_teacher_rows_are_tabled_with_the_member_and_teacher_figures():
    table = pd.DataFrame(
        {
            "Experiment": [None, "teacher-lite0-focal2"],
            "rev": ["workspace", "abc"],
            "teachers.lite0.loss": [None, "focal"],
            "metrics/train_teacher/lite0.json:val_roc_auc": [0.893, 0.899],
            "metrics/distill.json:val_roc_auc": [0.902, 0.902],  # the student: not retrained
            "metrics/teacher.json:val_roc_auc": [0.9054, 0.9071],
            "val_ece_after": [0.0194, 0.0215],  # only calibrate has it: dvc drops the file
            "metrics/train_teacher/lite0.json:train_seconds": [738.0, 750.0],
        }
    )
    part = studies.report(table).split("## teacher_imbalance")[1].split("## ")[0]
    header = next(line for line in part.splitlines() if line.startswith("| experiment"))
    assert "| member val ROC-AUC |" in header and "| val PR-AUC |" not in header
    assert "| `workspace` | - | - | - | 0.893 | - | - | - | 0.905 | - | 0.019 | 12.3 |" in part
    assert (
        "| `teacher-lite0-focal2` | - | focal | - | 0.899 | - | - | - | 0.907 | - | 0.021 | 12.5 |"
        in part
    )


def test_a_row_that_adds_a_member_is_one_dvc_override_and_tables_that_member():
    study = studies.STUDIES["teacher_architectures"]
    run = studies.command("teacher-plus-lite2", study, queue=False)
    assert run[:6] == ["dvc", "exp", "run", "calibrate", "-n", "teacher-plus-lite2"]
    override = run[run.index("-S") + 1]  # one shell word: no spaces inside the Hydra dict
    assert override == (
        "+teachers.lite2={arch:tf_efficientnet_lite2,pretrained:imagenet,epochs:6,lr:0.001}"
    )
    table = pd.DataFrame(
        {
            "Experiment": [None, "teacher-plus-lite2"],
            "rev": ["workspace", "abc"],
            "metrics/train_teacher/lite2.json:val_roc_auc": [None, 0.9012],
            "metrics/train_teacher/lite0.json:val_roc_auc": [0.893, 0.893],
            "metrics/teacher.json:val_roc_auc": [0.9054, 0.9123],
        }
    )
    part = studies.report(table).split("## teacher_architectures")[1].split("## ")[0]
    assert "| `workspace` | - | - | - | - | 0.905 | - | - | - |" in part  # it adds no member
    assert "| `teacher-plus-lite2` | 0.901 | - | - | - | 0.912 | - | - | - |" in part


def test_unknown_study_is_named():
    with pytest.raises(SystemExit, match="unknown study nope"):
        studies.rows(["nope"])


def test_teacher_members_combine_in_probability():
    """Each member alone, their mean p(mel), and the mean with a non-network member, by hand."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)
    a, b = rng.normal(size=(40, 7)), rng.normal(size=(40, 7))
    other = rng.uniform(size=40)

    def p_mel(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[:, MELANOMA_INDEX]

    table = studies.teacher_members({"a": a, "b": b}, "dx", y, {"hgb": other}).set_index("teacher")
    assert list(table.index) == ["a", "b", "a + b", "a + b + hgb"]
    mean = (p_mel(a) + p_mel(b)) / 2
    assert table.loc["a", "val ROC-AUC"] == pytest.approx(roc_auc_score(y, p_mel(a)))
    assert table.loc["a + b", "val ROC-AUC"] == pytest.approx(roc_auc_score(y, mean))
    three = (p_mel(a) + p_mel(b) + other) / 3
    assert table.loc["a + b + hgb", "val ROC-AUC"] == pytest.approx(roc_auc_score(y, three))


def test_class_figures_against_scikit_learn():
    """The DSNet table: each class's one-vs-rest accuracy, precision, recall and F1."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from pipeline_lib.data import DX_CODES

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 7, 300)
    logits = rng.normal(size=(300, 7))
    logits[np.arange(150), truth[:150]] += 3.0
    table = studies.class_figures(np.array(DX_CODES)[truth], logits).set_index("class")
    pred = logits.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, pred, labels=range(7))
    for i, code in enumerate(DX_CODES):
        row = table.loc[code]
        assert row["accuracy"] == pytest.approx(accuracy_score(truth == i, pred == i))
        assert (row["precision"], row["recall"], row["F1"]) == pytest.approx(
            (precision[i], recall[i], f1[i])
        )
        assert row["images"] == (truth == i).sum()


def test_students_plot_draws_each_row_with_both_figures(tmp_path):
    table = pd.DataFrame(
        {
            "Experiment": [None, "dsnet-T10", "student-mnv3", "eee4709-mnv2"],
            "rev": ["workspace", "a", "b", "c"],
            "int8_pte.val_roc_auc": [0.897, 0.882, 0.878, 0.87],
            "int8_pte.size_mb": [3.67, 0.28, 1.73, 2.5],
            "models.student_executorch_int8.latency_ms.1.median": [2.4, 0.86, 0.69, None],
        }
    )
    assert studies.students_plot(table, tmp_path / "s.png") == 3  # mnv2 has no latency
    assert (tmp_path / "s.png").stat().st_size > 0


def test_label_groups_give_a_sweep_one_label_and_keep_distinct_points_apart():
    points = [
        ("workspace", 2.40, 0.897),
        ("dsnet-T1", 0.85, 0.884),
        ("mnv2", 1.19, 0.883),
        ("dsnet-T10", 0.86, 0.882),  # within 0.1 ms and 0.006 of dsnet-T1
        ("dsnet-T50", 0.85, 0.887),
        ("far", 0.85, 0.870),  # same latency, beyond the spread
        ("near-baseline", 2.40, 0.896),  # never joins the committed student
    ]
    groups = studies.label_groups(points, "workspace")
    assert [names for _, _, names in groups] == [
        ["workspace"],
        ["dsnet-T1", "dsnet-T10", "dsnet-T50"],
        ["mnv2"],
        ["far"],
        ["near-baseline"],
    ]
    assert groups[1][:2] == (0.85, 0.887)  # labelled at the group's highest point


def test_temperature_plot_draws_each_finished_row_of_the_sweep(tmp_path, monkeypatch):
    from pipeline_lib import plotting

    table = pd.DataFrame(
        {
            "Experiment": [None, "dsnet-T10", "dsnet-T1", "dsnet-T50", "student-mnv3"],
            "rev": ["workspace", "a", "b", "c", "d"],
            "kd.temperature": [2.0, 10.0, 1.0, 50.0, 2.0],
            "metrics/distill.json:val_roc_auc": [0.901, 0.883, 0.870, None, 0.882],
            "int8_pte.val_roc_auc": [0.897, 0.882, None, None, 0.878],
        }
    )
    drawn = {}
    original = plotting.plt.Axes.plot

    def spy(ax, x, y, *args, **kwargs):
        drawn[kwargs.get("label")] = (list(x), list(y))
        return original(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(plotting.plt.Axes, "plot", spy)
    # dsnet-T50 has not finished; the committed run and student-mnv3 are not sweep rows
    assert studies.temperature_plot(table, tmp_path / "t.png") == 2
    assert drawn["float"] == ([1.0, 10.0], [0.870, 0.883])
    assert drawn["int8 .pte"] == ([10.0], [0.882])
    assert (tmp_path / "t.png").stat().st_size > 0


def test_imbalance_rows_show_where_the_operating_point_went():
    table = pd.DataFrame(
        {
            "Experiment": [None, "student-posweight8"],
            "rev": ["workspace", "abc"],
            "distill.pos_weight": [1.0, 8.0],
            "distill.seed": [0, 0],
            "metrics/distill.json:val_roc_auc": [0.901, 0.910],
            "metrics/distill.json:val_threshold": [0.054, 0.112],
            "metrics/distill.json:val_specificity": [0.627, 0.656],
        }
    )
    part = studies.report(table).split("## imbalance")[1].split("## ")[0]
    assert "| threshold (95% sens.) | specificity (95% sens.) |" in part
    assert "| `student-posweight8` | - | 8.0 | - | 0 | 0.910 |" in part
    assert "| 0.054 | 0.627 |" in part and "| 0.112 | 0.656 |" in part


def test_kd_grid_plot_draws_every_cell_with_a_val_figure(tmp_path):
    table = pd.DataFrame(
        {
            "Experiment": [None, "kd-alpha0", "kd-T1-a0.5", "kd-T2-a0.9", "kd-T1-a0.9", "other"],
            "rev": ["workspace", "a", "b", "c", "d", "e"],
            "kd.temperature": [2.0, 2.0, 1.0, 2.0, 1.0, 5.0],
            "kd.alpha": [0.5, 0.0, 0.5, 0.9, 0.9, 0.5],
            "metrics/distill.json:val_roc_auc": [0.901, 0.888, 0.899, 0.901, None, 0.5],
            "metrics/distill.json:val_ece": [0.018, 0.02, 0.019, 0.030, None, 0.1],
        }
    )
    # kd-T1-a0.9 has not finished (no figure) and `other` is not a grid row
    assert studies.kd_grid_plot(table, tmp_path / "kd.png") == 4
    assert (tmp_path / "kd.png").stat().st_size > 0


def test_a_row_that_removes_a_member_is_a_bare_removal_override():
    study = studies.STUDIES["students"]
    run = studies.command("eee4709-mnv2-single", study, queue=False)
    assert run[run.index("~teachers.resnet18") - 1] == "-S"
    assert "kd.temperature=50.0" in run and "distill.arch=mobilenetv2_100" in run
