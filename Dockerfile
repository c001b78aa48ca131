# piigate gateway image: `docker-compose up` runs it beside PostgreSQL and Redis.
# The config is mounted at /etc/piigate/piigate.toml (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/piigate

# The package and its dependencies (pyproject.toml); tests and benchmarks stay out.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY catalog ./catalog
COPY policies ./policies
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin piigate \
    && mkdir -p /etc/piigate /var/lib/piigate \
    && chown piigate /var/lib/piigate

# Never run the gateway as root.
USER piigate
WORKDIR /var/lib/piigate

EXPOSE 6432
ENTRYPOINT ["piigate"]
CMD ["serve", "--config", "/etc/piigate/piigate.toml"]
