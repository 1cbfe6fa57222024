# PostgreSQL 15 from Debian bookworm's packages, with the official image's interface: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB and /docker-entrypoint-initdb.d/*.sql run once at first start.
ARG DEBIAN_IMAGE=shopml-debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown postgres:postgres /var/run/postgresql
COPY docker/debian/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
