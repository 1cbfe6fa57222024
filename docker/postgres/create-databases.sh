#!/usr/bin/env bash
# Run once by the postgres image on an empty data volume (sourced by its entrypoint): one database
# and one login role per service, each owning its database and able to connect to nothing else.
# The superuser (POSTGRES_USER) stays with the database alone: no service is given its password.
#   airflow: Airflow's metadata and Celery's results, and shopml's promotion lock (an advisory lock)
#   mlflow:  MLflow's runs and model registry
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in docker/.env}" "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in docker/.env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" -v first="$POSTGRES_DB" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE mlflow OWNER mlflow;
-- PUBLIC may connect to every new database by default: only each owner (and the superuser) may.
REVOKE ALL ON DATABASE airflow, mlflow, postgres, :"first" FROM PUBLIC;
SQL
