#!/usr/bin/env bash
# The PostgreSQL role and databases of the shared MLflow tracking server (scripts/tracking_server.sh), on a local
# Debian PostgreSQL (psql 15 or newer). Runs psql as the postgres OS user: `runuser` as root, `sudo` otherwise.
#
# Usage: MLFLOW_DB_PASSWORD=... scripts/tracking_db.sh [create|drop]
#   create (default): the login role MLFLOW_DB_USER (its password set to MLFLOW_DB_PASSWORD) and the databases
#                     MLFLOW_DB_NAME and MLFLOW_AUTH_DB_NAME owned by it; idempotent (an existing role gets the
#                     password again, existing databases are kept)
#   drop:             drops both databases and the role: every run, model version and user is lost
# Environment (default): MLFLOW_DB_USER (mlflow), MLFLOW_DB_NAME (mlflow), MLFLOW_AUTH_DB_NAME (${MLFLOW_DB_NAME}_auth),
#   MLFLOW_DB_PASSWORD (required by create). The password reaches psql through the environment (\getenv), never
#   through a command line. Start PostgreSQL first: pg_ctlcluster 15 main start (or: service postgresql start).
set -euo pipefail

die() { echo "tracking_db.sh: $*" >&2; exit 2; }
ACTION="${1:-create}"
export MLFLOW_DB_USER="${MLFLOW_DB_USER:-mlflow}"
export MLFLOW_DB_NAME="${MLFLOW_DB_NAME:-mlflow}"
export MLFLOW_AUTH_DB_NAME="${MLFLOW_AUTH_DB_NAME:-${MLFLOW_DB_NAME}_auth}"
for name in "$MLFLOW_DB_USER" "$MLFLOW_DB_NAME" "$MLFLOW_AUTH_DB_NAME"; do
    [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || die "'$name': role and database names must match [a-z_][a-z0-9_]*"
done

if [ "$(id -un)" = postgres ]; then AS_POSTGRES=()
elif [ "$(id -u)" = 0 ]; then AS_POSTGRES=(runuser -u postgres --)
else AS_POSTGRES=(sudo --preserve-env=MLFLOW_DB_PASSWORD -u postgres)
fi
command -v psql >/dev/null || die "psql is missing: apt-get install -y postgresql"
psql_() { (cd / && "${AS_POSTGRES[@]}" psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"); }
psql_ -Atc "select 1" >/dev/null || die "cannot reach PostgreSQL as the postgres user; start it: pg_ctlcluster 15 main start"
exists() { [ "$(psql_ -Atc "$1")" = 1 ]; }

case "$ACTION" in
create)
    [ -n "${MLFLOW_DB_PASSWORD:-}" ] || die "MLFLOW_DB_PASSWORD is not set (the password of the role $MLFLOW_DB_USER)"
    if exists "select 1 from pg_roles where rolname = '$MLFLOW_DB_USER'"; then verb=ALTER; else verb=CREATE; fi
    psql_ <<SQL
\getenv pw MLFLOW_DB_PASSWORD
$verb ROLE $MLFLOW_DB_USER LOGIN PASSWORD :'pw';
SQL
    for db in "$MLFLOW_DB_NAME" "$MLFLOW_AUTH_DB_NAME"; do
        exists "select 1 from pg_database where datname = '$db'" || psql_ -c "CREATE DATABASE $db OWNER $MLFLOW_DB_USER"
    done
    echo "tracking_db.sh: role $MLFLOW_DB_USER, databases $MLFLOW_DB_NAME and $MLFLOW_AUTH_DB_NAME ready" >&2
    ;;
drop)
    for db in "$MLFLOW_DB_NAME" "$MLFLOW_AUTH_DB_NAME"; do
        psql_ -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    done
    psql_ -c "DROP ROLE IF EXISTS $MLFLOW_DB_USER"
    echo "tracking_db.sh: dropped $MLFLOW_DB_NAME, $MLFLOW_AUTH_DB_NAME and role $MLFLOW_DB_USER" >&2
    ;;
*) die "unknown action '$ACTION' (create or drop)" ;;
esac
