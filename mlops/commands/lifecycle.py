"""promote, rollback, history, status."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from mlops import config, registry
from mlops.cli import tracking_option


def _echo_result(res: registry.PromotionResult, verb: str) -> None:
    if not res.changed:
        click.echo(f"nothing to do: {res.name} v{res.to_version} is already in {res.stage} "
                   "(no history entry written)")
        return
    click.echo(
        f"{verb}: {res.name} v{res.to_version} is now {res.stage} "
        f"(alias {registry.STAGE_ALIASES.get(res.stage, '-')}; was v{res.from_version or '-'})"
    )
    if res.notified is True:
        click.echo("serving notified (POST /api/model/reload)")
    elif res.notified is False:
        click.echo("serving could not be notified; it follows the registry by polling", err=True)


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--stage", type=click.Choice(["Production", "Staging"], case_sensitive=False), default="Production", show_default=True)
@click.option("--reason", default="", help="Why: stored in the promotion history.")
@tracking_option
def promote(name: str, version: str, stage: str, reason: str, tracking_uri: str) -> None:
    """Promote VERSION of model NAME to a stage (pre-flight, stage + alias, history, notify serving).

    Pre-flight downloads the version, loads it and predicts on its input example; if that fails
    nothing changes. Set SERVING_URL (and ADMIN_TOKEN) to make serving reload at once.
    A version already in that stage is left as it is: exit 0, "nothing to do", no history entry.
    """
    client = registry.get_client(tracking_uri)
    _echo_result(registry.promote(client, name, version, stage, reason), "promoted")


@click.command()
@click.argument("name")
@click.option("--to", "to", default=None, help="Version to roll back to (default: the previous Production version).")
@click.option("--reason", default="", help="Why: stored in the promotion history.")
@tracking_option
def rollback(name: str, to: str | None, reason: str, tracking_uri: str) -> None:
    """Move Production of model NAME back to the previous Production version."""
    client = registry.get_client(tracking_uri)
    _echo_result(registry.rollback(client, name, to, reason), "rolled back")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@tracking_option
def history(name: str, as_json: bool, tracking_uri: str) -> None:
    """Show the promotion history of model NAME (oldest first)."""
    client = registry.get_client(tracking_uri)
    entries = registry.history(client, name)
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no promotions recorded for {name}")
        return
    click.echo(f"{'time':20} {'action':8} {'stage':10} {'from':>5} {'to':>5}  {'user':12} reason")
    for e in entries:
        click.echo(
            f"{e.time:20} {e.action:8} {e.stage:10} {e.from_version or '-':>5} {e.to_version:>5}  "
            f"{e.user[:12]:12} {e.reason}"
        )


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--serving-url", envvar="SERVING_URL", default=None, help="Serving service to ask which version it serves.")
@tracking_option
def status(name: str | None, as_json: bool, serving_url: str | None, tracking_uri: str) -> None:
    """Versions with stage, aliases, accuracy, and which one serving answers with."""
    client = registry.get_client(tracking_uri)
    out = registry.status(client, name, serving_url)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"tracking URI: {tracking_uri}")
    if not out["models"]:
        click.echo("no registered models")
    for m in out["models"]:
        serving = m.get("serving_version")
        click.echo(f"\n{m['name']}  ({len(m['versions'])} versions)")
        click.echo(f"  {'version':>7}  {'stage':10} {'aliases':22} {'accuracy':>8}  {'status':8}")
        for v in m["versions"]:
            mark = "  <- serving" if serving is not None and str(serving) == v["version"] else ""
            acc = v.get("accuracy")
            click.echo(
                f"  {v['version']:>7}  {v['stage']:10} {','.join(v['aliases']) or '-':22} "
                f"{acc if acc is not None else '-':>8}  {v['status']:8}{mark}"
            )
    if out.get("serving"):
        click.echo(f"\nserving: {out['serving']}")


def register(cli) -> None:
    """Attach this module's commands."""
    for cmd in (promote, rollback, history, status):
        cli.add_command(cmd)


__all__ = ["register", "config"]
