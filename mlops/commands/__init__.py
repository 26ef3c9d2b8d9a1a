"""`mlops` subcommands, one module per area; each module has ``register(cli)``."""

from __future__ import annotations

import importlib
import pkgutil


def register_all(cli) -> None:
    """Attach every area's commands (each module in this package) to the top-level group."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(cli)
