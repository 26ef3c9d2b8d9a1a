"""Model lifecycle inside one worker: follow the registry, swap versions safely, fall back to cache.

Each gunicorn worker owns one ``ModelManager``. Its poller thread is started after the fork
(gunicorn ``post_worker_init``, or lazily on the first request), never in the master. Every
``POLL_INTERVAL_S`` it resolves the selected version (stage or alias) in the registry; when that
changes it downloads the version into the cache (once for all workers), loads it, smoke-tests it
and only then replaces the one ``current`` reference that requests read. A version that fails any
of those steps is never swapped in: the old one keeps serving, the failure is logged at ERROR,
counted and shown in ``/health``, and retried only after a back-off or an operator's reload.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from mlops import errors, registry
from mlops.model_io import ModelLoadError
from mlops.util import first_line
from serving.cache import CacheFull, ModelCache, no_space
from serving.health import HealthReport, iso
from serving.metrics import Metrics
from serving.runtime import ModelRuntime, VersionMeta
from serving.settings import Settings

log = logging.getLogger("serving.manager")

DOWNLOAD_RETRY_S = 5.0
FULL_CHECK_S = 30.0
MARKER_TICK_S = 0.05  # how often a waiting poller looks at the reload marker (one stat)


class RegistryUnreachable(RuntimeError):
    """The registry could not be asked (network, server error)."""


class NothingSelected(RuntimeError):
    """The registry answered, but no version holds the stage/alias."""


@dataclass
class Failure:
    """A version that could not be swapped in."""

    version: str
    phase: str
    error: str
    at: float
    retry_at: float

    def to_dict(self) -> dict:
        return {"version": self.version, "phase": self.phase, "error": self.error, "at": iso(self.at),
                "retry_at": iso(self.retry_at)}


class ModelManager(HealthReport):
    """Holds the version this worker serves and keeps it in step with the registry."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.cache = ModelCache(settings.model_cache_dir, settings.model_name)
        self.current: ModelRuntime | None = None
        self.registry_reachable: bool | None = None
        self.registry_version: str | None = None
        self.registry_note: str | None = None
        self.last_check_at: float | None = None
        self.last_check_ok_at: float | None = None
        self.last_check_error: str | None = None
        self.last_swap_error: Failure | None = None
        self.started_from_cache = False
        self.checked = False  # one check has finished (before that the status is "starting")
        self.served_note: str | None = None  # what the registry says of the served version when nothing is selected
        self.cache_note: str | None = None  # why the cache could not provide a version
        self.swaps = 0
        self.failures: dict[str, Failure] = {}
        # Versions this worker loaded and smoke-tested, newest last: the current one plus up to
        # KEEP_LOADED_VERSIONS - 1 it served before, so moving back to one of them is a reference swap.
        self.loaded: OrderedDict[str, ModelRuntime] = OrderedDict()
        self._cache_tried: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._client = None
        self._reload_seen = 0.0
        self._db_stamp: tuple | None = None
        self._db_stamp_at = 0.0
        #: the canary/shadow follower (serving.rollout.RolloutController), set by the app
        self.rollout = None

    # -- thread -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the poller in this process (idempotent; a forked child starts its own)."""
        if self.running:
            return
        with self._lock:
            if self.running:
                return
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(math.ceil(self.settings.registry_timeout_s)))
            self._pid = os.getpid()
            self._client = None
            self._stop.clear()
            self._reload_seen = self.cache.reload_marker_mtime()
            self._thread = threading.Thread(target=self._run, name="registry-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        log.info(
            "following %s %s in %s (poll every %ss)", self.settings.model_name, self.settings.selector_label,
            self.settings.public()["tracking_uri"], self.settings.poll_interval_s,
        )
        force = False
        while not self._stop.is_set():
            try:
                self.check(force=force or self._reload_requested())
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("registry poll failed unexpectedly")
            force = self._sleep(self.settings.poll_interval_s)

    def _sleep(self, seconds: float) -> bool:
        """Wait until the next tick; True when another worker asked for a reload in the meantime.

        The reload marker is looked at every ``MARKER_TICK_S`` (a ``stat``), so a push received
        by one worker reaches the others within that time instead of at their next poll.
        """
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(MARKER_TICK_S, left)):
                self._wake.clear()
                return False
            if self._reload_requested():
                return True
        return False

    def _reload_requested(self) -> bool:
        mtime = self.cache.reload_marker_mtime()
        if mtime > self._reload_seen:
            self._reload_seen = mtime
            return True
        return False

    # -- one check --------------------------------------------------------------------------------

    def check(self, force: bool = False, timeout: float | None = None) -> dict:
        """Ask the registry once and swap if the selection changed. Returns what happened."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return {"swapped": False, "error": "another check is still running"}
        try:
            result = self._check(force)
            if self.rollout is not None:
                self.rollout.follow(force)  # the candidate next to `current` (serving.rollout)
            return result
        finally:
            self.checked = True
            self._lock.release()

    def _check(self, force: bool) -> dict:
        before = self.current.version if self.current else None
        now = time.time()
        if not force and self._store_unchanged(now):
            self.last_check_at = now
            self.last_check_ok_at = now
            return self._result(before)
        self.metrics.registry_checks.inc()
        self.last_check_at = now
        try:
            mv = self._resolve()
        except RegistryUnreachable as exc:
            self._registry_failed(str(exc))
            if self.current is None:
                self._load_from_cache("the registry is unreachable")
            return self._result(before, error=f"registry unreachable: {exc}")
        except NothingSelected as exc:
            self._registry_ok(None, str(exc))
            if self.current is None:
                self._load_from_cache(str(exc))
            if self.current is not None:
                self.served_note = self._served_version_state(self.current.version)
            return self._result(before, error=str(exc))
        self._registry_ok(mv.version, None)
        self.served_note = None
        if self.current is not None and _same_version(self.current, mv):
            self.current.meta.stage = mv.current_stage or self.current.meta.stage
            self.last_swap_error = None
            return self._result(before)
        failure = self.failures.get(str(mv.version))
        if failure is not None and not force and time.time() < failure.retry_at:
            return self._result(before, error=f"v{mv.version} refused: {failure.error}")
        error = self._swap_to(mv)
        if self.current is None:
            self._load_from_cache(f"v{mv.version} cannot be loaded")
        return self._result(before, error=error)

    def _result(self, before: str | None, error: str | None = None) -> dict:
        now = self.current.version if self.current else None
        return {
            "model_name": self.settings.model_name,
            "previous_version": before,
            "model_version": now,
            "registry_version": self.registry_version,
            "swapped": now != before,
            "error": error,
        }

    def _registry_failed(self, error: str) -> None:
        self.metrics.registry_failures.inc()
        self.metrics.registry_up.labels(self.settings.model_name).set(0)
        if self.registry_reachable is not False:
            log.warning("registry unreachable (%s); serving continues with %s", error,
                        f"v{self.current.version}" if self.current else "no model yet")
        self.registry_reachable = False
        self.last_check_error = error

    def _registry_ok(self, version: str | None, note: str | None) -> None:
        if self.registry_reachable is False:
            log.info("registry reachable again")
        self.metrics.registry_up.labels(self.settings.model_name).set(1)
        self.registry_reachable = True
        self.registry_version = str(version) if version is not None else None
        self.registry_note = note
        self.last_check_ok_at = self.last_check_at
        self.last_check_error = None

    # -- registry ---------------------------------------------------------------------------------

    def _store_unchanged(self, now: float) -> bool:
        """True when a direct SQLite store's files have not changed since the last full check.

        Every registry change writes the database file, so on the embedded default a poll costs one
        ``stat`` instead of a query. A full check still runs every ``FULL_CHECK_S`` as a safety net.
        """
        uri = self.settings.tracking_uri
        if not uri.startswith("sqlite:///") or self.current is None or self.registry_reachable is not True:
            return False
        stamp = sqlite_stamp(uri)
        if stamp == self._db_stamp and now - self._db_stamp_at < FULL_CHECK_S and self.last_swap_error is None:
            return True
        self._db_stamp = stamp
        self._db_stamp_at = now
        return False

    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            uri = self.settings.tracking_uri
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    def _resolve(self):
        s = self.settings
        try:
            return registry.resolve(self.client(), s.model_name, stage=s.model_stage, alias=s.model_alias)
        except registry.RegistryError as exc:
            msg = str(exc)
            if isinstance(exc, errors.Unreachable):
                raise RegistryUnreachable(first_line(msg)) from None
            raise NothingSelected(msg) from None
        except Exception as exc:  # noqa: BLE001 - connection errors, 5xx, database errors
            self._client = None
            raise RegistryUnreachable(first_line(getattr(exc, "message", None) or str(exc) or type(exc).__name__)) from None

    def _meta(self, mv) -> VersionMeta:
        """What the resolved version itself says (no further registry call)."""
        return VersionMeta(
            name=self.settings.model_name, version=str(mv.version), selector=self.settings.selector,
            stage=mv.current_stage, run_id=mv.run_id, source=mv.source, description=mv.description,
        )

    def _enrich(self, meta: VersionMeta, mv) -> None:
        """Aliases and run metrics for /api/model/info: read after the swap, never delaying it."""
        client = self.client()
        try:
            rm = client.get_registered_model(self.settings.model_name)
            meta.aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version))
        except Exception as exc:  # noqa: BLE001 - informative only
            log.warning("could not read aliases of %s: %s", self.settings.model_name, first_line(str(exc)))
        if mv.run_id:
            try:
                meta.metrics = dict(client.get_run(mv.run_id).data.metrics)
            except Exception as exc:  # noqa: BLE001 - informative only
                log.warning("could not read the metrics of run %s: %s", mv.run_id, first_line(str(exc)))

    # -- swapping ---------------------------------------------------------------------------------

    def _swap_to(self, mv) -> str | None:
        """Download, load, smoke-test, then swap; on failure keep the current version.

        A version this worker still holds loaded (it served it before) is swapped back in at once.
        """
        version = str(mv.version)
        name = self.settings.model_name
        t0 = time.perf_counter()
        runtime = self.loaded.get(version)
        if runtime is not None and not _same_version(runtime, mv):
            log.warning("%s v%s in the registry is another version now (run %s, was %s): loading it afresh",
                        name, version, mv.run_id, runtime.meta.run_id)
            self.loaded.pop(version)
            runtime = None
        if runtime is not None:
            runtime.meta.stage, runtime.meta.description = mv.current_stage, mv.description
            how = "kept in memory since it last served"
        else:
            phase = "download"
            again = ""
            try:
                fetched = self.cache.fetch(version, self.settings.tracking_uri, _identity(mv))
                t1 = time.perf_counter()
                phase = "load"
                try:
                    runtime = ModelRuntime.load(fetched.path, self._meta(mv), loaded_from="registry")
                except ModelLoadError as exc:
                    if fetched.downloaded:
                        raise
                    # A cached copy that does not load: drop it and fetch it once more.
                    log.warning("cached %s v%s does not load (%s): downloading it again", name, version,
                                first_line(str(exc)))
                    again = "; the cached copy was dropped and downloaded again, and it still fails"
                    phase = "download"
                    self.cache.drop(version, f"it does not load: {first_line(str(exc))}")
                    fetched = self.cache.fetch(version, self.settings.tracking_uri, _identity(mv))
                    phase = "load"
                    runtime = ModelRuntime.load(fetched.path, self._meta(mv), loaded_from="registry")
            except CacheFull as exc:
                return self._refuse(version, "download", str(exc))
            except ModelLoadError as exc:
                phase = getattr(exc, "phase", phase)
                return self._refuse(version, phase, self._explain(exc, phase) + again)
            except Exception as exc:  # noqa: BLE001 - anything else is a refusal too
                return self._refuse(version, phase, self._explain(exc, phase) + again)
            how = f"download {t1 - t0:.2f}s, load + smoke test {time.perf_counter() - t1:.2f}s, " \
                  f"fast path: {runtime.native_reason}"
        self._install(runtime)
        self.failures.pop(version, None)
        self.last_swap_error = None
        log.info(
            "now serving %s v%s (%s), was %s; swapped %.2fs after the registry check (%s)",
            name, version, self.settings.selector_label,
            f"v{self._previous}" if self._previous else "nothing", time.perf_counter() - t0, how,
            extra={"fields": {"event": "model_swapped", "model_name": name, "model_version": version,
                              "previous_version": self._previous}},
        )
        self._enrich(runtime.meta, mv)
        try:
            self.cache.write_pointer(self.settings.selector, version, runtime.meta.to_dict(),
                                     registry=self.settings.public()["tracking_uri"])
        except OSError as exc:
            log.warning("could not update the cache pointer: %s", exc)
        return None

    def _install(self, runtime: ModelRuntime) -> None:
        """The swap: one reference assignment. In-flight requests finish on the version they took."""
        old = self.current
        self._previous = old.version if old else None
        self.current = runtime
        self.swaps += 1
        self.metrics.swaps.labels(self.settings.model_name).inc()
        self.metrics.set_serving(self.settings.model_name, self._previous, runtime.version)
        self.loaded[runtime.version] = runtime
        self.loaded.move_to_end(runtime.version)
        while len(self.loaded) > self.settings.keep_loaded_versions:
            _, retired = self.loaded.popitem(last=False)
            retired.unload()

    def _explain(self, exc: Exception, phase: str) -> str:
        """One line for a failed step; a full cache disk is named as such, with its path."""
        if no_space(exc):
            return self.cache.no_space_message(f"the {phase} step")
        text = first_line(str(exc))
        return text if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {text}"

    def _served_version_state(self, version: str) -> str:
        """What the registry says of ``version`` now (it no longer holds the selection)."""
        try:
            mv = self.client().get_model_version(self.settings.model_name, version)
        except Exception as exc:  # noqa: BLE001 - not found, or the registry went away meanwhile
            code = str(getattr(exc, "error_code", ""))
            if "RESOURCE_DOES_NOT_EXIST" in code or "not found" in str(exc).lower():
                return "deleted from the registry"
            return f"its registry state could not be read: {first_line(str(exc))}"
        return f"now in stage {mv.current_stage}" if mv.current_stage else "still registered"

    def _refuse(self, version: str, phase: str, error: str) -> str:
        now = time.time()
        delay = DOWNLOAD_RETRY_S if phase == "download" else self.settings.retry_failed_after_s
        failure = Failure(version, phase, first_line(error), now, now + delay)
        self.failures[version] = failure
        self.last_swap_error = failure
        self.metrics.swap_failures.labels(self.settings.model_name, phase).inc()
        log.error(
            "refused %s v%s (%s failed): %s; still serving %s; next try in %.0fs or on reload",
            self.settings.model_name, version, phase, failure.error,
            f"v{self.current.version}" if self.current else "nothing", delay,
            extra={"fields": {"event": "swap_failed", "model_version": version, "phase": phase}},
        )
        return f"v{version} refused ({phase} failed): {failure.error}"

    def _load_from_cache(self, why: str) -> None:
        """Start from the last version that passed here before (the ``current`` pointer)."""
        entry = self.cache.read_pointer(self.settings.selector)
        if entry is None:
            if "" not in self._cache_tried:
                self._cache_tried.add("")
                self.cache_note = f"no cached version for {self.settings.selector_label}"
                log.warning("%s and %s: not ready", why, self.cache_note)
            return
        version = str(entry["version"])
        if version in self._cache_tried or version in self.failures:
            return
        self._cache_tried.add(version)
        ours = self.settings.public()["tracking_uri"]
        if entry.get("registry") and entry["registry"] != ours:
            self.cache_note = (f"the cached pointer for {self.settings.selector_label} (v{version}) was written by "
                               f"another registry ({entry['registry']}), not {ours}")
            log.error("%s and %s: not starting from it", why, self.cache_note)
            return
        meta = VersionMeta.from_dict(entry.get("meta") or {"name": self.settings.model_name, "version": version,
                                                           "selector": self.settings.selector})
        meta.version = version
        identity = entry.get("identity") or {"run_id": meta.run_id, "source": meta.source}
        problem = self.cache.problem(version, identity, strict=False)
        if problem is not None:
            self.cache_note = f"the cached v{version} (last good for {self.settings.selector_label}) cannot be used: {problem}"
            log.error("%s and %s", why, self.cache_note)
            if "digest" in problem:
                self.cache.drop(version, problem)
            return
        try:
            runtime = ModelRuntime.load(self.cache.version_dir(version), meta, loaded_from="cache")
        except Exception as exc:  # noqa: BLE001
            self.cache_note = f"the cached v{version} cannot be loaded either: {first_line(str(exc))}"
            log.error("%s", self.cache_note)
            return
        self.cache_note = None
        self._install(runtime)
        self.started_from_cache = True
        log.warning(
            "%s: started from the cache with %s v%s (last known good for %s)", why, self.settings.model_name,
            version, self.settings.selector_label,
            extra={"fields": {"event": "started_from_cache", "model_version": version}},
        )

    _previous: str | None = None


def _same_version(runtime: ModelRuntime, mv) -> bool:
    """True when ``runtime`` holds the registry's ``mv``: same number, run and source (a model
    deleted and created again reuses numbers)."""
    return (runtime.version == str(mv.version) and runtime.meta.run_id == mv.run_id
            and runtime.meta.source == mv.source)


def _identity(mv) -> dict:
    """What a cache entry must match for the registry's version ``mv``."""
    return {"run_id": mv.run_id, "source": mv.source, "created": getattr(mv, "creation_timestamp", None)}


def sqlite_stamp(uri: str) -> tuple:
    """(mtime, size, inode) of a direct SQLite store's files (database, WAL, journal): what
    changes whenever the registry does, read with three ``stat`` calls instead of a query."""
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    stamp = []
    for path in (db, db + "-wal", db + "-journal"):
        try:
            st = os.stat(path)
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append(None)
    return tuple(stamp)
