# snapworker as an image: `docker build -t snapworker .`, then `docker run snapworker` runs a worker
# (`docker run snapworker simulate --host 0.0.0.0` the simulator, `docker run snapworker --help` the rest).
# Settings come from SNAPWORKER_* variables at run time: no credential is baked in.

# Build stage: wheels of snapworker and its dependencies (with the redis extra, for a fleet's shared budget).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY snapworker ./snapworker
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[redis]"

FROM python:3.11-slim
# /healthz and /metrics on every interface, so the HEALTHCHECK and Prometheus reach them; STATE_DIR holds the
# SQLite idempotency store (used without REDIS_URL): mount a volume there to keep it across containers.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SNAPWORKER_METRICS_HOST=0.0.0.0 \
    SNAPWORKER_METRICS_PORT=9108 \
    SNAPWORKER_STATE_DIR=/var/lib/snapworker
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /tmp/wheels "snapworker[redis]" \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/snapworker snapworker \
    && install -d -o snapworker -g snapworker /var/lib/snapworker
# A worker needs no privileges: it only talks to RabbitMQ, the API and its metrics port.
USER snapworker
WORKDIR /home/snapworker
VOLUME ["/var/lib/snapworker"]
EXPOSE 9108
# python's urllib, since the slim image has no curl; any HTTP error or refusal fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SNAPWORKER_METRICS_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["snapworker"]
CMD ["run"]
