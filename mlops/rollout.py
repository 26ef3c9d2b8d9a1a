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
MIN_PERCENT = 0.01  # routing works in 10 000 buckets
MAX_DURATION_S = 366 * 86400.0
MAX_MIN_REQUESTS = 10**9
MAX_TIMEOUT_MS = 3_600_000.0
MAX_THRESHOLD = 1e9
MAX_TAG_CHARS = 64 * 1024  # what a registry tag of this project may hold (a verdict included)
_DIGITS = re.compile(r"[0-9]{1,18}")


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
                timeout = key == "timeout_ms"
                setattr(out, key, _number(f"threshold {key}", raw[key], 0.0,
                                          MAX_TIMEOUT_MS if timeout else MAX_THRESHOLD, low_open=timeout))
        return out

    def check(self) -> None:
        """ValueError naming the first value out of range (NaN, infinite, negative, too large)."""
        Thresholds.from_dict(asdict(self))


def _number(what: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] with ``low_open``); ValueError else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{what} is out of range") from None
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{what} must be in {interval}, not {shown}")
    return number


def _plain(value: object, depth: int = 0) -> bool:
    """True for small JSON of finite numbers, short strings, shallow lists and objects (a verdict)."""
    if depth > 6:
        return False
    if value is None or isinstance(value, bool | str):
        return not isinstance(value, str) or len(value) <= 2000
    if isinstance(value, int):
        return abs(value) < 2**53
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return len(value) <= 10000 and all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 100 and all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


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
        """Parse the tag (registry contents are untrusted); ValueError (one line) for anything
        malformed or out of range."""
        if not isinstance(text, str) or len(text) > MAX_TAG_CHARS:
            raise ValueError("the rollout tag is too long")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError("the rollout tag is not valid JSON") from None
        if not isinstance(raw, dict):
            raise ValueError("the rollout tag is not a JSON object")
        try:
            return cls._from_dict(raw)
        except (TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"the rollout tag holds a bad value ({type(exc).__name__})") from None

    @classmethod
    def _from_dict(cls, raw: dict) -> Rollout:
        mode = raw.get("mode")
        if mode not in MODES:
            raise ValueError(f"unknown rollout mode {str(mode)[:40]!r}")
        version = _version("candidate version", raw.get("version"))
        prod = raw.get("production_version")
        state = raw.get("state", RUNNING)
        if state not in (RUNNING, WITHDRAWN, PROMOTED, STOPPED):
            raise ValueError(f"unknown rollout state {str(state)[:40]!r}")
        auto = raw.get("auto_promote", False)
        if not isinstance(auto, bool):
            raise ValueError("auto_promote must be true or false")
        ended = raw.get("ended")
        verdict = raw.get("verdict")
        return cls(
            mode=mode, version=version,
            production_version=None if prod is None else _version("production version", prod),
            percent=_number("percent", raw.get("percent"), 0.0, 100.0, low_open=True),
            started=_number("started", raw.get("started"), 0.0, 1e11),
            duration_s=_number("duration_s", raw.get("duration_s", DEFAULT_DURATION_S), 0.0, MAX_DURATION_S,
                               low_open=True),
            min_requests=int(_number("min_requests", raw.get("min_requests", DEFAULT_MIN_REQUESTS), 1,
                                     MAX_MIN_REQUESTS)),
            auto_promote=auto, thresholds=Thresholds.from_dict(raw.get("thresholds")), state=state,
            ended=None if ended is None else _number("ended", ended, 0.0, 1e11),
            reason=str(raw.get("reason") or "")[:2000],
            verdict=verdict if isinstance(verdict, dict) and _plain(verdict) else None,
        )


def _version(what: str, value: object) -> str:
    """A version number as the registry writes it (ASCII digits); ValueError otherwise."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"bad {what} {str(value)[:40]!r}")
    return str(int(text))


def parse_duration(text: str) -> float:
    """``300``, ``30s``, ``10m``, ``1h`` -> seconds; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r} (use e.g. 300, 30s, 10m, 1h)")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not 0 < value <= MAX_DURATION_S:
        raise ValueError(f"duration must be > 0 and at most 366 days, not {text[:40]!r}")
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
    except Exception as exc:  # noqa: BLE001 - registry contents are untrusted: never a traceback
        log.warning("ignoring the rollout tag of %s: %s", name, str(exc)[:200])
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
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not MIN_PERCENT <= percent <= 100:
        raise RolloutError(f"--percent must be in [{MIN_PERCENT}, 100], not {percent}")
    if not 1 <= min_requests <= MAX_MIN_REQUESTS:
        raise RolloutError(f"--min-requests must be in [1, {MAX_MIN_REQUESTS}], not {min_requests}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise RolloutError(f"--duration must be > 0 and at most 366 days, not {duration_s}")
    try:
        (thresholds or Thresholds()).check()
    except ValueError as exc:
        raise RolloutError(str(exc).replace("threshold ", "--").replace("_", "-")) from None
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
    try:
        Rollout.from_json(ro.to_json())  # what serving will read back must parse
    except ValueError as exc:
        raise RolloutError(f"refusing to write an unreadable rollout: {exc}") from None
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
    ro.state, ro.ended, ro.reason = state, time.time(), str(reason)[:2000]
    if verdict is not None:
        ro.verdict = verdict
    try:
        Rollout.from_json(ro.to_json())  # what serving and `status` read back must parse
    except ValueError as exc:
        log.warning("the verdict of %s's %s is dropped (%s)", name, ro.mode, exc)
        ro.verdict = None
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

    try:
        return lines + _figure_lines(ro, figures)
    except Exception:  # noqa: BLE001 - figures come from a tag or a serving answer: untrusted
        return [*lines, "figures unreadable (malformed verdict or serving answer)"]


def _figure_lines(ro: Rollout, figures: dict) -> list[str]:
    lines: list[str] = []

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
