# syntax=docker/dockerfile:1
# The MLflow tracking server: runs and the model registry on PostgreSQL, artifacts proxied to S3
# (MinIO in the compose stack). Versions are those of requirements.lock; tests/test_docker.py checks
# that they agree.
#
#   docker build -f docker/mlflow.Dockerfile -t shopml-mlflow:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir pip==26.3 \
    && /opt/venv/bin/pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.43.117 Flask-WTF==1.3.0 WTForms==3.3.2

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="shopml-mlflow"
RUN useradd --uid 50001 --create-home mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 50001
EXPOSE 5000
# Overridden by the compose file with the backend store and the artifact destination.
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
