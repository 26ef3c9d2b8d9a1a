"""Test-suite wide set-up: tests never touch the repo's own store or a running service."""

from __future__ import annotations

import os

for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SERVING_URL", "ADMIN_TOKEN", "API_TOKEN",
             "MODEL_NAME", "MODEL_STAGE", "MODEL_ALIAS"):
    os.environ.pop(_var, None)
