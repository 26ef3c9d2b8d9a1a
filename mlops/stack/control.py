"""Bringing the stack up and down: start in order and wait, stop in reverse, restart, status."""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from pathlib import Path

from mlops.stack.components import BY_NAME, check
from mlops.stack.process import check_ports, check_requirements, members, port_in_use, stop_entry
from mlops.stack.state import (
    COMPONENTS,
    HOST,
    PORT_ENV,
    PURGED,
    STARTUP_PHASES,
    Running,
    Settings,
    StackError,
    admin_auth,
    ensure_secrets,
    load_secrets,
    load_state,
    locked,
    save_state,
)

log = logging.getLogger(__name__)


def _launch(name: str, s: Settings, secrets: dict, stack_id: str) -> dict:
    """Start ``name``'s process (after its one-time preparation); return its state entry."""
    port = s.ports[name]
    component = BY_NAME[name]
    if port_in_use(port):
        raise StackError(f"{name}: port {port} on {HOST} is already in use by another program "
                         f"(choose another with {component.port_flag} or {PORT_ENV[name]})")
    return component.launch(s, secrets, f"{stack_id}/{name}")


def _stop(name: str, entry: dict) -> bool:
    """Stop one component with its own shutdown signal."""
    return stop_entry(name, entry, BY_NAME[name].stop_signal)


def up(s: Settings) -> Running:
    """Start what is not running yet, in order; on a failure stop what this call started."""
    check_requirements(n for n in COMPONENTS if n != "serving" or s.serving)
    if s.auth and not admin_auth():
        raise StackError("--auth needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment (there is no default password)")
    s.stack_dir.mkdir(parents=True, exist_ok=True)
    s.logs.mkdir(exist_ok=True)
    with locked(s.stack_dir):
        state = load_state(s.stack_dir)
        running = {n: e for n, e in state.get("components", {}).items() if members(e)}
        if running:
            if state.get("auth") != s.auth:
                raise StackError(f"the stack in {s.stack_dir} is running {'with' if state.get('auth') else 'without'} "
                                 "--auth; run `mlops stack down` first")
            s.ports = {**s.ports, **state["ports"]}
        secrets = ensure_secrets(s.stack_dir)
        wanted = [n for n in COMPONENTS if n != "serving" or s.serving]
        check_ports(s.ports, [n for n in wanted if n not in running])
        stack_id = uuid.uuid4().hex[:12]
        state = {"version": 1, "ports": s.ports, "auth": s.auth, "bucket": s.bucket, "serving": s.serving,
                 "components": dict(running)}
        save_state(s.stack_dir, state)
        started: list[str] = []
        details: dict[str, str] = {}
        try:
            # Two phases: the stores, then what uses them. Within a phase the processes start
            # together (the serving service retries the registry until the server answers) and
            # are waited on in order.
            for phase in STARTUP_PHASES:
                names = [n for n in phase if n in wanted]
                for name in names:
                    if name in running:
                        details[name] = "already running"
                        continue
                    log.info("starting %s on %s:%d", name, HOST, s.ports[name])
                    state["components"][name] = _launch(name, s, secrets, stack_id)
                    started.append(name)
                    save_state(s.stack_dir, state)
                for name in names:
                    if name in started:
                        details[name] = BY_NAME[name].ready(state["components"][name], s, secrets)
        except BaseException:
            for name in reversed(started):
                _stop(name, state["components"].pop(name))
            save_state(s.stack_dir, state)
            raise
        return Running(s.stack_dir, s.ports, s.auth, started, list(running), details)

def stop_components(stack_dir: Path, names: list[str]) -> list[str]:
    """Stop the named components only (data kept); return those that were running."""
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise StackError(f"unknown component(s): {', '.join(unknown)} (use {', '.join(COMPONENTS)})")
    stopped = []
    with locked(stack_dir):
        state = load_state(stack_dir)
        components = state.get("components", {})
        for name in reversed(COMPONENTS):
            if name in names and components.get(name):
                if _stop(name, components[name]):
                    stopped.append(name)
                components.pop(name, None)
        if state:
            save_state(stack_dir, state)
    return stopped

def restart(stack_dir: Path, names: list[str], timeout: float = 180.0) -> Running:
    """Stop the named components and start them again on the same ports with the same data."""
    state = load_state(stack_dir)
    if not state:
        raise StackError(f"no stack in {stack_dir} (start one: mlops stack up)")
    stop_components(stack_dir, names)
    return up(Settings(stack_dir=stack_dir, ports=dict(state["ports"]), auth=bool(state.get("auth")),
                       serving=state.get("serving", True), bucket=state.get("bucket", "mlflow"), timeout=timeout))

def down(stack_dir: Path, purge: bool = False) -> list[str]:
    """Stop the processes `up` started (reverse order); keep the data unless ``purge``."""
    if not stack_dir.is_dir():
        return []
    with locked(stack_dir):
        state = load_state(stack_dir)
        components = state.get("components", {})
        stopped = []
        for name in reversed(COMPONENTS):
            entry = components.get(name)
            if entry and _stop(name, entry):
                stopped.append(name)
            components.pop(name, None)
        if state:
            save_state(stack_dir, state)
        if purge:
            for item in PURGED:
                path = stack_dir / item
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    if purge:
        with contextlib.suppress(OSError):
            stack_dir.rmdir()
    return stopped

def status(stack_dir: Path) -> dict[str, dict]:
    """Each component: running (its processes exist), healthy (its real interface answers), detail."""
    state = load_state(stack_dir)
    secrets = load_secrets(stack_dir)
    ports = state.get("ports", {})
    out = {}
    wanted = [n for n in COMPONENTS if n != "serving" or state.get("serving", True)]
    for name in wanted:
        entry = state.get("components", {}).get(name)
        pids = members(entry) if entry else []
        row = {"port": ports.get(name), "running": bool(pids), "healthy": False, "pids": pids,
               "detail": "stopped", "log": entry["log"] if entry else str(stack_dir / "logs" / f"{name}.log")}
        if pids:
            auth = admin_auth() if state.get("auth") else None
            row["healthy"], row["detail"] = check(name, ports, secrets, state.get("bucket", "mlflow"), auth)
        out[name] = row
    return out
