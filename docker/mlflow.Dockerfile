# syntax=docker/dockerfile:1
# The MLflow tracking server: runs and the model registry on PostgreSQL, artifacts proxied to S3
# (MinIO in the compose stack). Versions are those of requirements.lock; tests/test_docker.py checks
# that they agree.
#
#   docker build -f docker/mlflow.Dockerfile -t shopml-mlflow:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Every file by the sha256 in the locks, one index (PyPI), nothing resolved here. docker/wheels holds
# what `make images` downloaded by those hashes; with PIP_NO_INDEX=1 the build reads only that.
ARG PIP_NO_INDEX=
# 1 on Debian's Python 3.11.2 (docker/debian): the docs' pymdown-extensions asks for 3.11.5, and no
# image imports it.
ARG PIP_IGNORE_REQUIRES_PYTHON=
COPY requirements.lock requirements-torch-cpu.lock requirements-torch.lock /tmp/lock/
COPY docker/wheels/ /tmp/wheels/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --find-links /tmp/wheels --require-hashes --no-deps -r /tmp/lock/requirements.lock \
    && { /opt/venv/bin/pip install --find-links /tmp/wheels --require-hashes --no-deps -r /tmp/lock/requirements-torch-cpu.lock \
         || /opt/venv/bin/pip install --find-links /tmp/wheels --require-hashes --no-deps -r /tmp/lock/requirements-torch.lock; } \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="shopml-mlflow"
# The auth app's user database lives in a named volume, which takes this folder's owner.
RUN useradd --uid 50001 --create-home mlflow \
    && mkdir -p /var/lib/mlflow-auth && chown 50001 /var/lib/mlflow-auth
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER 50001
EXPOSE 5000
# Overridden by the compose file with the backend store and the artifact destination.
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
