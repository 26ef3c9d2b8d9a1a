"""HTTP layer: the Flask app factory. The model runtime and its lifecycle live elsewhere
(``serving.runtime``, ``serving.manager``); nothing here touches the registry directly.

Nothing happens at import time: ``create_app(settings)`` builds the app, and the model poller
starts in each worker after the fork (gunicorn ``post_worker_init``) or on the first request.
Routes live in ``serving.routes`` (MLflow's protocol, state, admin) and ``serving.v2`` (Open
Inference Protocol), error handlers in ``serving.handlers``.
"""

from __future__ import annotations

from flask import Flask

from serving import handlers, inputs, rollout, routes, v2
from serving import logs as service_logs
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings

EXTENSION = "serving.manager"

__all__ = ["EXTENSION", "create_app"]


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> Flask:
    """Build the service for ``settings`` (default: read from the environment); ``manager`` may be
    injected (tests), else one is built for ``settings``."""
    settings = settings or Settings.from_env()
    service_logs.setup(settings.log_dir, settings.log_level, settings.log_max_bytes, settings.log_backups)
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)

    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    inputs.set_max_columns(settings.max_columns)
    inputs.set_strict(settings.strict_input)
    app.json.sort_keys = False
    app.extensions[EXTENSION] = manager

    own = routes.Routes(manager, settings, metrics)
    app.register_blueprint(routes.blueprint(own))
    handlers.register(app, settings.max_body_bytes)
    v2.register(app, manager, settings, v2.Hooks(own.api_denied, own.read_body, own.observe_prediction,
                                                           own.predict_rows, rollout.route_hook(own)))
    return app
