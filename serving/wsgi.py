"""WSGI entry point for gunicorn: ``gunicorn -c serving/gunicorn.conf.py serving.wsgi:app``.

Building the app reads the settings from the environment and sets up logging; it starts no thread
and does not touch the registry (gunicorn loads this module in the master before forking).
"""

from __future__ import annotations

from serving.app import create_app
from serving.runtime import preimport
from serving.settings import Settings

settings = Settings.from_env()
app = create_app(settings)
preimport(settings.tracking_uri)
