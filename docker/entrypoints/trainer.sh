#!/bin/sh
# One training run through the MLproject against the tracking server:
#   mlflow run . -e train --env-manager local [extra -P params...]
# Run by the compose `trainer` service (profile `train`) and by the stack's integration test.
#
#   MLFLOW_TRACKING_URI (required), MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD with auth,
#   MODEL_NAME (breast-cancer-classifier): experiment and registered model name,
#   PROJECT_DIR (the folder holding MLproject; default: this script's checkout or /app)
# Arguments are passed on to `mlflow run`, e.g. -P model=random_forest -P promote=auto
set -eu

: "${MLFLOW_TRACKING_URI:?MLFLOW_TRACKING_URI must point at the tracking server}"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN MLFLOW_S3_ENDPOINT_URL || true
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "${PROJECT_DIR:-$here}"
name="${MODEL_NAME:-breast-cancer-classifier}"

exec mlflow run . -e train --env-manager local --experiment-name "$name" -P "model_name=$name" "$@"
