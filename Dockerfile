# hybrid-router: the runtime install only (no dev or bench extras), as a non-root user.
#   docker build -t hybrid-router .
#   docker run --rm -p 127.0.0.1:8000:8000 -e HYBRID_ROUTER_CONFIG_TOML="$(cat my.toml)" hybrid-router
# See deploy/README.md for compose and Railway.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 router && mkdir /data && chown router /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER router
# A relative SQLite path (the built-in config's) lands here: mount a volume on it.
WORKDIR /data
EXPOSE 8000
# Liveness on /health, on the port serve listens on (HYBRID_ROUTER_PORT, default 8000).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HYBRID_ROUTER_PORT', '8000'), timeout=4)"
# serve runs as PID 1 and handles SIGTERM itself: it stops taking requests, lets in-flight
# requests and then running provider calls finish (shutdown_grace_s each, default 30 s), and
# exits 0. Give the platform's stop window at least twice shutdown_grace_s plus a few seconds.
STOPSIGNAL SIGTERM
# No ENTRYPOINT: a platform's start command (Railway's) replaces this whole line.
# 0.0.0.0 with no [users] is refused: configure API keys, or pass --insecure on a private network.
CMD ["hybrid-router", "serve", "--host", "0.0.0.0"]
