"""backup (and backup --verify), restore."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from mlops import env, registry
from mlops.cli import fail, tracking_option


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give at least one model name", param_hint="--models")
    return names


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# Before every request MLflow's Databricks header provider tries to import these; when they are
# not installed each attempt searches the whole sys.path again (a fifth of the client's CPU in
# a restore). A None entry in sys.modules makes the import fail at once, as it would anyway.
ABSENT_PACKAGES = ("dbruntime", "pyspark", "IPython")


def _http_pool() -> None:
    """Enough pooled connections for the parallel transfers (before MLflow opens its session),
    no usage telemetry per API call (thousands of them here; set MLFLOW_DISABLE_TELEMETRY=false
    to keep it), and no repeated search for packages that are not installed."""
    import importlib.util

    os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", "32")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    for name in ABSENT_PACKAGES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]


class _Bar:
    """A progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int, item: str) -> None:
        if not self.enabled or total <= 0:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        if self.bar.length != total:
            self.bar.length = total
        self.bar.update(max(0, done - self.bar.pos))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Archive to write (default: backups/registry-<UTC timestamp>.tar.gz).")
@click.option("--models", default=None, help="Comma-separated registered model names (default: all).")
@click.option("--verify", "verify", type=click.Path(path_type=Path), default=None, metavar="ARCHIVE",
              help="Check every checksum of ARCHIVE instead of writing a backup.")
@click.option("--backend-store-uri", default=None, envvar=env.MLOPS_BACKEND_STORE_URI.name,
              help="SQL URI of the tracking server's database, read-only: records deleted version "
                   "numbers above the highest live one when backing up through a server.")
@click.option("--artifacts-destination", default=None, envvar=env.MLOPS_ARTIFACTS_DESTINATION.name, metavar="URI",
              help="The tracking server's --artifacts-destination (s3://bucket/path or a folder), with "
                   "that store's credentials in the environment: proxied artifacts are read there directly "
                   "instead of one request each through the server. Checked against the server first.")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Parallel downloads.")
@tracking_option
def backup(out: Path | None, models: str | None, verify: Path | None, backend_store_uri: str | None,
           artifacts_destination: str | None, workers: int, tracking_uri: str) -> None:
    """Export registered models (versions, deleted numbers, stages, aliases, runs, artifacts) to one .tar.gz.

    The archive holds a manifest.json with the sha256 and size of every file; it is written to a
    temporary file and renamed only when complete. `mlops backup --verify ARCHIVE` checks it.
    """
    if verify is not None:
        # Options given on the command line conflict; the same values from the environment
        # (MLOPS_BACKEND_STORE_URI, MLOPS_ARTIFACTS_DESTINATION of a backup job) do not.
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ("out", "models", "backend_store_uri", "artifacts_destination")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            fail(f"--verify checks an existing archive; it takes no {', '.join(given)}")
        from mlops.recovery.archive import verify_archive

        manifest = verify_archive(verify)
        click.echo(
            f"archive OK: {verify} — {len(manifest['files']) + 1} files match the manifest; "
            f"backup {manifest.get('backup_id')} created {manifest.get('created')} with MLflow "
            f"{manifest.get('mlflow_version')}; models: {', '.join(manifest.get('models', [])) or '-'}"
        )
        return
    from mlops.recovery.backup import backup as run_backup

    _http_pool()

    client = registry.get_client(tracking_uri)
    bar = _Bar("backing up")
    try:
        res = run_backup(client, out, _names(models), backend_store_uri=backend_store_uri,
                         artifacts_destination=artifacts_destination, workers=workers, on_progress=bar)
    finally:
        bar.close()
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(
        f"backup written: {res.path} ({len(res.models)} models, {res.versions} versions, "
        f"{res.deleted_versions} deleted numbers, {res.runs} runs, {res.logged_models} logged models, "
        f"{res.files} files, {_size(res.size)})"
    )
    click.echo(f"sha256 {res.sha256}")


@click.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--models", default=None, help="Comma-separated model names to restore (default: all in the archive).")
@click.option("--dry-run", is_flag=True, help="Verify the archive and print what would be created; change nothing.")
@click.option("--if-exists", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="What to do with a model that already exists in the target registry.")
@click.option("--artifacts-destination", default=None, envvar=env.MLOPS_ARTIFACTS_DESTINATION.name, metavar="URI",
              help="The tracking server's --artifacts-destination (s3://bucket/path or a folder), with "
                   "that store's credentials in the environment: proxied artifacts are written there directly "
                   "instead of one request each through the server. Checked against the server first.")
@click.option("--backend-store-uri", default=None, envvar=env.MLOPS_BACKEND_STORE_URI.name, metavar="URI",
              help="SQL URI of the tracking server's database (its --backend-store-uri): the registry's rows "
                   "are written there in one transaction instead of thousands of API calls. Checked against "
                   "the server first; must be at this MLflow's schema revision.")
@click.option("--through-api", is_flag=True,
              help="Write through MLflow's API calls even into a SQL store (slower; the default for a server "
                   "without --backend-store-uri).")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Parallel uploads and models restored at once.")
@tracking_option
def restore(archive: Path, models: str | None, dry_run: bool, if_exists: str, artifacts_destination: str | None,
            backend_store_uri: str | None, through_api: bool, workers: int, tracking_uri: str) -> None:
    """Import a backup ARCHIVE into the tracking server, with the exact version numbers.

    The archive is verified first (checksums, no links, no paths outside it). Into a SQL store
    (the embedded default, or a server with --backend-store-uri) every row is written in one
    transaction: an interrupted restore changes nothing. Through a server's API, re-running the
    same command finishes an interrupted restore without duplicating anything.
    """
    from mlops.recovery.restore import RestoreError
    from mlops.recovery.restore import restore as run_restore

    _http_pool()

    client = registry.get_client(tracking_uri)
    bar = _Bar("restoring")
    try:
        res = run_restore(client, archive, _names(models), dry_run=dry_run, if_exists=if_exists,
                          artifacts_destination=artifacts_destination, backend_store_uri=backend_store_uri,
                          database=not through_api, workers=workers, on_progress=bar)
    except RestoreError as exc:
        bar.close()
        if len(exc.failures) > 1:
            for f in exc.failures:
                click.echo(f"  failed: {f}", err=True)
        fail(str(exc))
    finally:
        bar.close()
    if dry_run:
        click.echo("dry run: nothing was changed")
        for line in res.plan:
            click.echo(f"  {line}")
        return
    for name in res.skipped:
        click.echo(f"skipped {name}: already in the target registry")
    for name in res.already:
        click.echo(f"skipped {name}: already restored from this archive")
    click.echo(
        f"restored into {tracking_uri}: {len(res.models)} models, {res.versions} versions "
        f"({res.placeholders} deleted numbers reproduced), runs {res.runs_created} created / "
        f"{res.runs_reused} reused, logged models {res.logged_models_created} created / "
        f"{res.logged_models_reused} reused"
    )


def register(cli) -> None:
    """Attach this module's commands."""
    cli.add_command(backup)
    cli.add_command(restore)
