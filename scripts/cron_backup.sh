#!/usr/bin/env bash
# Nightly registry backup for cron: back up, verify, keep the newest $KEEP archives.
#   crontab: 15 2 * * *  cd /srv/ml-devops-app && BACKUP_DIR=/var/backups/mlops scripts/cron_backup.sh >> logs/backup.log 2>&1
# Uses MLFLOW_TRACKING_URI like every mlops command. Exits non-zero if the backup or its check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
BACKUP_DIR=${BACKUP_DIR:-backups}
KEEP=${KEEP:-14}
mkdir -p "$BACKUP_DIR"
out="$BACKUP_DIR/registry-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"
echo "$(date -u +%FT%TZ) backup -> $out"
"$BIN/mlops" backup --out "$out"
"$BIN/mlops" backup --verify "$out"
# Retention: only complete archives match the pattern (a backup in progress is a hidden temp file).
ls -1t "$BACKUP_DIR"/registry-*.tar.gz | tail -n +"$((KEEP + 1))" | while read -r old; do
  echo "removing old backup $old"; rm -f -- "$old"
done
echo "$(date -u +%FT%TZ) backup ok: $(du -h "$out" | cut -f1) $out"
