"""The `mlops` CLI: help everywhere, one clear line and a non-zero exit on failure."""

from __future__ import annotations

import pytest

from tests.helpers import BIN, clean_env, run, sqlite_uri


def mlops(*args: str, uri: str | None = None, check: bool = False, **env):
    extra = {"MLFLOW_TRACKING_URI": uri} if uri else {}
    return run([str(BIN / "mlops"), *args], env=clean_env(**extra, **env), check=check)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = sqlite_uri(tmp_path_factory.mktemp("cli"))
    mlops("init", uri=uri, check=True)
    return uri


def _commands() -> list[list[str]]:
    from mlops.cli import _load_commands, cli

    _load_commands()
    out = []
    for name, cmd in cli.commands.items():
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


def test_top_level_help_lists_commands():
    proc = mlops("--help", check=True)
    for name in ("promote", "rollback", "history", "status", "serve"):
        assert name in proc.stdout


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(command):
    from click.testing import CliRunner

    from mlops.cli import cli

    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="mlops")
    assert result.exit_code == 0, result.output
    assert "Usage: mlops" in result.output and len(result.output.splitlines()) > 3


def test_uri_defaults_to_embedded_store_under_home(tmp_path):
    proc = mlops("uri", check=True, MLOPS_HOME=str(tmp_path))
    assert proc.stdout.strip() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert mlops("env", check=True, MLOPS_HOME=str(tmp_path)).stdout.startswith("export MLFLOW_TRACKING_URI=sqlite:///")


@pytest.mark.parametrize(
    "args, message",
    [
        (["promote", "no-such-model", "1"], "registered model 'no-such-model' does not exist"),
        (["rollback", "no-such-model"], "registered model 'no-such-model' does not exist"),
        (["history", "no-such-model"], "registered model 'no-such-model' does not exist"),
        (["promote", "m", "1", "--stage", "Nope"], "Invalid value for '--stage'"),
    ],
)
def test_failures_are_one_line_nonzero(store, args, message):
    proc = mlops(*args, uri=store)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, command",
    [
        (["--bogus"], "mlops"),
        (["no-such-command"], "mlops"),
        (["status", "--nope"], "mlops status"),
        (["promote"], "mlops promote"),
        (["promote", "m", "1", "--stage", "Nope"], "mlops promote"),
        (["stack", "no-such-command"], "mlops stack"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args, command):
    proc = mlops(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert lines[0].endswith(f"(see '{command} --help')")
