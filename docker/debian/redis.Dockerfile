# Redis 7 from Debian bookworm's packages (redis-server and redis-cli on PATH, as the official image).
ARG DEBIAN_IMAGE=shopml-debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
CMD ["redis-server"]
