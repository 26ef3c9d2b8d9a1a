"""serve, ui, wait-ready, sample: run and probe the services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mlops import config, env
from mlops.cli import fail, tracking_option


@click.command()
@click.option("--host", default=None, help="Bind address (default: $HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: $PORT or 5000).")
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: $WORKERS or 2 x cores + 1, at most 8).")
@tracking_option
def serve(host: str | None, port: int | None, workers: int | None, tracking_uri: str) -> None:
    """Run the prediction service under gunicorn (serving/gunicorn.conf.py), in the foreground.

    It serves the model selected by MODEL_NAME and MODEL_STAGE (or MODEL_ALIAS) and follows the
    registry: a new Production version is served within seconds, without a restart.
    """
    import serving
    from serving.settings import Settings, SettingsError

    conf = Path(serving.__file__).resolve().parent / "gunicorn.conf.py"
    try:
        settings = Settings.from_env(tracking_uri=tracking_uri, host=host, port=port, workers=workers)
    except SettingsError as exc:
        fail(str(exc))
    click.echo(
        f"serving {settings.model_name} ({settings.selector_label}) on http://{settings.host}:{settings.port} "
        f"with {settings.workers} worker(s); logs in {settings.log_dir / 'app.log'}",
        err=True,
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "serving.wsgi:app"]
    os.execve(sys.executable, argv, env.inherited(**settings.environ()))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5001, show_default=True)
@tracking_option
def ui(host: str, port: int, tracking_uri: str) -> None:
    """Run the MLflow UI / tracking server on the store in use, in the foreground.

    On the embedded default this is a lean `mlflow server` on mlruns/ (one worker, no job runner).
    """
    child_env = env.inherited(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    argv = ["mlflow", "server", "--host", host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", tracking_uri]
    root = config.artifact_root_for(tracking_uri)
    if root:
        argv += ["--default-artifact-root", root, "--no-serve-artifacts"]
    exe = Path(sys.executable).with_name("mlflow")
    os.execve(str(exe), [str(exe), *argv[1:]], child_env)


@click.command("wait-ready")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="Serving base URL.")
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait.")
def wait_ready(url: str, timeout: float) -> None:
    """Wait until the serving service answers 200 on /ready."""
    from mlops.util import http_probe, wait_for

    ok, last = wait_for(http_probe(url.rstrip("/") + "/ready"), timeout, interval=0.3)
    if ok:
        click.echo(f"ready: {url}")
        return
    fail(f"{url} not ready after {timeout:.0f}s (last: {last}); see logs/app.log")


@click.command()
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="Serving base URL.")
@click.option("--rows", type=int, default=1, show_default=True, help="How many rows of the bundled data to send.")
def sample(url: str, rows: int) -> None:
    """Send rows of the bundled breast-cancer data to /api/predict and print the answer."""
    import requests
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(rows)
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}}
    headers = {"Content-Type": "application/json"}
    if token := env.API_TOKEN.get():
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = requests.post(url.rstrip("/") + "/api/predict", json=body, headers=headers, timeout=10)
    except requests.RequestException as exc:
        fail(f"cannot reach {url}: {type(exc).__name__}")
    if r.status_code != 200:
        fail(f"prediction failed: HTTP {r.status_code} {r.text[:300]}")
    click.echo(f"sample prediction ({rows} row(s) of the breast-cancer data) from {url}/api/predict:")
    click.echo(json.dumps(r.json(), indent=2))


def register(cli) -> None:
    """Attach this module's commands."""
    for cmd in (serve, ui, wait_ready, sample):
        cli.add_command(cmd)
