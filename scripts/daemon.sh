#!/usr/bin/env bash
# Start or stop a background service in its own process group, with a pid file and a log
# under .run/ — used by `make run` / `make stop`.
#   scripts/daemon.sh start NAME -- COMMAND [ARGS...]
#   scripts/daemon.sh stop NAME
#   scripts/daemon.sh status NAME
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-.run}
action=${1:?usage: daemon.sh start|stop|status NAME [-- COMMAND...]}
name=${2:?usage: daemon.sh start|stop|status NAME [-- COMMAND...]}
pidfile="$RUN_DIR/$name.pid"
logfile="$RUN_DIR/$name.log"
mkdir -p "$RUN_DIR"

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$action" in
  start)
    shift 2; [ "${1:-}" = "--" ] && shift
    if alive; then
      echo "$name: already running (pid $(cat "$pidfile")), log $logfile"
      exit 0
    fi
    setsid "$@" >>"$logfile" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "$name: started (pid $!), log $logfile"
    ;;
  stop)
    if ! alive; then
      rm -f "$pidfile"; echo "$name: not running"; exit 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "$name: stopped"
    ;;
  status)
    if alive; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running"; exit 3; fi
    ;;
  *) echo "usage: daemon.sh start|stop|status NAME [-- COMMAND...]" >&2; exit 2 ;;
esac
