#!/bin/sh
# The tracking server: PostgreSQL backend store, S3 artifacts served through the server's proxy.
# Run by the compose `mlflow` service and by `mlops stack up` (same script, same flags).
#
#   MLFLOW_BACKEND_STORE_URI      postgresql://USER:PASSWORD@HOST:PORT/DB          (required)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET[/prefix]                             (required)
#   MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: how the server reaches S3
#   MLFLOW_HOST (0.0.0.0) MLFLOW_PORT (5000) MLFLOW_WORKERS (1)
#   MLFLOW_ALLOWED_HOSTS          Host headers accepted (comma-separated, fnmatch patterns)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  defaults to false here (no job runner: less memory)
#   MLFLOW_AUTH=true              turn on MLflow's basic-auth app; then also:
#     MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_PASSWORD (required, never defaulted),
#     MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DIR (folder for the generated ini and the
#     default user database), MLFLOW_AUTH_DATABASE_URI (sqlite:///$MLFLOW_AUTH_DIR/basic_auth.db),
#     MLFLOW_AUTH_DEFAULT_PERMISSION (READ), MLFLOW_AUTH_CACHE_TTL_SECONDS (0: every request
#     re-checks the password hash, a PBKDF2 run of about 0.3-1 s of CPU; > 0 caches a successful
#     check per worker for that long, so a changed password may still work on other workers
#     until then)
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?MLFLOW_BACKEND_STORE_URI must be set (postgresql://...)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?MLFLOW_ARTIFACTS_DESTINATION must be set (s3://bucket)}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# The backend URI holds the database password: `mlflow server` reads it from
# MLFLOW_BACKEND_STORE_URI itself, so it never appears on a command line (`ps`).
export MLFLOW_BACKEND_STORE_URI
set -- mlflow server \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-1}"

# Empty items (an unset optional variable in a comma-separated list) are dropped.
allowed=$(printf '%s' "${MLFLOW_ALLOWED_HOSTS:-}" | tr -s ',' | sed 's/^,//; s/,$//')
if [ -n "$allowed" ]; then
  set -- "$@" --allowed-hosts "$allowed"
fi

if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY must be set when MLFLOW_AUTH=true}"
  : "${MLFLOW_AUTH_ADMIN_PASSWORD:?MLFLOW_AUTH_ADMIN_PASSWORD must be set when MLFLOW_AUTH=true (there is no default)}"
  auth_dir="${MLFLOW_AUTH_DIR:-/var/lib/mlflow/auth}"
  mkdir -p "$auth_dir"
  ini="$auth_dir/basic_auth.ini"
  umask 077
  cat > "$ini.tmp" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$auth_dir/basic_auth.db}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-0}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  mv "$ini.tmp" "$ini"
  export MLFLOW_AUTH_CONFIG_PATH="$ini"
  set -- "$@" --app-name basic-auth
fi

# Compose: a read-only user for the prediction service (MLFLOW_AUTH_READONLY_USERNAME/_PASSWORD),
# created once the server answers, its password reset on every start. New users get
# default_permission (READ). `mlops stack up` creates its own and leaves these unset.
if [ "${MLFLOW_AUTH:-false}" = "true" ] && [ -n "${MLFLOW_AUTH_READONLY_PASSWORD:-}" ]; then
  "$@" &
  server=$!
  trap 'kill -TERM "$server" 2>/dev/null' TERM INT
  python - <<'PY' || { kill -TERM "$server"; wait "$server"; exit 1; }
import base64, json, os, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
admin = f"{os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}:{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}"
headers = {"Authorization": "Basic " + base64.b64encode(admin.encode()).decode(), "Content-Type": "application/json"}
user = {"username": os.environ.get("MLFLOW_AUTH_READONLY_USERNAME") or "serving",
        "password": os.environ["MLFLOW_AUTH_READONLY_PASSWORD"]}


def call(method, path):
    req = urllib.request.Request(base + path, json.dumps(user).encode(), headers, method=method)
    return urllib.request.urlopen(req, timeout=10).status


for _ in range(180):
    try:
        urllib.request.urlopen(base + "/health", timeout=3)
        break
    except OSError:
        time.sleep(1)
try:
    call("POST", "/api/2.0/mlflow/users/create")
except urllib.error.HTTPError:
    call("PATCH", "/api/2.0/mlflow/users/update-password")
print(f"read-only user {user['username']} ready", flush=True)
PY
  wait "$server"
  exit $?
fi

exec "$@"
