# syntax=docker/dockerfile:1
# NovaCron Quota Stream: one image for the enforcement workers (`novaquota worker`, 6066), the
# projection workers (`novaquota projections run`, 6067), the delivery worker (`novaquota
# deliver`, 6068), the policy worker (`novaquota policy run`, 6069) and the CLI. Kubernetes
# manifests: deploy/k8s/ (docs/deploy.md).
#
#   docker build -t novaquota:0.2.0 .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 -p 6066:6066 novaquota:0.2.0 worker
#
# This image has not been built in the project's own environment (it has no Docker engine);
# the Dockerfile is checked with hadolint (tests/unit/test_dockerfile.py).
#
# The base is pinned by its exact tag. Pin its digest as well when you build
# (FROM python:3.11.13-slim-bookworm@sha256:<digest>, from `docker buildx imagetools inspect`):
# it could not be resolved here.

# --- build: the project's wheel ------------------------------------------------------------
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the wheel in a virtualenv, run as a non-root user ----------------------------
FROM python:3.11.13-slim-bookworm AS runtime
# DL3064 reads "TOKENS" in NOVAQUOTA_TOKENS_FILE as a secret: it is the file's path, and the
# file holds argon2 hashes, mounted at run time (a Secret in Kubernetes).
# hadolint ignore=DL3064
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/novaquota/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    NOVAQUOTA_WEB_HOST=0.0.0.0 \
    NOVAQUOTA_PROJECTIONS_WEB_HOST=0.0.0.0 \
    NOVAQUOTA_DATA_DIR=/var/lib/novaquota/worker \
    NOVAQUOTA_PROJECTIONS_DATA_DIR=/var/lib/novaquota/projections \
    NOVAQUOTA_TOKENS_FILE=/var/lib/novaquota/tokens.json
# The same uid/gid as the manifests' runAsUser/runAsGroup (10001).
RUN groupadd --system --gid 10001 novaquota \
    && useradd --system --uid 10001 --gid novaquota --home-dir /var/lib/novaquota \
        --no-create-home --shell /usr/sbin/nologin novaquota \
    && install -d -o novaquota -g novaquota -m 0750 /var/lib/novaquota
COPY --from=build /wheels /tmp/wheels
# The worker and projections extras: everything the three workers need (the base install is
# the client alone). Every dependency has a binary wheel for this Python: no compiler.
RUN python -m venv /opt/novaquota \
    && wheel="$(find /tmp/wheels -name 'novaquota-*.whl')" \
    && /opt/novaquota/bin/pip install "${wheel}[worker,projections]" \
    && rm -rf /tmp/wheels
USER 10001:10001
WORKDIR /var/lib/novaquota
EXPOSE 6066 6067 6068 6069
# Kubernetes ignores HEALTHCHECK (the manifests probe /healthz and /readyz); for plain Docker,
# the worker's /healthz on whichever of the four ports this container serves (no curl in slim).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u\nports = [os.environ.get(n, d) for n, d in (('NOVAQUOTA_WEB_PORT', '6066'), ('NOVAQUOTA_PROJECTIONS_WEB_PORT', '6067'), ('NOVAQUOTA_DELIVERY_WEB_PORT', '6068'), ('NOVAQUOTA_POLICY_WEB_PORT', '6069'))]\nfor port in ports:\n    try:\n        u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)\n        sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)"]
ENTRYPOINT ["novaquota"]
CMD ["--help"]
