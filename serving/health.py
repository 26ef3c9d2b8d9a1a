"""What a worker reports about its model: the one-line status of ``/health`` and the registry's
state, read from the attributes ``serving.manager.ModelManager`` keeps up to date."""

from __future__ import annotations

import os
import time

import orjson


class HealthReport:
    """``status``, ``health`` and ``registry_status`` of a model manager (mixed into it)."""

    def status(self) -> tuple[str, str | None]:
        """``ok``/``degraded``/``starting``/``unavailable`` and, unless ok, why (one line)."""
        cur, err = self.current, self.last_swap_error
        refused = f"v{err.version} refused ({err.phase} failed): {err.error}" if err else None
        if cur is None:
            if not self.checked:
                return "starting", "the first registry check has not finished"
            if self.registry_reachable is False:
                first = f"registry unreachable ({self.last_check_error})"
            else:
                first = refused or self.registry_note or "no model loaded"
            return "unavailable", "; ".join(p for p in (first, self.cache_note) if p)
        serving = f"serving v{cur.version}" + (" from the cache" if cur.loaded_from == "cache" else "")
        if self.registry_reachable is False:
            return "degraded", f"registry unreachable ({self.last_check_error}); {serving}, the last known good"
        if self.registry_note:
            return "degraded", (f"{self.registry_note}; serving the last good version v{cur.version}"
                                + (f" ({self.served_note})" if self.served_note else ""))
        if refused:
            return "degraded", f"{refused}; still {serving}"
        return "ok", None

    def health(self) -> dict:
        """Liveness details for /health."""
        cur = self.current
        status, reason = self.status()
        return {
            "status": status,
            "reason": reason,
            "model_name": self.settings.model_name,
            "model_version": cur.version if cur else None,
            "model_stage": cur.meta.stage if cur else None,
            "selector": self.settings.selector,
            "loaded_at": iso(cur.loaded_at) if cur else None,
            "loaded_from": cur.loaded_from if cur else None,
            "started_from_cache": self.started_from_cache,
            "fast_path": cur.fast if cur else None,
            "registry": self.registry_status(),
            "last_swap_error": self.last_swap_error.to_dict() if self.last_swap_error else None,
            "batching": {**self.settings.batching_public(),
                         "merges": bool(cur is not None and self.settings.batching and cur.batch_reason is None)},
            "rollout": self._rollout_report(),
            "pid": os.getpid(),
        }

    def _rollout_report(self) -> dict | None:
        """The canary/shadow section; never fails /health (registry contents are untrusted)."""
        rollout = getattr(self, "rollout", None)
        if rollout is None:
            return None
        try:
            report = rollout.report()
            orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY)  # what the answer must hold
            return report
        except Exception as exc:  # noqa: BLE001 - liveness must not depend on a tag's contents
            return {"error": f"rollout state unreadable: {type(exc).__name__}"}

    def registry_status(self) -> dict:
        return {
            "reachable": self.registry_reachable,
            "selected_version": self.registry_version,
            "note": self.registry_note,
            "last_check": iso(self.last_check_at),
            "last_success": iso(self.last_check_ok_at),
            "error": self.last_check_error,
        }


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"
