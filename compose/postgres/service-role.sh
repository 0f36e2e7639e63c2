#!/bin/sh
# Run once by the postgres image when it initialises its data directory: the
# role the services connect as (FLOTILLA_DATABASE_URL), which may log in and
# nothing more. The schema's owner (POSTGRES_USER, FLOTILLA_DATABASE_OWNER_URL)
# runs the migrations and grants it the rows of every table after each.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v role=flotilla_service -v password="$FLOTILLA_SERVICE_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"role";
SQL
