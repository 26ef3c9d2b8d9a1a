#!/bin/sh
# The prediction service (gunicorn, serving/gunicorn.conf.py), following the registry of the
# tracking server. Run by the compose `serving` service and by `mlops stack up`.
#
#   MLFLOW_TRACKING_URI  http://tracking-server:port                            (required)
#   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD when the server has basic auth
#   HOST (0.0.0.0) PORT (5000) WORKERS, MODEL_NAME, MODEL_STAGE or MODEL_ALIAS, POLL_INTERVAL_S,
#   MODEL_CACHE_DIR, LOG_DIR, ADMIN_TOKEN, API_TOKEN, MAX_BODY_BYTES, KEEP_LOADED_VERSIONS
#
# Artifacts come through the tracking server's proxy (mlflow-artifacts:), so this service holds
# no S3 credentials: any that leaked into the environment are dropped here.
set -eu

: "${MLFLOW_TRACKING_URI:?MLFLOW_TRACKING_URI must point at the tracking server}"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN MLFLOW_S3_ENDPOINT_URL || true

exec mlops serve --host "${HOST:-0.0.0.0}" --port "${PORT:-5000}"
