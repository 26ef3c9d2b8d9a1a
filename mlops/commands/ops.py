"""logs: read the serving service's JSON log like an operator (since, level, text)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import click

from mlops import env

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def parse_since(text: str) -> float:
    """'90s', '30m', '8h', '7d' → seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m:
        raise click.BadParameter(f"'{text}' is not a duration like 30m, 8h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _ts(record: dict) -> float | None:
    try:
        return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError, AttributeError):
        return None


def read_records(log_dir: Path):
    """(raw line, parsed record or None) from app.log and its rotated files, oldest first."""
    files = sorted(log_dir.glob("app.log.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    files.append(log_dir / "app.log")
    for path in files:
        if not path.is_file():
            continue
        with path.open(errors="replace") as fh:
            for line in fh:
                line = line.rstrip("\n")
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                yield line, rec if isinstance(rec, dict) else None


@click.command()
@click.option("--log-dir", envvar=env.LOG_DIR.name, default=env.LOG_DIR.default, show_default=True,
              type=click.Path(path_type=Path),
              help="Folder holding app.log (default: $LOG_DIR, else logs/).")
@click.option("--since", default=None, help="Only lines newer than this: 30m, 8h, 7d.")
@click.option("--level", type=click.Choice(list(LEVELS), case_sensitive=False), default=None,
              help="Only lines at this level or above.")
@click.option("--grep", "text", default=None, help="Only lines containing this text (e.g. 'Prediction made').")
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="Print at most the last N matches.")
@click.option("--quiet-empty", is_flag=True, help="Print nothing (instead of a note) when nothing matches.")
def logs(log_dir: Path, since: str | None, level: str | None, text: str | None, lines: int, quiet_empty: bool) -> None:
    """Show the serving service's log lines, filtered by age, level and text (JSON lines, rotated files included)."""
    if not log_dir.is_dir():
        raise click.ClickException(f"no log folder {log_dir} (set --log-dir or LOG_DIR)")
    cutoff = time.time() - parse_since(since) if since else None
    floor = LEVELS[level.upper()] if level else None
    matches: list[str] = []
    for raw, rec in read_records(log_dir):
        if text and text not in raw:
            continue
        if cutoff is not None and (rec is None or (_ts(rec) or 0) < cutoff):
            continue
        if floor is not None and (rec is None or LEVELS.get(str(rec.get("level", "")).upper(), 0) < floor):
            continue
        matches.append(raw)
    for raw in matches[-lines:] if lines > 0 else matches:
        click.echo(raw)
    if not matches and not quiet_empty:
        click.echo(f"no matching lines in {log_dir}", err=True)


def register(cli) -> None:
    """Attach this module's commands."""
    cli.add_command(logs)
