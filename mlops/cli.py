"""`mlops` — the operator CLI.

Every command takes ``--tracking-uri`` (default: ``MLFLOW_TRACKING_URI``, else the embedded store
under ``mlruns/``), exits 0 on success and non-zero with one clear line on failure.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from mlops import config, env
from mlops.errors import MlopsError
from mlops.util import first_line

TRACKING_HELP = "Tracking server or store URI (default: $MLFLOW_TRACKING_URI, else the embedded mlruns/ store)."


def tracking_option(f):
    """Add ``--tracking-uri`` and export it so MLflow's own calls use the same store.

    The store itself is created on first use (``registry.get_client``), not here.
    """

    @click.option("--tracking-uri", envvar=env.MLFLOW_TRACKING_URI.name, default=None, help=TRACKING_HELP)
    @functools.wraps(f)
    def wrapper(*args, tracking_uri=None, **kwargs):
        uri = config.tracking_uri(tracking_uri)
        os.environ[env.MLFLOW_TRACKING_URI.name] = uri
        return f(*args, tracking_uri=uri, **kwargs)

    return wrapper


def fail(message: str, code: int = 1):
    """Print one line to stderr (passwords in URIs redacted) and exit non-zero."""
    click.echo(f"error: {config.redact_uri(message)}", err=True)
    sys.exit(code)


class RedactingFilter(logging.Filter):
    """Replace passwords inside URIs in every log record the CLI writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = config.redact_uri(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class UsageLine(click.UsageError):
    """A usage error shown as one line, ``error: ... (see 'mlops CMD --help')``, exit code 2."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {config.redact_uri(self.format_message())}{hint}", file=file, err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    """``exc`` (bad option, missing argument, invalid value ...) as a one-line usage error."""
    if isinstance(exc, (UsageLine, click.exceptions.NoArgsIsHelpError)):
        return exc  # a group called without a command shows its help, as click does
    line = UsageLine(exc.format_message(), exc.ctx)
    line.exit_code = exc.exit_code
    return line


class Group(click.Group):
    """Loads a command's module only when that command runs; known errors become one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def list_commands(self, ctx):
        from mlops.commands import COMMANDS

        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx, name):
        if name not in self.commands:
            from mlops.commands import register_one

            register_one(self, name)
        return self.commands.get(name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except click.ClickException as exc:
            exc.message = config.redact_uri(exc.message)
            raise
        except SystemExit as exc:
            if isinstance(exc.code, str):
                raise SystemExit(config.redact_uri(exc.code)) from None
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MlopsError as exc:  # an operator error: its message as is
            fail(str(exc), exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - last resort: one line, details with MLOPS_DEBUG=1
            if env.MLOPS_DEBUG.get():
                raise
            fail(f"{type(exc).__name__}: {first_line(exc)}")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """Operate ML DevOps App: the registry, the serving service and the local stack."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@cli.command()
@tracking_option
def init(tracking_uri: str) -> None:
    """Create the store (embedded default) and the default experiment if missing."""
    from mlops.registry import get_client

    client = get_client(tracking_uri)
    config.ensure_experiment(client, config.DEFAULT_MODEL_NAME)
    click.echo(f"store ready: {tracking_uri}")


@cli.command()
@tracking_option
def uri(tracking_uri: str) -> None:
    """Print the tracking URI in use."""
    click.echo(tracking_uri)


@cli.command("env")
@tracking_option
def env_(tracking_uri: str) -> None:
    """Print `export` lines for a shell: eval "$(mlops env)"."""
    click.echo(f"export MLFLOW_TRACKING_URI={tracking_uri}")


def _load_commands() -> None:
    from mlops.commands import register_all

    register_all(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mlops")


__all__ = ["cli", "main", "tracking_option", "fail", "json"]
