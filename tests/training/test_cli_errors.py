"""The training CLI's bad options: one `error:` line on stderr, exit code 2, no usage block."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT, clean_env, run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--model", "nope"], "argument --model: invalid choice: 'nope'"),
        (["--promote", "later"], "argument --promote: invalid choice: 'later'"),
        (["--seed", "1.5"], "argument --seed: expected a whole number, got 1.5"),
        (["--test-size", "2"], "--test-size must be between 0 and 1"),
        (["--C", "0"], "--C must be > 0, got 0"),
        (["--C", "nan"], "--C must be > 0, got nan"),
        (["--alpha", "-1"], "--alpha must be >= 0, got -1"),
        (["--max-iter", "0"], "--max-iter must be >= 1, got 0"),
        (["--n-estimators", "0"], "--n-estimators must be >= 1, got 0"),
        (["--max-depth", "-2"], "--max-depth must be >= 0, got -2"),
        (["--learning-rate", "-0.1"], "--learning-rate must be > 0, got -0.1"),
    ],
)
def test_bad_option_is_one_error_line_exit_2(tmp_path, args, message):
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = run([sys.executable, "-m", "training.train", *args], env=env, cwd=ROOT, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert lines[0].endswith("(see python -m training.train --help)")
    assert not (tmp_path / "mlflow.db").exists()  # nothing was opened, let alone registered


PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"


def _inf_target(path):
    """300 rows, float target y with 6 inf/-inf values (and one missing), features x1 float, x2 text."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.choice(["a", "b"], 300), "y": rng.normal(size=300)})
    df.loc[[3, 50, 100, 150], "y"] = np.inf
    df.loc[[10, 200], "y"] = -np.inf
    df.loc[[20], "y"] = np.nan
    df.to_csv(path, index=False)
    return "y"


def _penguins_header(cells: dict[int, str]):
    """A maker of the penguins CSV with header cells replaced (position -> name); target species."""

    def make(path):
        lines = PENGUINS.read_text().splitlines()
        header = lines[0].split(",")
        for i, name in cells.items():
            header[i] = name
        path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
        return "species"

    return make


@pytest.mark.parametrize(
    "make, message",
    [
        (_inf_target, "error: target column 'y' has 6 non-finite values (inf, -inf)"),
        (_penguins_header({3: "bill_length_mm"}), "error: duplicate column names: bill_length_mm"),
        (_penguins_header({7: ""}), "error: column 8 of the header has no name: name it or remove the column"),
    ],
    ids=["inf-target", "duplicate-header", "empty-header-cell"],
)
def test_bad_data_file_is_one_error_line_exit_2(tmp_path, make, message):
    data = tmp_path / "data.csv"
    target = make(data)
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = run([sys.executable, "-m", "training.train", "--data", str(data), "--target", target],
               env=env, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [message]  # no traceback, no Python warning
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is opened


def test_a_non_finite_feature_is_one_error_line_exit_2(tmp_path):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.choice(["a", "b"], 300), "y": rng.normal(size=300)})
    df.loc[[3, 9], "x1"] = np.inf
    df.to_csv(tmp_path / "data.csv", index=False)
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = run([sys.executable, "-m", "training.train", "--data", str(tmp_path / "data.csv"), "--target", "y"],
               env=env, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "error: feature columns hold non-finite values (inf): x1 (2)"
    assert all(" INFO " in line for line in lines[:-1]), proc.stderr  # the task line; no traceback
    assert not (tmp_path / "mlflow.db").exists()
