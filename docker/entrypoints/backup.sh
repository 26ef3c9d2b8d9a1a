#!/bin/sh
# A registry backup (`mlops backup`) into BACKUP_DIR (/backups), one timestamped .tar.gz.
# Run by the compose `backup` service (profile `ops`); arguments are passed on to `mlops backup`.
#
#   MLFLOW_TRACKING_URI (required), MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD with auth,
#   BACKUP_DIR (/backups)
set -eu

: "${MLFLOW_TRACKING_URI:?MLFLOW_TRACKING_URI must point at the tracking server}"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN MLFLOW_S3_ENDPOINT_URL || true
dir="${BACKUP_DIR:-/backups}"
mkdir -p "$dir"
out="$dir/registry-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"

mlops backup --out "$out" "$@"
mlops backup --verify "$out"
