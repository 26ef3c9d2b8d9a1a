#!/usr/bin/env bash
# Recurring maintenance checks (`make weekly`, `make monthly`). Read-only: it reports, it never
# deletes. Exit status is non-zero when something needs attention.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
LOG_DIR=${LOG_DIR:-logs}
BACKUP_DIR=${BACKUP_DIR:-backups}
status=0

section() { printf '\n== %s\n' "$*"; }

weekly() {
  section "ERROR lines in the service log (last 7 days: $LOG_DIR/app.log*)"
  errors=$("$BIN/mlops" logs --log-dir "$LOG_DIR" --since 7d --level ERROR -n 20 --quiet-empty)
  if [ -n "$errors" ]; then echo "$errors"; status=1; else echo "none"; fi

  section "disk use"
  du -sh mlruns models "$LOG_DIR" "$BACKUP_DIR" .stack 2>/dev/null || true
  df -h . | tail -1

  section "backups"
  newest=$(ls -1t "$BACKUP_DIR"/registry-*.tar.gz 2>/dev/null | head -1)
  if [ -z "$newest" ]; then
    echo "no backup in $BACKUP_DIR/ — run: scripts/cron_backup.sh"; status=1
  else
    ls -la "$BACKUP_DIR"/ | tail -5
    "$BIN/mlops" backup --verify "$newest" || status=1
  fi
}

monthly() {
  section "outdated dependencies (pinned in pyproject.toml; update deliberately, then make test)"
  "$BIN/python" -m pip list --outdated --disable-pip-version-check 2>/dev/null | grep -v "^WARNING" | head -40
  section "vulnerability audit"
  "$BIN/python" scripts/audit.py || status=1
  section "resource use of running services"
  ps -eo pid,rss,pcpu,etime,args --sort=-rss | grep -E "gunicorn|mlflow server|uvicorn|postgres|moto_server" \
    | grep -v grep | awk '{printf "%7s %8.0f MB %5s%% %12s  ", $1, $2/1024, $3, $4; for (i=5;i<=NF && i<9;i++) printf "%s ", $i; print ""}' | head -20
}

case "${1:-}" in
  weekly) weekly ;;
  monthly) monthly ;;
  *) echo "usage: scripts/maintenance.sh weekly|monthly" >&2; exit 2 ;;
esac
exit $status
