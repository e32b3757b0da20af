#!/usr/bin/env bash
# docker compose's PostgreSQL runs this once, when its volume is first created (after
# 001-init.sql): the role the services connect as. It may read and write every table but owns
# none, is no superuser and cannot change the schema; the schema belongs to POSTGRES_USER, which
# only `migrate` uses. Tables added later by migrate get the same grants (default privileges).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set owner="$POSTGRES_USER" --set database="$POSTGRES_DB" \
    --set app_role="$APP_DATABASE_USER" --set app_password="$APP_DATABASE_PASSWORD" <<'SQL'
CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"app_role";
GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";
SQL
