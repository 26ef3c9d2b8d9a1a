# syntax=docker/dockerfile:1
# The Spark image of the `spark` compose profile: master, worker and the one-shot `scorer` run the
# same pinned pyspark (its jars and bin/spark-class are the Spark runtime), the same Python and the
# project's pinned dependencies, so `mlops score --env-manager local` finds on every executor the
# Python packages the driver has. Build context: the repository root.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    MLOPS_HOME=/app \
    PYSPARK_PYTHON=/usr/local/bin/python \
    SPARK_NO_DAEMONIZE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlops ./mlops
COPY serving ./serving
COPY training ./training
RUN pip install ".[spark]"

RUN useradd --system --create-home --uid 10001 spark && mkdir -p /data /tmp/spark && chown spark:spark /data /tmp/spark
USER spark
ENV SPARK_WORKER_DIR=/tmp/spark SPARK_LOCAL_DIRS=/tmp/spark
