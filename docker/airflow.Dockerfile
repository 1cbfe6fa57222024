# syntax=docker/dockerfile:1
# The Airflow image: Airflow 3 with the project's DAGs, code and pinned dependencies (requirements.lock).
# One image for every Airflow component (api-server, scheduler, dag-processor, triggerer, Celery worker);
# the compose file picks the command. Torch is the CPU build: GPU training runs on docker/train.Dockerfile.
#
#   docker build -f docker/airflow.Dockerfile -t shopml-airflow:0.1.0 .

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
ARG SHOPML_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="shopml-airflow" \
      org.opencontainers.image.source="https://github.com/shopml/shopml" \
      org.opencontainers.image.revision="${SHOPML_GIT_COMMIT}"
# LightGBM (the propensity model's floor) links the system's OpenMP runtime, which slim images lack.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
# Airflow's own convention: uid 50000, group 0, so mounted volumes work under OpenShift too.
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p /opt/shopml /opt/airflow /var/lib/shopml \
    && chown -R 50000:0 /opt/airflow /var/lib/shopml
COPY --from=build /opt/venv /opt/venv
COPY --chown=50000:0 pyproject.toml params.yaml policy.yaml dvc.yaml /opt/shopml/
# The locks beside the code: a Bento packaged here pins its packages by these hashes.
COPY --chown=50000:0 requirements.lock requirements-torch.lock /opt/shopml/
COPY --chown=50000:0 pipeline /opt/shopml/pipeline
COPY --chown=50000:0 models /opt/shopml/models
COPY --chown=50000:0 dags /opt/shopml/dags
COPY --chown=50000:0 expectations /opt/shopml/expectations
# The `shopml` command (the project is on PYTHONPATH, not installed into the venv).
RUN printf '#!/bin/sh\nexec python -m pipeline "$@"\n' > /opt/venv/bin/shopml && chmod 755 /opt/venv/bin/shopml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/shopml \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/shopml/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    SHOPML_HOME=/var/lib/shopml \
    SHOPML_GIT_COMMIT=${SHOPML_GIT_COMMIT}
WORKDIR /opt/shopml
USER 50000
ENTRYPOINT ["airflow"]
CMD ["version"]
