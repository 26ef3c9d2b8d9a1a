"""Registry operations shared by training, serving and the `mlops` CLI.

Conventions: Production and Staging are kept both as a (deprecated upstream) stage and as an alias
(``production`` / ``staging``) on the same version; the promotion history is a bounded JSON log in
the registered-model tag ``mlops.promotion_history`` so it travels with backups.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import re
import time
import warnings
from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlops import config, env, errors
from mlops.util import paged

log = logging.getLogger(__name__)

PRODUCTION = "Production"
STAGING = "Staging"
ARCHIVED = "Archived"
STAGES = ("None", STAGING, PRODUCTION, ARCHIVED)
STAGE_ALIASES = {PRODUCTION: "production", STAGING: "staging"}
HISTORY_TAG = "mlops.promotion_history"
HISTORY_MAX_CHARS = 4800  # registered-model tag values are VARCHAR(5000) on SQL stores
REASON_MAX_CHARS = 300


class RegistryError(errors.MlopsError, RuntimeError):
    """A registry operation that cannot proceed; the message is one readable line."""


class NotInRegistry(RegistryError, errors.NotFound):
    """The registered model, version, alias or stage named does not exist."""


class RegistryReadError(RegistryError, errors.Unreachable):
    """The registry could not be read (connection, server or database error)."""


@contextlib.contextmanager
def stage_api():
    """Silence MLflow's stage deprecation warning for the calls that need stages."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated.*")
        yield


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient on the given URI (default: env or the embedded store, created if needed)."""
    uri = config.tracking_uri(tracking_uri)
    config.ensure_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_model(client: MlflowClient, name: str):
    """The registered model, or a RegistryError naming it."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise NotInRegistry(f"registered model '{name}' does not exist") from None
        raise RegistryReadError(f"cannot read registered model '{name}': {exc.message}") from None


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """One model version, or a RegistryError naming it."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        get_model(client, name)
        raise NotInRegistry(f"model '{name}' has no version {version}") from None


def stage_version(client: MlflowClient, name: str, stage: str) -> ModelVersion | None:
    """The version currently in ``stage`` (highest number if several), or None."""
    with stage_api():
        versions = client.get_latest_versions(name, stages=[stage])
    if not versions:
        return None
    return max(versions, key=lambda v: int(v.version))


def resolve(client: MlflowClient, name: str, stage: str | None = None, alias: str | None = None) -> ModelVersion:
    """Resolve the selected version by stage or alias (exactly one)."""
    if bool(stage) == bool(alias):
        raise RegistryError("give exactly one of stage or alias")
    if alias:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException:
            get_model(client, name)
            raise NotInRegistry(f"model '{name}' has no alias '{alias}'") from None
    mv = stage_version(client, name, stage)
    if mv is None:
        get_model(client, name)
        raise NotInRegistry(f"model '{name}' has no version in stage {stage}")
    return mv


@dataclass
class HistoryEntry:
    """One promotion or rollback."""

    time: str
    user: str
    action: str
    stage: str
    from_version: str | None
    to_version: str
    reason: str


def history(client: MlflowClient, name: str) -> list[HistoryEntry]:
    """The promotion history of a model, oldest first."""
    rm = get_model(client, name)
    raw = (rm.tags or {}).get(HISTORY_TAG)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        log.warning("promotion history tag of %s is not valid JSON; ignoring it", name)
        return []
    if not isinstance(entries, list):
        log.warning("promotion history tag of %s is not a JSON list; ignoring it", name)
        return []
    fields = HistoryEntry.__dataclass_fields__
    out = []
    for e in entries:
        if not isinstance(e, dict) or e.get("to_version") is None:
            continue
        row = {k: e.get(k) for k in fields}
        for k in ("from_version", "to_version"):
            row[k] = None if row[k] is None else str(row[k])
        for k in ("time", "user", "action", "stage", "reason"):
            row[k] = "" if row[k] is None else str(row[k])
        out.append(HistoryEntry(**row))
    return out


def _write_history(client: MlflowClient, name: str, entries: list[HistoryEntry]) -> None:
    data = [asdict(e) for e in entries]
    text = json.dumps(data, separators=(",", ":"))
    while len(text) > HISTORY_MAX_CHARS and len(data) > 1:
        data = data[1:]
        text = json.dumps(data, separators=(",", ":"))
    client.set_registered_model_tag(name, HISTORY_TAG, text)


def append_history(client: MlflowClient, name: str, *, action: str, stage: str, from_version: str | None,
                   to_version: str, reason: str = "") -> HistoryEntry:
    """Append one entry to the promotion history (canary and shadow outcomes use it too)."""
    entry = HistoryEntry(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         user=env.MLOPS_USER.get() or _user(), action=action, stage=stage,
                         from_version=from_version, to_version=str(to_version), reason=_clip(reason or ""))
    entries = history(client, name)
    entries.append(entry)
    _write_history(client, name, entries)
    return entry


def _sync_aliases(client: MlflowClient, name: str) -> None:
    """Point each stage alias at the version holding that stage (delete it if none does)."""
    rm = get_model(client, name)
    aliases = dict(rm.aliases or {})
    for stage, alias in STAGE_ALIASES.items():
        holder = stage_version(client, name, stage)
        if holder is None:
            if alias in aliases:
                client.delete_registered_model_alias(name, alias)
        elif str(aliases.get(alias)) != str(holder.version):
            client.set_registered_model_alias(name, alias, str(holder.version))


@dataclass
class PromotionResult:
    """What a promotion or rollback changed."""

    name: str
    stage: str
    from_version: str | None
    to_version: str
    notified: bool | None
    changed: bool = True


def promote(
    client: MlflowClient,
    name: str,
    version: str | int,
    stage: str = PRODUCTION,
    reason: str = "",
    *,
    action: str = "promote",
    preflight: bool = True,
    notify: bool = True,
) -> PromotionResult:
    """Move ``version`` into ``stage`` (archiving the previous holder), with the matching alias.

    Pre-flight (download, load, predict on the input example) runs first; on failure nothing
    changes. Appends a history entry and, when ``SERVING_URL`` is set, asks serving to reload.
    A version already in ``stage`` is a no-op (``changed=False``): no history entry, no reload,
    only the stage alias is put back on it if it had drifted.
    """
    stage = normalize_stage(stage)
    mv = get_version(client, name, version)
    version = str(mv.version)
    if mv.current_stage == stage:
        _sync_aliases(client, name)
        log.info("%s: %s v%s is already in %s; nothing changed", action, name, version, stage)
        return PromotionResult(name, stage, version, version, None, changed=False)
    if mv.status != "READY":
        raise RegistryError(f"{name} v{version} is not READY (status {mv.status})")
    if preflight:
        from mlops.model_io import ModelLoadError
        from mlops.model_io import preflight as run_preflight

        try:
            run_preflight(name, version, client.tracking_uri)
        except ModelLoadError as exc:
            raise RegistryError(f"pre-flight failed for {name} v{version}, nothing changed: {exc}") from None
    previous = stage_version(client, name, stage)
    from_version = str(previous.version) if previous else None
    with stage_api():
        client.transition_model_version_stage(
            name, version, stage, archive_existing_versions=True
        )
    _sync_aliases(client, name)
    entries = history(client, name)
    entries.append(
        HistoryEntry(
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            user=env.MLOPS_USER.get() or _user(),
            action=action,
            stage=stage,
            from_version=from_version,
            to_version=str(version),
            reason=_clip(reason or ""),
        )
    )
    _write_history(client, name, entries)
    log.info("%s: %s v%s -> %s (was v%s)", action, name, version, stage, from_version)
    notified = notify_serving() if notify else None
    return PromotionResult(name, stage, from_version, str(version), notified)


def rollback(client: MlflowClient, name: str, to: str | int | None = None, reason: str = "") -> PromotionResult:
    """Move Production back to the previous Production version (from the history) or to ``to``.

    Without ``to`` the target is the version that held Production before the latest Production
    entry of the history, so rolling back twice alternates between the last two versions.
    No-op entries (from == to, written by older releases for a re-promotion) are skipped.
    """
    get_model(client, name)
    current = stage_version(client, name, PRODUCTION)
    if to is None:
        prod = [e for e in history(client, name)
                if e.stage == PRODUCTION and str(e.from_version) != str(e.to_version)]
        if not prod:
            raise RegistryError(f"no promotion history for '{name}': nothing to roll back to (use --to)")
        last = prod[-1]
        if not last.from_version:
            raise RegistryError(
                f"'{name}' had no Production version before v{last.to_version}: nothing to roll back to"
            )
        to = last.from_version
    if current is not None and str(to) == str(current.version):
        raise RegistryError(f"{name} v{to} is already in Production")
    return promote(client, name, to, PRODUCTION, reason or "rollback", action="rollback")


def normalize_stage(stage: str) -> str:
    """Accept any case of a stage name; RegistryError otherwise."""
    for s in STAGES:
        if s.lower() == str(stage).lower():
            return s
    raise RegistryError(f"unknown stage '{stage}' (use one of {', '.join(STAGES)})")


def notify_serving(url: str | None = None, token: str | None = None, timeout: float = 5.0) -> bool | None:
    """POST /api/model/reload to the serving service if ``SERVING_URL`` is set; None if not set."""
    url = url or env.SERVING_URL.get()
    if not url:
        return None
    import requests

    token = token or env.ADMIN_TOKEN.get()
    try:
        r = requests.post(
            url.rstrip("/") + "/api/model/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        log.warning("could not notify serving at %s (%s); it will follow by polling", url, type(exc).__name__)
        return False
    if r.status_code >= 400:
        log.warning("serving at %s answered %s to reload; it will follow by polling", url, r.status_code)
        return False
    return True


def _clip(text: str, limit: int = REASON_MAX_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def serving_health(url: str | None, timeout: float = 3.0) -> dict | None:
    """The serving service's /health JSON, {"error": ...} if unreachable, None without a URL."""
    if not url:
        return None
    import requests

    try:
        return requests.get(url.rstrip("/") + "/health", timeout=timeout).json()
    except (requests.RequestException, ValueError) as exc:
        return {"error": f"unreachable ({type(exc).__name__})"}


def status(client: MlflowClient, name: str | None = None, serving_url: str | None = None) -> dict:
    """Every (or one) model's versions with stage, aliases, accuracy, and the serving version."""
    models = [get_model(client, name)] if name else list(_all_models(client))
    health = serving_health(serving_url)
    out = {"models": [], "serving": health}
    for rm in sorted(models, key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, ver in (rm.aliases or {}).items():
            by_version.setdefault(str(ver), []).append(alias)
        versions = [v for v in client.search_model_versions(version_filter(rm.name)) if v.name == rm.name]
        rows = []
        for v in sorted(versions, key=lambda v: int(v.version)):
            acc = (v.tags or {}).get("accuracy")
            rows.append({
                "version": str(v.version),
                "stage": v.current_stage,
                "aliases": sorted(by_version.get(str(v.version), [])),
                "accuracy": acc,
                "status": v.status,
                "run_id": v.run_id,
            })
        serving_version = None
        if health and health.get("model_name") == rm.name:
            serving_version = health.get("model_version")
        out["models"].append({"name": rm.name, "versions": rows, "serving_version": serving_version})
    return out


def version_filter(name: str) -> str:
    """A ``search_model_versions`` filter matching ``name`` (with ``LIKE`` possibly more: keep the
    exact matches). MLflow's filter strings have no escape: a name holding both quote characters
    or a backslash is matched with ``_`` in their place."""
    if "\\" not in name and "'" not in name:
        return f"name = '{name}'"
    if "\\" not in name and '"' not in name:
        return f'name = "{name}"'
    return "name LIKE '" + re.sub(r"['\"\\]", "_", name) + "'"


def _all_models(client: MlflowClient):
    return paged(client.search_registered_models, max_results=200)
