"""The project's own files agree with each other (pins, MLproject, ignores)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from tests.helpers import ROOT


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]+\])?==([^;\s]+)", d)
        assert m, f"dependency not pinned exactly: {d}"
        pins[m.group(1).lower()] = m.group(3)
    return pins


def _yaml_pins(items) -> dict[str, str]:
    pins = {}
    for d in items:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]+\])?==(\S+)", d)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_every_dependency_is_pinned_and_mlflow_is_3_17_2():
    pins = _pyproject_pins()
    assert pins["mlflow"] == "3.17.2"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for d in extras["test"]:
        assert "==" in d, f"test dependency not pinned: {d}"


def test_python_env_and_conda_agree_with_pyproject():
    pins = _pyproject_pins()
    py_env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    conda_pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _yaml_pins(py_env["dependencies"]) == pins
    assert _yaml_pins(conda_pip) == pins


def test_mlproject_entry_points_match_trainer_options():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert {"train", "main"} <= set(mlproject["entry_points"])
    train = mlproject["entry_points"]["train"]
    for param in ("data", "target", "model", "test_size", "seed", "model_name", "min_accuracy", "promote"):
        assert param in train["parameters"]
        assert "{" + param + "}" in train["command"]
    assert (ROOT / mlproject["python_env"]).is_file()


def test_generated_state_is_ignored():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "mlruns/README.md" in tracked
    assert not [t for t in tracked if t.startswith(("mlruns/", "models/", "logs/", ".stack/", ".venv/")) and t != "mlruns/README.md"]
    ignored = subprocess.run(
        ["git", "check-ignore", "mlruns/mlflow.db", "models/x/1/MLmodel", "logs/app.log", ".stack/pg", ".venv/bin"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout.split()
    assert len(ignored) == 5


def test_architecture_doc_names_every_module():
    """docs/architecture.md (diagrams and tables) names every module of serving, training and mlops."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for part in ("serving", "training", "mlops"):
        for path in sorted((ROOT / part).rglob("*.py")):
            if path.name == "__init__.py" or "commands" in path.parts:
                continue
            stem = path.stem
            if f"{stem}.py" not in doc and f" {stem} " not in doc and f"{stem}[" not in doc and f"--> {stem}" not in doc \
                    and f"& {stem}" not in doc and f"{stem} -->" not in doc:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"docs/architecture.md does not name: {missing}"
