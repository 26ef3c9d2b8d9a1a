"""gunicorn settings for the prediction service (``mlops serve`` uses this file).

* every value from the service settings (``serving.settings.Settings``): bind/workers (``HOST``, ``PORT``, ``WORKERS``; default 2 x cores + 1,
  at most 8), ``THREADS`` threads per worker (default 4) with keep-alive;
* worker class ``serving.worker.ServingWorker``: gunicorn's ``gthread`` plus a read deadline on
  every request (``READ_TIMEOUT_S``, default 10 s), so a stalled or slow client holds one thread
  for at most that long, never a whole worker (docs/serving.md, "Worker model");
* the app (and its heavy imports: MLflow, scikit-learn) is preloaded once in the master and
  forked (``gc.freeze()`` first, so the pages stay shared); no thread runs in the master: each
  worker starts its registry poller after the fork;
* graceful shutdown on SIGTERM (``GRACEFUL_TIMEOUT_S``), worker timeout ``TIMEOUT_S``;
* access log off unless ``ACCESS_LOG`` is set (``-`` for stdout or a file path);
* no control socket (gunicorn 26 would share ``~/.gunicorn/gunicorn.ctl`` between instances);
* Prometheus multiprocess directory: ``PROMETHEUS_MULTIPROC_DIR`` or a fresh temp folder, wiped at
  start, per-worker gauges dropped when a worker exits, removed on exit if it was ours.
"""

from __future__ import annotations

import gc
import glob
import os
import shutil
import tempfile

from serving.settings import Settings
from serving.worker import ServingWorker

_settings = Settings.from_env()

# Parallelism comes from the workers (and their threads): each worker's scikit-learn, OpenMP and
# BLAS run on one thread. Left at their defaults, 2 x cores + 1 workers each start a thread per core
# whose spin-waits crowd out the others (histogram gradient boosting's load-time check took 135 s
# instead of seconds with five workers on two busy cores). A value set by the operator is kept.
for _threads_var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads_var, "1")

# Must be in the environment before prometheus_client is imported (by the preloaded app).
_OWN_METRICS_DIR = _settings.metrics_dir is None
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="serving-metrics-")
else:
    os.makedirs(_settings.metrics_dir, exist_ok=True)
    for _stale in glob.glob(os.path.join(_settings.metrics_dir, "*.db")):
        os.unlink(_stale)
_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = _settings.worker_class
threads = _settings.threads
ServingWorker.read_timeout_s = _settings.read_timeout_s  # set in the master, inherited by each fork
keepalive = _settings.keepalive_s
timeout = _settings.timeout_s
graceful_timeout = _settings.graceful_timeout_s
preload_app = True
control_socket_disable = True
proc_name = f"mlops-serving:{_settings.port}"
accesslog = _settings.access_log
errorlog = "-"
loglevel = _settings.log_level.lower()
limit_request_line = 8190
forwarded_allow_ips = _settings.forwarded_allow_ips


def pre_fork(server, worker):
    """Move everything the master built (imports, the app) out of the garbage collector's sight:
    workers then share those pages instead of copying them, and exit in a fraction of the time."""
    gc.freeze()


def post_worker_init(worker):
    """In the worker, after the fork: start this worker's registry poller, then wait for a first
    registry check to finish before the worker takes requests. The check blocks until the poller's
    first check (the first model load, from the registry or the cache) is over, so a worker that
    replaces a dead one does not answer 503 while its model loads. The wait stays well under the
    worker timeout (the master kills a worker that is silent for ``timeout`` seconds)."""
    from serving.app import EXTENSION

    manager = worker.wsgi.extensions[EXTENSION]
    manager.start()
    manager.check(timeout=min(30.0, timeout / 2))


def worker_exit(server, worker):
    """Stop the poller (it is a daemon thread; this only makes the exit prompt)."""
    from serving.app import EXTENSION

    app = getattr(worker, "wsgi", None)
    if app is not None and EXTENSION in getattr(app, "extensions", {}):
        app.extensions[EXTENSION].stop()


def child_exit(server, worker):
    """In the master: drop the exited worker's live gauges from the metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)
