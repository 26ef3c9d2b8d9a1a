"""Test-suite wide set-up: tests never touch the repo's own store or a running service; under
``-n`` (pytest-xdist) each module runs whole on one worker (the reliability folder, which shares
one stack and runs in a fixed order, as one unit) and the longest units start first."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

# pyspark (the `spark` extra) refuses to import its Spark Connect module, with sys.exit(0), when
# __main__ looks like a doctest run: neither __spec__ nor __file__. A pytest-xdist worker's __main__
# (execnet's) looks like that, and MLflow imports the module whenever it infers a signature. Real
# processes (`mlflow run`, gunicorn, `mlops`) have a __main__ with one or the other.
_main = sys.modules.get("__main__")
if _main is not None and getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"

for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SERVING_URL", "ADMIN_TOKEN", "API_TOKEN",
             "MODEL_NAME", "MODEL_STAGE", "MODEL_ALIAS"):
    os.environ.pop(_var, None)

_NUMBERS_ENV = "MLOPS_TEST_NUMBERS_FILE"


def pytest_configure(config):
    """In the controlling process, a file the ``numbers`` fixture of every worker appends to."""
    if not hasattr(config, "workerinput") and _NUMBERS_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="mlops-test-numbers-", suffix=".jsonl")
        os.close(fd)
        os.environ[_NUMBERS_ENV] = path
        config._mlops_numbers_file = Path(path)


#: The longest modules, started first so that two test processes finish close together.
_LONG_FIRST = ("serving/test_mlflow_parity.py", "test_operations_doc.py", "test_drill.py", "stack/test_local_stack.py",
               "reliability/test_bad_input.py", "serving/test_v2.py", "lifecycle/test_roundtrip.py",
               "serving/test_lifecycle.py", "reliability/test_outage.py")


#: Folders whose modules share a session-scoped stack and an order: one work unit for pytest-xdist.
_ONE_UNIT = ("tests/reliability/",)


def pytest_xdist_make_scheduler(config, log):
    """Module-wise scheduling (``--dist loadfile``), except that each of ``_ONE_UNIT`` is one unit.

    Units go out in collection order (longest first, below), not re-sorted by their test count.
    """
    from xdist.scheduler import LoadScopeScheduling

    class _Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((folder for folder in _ONE_UNIT if path.startswith(folder)), path)

    config.option.loadscopereorder = False
    return _Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The longest modules come first (so two workers finish close together); the order inside a
    module is kept."""
    root = Path(__file__).resolve().parent
    rank = {m: i for i, m in enumerate(_LONG_FIRST)}

    def unit(item) -> str:
        path = "tests/" + item.path.resolve().relative_to(root).as_posix()
        return next((folder for folder in _ONE_UNIT if path.startswith(folder)), path)

    # A unit ranks by its longest module; the sort is stable, so the order inside a unit (the
    # reliability folder's ORDER) is kept.
    unit_rank: dict[str, int] = {}
    for it in items:
        name = it.path.resolve().relative_to(root).as_posix()
        u = unit(it)
        unit_rank[u] = min(unit_rank.get(u, len(rank)), rank.get(name, len(rank)))
    items.sort(key=lambda it: unit_rank[unit(it)])


def record_number(section: str, text: str) -> None:
    """One measured line for the end-of-run summary (any process, any worker)."""
    path = os.environ.get(_NUMBERS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps([section, text]) + "\n")


_UNIT_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Seconds per module (set-up, call and tear-down), for the summary's longest-modules list."""
    module = report.nodeid.split("::", 1)[0]
    _UNIT_SECONDS[module] = _UNIT_SECONDS.get(module, 0.0) + (report.duration or 0.0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _UNIT_SECONDS and not hasattr(config, "workerinput"):
        terminalreporter.write_sep("=", "longest modules (s, set-up + tests + tear-down; order _LONG_FIRST by these)")
        for module, seconds in sorted(_UNIT_SECONDS.items(), key=lambda kv: -kv[1])[:15]:
            terminalreporter.write_line(f"{seconds:8.1f}  {module}")
    path = getattr(config, "_mlops_numbers_file", None)
    if path is None or not path.exists():
        return
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.unlink(missing_ok=True)
    if lines:
        terminalreporter.write_sep("=", "reliability: measured numbers")
        for section, text in lines:
            terminalreporter.write_line(f"{section:<22} {text}")


@pytest.fixture(autouse=True, scope="module")
def _fresh_mlflow_uris():
    """Each module starts and ends without a global MLflow tracking/registry URI.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``: a module that calls it would
    otherwise point the next module run by the same process (another xdist group) at its store.
    """
    yield
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    mlflow.set_tracking_uri(None)
    registry_utils._registry_uri = None
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)
