# syntax=docker/dockerfile:1
# The project image: the prediction service (gunicorn), the trainer (`mlflow run`) and the backup
# job. Every Python dependency comes pinned from pyproject.toml. Build context: the repository root.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet \
    MLOPS_HOME=/app

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlops ./mlops
COPY serving ./serving
COPY training ./training
RUN pip install .

COPY MLproject python_env.yaml conda.yaml ./
COPY docker/entrypoints ./docker/entrypoints

RUN useradd --system --create-home --uid 10001 app \
    && mkdir -p /var/lib/serving/models /var/log/serving /backups /app/mlruns \
    && chown -R app:app /var/lib/serving /var/log/serving /backups /app/mlruns

USER app
ENV MODEL_CACHE_DIR=/var/lib/serving/models \
    LOG_DIR=/var/log/serving \
    HOST=0.0.0.0 \
    PORT=5000
EXPOSE 5000
CMD ["/app/docker/entrypoints/serving.sh"]
