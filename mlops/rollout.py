"""Canary and shadow rollouts, kept in the registry so every worker and replica agrees.

A rollout is one registered-model tag, ``mlops.rollout`` (a JSON object: mode, candidate version,
percent, window, thresholds, start time, state and, once ended, the verdict), plus the alias
``canary`` or ``shadow`` on the candidate while it runs. Serving follows both within its poll
interval; backup/restore carries them like every alias and tag.

The judgement (:func:`judge`) compares the candidate with Production over the window on error
rate, p50/p99 latency and prediction agreement; :func:`end` withdraws or promotes (the normal
promotion path, ``registry.promote``) and writes the history entry. Both the serving workers
(automatically) and the CLI (``mlops canary stop``) end rollouts through it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field

from mlflow import MlflowClient

from mlops import errors, registry

log = logging.getLogger(__name__)

TAG = "mlops.rollout"
MODES = ("canary", "shadow")
RUNNING = "running"
WITHDRAWN = "withdrawn"
PROMOTED = "promoted"
STOPPED = "stopped"
DEFAULT_DURATION_S = 600.0
DEFAULT_MIN_REQUESTS = 100


class RolloutError(registry.RegistryError, errors.Refused):
    """A rollout that cannot be started, read or ended as asked."""


@dataclass
class Thresholds:
    """What the candidate must hold over the window (defaults documented in docs/serving.md)."""

    #: candidate requests that raised or timed out, as a share of its requests
    max_error_rate: float = 0.01
    #: candidate p50 latency at most this times Production's, plus ``latency_slack_ms``
    max_p50_ratio: float = 1.5
    #: candidate p99 latency at most this times Production's, plus ``latency_slack_ms``
    max_p99_ratio: float = 2.0
    #: absolute slack on both latency limits (sub-millisecond models would otherwise breach on noise)
    latency_slack_ms: float = 10.0
    #: classification: share of compared requests whose labels all equal Production's
    min_agreement: float = 0.9
    #: regression: mean relative difference |candidate - production| / max(|production|, 1e-9)
    max_relative_difference: float = 0.1
    #: a candidate prediction slower than this is a timeout: Production answers instead
    timeout_ms: float = 1000.0

    @classmethod
    def from_dict(cls, raw: object) -> Thresholds:
        """Thresholds from a tag's JSON; unknown keys are ignored, bad values refused."""
        out = cls()
        if not isinstance(raw, dict):
            return out
        for key in cls.__dataclass_fields__:
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0:
                    raise ValueError(f"threshold {key} must be a number >= 0, not {value!r}")
                setattr(out, key, float(value))
        return out


@dataclass
class Rollout:
    """One canary or shadow, as the registry tag holds it."""

    mode: str
    version: str
    production_version: str | None
    percent: float
    started: float
    duration_s: float = DEFAULT_DURATION_S
    min_requests: int = DEFAULT_MIN_REQUESTS
    auto_promote: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    state: str = RUNNING
    ended: float | None = None
    reason: str = ""
    verdict: dict | None = None

    @property
    def id(self) -> str:
        """Identifies this rollout (a new start is a new id, even for the same version)."""
        return f"{self.mode}-{self.version}-{int(self.started * 1000)}"

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        """Parse the tag; ValueError (one line) for anything malformed."""
        try:
            raw = json.loads(text)
        except ValueError:
            raise ValueError("the rollout tag is not valid JSON") from None
        if not isinstance(raw, dict):
            raise ValueError("the rollout tag is not a JSON object")
        mode = raw.get("mode")
        if mode not in MODES:
            raise ValueError(f"unknown rollout mode {mode!r}")
        version = raw.get("version")
        if not isinstance(version, (str, int)) or isinstance(version, bool) or not str(version).isdigit():
            raise ValueError(f"bad candidate version {version!r}")
        percent, started = raw.get("percent"), raw.get("started")
        for key, value in (("percent", percent), ("started", started), ("duration_s", raw.get("duration_s", 0)),
                           ("min_requests", raw.get("min_requests", 0))):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"bad {key} {value!r}")
        if not 0 < percent <= 100:
            raise ValueError(f"percent {percent!r} is outside (0, 100]")
        state = raw.get("state", RUNNING)
        if state not in (RUNNING, WITHDRAWN, PROMOTED, STOPPED):
            raise ValueError(f"unknown rollout state {state!r}")
        prod = raw.get("production_version")
        return cls(
            mode=mode, version=str(version), production_version=None if prod is None else str(prod),
            percent=float(percent), started=float(started),
            duration_s=float(raw.get("duration_s", DEFAULT_DURATION_S)),
            min_requests=int(raw.get("min_requests", DEFAULT_MIN_REQUESTS)),
            auto_promote=bool(raw.get("auto_promote", False)),
            thresholds=Thresholds.from_dict(raw.get("thresholds")),
            state=state, ended=raw.get("ended") if isinstance(raw.get("ended"), (int, float)) else None,
            reason=str(raw.get("reason") or ""), verdict=raw.get("verdict") if isinstance(raw.get("verdict"), dict) else None,
        )


def parse_duration(text: str) -> float:
    """``300``, ``30s``, ``10m``, ``1h`` -> seconds; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r} (use e.g. 300, 30s, 10m, 1h)")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if value <= 0:
        raise ValueError(f"duration must be > 0, not {text!r}")
    return value


def read(client: MlflowClient, name: str, rm=None) -> Rollout | None:
    """The model's rollout (running or the last one ended), None without one. A malformed tag is
    logged and read as no rollout."""
    rm = rm if rm is not None else registry.get_model(client, name)
    raw = (rm.tags or {}).get(TAG)
    if not raw:
        return None
    try:
        return Rollout.from_json(raw)
    except (ValueError, TypeError) as exc:
        log.warning("ignoring the rollout tag of %s: %s", name, exc)
        return None


def active(client: MlflowClient, name: str, rm=None) -> Rollout | None:
    """The running rollout whose alias still points at its candidate, else None."""
    rm = rm if rm is not None else registry.get_model(client, name)
    ro = read(client, name, rm)
    if ro is None or not ro.running:
        return None
    if str((rm.aliases or {}).get(ro.mode)) != ro.version:
        return None
    return ro


def start(client: MlflowClient, name: str, version: str | int, mode: str, percent: float, *,
          duration_s: float = DEFAULT_DURATION_S, min_requests: int = DEFAULT_MIN_REQUESTS,
          auto_promote: bool = False, thresholds: Thresholds | None = None) -> Rollout:
    """Start a canary or shadow of ``version`` against the Production version."""
    if mode not in MODES:
        raise RolloutError(f"unknown mode '{mode}' (use canary or shadow)")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 100:
        raise RolloutError(f"--percent must be in (0, 100], not {percent}")
    if min_requests < 1:
        raise RolloutError(f"--min-requests must be >= 1, not {min_requests}")
    if duration_s <= 0:
        raise RolloutError(f"--duration must be > 0, not {duration_s}")
    rm = registry.get_model(client, name)
    mv = registry.get_version(client, name, version)
    version = str(mv.version)
    if mv.status != "READY":
        raise RolloutError(f"{name} v{version} is not READY (status {mv.status})")
    running = active(client, name, rm)
    if running is not None:
        raise RolloutError(f"a {running.mode} of {name} v{running.version} is already running "
                           f"(stop it first: mlops {running.mode} stop {name})")
    prod = registry.stage_version(client, name, registry.PRODUCTION)
    if prod is None:
        raise RolloutError(f"{name} has no Production version to compare v{version} with")
    if str(prod.version) == version:
        raise RolloutError(f"{name} v{version} is the Production version already")
    ro = Rollout(mode=mode, version=version, production_version=str(prod.version), percent=float(percent),
                 started=time.time(), duration_s=float(duration_s), min_requests=int(min_requests),
                 auto_promote=bool(auto_promote) and mode == "canary", thresholds=thresholds or Thresholds())
    for other in MODES:
        if other in (rm.aliases or {}):
            client.delete_registered_model_alias(name, other)
    client.set_registered_model_tag(name, TAG, ro.to_json())
    client.set_registered_model_alias(name, mode, version)
    log.info("%s of %s v%s started at %s%% (Production v%s)", mode, name, version, percent, prod.version)
    return ro


def end(client: MlflowClient, name: str, rollout_id: str, state: str, reason: str,
        verdict: dict | None = None, *, mode: str | None = None) -> Rollout | None:
    """End the running rollout ``rollout_id`` (``None``: whichever runs, of ``mode`` if given) as
    ``state`` (withdrawn, stopped, or promoted: the candidate goes through ``registry.promote``).

    Returns the ended rollout, or None when it was no longer running (another worker or replica
    ended it first). Writes the history entry.
    """
    rm = registry.get_model(client, name)
    ro = active(client, name, rm)
    if ro is None or (rollout_id is not None and ro.id != rollout_id) or (mode is not None and ro.mode != mode):
        return None
    if state == PROMOTED:
        registry.promote(client, name, ro.version, registry.PRODUCTION,
                         reason=f"{ro.mode} held for {ro.duration_s:.0f}s: {reason}", action="promote", notify=False)
    ro.state, ro.ended, ro.reason = state, time.time(), reason
    if verdict is not None:
        ro.verdict = verdict
    client.set_registered_model_tag(name, TAG, ro.to_json())
    try:
        client.delete_registered_model_alias(name, ro.mode)
    except Exception as exc:  # noqa: BLE001 - already gone (another worker)
        log.info("alias %s of %s was already removed: %s", ro.mode, name, exc)
    if state != PROMOTED:
        registry.append_history(client, name, action=f"{ro.mode}-{state}", stage=ro.mode.capitalize(),
                                from_version=ro.production_version, to_version=ro.version, reason=reason)
    log.warning("%s of %s v%s %s: %s", ro.mode, name, ro.version, state, reason)
    return ro


# -- judgement ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def table(stats: dict) -> dict:
    """Side-by-side figures of Production and the candidate from merged stats (see serving.rollout)."""
    out = {}
    for role in ("production", "candidate"):
        r = stats.get(role) or {}
        n, err, lat = int(r.get("requests", 0)), int(r.get("errors", 0)), list(r.get("latency_ms", []))
        out[role] = {"requests": n, "errors": err, "error_rate": (err / n) if n else None,
                     "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99)}
    cmp_ = stats.get("compared") or {}
    compared = int(cmp_.get("n", 0))
    out["compared"] = compared
    out["agreement"] = (cmp_.get("equal", 0) / compared) if compared and cmp_.get("kind") != "regression" else None
    out["relative_difference"] = (cmp_.get("rel_diff_sum", 0.0) / compared) \
        if compared and cmp_.get("kind") == "regression" else None
    out["kind"] = cmp_.get("kind")
    out["shadow_dropped"] = int(stats.get("dropped", 0))
    return out


def judge(ro: Rollout, figures: dict, now: float | None = None) -> tuple[str, str]:
    """``("breach", why)``, ``("hold", why)`` (the window is over, every threshold held) or
    ``("wait", why)``, from the side-by-side ``figures`` of :func:`table`."""
    now = time.time() if now is None else now
    t = ro.thresholds
    cand, prod = figures["candidate"], figures["production"]
    if cand["requests"] < ro.min_requests:
        return "wait", f"{cand['requests']} of {ro.min_requests} candidate requests so far"
    if cand["error_rate"] is not None and cand["error_rate"] > t.max_error_rate:
        return "breach", (f"error rate {cand['error_rate']:.3f} > {t.max_error_rate} "
                          f"({cand['errors']} of {cand['requests']} candidate requests failed)")
    for q, ratio in (("p50", t.max_p50_ratio), ("p99", t.max_p99_ratio)):
        c, p = cand[f"{q}_ms"], prod[f"{q}_ms"]
        if c is not None and p is not None:
            limit = ratio * p + t.latency_slack_ms
            if c > limit:
                return "breach", f"{q} latency {c:.1f} ms > {limit:.1f} ms ({ratio} x Production's {p:.1f} ms + " \
                                 f"{t.latency_slack_ms:g} ms)"
    if figures["agreement"] is not None and figures["compared"] >= min(ro.min_requests, 20) \
            and figures["agreement"] < t.min_agreement:
        return "breach", f"agreement {figures['agreement']:.3f} < {t.min_agreement} over {figures['compared']} requests"
    rel = figures["relative_difference"]
    if rel is not None and figures["compared"] >= min(ro.min_requests, 20) and rel > t.max_relative_difference:
        return "breach", f"relative difference {rel:.3f} > {t.max_relative_difference} over {figures['compared']} requests"
    if now - ro.started >= ro.duration_s:
        return "hold", f"held every threshold for {ro.duration_s:.0f}s over {cand['requests']} candidate requests"
    return "wait", f"holding; {ro.duration_s - (now - ro.started):.0f}s of the window left"


def format_table(ro: Rollout, figures: dict | None) -> list[str]:
    """The side-by-side table ``mlops canary status`` prints."""
    lines = [f"{ro.mode} of v{ro.version} at {ro.percent:g}% against Production v{ro.production_version}: {ro.state}"
             + (f" ({ro.reason})" if ro.reason else ""),
             f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ro.started))}, window {ro.duration_s:g}s, "
             f"min requests {ro.min_requests}, auto-promote {'on' if ro.auto_promote else 'off'}"]
    if not figures:
        lines.append("no figures yet (give --serving-url to read them from serving)")
        return lines

    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    t = ro.thresholds
    p, c = figures["production"], figures["candidate"]
    lines.append(f"{'':14} {'production':>12} {'candidate':>12}  threshold")
    lines.append(f"{'requests':14} {p['requests']:>12} {c['requests']:>12}  >= {ro.min_requests} (candidate)")
    lines.append(f"{'errors':14} {p['errors']:>12} {c['errors']:>12}")
    lines.append(f"{'error rate':14} {fmt(p['error_rate'], '.4f'):>12} {fmt(c['error_rate'], '.4f'):>12}  "
                 f"<= {t.max_error_rate:g}")
    lines.append(f"{'p50 ms':14} {fmt(p['p50_ms'], '.2f'):>12} {fmt(c['p50_ms'], '.2f'):>12}  "
                 f"<= {t.max_p50_ratio:g} x production + {t.latency_slack_ms:g}")
    lines.append(f"{'p99 ms':14} {fmt(p['p99_ms'], '.2f'):>12} {fmt(c['p99_ms'], '.2f'):>12}  "
                 f"<= {t.max_p99_ratio:g} x production + {t.latency_slack_ms:g}")
    if figures.get("kind") == "regression":
        lines.append(f"{'rel. diff':14} {'':>12} {fmt(figures['relative_difference'], '.4f'):>12}  "
                     f"<= {t.max_relative_difference:g} over {figures['compared']} compared")
    else:
        lines.append(f"{'agreement':14} {'':>12} {fmt(figures['agreement'], '.4f'):>12}  "
                     f">= {t.min_agreement:g} over {figures['compared']} compared")
    if ro.mode == "shadow":
        lines.append(f"{'shadow dropped':14} {'':>12} {figures.get('shadow_dropped', 0):>12}")
    return lines


__all__ = ["MODES", "TAG", "Rollout", "RolloutError", "Thresholds", "active", "end", "format_table", "judge",
           "parse_duration", "percentile", "read", "start", "table"]
