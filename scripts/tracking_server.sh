#!/usr/bin/env bash
# A shared MLflow tracking server for a team: PostgreSQL backend store, artifacts proxied through the server,
# HTTP basic authentication. See docs/tracking-server.md (the database comes from scripts/tracking_db.sh).
#
# Usage: scripts/tracking_server.sh [extra `mlflow server` options, e.g. --allowed-hosts mlflow.example.org]
#
# Required environment (never from params.yaml or git):
#   MLFLOW_DB_PASSWORD              password of the PostgreSQL role MLFLOW_DB_USER
#   MLFLOW_ARTIFACTS_DESTINATION    where the server stores artifacts: an absolute directory or s3://bucket/prefix
#   MLFLOW_AUTH_ADMIN_PASSWORD      password of the MLflow admin user (falls back to MLFLOW_TRACKING_PASSWORD);
#                                   used only when the admin user is first created, ignored once it exists
# Optional environment (default):
#   MLFLOW_AUTH_ADMIN_USERNAME      admin user name ($MLFLOW_TRACKING_USERNAME, else admin)
#   MLFLOW_HOST / MLFLOW_PORT       address the server listens on (127.0.0.1 / 5000); leave loopback only
#                                   behind a TLS reverse proxy: basic auth sends passwords in clear
#   MLFLOW_DB_USER                  PostgreSQL role (mlflow)
#   MLFLOW_DB_HOST / MLFLOW_DB_PORT PostgreSQL address (127.0.0.1 / 5432)
#   MLFLOW_DB_NAME                  database of runs and registered models (mlflow)
#   MLFLOW_AUTH_DB_NAME             database of users and permissions (${MLFLOW_DB_NAME}_auth)
#   MLFLOW_DEFAULT_PERMISSION       what every user may do on resources they did not create (READ);
#                                   READ | USE | EDIT | MANAGE | NO_PERMISSIONS
#   MLFLOW_SERVER_WORKERS           server worker processes (4)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's background job runner, for GenAI features this lab does not use
#                                   (false: saves about eight processes); true turns it on
#   MLFLOW_SERVER_DIR               private folder (mode 700) for the generated auth ini, the PostgreSQL
#                                   password file and the Flask secret (${XDG_CONFIG_HOME:-~/.config}/vaelab-mlflow-server)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF secret of the auth app (else a random one kept in MLFLOW_SERVER_DIR)
#
# The PostgreSQL password never appears on a command line or in a URI: it goes into a private PGPASSFILE that
# libpq (psycopg2) reads. Stop the server with Ctrl-C or SIGTERM (the script execs `mlflow server`).
set -euo pipefail

die() { echo "tracking_server.sh: $*" >&2; exit 2; }
need() { [ -n "${!1:-}" ] || die "$1 is not set${2:+ ($2)}; see the usage at the top of $0"; }

need MLFLOW_DB_PASSWORD "password of the PostgreSQL role ${MLFLOW_DB_USER:-mlflow}"
need MLFLOW_ARTIFACTS_DESTINATION "an absolute directory or s3://bucket/prefix"
ADMIN_USER="${MLFLOW_AUTH_ADMIN_USERNAME:-${MLFLOW_TRACKING_USERNAME:-admin}}"
ADMIN_PASSWORD="${MLFLOW_AUTH_ADMIN_PASSWORD:-${MLFLOW_TRACKING_PASSWORD:-}}"
[ -n "$ADMIN_PASSWORD" ] || die "MLFLOW_AUTH_ADMIN_PASSWORD is not set (nor MLFLOW_TRACKING_PASSWORD): the MLflow admin password"
[ "${#ADMIN_PASSWORD}" -ge 12 ] || die "the MLflow admin password (MLFLOW_AUTH_ADMIN_PASSWORD) must have at least 12 characters"
command -v mlflow >/dev/null || die "mlflow is not on PATH: python -m pip install -r requirements.txt"

HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
DB_USER="${MLFLOW_DB_USER:-mlflow}"
DB_HOST="${MLFLOW_DB_HOST:-127.0.0.1}"
DB_PORT="${MLFLOW_DB_PORT:-5432}"
DB_NAME="${MLFLOW_DB_NAME:-mlflow}"
AUTH_DB_NAME="${MLFLOW_AUTH_DB_NAME:-${DB_NAME}_auth}"
PERMISSION="${MLFLOW_DEFAULT_PERMISSION:-READ}"
WORKERS="${MLFLOW_SERVER_WORKERS:-4}"
DIR="${MLFLOW_SERVER_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/vaelab-mlflow-server}"
ARTIFACTS="$MLFLOW_ARTIFACTS_DESTINATION"

case "$ARTIFACTS" in
    *://*) ;;
    /*) mkdir -p "$ARTIFACTS" ;;
    *) die "MLFLOW_ARTIFACTS_DESTINATION must be an absolute directory or a URI such as s3://bucket/prefix, not '$ARTIFACTS'" ;;
esac
for secret in "$MLFLOW_DB_PASSWORD" "$ADMIN_PASSWORD" "$ADMIN_USER"; do
    case "$secret" in *$'\n'*) die "credentials must be single lines" ;; esac
done

umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"

# libpq's password file: host:port:database:user:password, with ':' and '\' escaped.
pgpass_escape() { local s="${1//\\/\\\\}"; printf '%s' "${s//:/\\:}"; }
printf '%s:%s:*:%s:%s\n' "$DB_HOST" "$DB_PORT" "$(pgpass_escape "$DB_USER")" "$(pgpass_escape "$MLFLOW_DB_PASSWORD")" \
    >"$DIR/pgpass"
export PGPASSFILE="$DIR/pgpass"
unset PGPASSWORD MLFLOW_DB_PASSWORD

# SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the driver installed (requirements.txt) is psycopg2.
# MLflow's basic_auth.ini (configparser: a literal '%' is written '%%').
ini_escape() { printf '%s' "${1//%/%%}"; }
cat >"$DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = $PERMISSION
database_uri = postgresql+psycopg2://$DB_USER@$DB_HOST:$DB_PORT/$AUTH_DB_NAME
admin_username = $(ini_escape "$ADMIN_USER")
admin_password = $(ini_escape "$ADMIN_PASSWORD")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$DIR/basic_auth.ini"
# The ini is the one source of the admin credentials (MLflow would let these variables override it).
unset MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_TRACKING_PASSWORD

if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    [ -s "$DIR/flask_secret_key" ] || python -c "import secrets; print(secrets.token_hex(32))" >"$DIR/flask_secret_key"
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$DIR/flask_secret_key")"
fi
export MLFLOW_FLASK_SERVER_SECRET_KEY

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

echo "tracking_server.sh: http://$HOST:$PORT  store postgresql+psycopg2://$DB_USER@$DB_HOST:$DB_PORT/$DB_NAME" \
     " auth db $AUTH_DB_NAME  artifacts $ARTIFACTS  default permission $PERMISSION" >&2
exec mlflow server \
    --backend-store-uri "postgresql+psycopg2://$DB_USER@$DB_HOST:$DB_PORT/$DB_NAME" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    --app-name basic-auth \
    --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    "$@"
