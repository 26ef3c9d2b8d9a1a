"""`mlops` subcommands, one module per area; each module has ``register(cli)``.

``COMMANDS`` maps each command to its module so that one command imports only its own module
(``mlops stack status`` or ``mlops logs`` never pay for importing MLflow).
"""

from __future__ import annotations

import importlib
import pkgutil

COMMANDS = {
    "promote": "lifecycle", "rollback": "lifecycle", "history": "lifecycle", "status": "lifecycle",
    "backup": "backup", "restore": "backup",
    "serve": "serve", "ui": "serve", "wait-ready": "serve", "sample": "serve",
    "stack": "stack",
    "logs": "ops",
    "score": "score",
    "canary": "rollout", "shadow": "rollout",
}


def register_one(cli, name: str) -> None:
    """Attach the commands of the module that provides ``name`` (no-op if unknown)."""
    module = COMMANDS.get(name)
    if module:
        importlib.import_module(f"{__name__}.{module}").register(cli)


def register_all(cli) -> None:
    """Attach every area's commands (each module in this package) to the top-level group."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(cli)
