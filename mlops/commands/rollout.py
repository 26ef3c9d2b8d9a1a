"""canary start|status|stop, shadow start|status|stop."""

from __future__ import annotations

import json

import click

from mlops import registry
from mlops import rollout as ro_mod
from mlops.cli import fail, tracking_option

_T = ro_mod.Thresholds()


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return ro_mod.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _percent(ctx, param, value):
    if not ro_mod.MIN_PERCENT <= value <= 100:  # NaN fails this too
        raise click.BadParameter(f"must be in [{ro_mod.MIN_PERCENT:g}, 100], not {value:g}")
    return value


def _threshold_options(f):
    opts = [
        ("--max-error-rate", "max_error_rate", "Candidate error rate above which it is withdrawn."),
        ("--max-p50-ratio", "max_p50_ratio", "Candidate p50 limit, times Production's p50 (plus the slack)."),
        ("--max-p99-ratio", "max_p99_ratio", "Candidate p99 limit, times Production's p99 (plus the slack)."),
        ("--latency-slack-ms", "latency_slack_ms", "Absolute slack added to both latency limits."),
        ("--min-agreement", "min_agreement", "Classification: least share of rows labelled as Production does."),
        ("--max-relative-difference", "max_relative_difference",
         "Regression: largest mean relative difference from Production."),
        ("--timeout-ms", "timeout_ms", "A candidate prediction slower than this is an error (Production answers)."),
    ]
    for flag, attr, text in reversed(opts):
        f = click.option(flag, attr, type=click.FloatRange(min=0), default=getattr(_T, attr), show_default=True,
                         help=text)(f)
    return f


def _serving_figures(url: str | None, rollout_id: str) -> dict | None:
    """The live figures serving at ``url`` reports for this rollout (None: none, or another one)."""
    health = registry.serving_health(url)
    if not isinstance(health, dict) or "error" in health and "status" not in health:
        return None
    section = health.get("rollout")
    if not isinstance(section, dict) or section.get("id") != rollout_id:
        return None
    figures = section.get("figures")
    return figures if isinstance(figures, dict) else None


def _start(mode: str, name: str, version: str, percent: float, duration: float | None, min_requests: int,
           auto_promote: bool, tracking_uri: str, thresholds: dict) -> None:
    client = registry.get_client(tracking_uri)
    ro = ro_mod.start(client, name, version, mode, percent,
                      duration_s=duration or ro_mod.DEFAULT_DURATION_S, min_requests=min_requests,
                      auto_promote=auto_promote, thresholds=ro_mod.Thresholds(**thresholds))
    click.echo(f"{mode} started: {name} v{ro.version} gets {ro.percent:g}% of requests "
               f"{'(answered by it)' if mode == 'canary' else '(mirrored; Production answers)'} against "
               f"Production v{ro.production_version}; window {ro.duration_s:g}s, min requests {ro.min_requests}"
               f"{', auto-promote' if ro.auto_promote else ''}")
    click.echo(f"serving follows within its poll interval; see: mlops {mode} status {name}")


def _status(mode: str, name: str, as_json: bool, serving_url: str | None, tracking_uri: str) -> None:
    client = registry.get_client(tracking_uri)
    ro = ro_mod.read(client, name)
    if ro is None or (mode is not None and ro.mode != mode):
        fail(f"no {mode or 'rollout'} recorded for {name}")
    figures = _serving_figures(serving_url, ro.id) if ro.running else None
    if figures is None and ro.verdict:
        figures = ro.verdict.get("figures")
    if as_json:
        click.echo(json.dumps({"rollout": json.loads(ro.to_json()), "figures": figures}, indent=2))
        return
    for line in ro_mod.format_table(ro, figures):
        click.echo(line)


def _stop(mode: str, name: str, reason: str, tracking_uri: str) -> None:
    client = registry.get_client(tracking_uri)
    ended = ro_mod.end(client, name, None, ro_mod.STOPPED, reason or "stopped by hand", mode=mode)
    if ended is None:
        fail(f"no {mode} of {name} is running")
    click.echo(f"{mode} stopped: {name} v{ended.version} no longer gets traffic (history entry written)")


@click.group()
def canary() -> None:
    """Canary: a share of requests answered by a candidate version, judged, withdrawn on a breach."""


@canary.command("start")
@click.argument("name")
@click.argument("version")
@click.option("--percent", type=float, required=True, callback=_percent, help="Share of requests (0-100].")
@click.option("--duration", default="10m", show_default=True, callback=_duration,
              help="Judgement window: 300, 30s, 10m, 1h.")
@click.option("--min-requests", type=click.IntRange(min=1, max=ro_mod.MAX_MIN_REQUESTS), default=ro_mod.DEFAULT_MIN_REQUESTS, show_default=True,
              help="Candidate requests needed before it is judged.")
@click.option("--auto-promote", is_flag=True, help="Promote the candidate to Production once it held for the window.")
@_threshold_options
@tracking_option
def canary_start(name: str, version: str, percent: float, duration: float, min_requests: int, auto_promote: bool,
                 tracking_uri: str, **thresholds) -> None:
    """Start a canary of VERSION of model NAME against its Production version.

    Serving answers PERCENT % of prediction requests with VERSION (a request with header
    X-Routing-Key always gets the same version for the same key) and the rest with Production; a
    request the candidate fails is answered by Production and counted. Over the window the
    candidate is compared with Production (error rate, p50/p99 latency, agreement); a breach
    withdraws it (history entry). The state lives in the registry (alias 'canary', tag
    mlops.rollout).
    """
    _start("canary", name, version, percent, duration, min_requests, auto_promote, tracking_uri, thresholds)


@canary.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--serving-url", envvar="SERVING_URL", default=None, help="Serving service to read the live figures from.")
@tracking_option
def canary_status(name: str, as_json: bool, serving_url: str | None, tracking_uri: str) -> None:
    """Side-by-side figures of Production and the candidate, with the thresholds."""
    _status("canary", name, as_json, serving_url, tracking_uri)


@canary.command("stop")
@click.argument("name")
@click.option("--reason", default="", help="Why: stored in the promotion history.")
@tracking_option
def canary_stop(name: str, reason: str, tracking_uri: str) -> None:
    """End the running canary of model NAME by hand (Production answers everything again)."""
    _stop("canary", name, reason, tracking_uri)


@click.group()
def shadow() -> None:
    """Shadow: a sample of requests also predicted by a candidate, off the request path."""


@shadow.command("start")
@click.argument("name")
@click.argument("version")
@click.option("--percent", type=float, required=True, callback=_percent, help="Share of requests mirrored (0-100].")
@click.option("--duration", default="10m", show_default=True, callback=_duration,
              help="Judgement window: 300, 30s, 10m, 1h.")
@click.option("--min-requests", type=click.IntRange(min=1, max=ro_mod.MAX_MIN_REQUESTS), default=ro_mod.DEFAULT_MIN_REQUESTS, show_default=True,
              help="Shadow predictions needed before it is judged.")
@_threshold_options
@tracking_option
def shadow_start(name: str, version: str, percent: float, duration: float, min_requests: int, tracking_uri: str,
                 **thresholds) -> None:
    """Start a shadow of VERSION of model NAME: Production answers every request; PERCENT % are
    also predicted by VERSION in the background (a bounded queue, SHADOW_QUEUE_SIZE, drops and
    counts when full). Both predictions, latencies and their agreement are recorded; a breach
    withdraws the shadow."""
    _start("shadow", name, version, percent, duration, min_requests, False, tracking_uri, thresholds)


@shadow.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--serving-url", envvar="SERVING_URL", default=None, help="Serving service to read the live figures from.")
@tracking_option
def shadow_status(name: str, as_json: bool, serving_url: str | None, tracking_uri: str) -> None:
    """Side-by-side figures of Production and the shadow candidate, with the thresholds."""
    _status("shadow", name, as_json, serving_url, tracking_uri)


@shadow.command("stop")
@click.argument("name")
@click.option("--reason", default="", help="Why: stored in the promotion history.")
@tracking_option
def shadow_stop(name: str, reason: str, tracking_uri: str) -> None:
    """End the running shadow of model NAME by hand."""
    _stop("shadow", name, reason, tracking_uri)


def register(cli) -> None:
    """Attach this module's commands."""
    cli.add_command(canary)
    cli.add_command(shadow)
