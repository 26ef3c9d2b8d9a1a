# syntax=docker/dockerfile:1
# The tracking server: mlflow with the basic-auth extra, the PostgreSQL driver and boto3, pinned
# exactly like pyproject.toml (tests/stack/test_compose.py checks that they agree).
# Build context: docker/ (see docker-compose.yml).
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet

RUN pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.13" "psycopg[binary]==3.3.9" "boto3==1.44.8"

RUN useradd --system --create-home --uid 10001 mlflow \
    && mkdir -p /var/lib/mlflow/auth \
    && chown -R mlflow:mlflow /var/lib/mlflow

COPY entrypoints/mlflow-server.sh /usr/local/bin/mlflow-server.sh

USER mlflow
WORKDIR /var/lib/mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-server.sh"]
