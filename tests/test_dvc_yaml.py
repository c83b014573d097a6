"""dvc.yaml stays honest: each stage depends on exactly the library modules its script imports."""

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _imports(path: Path) -> set[str]:
    """pipeline_lib modules imported by ``path``, directly or transitively."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "pipeline_lib":
                    names = [f"pipeline_lib.{a.name}" for a in node.names]
                elif node.module.startswith("pipeline_lib."):
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pipeline_lib.")]
            for name in names:
                if name not in seen:
                    seen.add(name)
                    todo.append(REPO / (name.replace(".", "/") + ".py"))
    return {f"{n.replace('.', '/')}.py" for n in seen}


def _definition(name: str) -> dict:
    """A stage's definition; a ``foreach`` stage's is its ``do`` template."""
    stage = DVC["stages"][name]
    return stage.get("do", stage)


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_deps_list_the_modules_it_imports(name):
    stage = _definition(name)
    script = f"stages/{name}.py"
    assert script in stage["cmd"], f"stage {name} must run {script}"
    assert script in stage["deps"]
    listed = {d for d in stage["deps"] if d.startswith("pipeline_lib/")}
    assert listed == _imports(REPO / script), f"fix the deps of stage {name} in dvc.yaml"


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_stage_metrics_are_named_after_the_stage(name):
    for entry in DVC["stages"][name].get("metrics", []):
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        assert path in (f"metrics/{name}.json", "data/split/split_metadata.json")


def _pretrained_files() -> list[tuple[str, str]]:
    """(stage, file) for every ``pretrained:`` in params.yaml that names a file."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    settings = [("distill", params["distill"]["pretrained"])]
    for overrides in params["teachers"].values():
        value = overrides.get("pretrained", params["train_teacher"]["pretrained"])
        settings.append(("train_teacher", value))
    return [(s, v) for s, v in settings if isinstance(v, str) and v not in ("imagenet", "false")]


def test_a_pretrained_file_in_params_is_a_dependency_of_its_stage():
    # A stage started from a file (e.g. a teacher member's checkpoint) must re-run when that
    # file changes: the file, or a folder above it, is among the stage's deps.
    for stage, path in _pretrained_files():
        deps = _definition(stage)["deps"]
        assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps), (
            f"stage {stage} starts from {path}: list it (or its folder) in its deps in dvc.yaml"
        )
