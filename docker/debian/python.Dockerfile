# Python 3.11 from Debian bookworm's packages, on the debootstrapped base (docker/debian/base.sh):
# the PYTHON_IMAGE build argument of the project's images where python:3.11-slim cannot be pulled.
ARG DEBIAN_IMAGE=shopml-debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["python"]
