"""stack up | down | status: the local production stack (PostgreSQL, S3 endpoint, mlflow server, serving)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from mlops import env
from mlops import stack as st

DIR_HELP = "Stack folder: data, logs, state (default: $MLOPS_STACK_DIR, else .stack/ in the project home)."


def _dir(value: str | None) -> Path:
    return Path(value).resolve() if value else st.default_dir()


@click.group("stack")
def stack_group() -> None:
    """Local production stack: PostgreSQL + S3 endpoint + `mlflow server` (proxied artifacts) + serving.

    Real processes on 127.0.0.1; the data stays in the stack folder between `down` and `up`.
    See docs/production-stack.md.
    """


def _port_option(name: str, flag: str):
    return click.option(
        flag, f"{name}_port", type=int, default=None,
        help=f"{name} port (0: any free port; default: ${st.PORT_ENV[name]}, else the last one used, "
             f"else {st.DEFAULT_PORTS[name]}).",
    )


@stack_group.command("up")
@click.option("--dir", "stack_dir", default=None, help=DIR_HELP)
@click.option("--auth", is_flag=True, help="MLflow basic auth (needs MLFLOW_AUTH_ADMIN_PASSWORD; no default password).")
@click.option("--no-serving", is_flag=True, help="Start the tracking side only (no prediction service).")
@_port_option("postgres", "--pg-port")
@_port_option("s3", "--s3-port")
@_port_option("mlflow", "--mlflow-port")
@_port_option("serving", "--serving-port")
@click.option("--bucket", envvar=env.MLOPS_STACK_BUCKET.name, default="mlflow", show_default=True, help="Artifact bucket.")
@click.option("--mlflow-workers", envvar=env.MLOPS_STACK_MLFLOW_WORKERS.name, type=int, default=1, show_default=True,
              help="uvicorn workers of the tracking server.")
@click.option("--serving-workers", envvar=env.MLOPS_STACK_SERVING_WORKERS.name, type=int, default=2, show_default=True,
              help="gunicorn workers of the prediction service.")
@click.option("--timeout", envvar=env.MLOPS_STACK_TIMEOUT.name, type=float, default=180, show_default=True,
              help="Seconds each component gets to become healthy.")
def up_cmd(stack_dir, auth, no_serving, postgres_port, s3_port, mlflow_port, serving_port, bucket,
           mlflow_workers, serving_workers, timeout) -> None:
    """Start the stack (what is not running yet) and wait until every component is healthy.

    A component that fails to start makes `up` fail with its log tail; what this call had started
    is stopped again.
    """
    folder = _dir(stack_dir)
    given = {"postgres": postgres_port, "s3": s3_port, "mlflow": mlflow_port, "serving": serving_port}
    settings = st.Settings(
        stack_dir=folder, ports=st.resolve_ports(folder, given), auth=auth, serving=not no_serving,
        bucket=bucket, mlflow_workers=mlflow_workers, serving_workers=serving_workers, timeout=timeout,
    )
    running = st.up(settings)  # a StackError is one line from the CLI group
    for name in st.COMPONENTS:
        if name in running.details:
            state = "already running" if name in running.already else "started"
            click.echo(f"  {name:<9} {state:<16} {running.details[name]}")
    p = running.ports
    click.echo("")
    click.echo(f"PostgreSQL       postgresql://{st.DB_USER}@{st.HOST}:{p['postgres']}/{st.DB_NAME} (password in {folder / st.SECRETS_FILE})")
    click.echo(f"S3 endpoint      http://{st.HOST}:{p['s3']}  bucket s3://{settings.bucket}")
    click.echo(f"MLflow           {running.tracking_uri}" + ("  (basic auth)" if auth else ""))
    if settings.serving:
        click.echo(f"Serving          {running.serving_url}")
    click.echo(f"Logs             {folder / 'logs'}")
    click.echo("")
    for line in st.export_lines(running):
        click.echo(line)
    if settings.serving:
        click.echo(f"export SERVING_URL={running.serving_url}")


@stack_group.command("down")
@click.option("--dir", "stack_dir", default=None, help=DIR_HELP)
@click.option("--purge", is_flag=True, help="Also delete the data (database, bucket, logs, secrets).")
def down_cmd(stack_dir, purge) -> None:
    """Stop exactly the processes `up` started; keep the data unless --purge."""
    folder = _dir(stack_dir)
    stopped = st.down(folder, purge=purge)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        click.echo(f"purged: {folder}")
    elif folder.is_dir():
        click.echo(f"data kept in {folder} (`mlops stack up` reuses it; `--purge` deletes it)")


@stack_group.command("status")
@click.option("--dir", "stack_dir", default=None, help=DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(stack_dir, as_json) -> None:
    """Each component's health; exit 0 only if every component is running and healthy."""
    folder = _dir(stack_dir)
    rows = st.status(folder)
    state = st.load_state(folder)
    if as_json:
        click.echo(json.dumps({"dir": str(folder), "auth": state.get("auth", False), "components": rows}, indent=2))
    else:
        if not state:
            click.echo(f"no stack in {folder} (start one: mlops stack up)")
        for name, row in rows.items():
            health = "healthy" if row["healthy"] else ("UNHEALTHY" if row["running"] else "stopped")
            click.echo(f"  {name:<9} {health:<10} port {row['port'] or '-':<6} {row['detail']}")
        if state and any(r["running"] for r in rows.values()):
            for line in st.export_lines(state):
                click.echo(line)
    if not rows or not all(r["healthy"] for r in rows.values()):
        sys.exit(1)


@stack_group.command("restart")
@click.argument("components", nargs=-1)
@click.option("--dir", "stack_dir", default=None, help=DIR_HELP)
@click.option("--timeout", type=float, default=180, show_default=True, help="Seconds each component gets to become healthy.")
def restart_cmd(components, stack_dir, timeout) -> None:
    """Restart COMPONENTS (default: serving) on the same ports with the same data.

    Components: postgres, s3, mlflow, serving. Serving comes back from its model cache at once and
    re-checks the registry; the tracking server's data lives in PostgreSQL and S3.
    """
    folder = _dir(stack_dir)
    names = list(components) or ["serving"]
    running = st.restart(folder, names, timeout=timeout)
    for name in names:
        click.echo(f"  {name:<9} restarted        {running.details.get(name, '')}")


@stack_group.command("env")
@click.option("--dir", "stack_dir", default=None, help=DIR_HELP)
@click.option("--with-secrets", is_flag=True, help="Also export ADMIN_TOKEN (serving's admin token).")
@click.option("--with-storage", is_flag=True,
              help="Also export the storage credentials (MLOPS_BACKEND_STORE_URI, MLOPS_ARTIFACTS_DESTINATION and "
                   "the S3 endpoint and keys): `mlops backup` then records every deleted version number, "
                   "`mlops restore` writes its rows into the database in one transaction, and both move files "
                   "straight to and from the bucket.")
def env_cmd(stack_dir, with_secrets, with_storage) -> None:
    """Print `export` lines for a shell pointed at the stack: eval "$(mlops stack env)"."""
    folder = _dir(stack_dir)
    state = st.load_state(folder)
    if not state:
        raise st.StackError(f"no stack in {folder} (start one: mlops stack up)")
    for line in st.export_lines(state):
        click.echo(line)
    click.echo(f"export SERVING_URL=http://{st.HOST}:{state['ports']['serving']}")
    click.echo(f"export MLOPS_STACK_DIR={folder}")
    if with_secrets:
        click.echo(f"export ADMIN_TOKEN={st.load_secrets(folder)['admin_token']}")
    if with_storage:
        for key, value in st.storage_env(folder, state).items():
            click.echo(f"export {key}={shlex.quote(value)}")


def register(cli) -> None:
    """Attach the `stack` group."""
    cli.add_command(stack_group)
