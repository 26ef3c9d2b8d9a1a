"""The serving service's settings: one typed object, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlops import config

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_COLUMNS = 2048
DEFAULT_THREADS = 4
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_BATCH_MAX_ROWS = 256
MAX_DEFAULT_WORKERS = 8


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use (one readable line)."""


def default_workers() -> int:
    """2 x cores + 1, at most 8 (each worker holds its own copy of the model)."""
    return max(1, min(2 * (os.cpu_count() or 1) + 1, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the service reads from its environment (names as in the interface contract)."""

    tracking_uri: str
    model_name: str = config.DEFAULT_MODEL_NAME
    model_stage: str | None = "Production"
    model_alias: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = field(default_factory=default_workers)
    threads: int = DEFAULT_THREADS
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    poll_interval_s: float = 0.5
    model_cache_dir: Path = Path("models")
    log_dir: Path = Path("logs")
    admin_token: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_columns: int = DEFAULT_MAX_COLUMNS
    log_level: str = "INFO"
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    registry_timeout_s: float = 5.0
    retry_failed_after_s: float = 60.0
    keep_loaded_versions: int = 2
    #: True: refuse unknown columns and top-level keys with this service's own error codes (the
    #: behaviour before MLflow parity); False (default): answer /invocations as `mlflow models serve`
    strict_input: bool = False
    #: merge concurrent predictions of one version into one call (serving.batching)
    batching: bool = True
    batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS
    batch_max_wait_ms: float = 0.0
    #: canary/shadow comparisons waiting to run off the request path, per worker (serving.rollout)
    shadow_queue_size: int = 256
    # -- gunicorn (serving/gunicorn.conf.py) --
    worker_class: str = "serving.worker.ServingWorker"
    keepalive_s: int = 5
    timeout_s: int = 60
    graceful_timeout_s: int = 20
    access_log: str | None = None
    forwarded_allow_ips: str = "127.0.0.1"
    metrics_dir: Path | None = None

    @property
    def selector(self) -> str:
        """``stage:Production`` or ``alias:champion``: what this service follows."""
        return f"alias:{self.model_alias}" if self.model_alias else f"stage:{self.model_stage}"

    @property
    def selector_label(self) -> str:
        """Human form of the selector: ``Production`` or ``@champion``."""
        return f"@{self.model_alias}" if self.model_alias else str(self.model_stage)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: object) -> Settings:
        """Read and check every variable; raise SettingsError naming the first bad one.

        ``options`` (field names, e.g. ``port=5002``; None is skipped) take the place of their
        variable and are checked the same way: ``mlops serve --port`` hands its options here.
        """
        env = os.environ if env is None else env
        given = {k: v for k, v in options.items() if v is not None}
        if unknown := sorted(set(given) - set(OPTION_VARS)):
            raise SettingsError(f"unknown serving option(s): {', '.join(unknown)}")
        if given:
            env = {**env, **{OPTION_VARS[k]: str(v) for k, v in given.items()}}

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        def number(name: str, kind, default, low=None, high=None):
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name} must be {_KIND_WORDS[kind]}, got {raw!r}") from None
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f">= {low}"
                raise SettingsError(f"{name} must be {bounds}, got {raw}")
            return value

        stage, alias = get("MODEL_STAGE"), get("MODEL_ALIAS")
        if stage and alias:
            raise SettingsError("set only one of MODEL_STAGE or MODEL_ALIAS (got both)")
        if alias is None:
            stage = _normalize_stage(stage or "Production")
        home = config.project_home()
        level = (get("LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level}")
        return cls(
            tracking_uri=config.tracking_uri(get("MLFLOW_TRACKING_URI")),
            model_name=get("MODEL_NAME") or config.DEFAULT_MODEL_NAME,
            model_stage=None if alias else stage,
            model_alias=alias,
            host=get("HOST") or "127.0.0.1",
            port=number("PORT", int, 5000, 1, 65535),
            workers=number("WORKERS", int, default_workers(), 1, 64),
            threads=number("THREADS", int, DEFAULT_THREADS, 1, 64),
            read_timeout_s=number("READ_TIMEOUT_S", float, DEFAULT_READ_TIMEOUT_S, 0.5, 600),
            poll_interval_s=number("POLL_INTERVAL_S", float, 0.5, 0.05, 3600),
            model_cache_dir=_path(get("MODEL_CACHE_DIR"), home / "models"),
            log_dir=_path(get("LOG_DIR"), home / "logs"),
            admin_token=get("ADMIN_TOKEN"),
            api_token=get("API_TOKEN"),
            max_body_bytes=number("MAX_BODY_BYTES", int, DEFAULT_MAX_BODY_BYTES, 1024),
            max_columns=number("MAX_COLUMNS", int, DEFAULT_MAX_COLUMNS, 1, 1_000_000),
            log_level=level,
            log_max_bytes=number("LOG_MAX_BYTES", int, 10 * 1024 * 1024, 1024),
            log_backups=number("LOG_BACKUPS", int, 5, 0, 1000),
            registry_timeout_s=number("REGISTRY_TIMEOUT_S", float, 5.0, 0.1, 600),
            retry_failed_after_s=number("RETRY_FAILED_AFTER_S", float, 60.0, 0, 86400),
            keep_loaded_versions=number("KEEP_LOADED_VERSIONS", int, 2, 1, 20),
            strict_input=_flag("STRICT_INPUT", get("STRICT_INPUT"), False),
            batching=_flag("BATCHING", get("BATCHING"), True),
            batch_max_rows=number("BATCH_MAX_ROWS", int, DEFAULT_BATCH_MAX_ROWS, 1, 1_000_000),
            batch_max_wait_ms=number("BATCH_MAX_WAIT_MS", float, 0.0, 0, 10_000),
            shadow_queue_size=number("SHADOW_QUEUE_SIZE", int, 256, 1, 100_000),
            worker_class=get("WORKER_CLASS") or "serving.worker.ServingWorker",
            keepalive_s=number("KEEPALIVE_S", int, 5, 0, 3600),
            timeout_s=number("TIMEOUT_S", int, 60, 0, 86400),
            graceful_timeout_s=number("GRACEFUL_TIMEOUT_S", int, 20, 0, 86400),
            access_log=get("ACCESS_LOG"),
            forwarded_allow_ips=get("FORWARDED_ALLOW_IPS") or "127.0.0.1",
            metrics_dir=Path(raw_dir) if (raw_dir := get("PROMETHEUS_MULTIPROC_DIR")) else None,
        )

    def environ(self) -> dict[str, str]:
        """The variables that give a child process (gunicorn) these same settings' options."""
        return {var: str(getattr(self, name)) for name, var in OPTION_VARS.items()}

    def __repr__(self) -> str:
        return f"Settings({self.public()})"

    def public(self) -> dict:
        """The settings without secrets (for /api/model/info and startup logs)."""
        return {
            "tracking_uri": config.redact_uri(self.tracking_uri),
            "model_name": self.model_name,
            "selector": self.selector,
            "poll_interval_s": self.poll_interval_s,
            "keep_loaded_versions": self.keep_loaded_versions,
            "model_cache_dir": str(self.model_cache_dir),
            "log_dir": str(self.log_dir),
            "max_body_bytes": self.max_body_bytes,
            "max_columns": self.max_columns,
            "api_token_required": bool(self.api_token),
            "admin_token_configured": bool(self.admin_token),
            "strict_input": self.strict_input,
            "batching": self.batching_public(),
        }

    def batching_public(self) -> dict:
        """The batching settings (``/health`` and ``/api/model/info`` show them)."""
        return {"enabled": self.batching, "max_rows": self.batch_max_rows, "max_wait_ms": self.batch_max_wait_ms}


#: The settings a command line may give (``mlops serve``), and the variable each stands for.
OPTION_VARS = {"tracking_uri": "MLFLOW_TRACKING_URI", "host": "HOST", "port": "PORT", "workers": "WORKERS", "threads": "THREADS"}

_KIND_WORDS = {int: "a whole number", float: "a number"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, raw: str | None, default: bool) -> bool:
    """A boolean variable (true/false, 1/0, yes/no, on/off); SettingsError for anything else."""
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _normalize_stage(stage: str) -> str:
    for known in ("Production", "Staging", "Archived", "None"):
        if stage.lower() == known.lower():
            return known
    raise SettingsError(f"MODEL_STAGE must be Production, Staging, Archived or None, got {stage!r}")


def _path(value: str | None, default: Path) -> Path:
    return Path(value).expanduser().resolve() if value else default
